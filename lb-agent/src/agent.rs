//! The agent's state machine for one node: the wanted services (config plus
//! run-time changes), the data plane's maps, and the operations the control
//! API offers. Every change goes through `apply`, which rewrites the maps
//! so the XDP program serves exactly the wanted state.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_common::{ServiceKey, PROTO_TCP, PROTO_UDP};
use tracing::{info, warn};

use crate::{
    config::{locate::Document, Config, OnDown, Problem, Protocol, RestartChange, StartAs},
    control::protocol::{
        BackendState, BackendStatus, Health, ReasonCount, ServiceStatus, StatsReport,
    },
    dataplane::{
        maps::monotonic_ns,
        port_pools::Endpoint,
        reconcile::{Reconciler, SlotState, WantedBackend, WantedService},
        settings::{kernel_settings, RunFacts},
        DataplaneError, Tables,
    },
    health::{CheckOutcome, CheckReport, CheckTarget, HealthTracker},
    reload::{restart_only_changes, ReloadSummary},
    state::{BackendSpec, RuntimeState, StateError},
    vrrp::track::ServiceState,
};

/// Errors of run-time operations; their text goes back to the CLI user.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The named service is not configured.
    #[error("no service named {name:?}; `lb-agent services list` shows the configured ones")]
    NoService { name: String },
    /// The backend to remove is not a backend of the service.
    #[error("{addr}:{port} is not a backend of {service}; `lb-agent backends list --service {service}` shows them")]
    NoBackend {
        service: String,
        addr: Ipv4Addr,
        port: u16,
    },
    /// The backend breaks the rules a config backend follows.
    #[error("cannot add {addr}:{port} to {service}: {}; nothing was changed", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    BadBackend {
        service: String,
        addr: Ipv4Addr,
        port: u16,
        problems: Vec<Problem>,
    },
    /// The new config refuses backends the run-time state adds.
    #[error(
        "the new config refuses backends added at run time:\n{}\nremove them (`lb-agent backends remove`) or change the config; nothing was changed",
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    StateConflict { problems: Vec<String> },
    /// A reload changed settings that only a restart can apply.
    #[error(
        "the new config changes {}; restart the agent to apply that (nothing was changed)",
        fields.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    NeedsRestart { fields: Vec<RestartChange> },
    /// The change could not be written to the maps.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The change could not be persisted; the maps were not changed.
    #[error(transparent)]
    State(#[from] StateError),
}

impl AgentError {
    /// The message, with the changed fields of a refused reload at their
    /// lines in the new config's `text` from `path`, as check-config shows
    /// findings.
    pub fn located(&self, path: &str, text: &str) -> String {
        match self {
            Self::NeedsRestart { fields } => {
                let document = Document::parse(text);
                let lines: Vec<String> = fields
                    .iter()
                    .map(|field| {
                        let at = match document.line(&field.path) {
                            Some(line) => format!("{path}:{line}"),
                            None => path.to_string(),
                        };
                        format!("{at}: changed {field}")
                    })
                    .collect();
                format!(
                    "{}\nonly a restart of the agent applies that (nothing was changed)",
                    lines.join("\n")
                )
            }
            other => other.to_string(),
        }
    }
}

/// Health of one checked backend.
#[derive(Debug, Clone)]
struct HealthEntry {
    tracker: HealthTracker,
    last: Option<CheckOutcome>,
}

/// (service name, backend address, backend port).
type BackendKey = (String, Ipv4Addr, u16);

/// How long an `on_change` hook may run before it is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Agent {
    config: Config,
    state: RuntimeState,
    state_path: PathBuf,
    tables: Tables,
    reconciler: Reconciler,
    health: HashMap<BackendKey, HealthEntry>,
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

fn protocol_name(proto: u8) -> &'static str {
    if proto == PROTO_TCP {
        "tcp"
    } else {
        "udp"
    }
}

