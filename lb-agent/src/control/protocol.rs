//! Requests and replies of the control API (serde, one JSON line each).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    ServicesList,
    BackendsList {
        service: String,
    },
    BackendsAdd {
        service: String,
        address: Ipv4Addr,
        port: Option<u16>,
        weight: Option<u32>,
    },
    BackendsRemove {
        service: String,
        address: Ipv4Addr,
        port: Option<u16>,
        now: bool,
    },
    BackendsDrain {
        service: String,
        address: Ipv4Addr,
        port: Option<u16>,
    },
    Stats,
    Status,
    /// Re-read the config file and apply it (as SIGHUP does).
    Reload,
}

impl Request {
    /// The service the request names, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Request::BackendsList { service }
            | Request::BackendsAdd { service, .. }
            | Request::BackendsRemove { service, .. }
            | Request::BackendsDrain { service, .. } => Some(service),
            Request::ServicesList | Request::Stats | Request::Status | Request::Reload => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Reply {
    Services(Vec<ServiceStatus>),
    Backends(Vec<BackendStatus>),
    Stats(StatsReport),
    Status(Box<NodeStatus>),
    Changed { message: String },
}

/// `lb-agent status`: the node's role and its services.
/// `lb-agent status --json`: a stable, documented schema (README). Fields
/// are only added; `schema` goes up on an incompatible change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    #[serde(default)]
    pub schema: u32,
    pub instance: String,
    /// The agent's version.
    #[serde(default)]
    pub version: String,
    /// VRRP state, or `None` when the node runs without `[vrrp]`.
    pub vrrp: Option<crate::vrrp::runner::VrrpStatus>,
    pub services: Vec<ServiceStatus>,
    #[serde(default)]
    pub backends: Vec<ServiceBackend>,
    /// Packets by what the XDP program did with them.
    #[serde(default)]
    pub reasons: Vec<ReasonCount>,
    /// Live flows and the table's size.
    #[serde(default)]
    pub flows: u64,
    #[serde(default)]
    pub max_flows: u64,
    /// Half-open flows that gave way to new ones.
    #[serde(default)]
    pub half_open_evicted: u64,
    /// NAT sources a queue refused to take back (each lost to its pool
    /// until a restart: a fault, 0 when all is well).
    #[serde(default)]
    pub nat_source_push_failures: u64,
    /// Flow sync with the peer, or `None` without `[sync]`.
    #[serde(default)]
    pub sync: Option<crate::sync::SyncStatus>,
    /// The sources backends see (`None` from agents before it).
    #[serde(default)]
    pub snat: Option<SnatStatus>,
}

/// Where this node's connections to backends come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatStatus {
    /// The SNAT addresses, in the program's order.
    pub addresses: Vec<Ipv4Addr>,
    /// The pair's shared addresses (`vrrp.snat_address`), held by the
    /// master: established flows can carry on after a failover. `false`:
    /// this node's own, to which backends keep replying when it is gone.
    pub floating: bool,
    /// This node's share of the NAT ports, and the ranges in it.
    pub port_slice: crate::ports::PortSlice,
    pub ports: Vec<(u16, u16)>,
}

/// The schema of `NodeStatus` this agent writes.
pub const STATUS_SCHEMA: u32 = 1;

/// A backend with the service it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBackend {
    pub service: String,
    #[serde(flatten)]
    pub backend: BackendStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub backends: u32,
    pub active_backends: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub active_flows: u64,
    /// New connections refused because no backend was up.
    pub rejected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Takes new connections.
    Active,
    /// Removed: no new connections; existing ones finish, then it is gone.
    Draining,
    /// Drained by the operator: kept, no new connections, until `add`.
    Drained,
}

impl BackendState {
    /// The name in the status JSON and the metrics' `state` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Drained => "drained",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    /// Admin state (set with `backends add/remove`).
    pub state: BackendState,
    /// Health state from the checks, apart from the admin state.
    pub health: Health,
    /// Result of the last check ("HTTP 200", "connect: refused", ...).
    pub last_check: Option<String>,
    /// Seconds since the health state last changed.
    pub health_changed_secs: Option<u64>,
    /// Health transitions since the agent started.
    pub transitions: u64,
    /// Weight currently scheduled (lower than `weight` during slow start).
    pub effective_weight: u32,
    pub active_flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// NAT sources (SNAT address, port) towards this backend's endpoint
    /// held by flows, and how many its pool has; shared by the services
    /// that have a backend at the same address, port and protocol.
    #[serde(default)]
    pub nat_ports_in_use: u64,
    #[serde(default)]
    pub nat_ports_capacity: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Up,
    Down,
    /// Not checked (no health check configured): always takes traffic.
    Unchecked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub services: Vec<ServiceStatus>,
    /// (service name, backend).
    pub backends: Vec<(String, BackendStatus)>,
    pub reasons: Vec<ReasonCount>,
    /// Live flows in the connection table.
    pub flows: u64,
    pub max_flows: u64,
    /// Half-open flows that gave way to new ones (the table's half-open
    /// share was full: a SYN flood, or clients that never answer).
    #[serde(default)]
    pub half_open_evicted: u64,
    /// NAT sources a queue refused to take back (a fault; see `Status`).
    #[serde(default)]
    pub nat_source_push_failures: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_state_names_match_their_json() {
        for state in [
            BackendState::Active,
            BackendState::Draining,
            BackendState::Drained,
        ] {
            let json = serde_json::to_string(&state).expect("serialize");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn wire_format_is_stable() {
        let request = Request::BackendsRemove {
            service: "www".into(),
            address: Ipv4Addr::new(10, 200, 0, 23),
            port: None,
            now: true,
        };
        let text = serde_json::to_string(&request).expect("serialize");
        assert_eq!(
            text,
            r#"{"op":"backends_remove","service":"www","address":"10.200.0.23","port":null,"now":true}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(&text).expect("parse"),
            request
        );
        let response = Response::Ok(Reply::Changed {
            message: "done".into(),
        });
        let text = serde_json::to_string(&response).expect("serialize");
        assert_eq!(
            text,
            r#"{"status":"ok","kind":"changed","data":{"message":"done"}}"#
        );
        assert_eq!(
            serde_json::from_str::<Response>(&text).expect("parse"),
            response
        );
    }
}
