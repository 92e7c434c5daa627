//! The control API's requests, answered from the agent.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use super::{reload::ReloadRequest, CheckTargetsFeed};
use crate::{
    agent::{Agent, AgentError},
    control::{
        protocol::{
            NodeStatus, Reply, Request, Response, ServiceBackend, SnatStatus, STATUS_SCHEMA,
        },
        server::ControlHandler,
    },
    sync::SyncStatus,
    vrrp::runner::SharedStatus,
};

pub(super) struct Handler {
    pub agent: Arc<Mutex<Agent>>,
    pub instance: String,
    pub vrrp: Option<SharedStatus>,
    pub sync: Option<watch::Receiver<SyncStatus>>,
    pub snat: SnatStatus,
    pub reloads: mpsc::Sender<ReloadRequest>,
    pub check_targets: CheckTargetsFeed,
}

const POISONED: &str = "agent state is poisoned by an earlier panic; restart the agent";

impl Handler {
    /// Runs on a blocking thread (the control server's), so it may wait.
    fn reload(&self) -> Response {
        let (reply, outcome) = oneshot::channel();
        let request = ReloadRequest { reply: Some(reply) };
        if self.reloads.blocking_send(request).is_err() {
            return Response::Error {
                message: "the agent is stopping; nothing was reloaded".into(),
            };
        }
        match outcome.blocking_recv() {
            Ok(Ok(message)) => Response::Ok(Reply::Changed { message }),
            Ok(Err(message)) => Response::Error { message },
            Err(_) => Response::Error {
                message: "the reload was interrupted by the agent stopping".into(),
            },
        }
    }

    fn status(&self, agent: &Agent) -> Reply {
        let stats = agent.stats();
        Reply::Status(Box::new(NodeStatus {
            schema: STATUS_SCHEMA,
            instance: self.instance.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            vrrp: self.vrrp.as_ref().map(SharedStatus::snapshot),
            services: stats.services,
            backends: stats
                .backends
                .into_iter()
                .map(|(service, backend)| ServiceBackend { service, backend })
                .collect(),
            reasons: stats.reasons,
            flows: stats.flows,
            max_flows: stats.max_flows,
            half_open_evicted: stats.half_open_evicted,
            nat_source_push_failures: stats.nat_source_push_failures,
            sync: self.sync.as_ref().map(|s| s.borrow().clone()),
            snat: Some(self.snat.clone()),
        }))
    }

    /// Answers `request`; `None` for a reload, which the reload task
    /// answers.
    fn answer(&self, agent: &mut Agent, request: Request) -> Option<Result<Reply, AgentError>> {
        let changed = |message| Reply::Changed { message };
        let answer = match request {
            Request::ServicesList => Ok(Reply::Services(agent.list_services())),
            Request::BackendsList { service } => agent.list_backends(&service).map(Reply::Backends),
            Request::BackendsAdd {
                service,
                address,
                port,
                weight,
            } => agent
                .add_backend(&service, address, port, weight)
                .map(changed),
            Request::BackendsRemove {
                service,
                address,
                port,
                now,
            } => agent
                .remove_backend(&service, address, port, now)
                .map(changed),
            Request::BackendsDrain {
                service,
                address,
                port,
            } => agent.drain_backend(&service, address, port).map(changed),
            Request::Stats => Ok(Reply::Stats(agent.stats())),
            Request::Status => Ok(self.status(agent)),
            Request::Reload => return None,
        };
        Some(answer)
    }
}

impl ControlHandler for Handler {
    fn handle(&self, request: Request) -> Response {
        let Ok(mut agent) = self.agent.lock() else {
            return Response::Error {
                message: POISONED.into(),
            };
        };
        let Some(answer) = self.answer(&mut agent, request) else {
            // The reload task takes the agent's lock itself.
            drop(agent);
            return self.reload();
        };
        match answer {
            Ok(reply) => {
                if matches!(reply, Reply::Changed { .. }) {
                    // Backends came or went: their health checks follow.
                    self.check_targets.publish(&agent);
                }
                Response::Ok(reply)
            }
            Err(error) => Response::Error {
                message: error.to_string(),
            },
        }
    }
}