impl Agent {
    /// Adopts whatever the maps hold, then applies config plus run-time state.
    pub fn new(
        config: Config,
        state: RuntimeState,
        state_path: PathBuf,
        tables: Tables,
    ) -> Result<Self, AgentError> {
        let reconciler = Reconciler::adopt(&tables);
        let mut state = state;
        if state.prune(&config) {
            // Entries that no longer differ from the config (e.g. removals
            // of backends it no longer lists); harmless if the save fails.
            match state.save(&state_path) {
                Ok(()) => {
                    info!(path = %state_path.display(), "state file: dropped changes the config no longer needs")
                }
                Err(error) => {
                    warn!(%error, "state file: dropping changes the config no longer needs")
                }
            }
        }
        let mut agent = Self {
            config,
            state,
            state_path,
            tables,
            reconciler,
            health: HashMap::new(),
        };
        agent.sync_health(Instant::now());
        agent.apply()?;
        Ok(agent)
    }

    pub fn tables(&mut self) -> &mut Tables {
        &mut self.tables
    }

    fn wanted(&self) -> Vec<WantedService> {
        let now = Instant::now();
        let effective = self.state.effective_backends(&self.config);
        self.config
            .services
            .iter()
            .map(|service| WantedService {
                name: service.name.clone(),
                key: ServiceKey {
                    vip: service.vip.octets(),
                    port: service.port,
                    proto: protocol_number(service.protocol),
                    _pad: 0,
                },
                backends: effective
                    .get(&service.name)
                    .map(|backends| {
                        backends
                            .iter()
                            .map(|b| {
                                let key = (service.name.clone(), b.address, b.port);
                                let health = self.health.get(&key);
                                WantedBackend {
                                    addr: b.address,
                                    port: b.port,
                                    weight: health.map_or(b.weight, |h| {
                                        h.tracker.effective_weight(
                                            b.weight,
                                            service.slow_start,
                                            now,
                                        )
                                    }),
                                    healthy: health.is_none_or(|h| h.tracker.is_up()),
                                    drained: self.state.is_drained(
                                        &service.name,
                                        b.address,
                                        b.port,
                                    ),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Rewrites the maps to match the wanted state.
    pub fn apply(&mut self) -> Result<(), AgentError> {
        let wanted = self.wanted();
        self.reconciler.apply(&mut self.tables, &wanted)?;
        Ok(())
    }

    /// Applies a new (validated) config to the running data path:
    /// services, backends, health checks and conntrack timeouts, without
    /// touching live flows. Refuses, changing nothing, when it touches what
    /// only a restart can change; if the maps cannot be written, the old
    /// config is put back.
    pub fn reload(&mut self, new: Config) -> Result<ReloadSummary, AgentError> {
        let restart = restart_only_changes(&self.config, &new);
        if !restart.is_empty() {
            return Err(AgentError::NeedsRestart { fields: restart });
        }
        let conflicts = self.state.problems(&new);
        if !conflicts.is_empty() {
            return Err(AgentError::StateConflict {
                problems: conflicts,
            });
        }
        let summary = ReloadSummary::between(&self.config, &new);
        if summary.timeouts_changed {
            let facts = RunFacts::of(&self.tables.settings()?);
            self.tables.write_settings(kernel_settings(&new, &facts))?;
        }
        let old = std::mem::replace(&mut self.config, new);
        let now = Instant::now();
        self.sync_health(now);
        if let Err(error) = self.apply() {
            warn!(%error, "reload: writing the maps failed; putting the old config back");
            self.config = old;
            self.sync_health(now);
            if let Err(error) = self.apply() {
                warn!(%error, "reload: restoring the old config's maps");
            }
            return Err(error);
        }
        // Only now: under the old config the dropped entries still count.
        let mut pruned = self.state.clone();
        if pruned.prune(&self.config) {
            match pruned.save(&self.state_path) {
                Ok(()) => self.state = pruned,
                Err(error) => {
                    warn!(%error, "state file: dropping changes the new config no longer needs")
                }
            }
        }
        Ok(summary)
    }

    fn service_config(&self, name: &str) -> Result<&crate::config::ServiceConfig, AgentError> {
        self.config
            .services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| AgentError::NoService {
                name: name.to_string(),
            })
    }

    /// Adds a backend (or changes its weight) and persists the change.
    pub fn add_backend(
        &mut self,
        service: &str,
        addr: Ipv4Addr,
        port: Option<u16>,
        weight: Option<u32>,
    ) -> Result<String, AgentError> {
        let port = port.unwrap_or(self.service_config(service)?.port);
        // Re-adding a known backend (e.g. to end a drain) keeps its weight.
        let weight = weight.unwrap_or_else(|| {
            self.configured_backend(service, addr, port)
                .map_or(1, |b| b.weight)
        });
        let problems = self.config.backend_problems(addr, port, weight);
        if !problems.is_empty() {
            return Err(AgentError::BadBackend {
                service: service.to_string(),
                addr,
                port,
                problems,
            });
        }
        let mut next = self.state.clone();
        next.add_backend(
            &self.config,
            service,
            BackendSpec {
                address: addr,
                port,
                weight,
            },
        );
        next.save(&self.state_path)?;
        self.state = next;
        self.sync_health(Instant::now());
        self.apply()?;
        info!(service, %addr, port, weight, "backend added");
        Ok(format!(
            "added {addr}:{port} (weight {weight}) to {service}"
        ))
    }

    /// Removes a backend: draining by default, cutting its flows with `now`.
    pub fn remove_backend(
        &mut self,
        service: &str,
        addr: Ipv4Addr,
        port: Option<u16>,
        now: bool,
    ) -> Result<String, AgentError> {
        let port = port.unwrap_or(self.service_config(service)?.port);
        let present = self.configured_backend(service, addr, port).is_some();
        let slot_id = self
            .reconciler
            .service_by_name(service)
            .and_then(|s| self.reconciler.find_backend(s.id, addr, port))
            .map(|b| b.id);
        if !(present || now && slot_id.is_some()) {
            return Err(AgentError::NoBackend {
                service: service.to_string(),
                addr,
                port,
            });
        }
        if present {
            let mut next = self.state.clone();
            next.remove_backend(&self.config, service, addr, port);
            next.save(&self.state_path)?;
            self.state = next;
            self.sync_health(Instant::now());
            self.apply()?;
        }
        if now {
            let cut = match slot_id {
                Some(id) => self.tables.remove_flows(|flow| flow.backend_id == id),
                None => Vec::new(),
            };
            if let Err(error) = crate::reset::provoke_clients(&cut) {
                warn!(%error, "cut flows' clients will notice on their next send");
            }
            let cut = cut.len();
            info!(service, %addr, port, flows = cut, "backend removed, flows cut");
            Ok(format!(
                "removed {addr}:{port} from {service}; cut {cut} flows"
            ))
        } else {
            info!(service, %addr, port, "backend removed, draining");
            Ok(format!(
                "removed {addr}:{port} from {service}; draining (existing connections finish)"
            ))
        }
    }

    /// Drains a backend: it keeps its flows and stays listed, but gets no
    /// new connections until `add_backend` enables it again. Persisted.
    pub fn drain_backend(
        &mut self,
        service: &str,
        addr: Ipv4Addr,
        port: Option<u16>,
    ) -> Result<String, AgentError> {
        let port = port.unwrap_or(self.service_config(service)?.port);
        let present = self.configured_backend(service, addr, port).is_some();
        if !present {
            return Err(AgentError::NoBackend {
                service: service.to_string(),
                addr,
                port,
            });
        }
        let mut next = self.state.clone();
        next.drain_backend(service, addr, port);
        next.save(&self.state_path)?;
        self.state = next;
        self.apply()?;
        info!(service, %addr, port, "backend drained");
        Ok(format!(
            "drained {addr}:{port} in {service}: no new connections; `backends add` enables it again"
        ))
    }

    /// The backend as config plus run-time changes have it, if present.
    fn configured_backend(&self, service: &str, addr: Ipv4Addr, port: u16) -> Option<BackendSpec> {
        self.state
            .effective_backends(&self.config)
            .get(service)?
            .iter()
            .find(|b| b.address == addr && b.port == port)
            .copied()
    }

    fn census(&self) -> crate::dataplane::maps::FlowCensus {
        let settings = self.tables.settings().unwrap_or_default();
        self.tables.flow_census(&settings, monotonic_ns())
    }

    pub fn list_backends(&self, service: &str) -> Result<Vec<BackendStatus>, AgentError> {
        self.backends_counted(service, &self.census())
    }

    /// `list_backends` with flow counts from `census`.
    fn backends_counted(
        &self,
        service: &str,
        census: &crate::dataplane::maps::FlowCensus,
    ) -> Result<Vec<BackendStatus>, AgentError> {
        self.service_config(service)?;
        let Some(slot) = self.reconciler.service_by_name(service) else {
            return Ok(Vec::new());
        };
        Ok(self
            .reconciler
            .backends_of(slot.id)
            .map(|b| {
                let counters = self.tables.backend_counters(b.id);
                let health = self.health.get(&(service.to_string(), b.addr, b.port));
                let configured_weight = self
                    .configured_backend(service, b.addr, b.port)
                    .map_or(b.weight, |x| x.weight);
                let ports = self.tables.ports().usage(&Endpoint {
                    addr: b.addr,
                    port: b.port,
                    proto: slot.key.proto,
                });
                BackendStatus {
                    address: b.addr,
                    port: b.port,
                    weight: configured_weight,
                    effective_weight: if b.state == SlotState::Active {
                        b.weight
                    } else {
                        0
                    },
                    state: match b.state {
                        SlotState::Active | SlotState::Down => BackendState::Active,
                        SlotState::Draining => BackendState::Draining,
                        SlotState::Drained => BackendState::Drained,
                    },
                    health: match health {
                        None => Health::Unchecked,
                        Some(h) if h.tracker.is_up() => Health::Up,
                        Some(_) => Health::Down,
                    },
                    last_check: health
                        .and_then(|h| h.last.as_ref())
                        .map(|o| o.detail.clone()),
                    health_changed_secs: health.map(|h| {
                        Instant::now()
                            .saturating_duration_since(h.tracker.changed_at())
                            .as_secs()
                    }),
                    transitions: health.map_or(0, |h| h.tracker.transitions),
                    active_flows: census.per_backend.get(&b.id).copied().unwrap_or(0),
                    packets: counters.packets,
                    bytes: counters.bytes,
                    new_flows: counters.new_flows,
                    nat_ports_in_use: ports.map_or(0, |p| p.in_use),
                    nat_ports_capacity: ports.map_or(0, |p| p.capacity),
                }
            })
            .collect())
    }

    pub fn list_services(&self) -> Vec<ServiceStatus> {
        self.services_counted(&self.census())
    }

    /// `list_services` with flow counts from `census`.
    fn services_counted(&self, census: &crate::dataplane::maps::FlowCensus) -> Vec<ServiceStatus> {
        self.reconciler
            .services()
            .map(|slot| {
                let counters = self.tables.service_counters(slot.id);
                let backends: Vec<_> = self.reconciler.backends_of(slot.id).collect();
                ServiceStatus {
                    name: slot.name.clone(),
                    vip: Ipv4Addr::from(slot.key.vip),
                    port: slot.key.port,
                    protocol: protocol_name(slot.key.proto).to_string(),
                    backends: backends.len() as u32,
                    active_backends: backends
                        .iter()
                        .filter(|b| b.state == SlotState::Active)
                        .count() as u32,
                    packets: counters.packets,
                    bytes: counters.bytes,
                    new_flows: counters.new_flows,
                    active_flows: census.per_service.get(&slot.id).copied().unwrap_or(0),
                    rejected: counters.rejected,
                }
            })
            .collect()
    }

    pub fn stats(&self) -> StatsReport {
        // One census for the whole report: each may walk the whole flow
        // table (a small one, or a large one before its first full sweep).
        let census = self.census();
        let services = self.services_counted(&census);
        let mut backends = Vec::new();
        for service in &services {
            if let Ok(list) = self.backends_counted(&service.name, &census) {
                backends.extend(list.into_iter().map(|b| (service.name.clone(), b)));
            }
        }
        StatsReport {
            services,
            backends,
            reasons: self
                .tables
                .reasons()
                .into_iter()
                .map(|(reason, packets)| ReasonCount {
                    reason: reason.name().to_string(),
                    packets,
                })
                .collect(),
            flows: census.active,
            max_flows: u64::from(self.config.conntrack.max_flows.get()),
            half_open_evicted: self.tables.half_open_evicted(),
            nat_source_push_failures: self.tables.ports().push_failures(),
        }
    }

    /// Periodic upkeep: drop expired flows (freeing NAT ports) and release
    /// the ids of drained backends without flows.
    pub fn housekeeping(&mut self) {
        let expired = self.tables.expire_flows(monotonic_ns());
        if expired > 0 {
            tracing::debug!(expired, "expired idle flows");
        }
        self.tables.apply_pool_notes();
        if let Err(error) = self.tables.ports_mut().upkeep() {
            warn!(%error, "refilling the NAT port pools");
        }
        let census = self.census();
        match self.reconciler.release_drained(&mut self.tables, &census) {
            Ok(released) => {
                for b in released {
                    info!(addr = %b.addr, port = b.port, "drained backend has no flows left; released");
                }
            }
            Err(error) => warn!(%error, "releasing drained backends"),
        }
    }

    /// The backends that have a health check, with their checks.
    pub fn check_targets(&self) -> Vec<CheckTarget> {
        let effective = self.state.effective_backends(&self.config);
        let mut targets = Vec::new();
        for service in &self.config.services {
            for backend in effective.get(&service.name).into_iter().flatten() {
                if let Some(check) = service.check_for(backend.address, backend.port) {
                    targets.push(CheckTarget {
                        service: service.name.clone(),
                        addr: backend.address,
                        port: backend.port,
                        config: check.clone(),
                    });
                }
            }
        }
        targets
    }

    /// Creates trackers for newly checked backends (in their `start_as`
    /// state) and forgets those no longer checked.
    fn sync_health(&mut self, now: Instant) {
        let targets = self.check_targets();
        self.health.retain(|key, _| {
            targets
                .iter()
                .any(|t| (t.service.as_str(), t.addr, t.port) == (key.0.as_str(), key.1, key.2))
        });
        for t in targets {
            self.health
                .entry((t.service.clone(), t.addr, t.port))
                .and_modify(|entry| {
                    entry
                        .tracker
                        .set_thresholds(t.config.rise.get(), t.config.fall.get())
                })
                .or_insert_with(|| HealthEntry {
                    tracker: HealthTracker::new(
                        t.config.start_as == StartAs::Up,
                        t.config.rise.get(),
                        t.config.fall.get(),
                        now,
                    ),
                    last: None,
                });
        }
    }

    /// Takes one check result; on a transition rewrites the maps, applies
    /// `on_down` and runs the `on_change` hook. Returns whether the backend
    /// changed state.
    pub fn on_check(&mut self, report: CheckReport) -> bool {
        let key = (report.service.clone(), report.addr, report.port);
        let Some(entry) = self.health.get_mut(&key) else {
            return false;
        };
        let transition = entry.tracker.observe(report.outcome.ok, report.at);
        entry.last = Some(report.outcome.clone());
        let Some(transition) = transition else {
            return false;
        };
        let state = if transition.up { "up" } else { "down" };
        info!(
            service = %report.service,
            backend = %format!("{}:{}", report.addr, report.port),
            state,
            reason = %report.outcome.detail,
            "backend health changed"
        );
        if let Err(error) = self.apply() {
            warn!(%error, "applying a health change to the maps");
        }
        let Some(service) = self
            .config
            .services
            .iter()
            .find(|s| s.name == report.service)
        else {
            return true;
        };
        if !transition.up && service.on_down == OnDown::ShutdownFlows {
            let id = self
                .reconciler
                .service_by_name(&report.service)
                .and_then(|s| self.reconciler.find_backend(s.id, report.addr, report.port))
                .map(|b| b.id);
            if let Some(id) = id {
                let cut = self.tables.remove_flows(|flow| flow.backend_id == id);
                if let Err(error) = crate::reset::provoke_clients(&cut) {
                    warn!(%error, "cut flows' clients will notice on their next send");
                }
                info!(service = %report.service, flows = cut.len(), "on_down = shutdown-flows: cut the backend's flows");
            }
        }
        if let Some(hook) = service.on_change.clone() {
            run_hook(
                hook,
                report.service.clone(),
                format!("{}:{}", report.addr, report.port),
                state,
                report.outcome.detail.clone(),
            );
        }
        true
    }

    /// Whether a backend's weight is still ramping up (slow start), so the
    /// maps need rewriting as time passes.
    pub fn ramping(&self) -> bool {
        let now = Instant::now();
        self.config.services.iter().any(|service| {
            self.health.iter().any(|(key, h)| {
                key.0 == service.name && h.tracker.in_slow_start(service.slow_start, now)
            })
        })
    }

    /// VRRP tracking's view of the services: whether one has a backend up,
    /// asked of the shared agent. A poisoned agent state cannot tell; it
    /// then faults nothing.
    pub fn service_state(agent: &Arc<Mutex<Agent>>) -> ServiceState {
        let agent = agent.clone();
        Arc::new(move |name| {
            agent
                .lock()
                .map(|a| a.service_has_backend_up(name))
                .unwrap_or(true)
        })
    }

    /// Whether the service has a backend taking new connections (VRRP
    /// tracking puts the node in FAULT when it has none).
    pub fn service_has_backend_up(&self, name: &str) -> bool {
        self.reconciler.service_by_name(name).is_some_and(|s| {
            self.reconciler
                .backends_of(s.id)
                .any(|b| b.state == SlotState::Active)
        })
    }

    /// Every backend address in use (for neighbour resolution).
    pub fn backend_addresses(&self) -> Vec<Ipv4Addr> {
        let mut addrs: Vec<Ipv4Addr> = self
            .reconciler
            .services()
            .flat_map(|s| self.reconciler.backends_of(s.id).map(|b| b.addr))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        addrs
    }
}

/// Runs an `on_change` hook without waiting for it; kills it after
/// `HOOK_TIMEOUT`.
fn run_hook(
    command: String,
    service: String,
    backend: String,
    state: &'static str,
    reason: String,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        warn!("no async runtime to run the on_change hook");
        return;
    };
    runtime.spawn(async move {
        let env = [
            ("LB_SERVICE", service.as_str()),
            ("LB_BACKEND", backend.as_str()),
            ("LB_STATE", state),
            ("LB_REASON", reason.as_str()),
        ];
        let command = format!("{command} \"$@\"");
        let args = [service.as_str(), backend.as_str(), state];
        match crate::shell::run(&command, "on_change", &args, &env, Some(HOOK_TIMEOUT)).await {
            Ok(done) if done.success() => {}
            Ok(done) => warn!(%service, %backend, status = %done.status, output = %done.last_words(), "on_change hook failed"),
            Err(error) => warn!(%service, %backend, %error, "on_change hook"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TEST_CONFIG;

    #[test]
    fn a_reload_refused_for_a_restart_names_the_lines_of_the_fields() {
        let old = Config::parse(TEST_CONFIG, "lb.toml").expect("valid");
        let mut new = old.clone();
        new.conntrack.max_flows = crate::config::MaxFlows::new(131_072).expect("max_flows");
        new.node.private_interface = "eth1".into();
        let text = new.to_toml().expect("serializes");
        let error = AgentError::NeedsRestart {
            fields: restart_only_changes(&old, &new),
        };
        let line = |prefix: &str| {
            text.lines()
                .position(|l| l.starts_with(prefix))
                .expect("line")
                + 1
        };
        let message = error.located("lb.toml", &text);
        assert!(
            message.starts_with(&format!(
                "lb.toml:{}: changed node.private_interface (",
                line("private_interface")
            )),
            "{message}"
        );
        assert!(
            message.contains(&format!(
                "\nlb.toml:{}: changed conntrack.max_flows (",
                line("max_flows")
            )),
            "{message}"
        );
        assert!(message.ends_with("(nothing was changed)"), "{message}");
    }
}
