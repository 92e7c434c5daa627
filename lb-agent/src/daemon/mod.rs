//! `lb-agent run`: prepares the node, loads (or adopts) the data plane,
//! applies the wanted state, then serves the control API and does upkeep
//! until SIGINT/SIGTERM.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use lb_common::half_open_per_cpu;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    agent::Agent,
    config::{Config, XdpMode},
    control::{
        protocol::{NodeStatus, Reply, Request, Response, ServiceBackend, STATUS_SCHEMA},
        server::{bind, ensure_not_running, serve, ControlHandler, ServeLimits},
        socket_path,
    },
    dataplane::{
        clock,
        loader::{interface_index, interface_ipv4_addresses, interface_mac},
        port_pools::SlotLayout,
        Dataplane, LoadOptions, XdpAttachMode, LB_OBJECT,
    },
    health::HealthScheduler,
    limits::{self, ConnectionCaps, Throttle},
    metrics::{self, Snapshot},
    neighbors::NeighborKeeper,
    ports,
    state::RuntimeState,
    vrrp::{
        instance::{PreparedVrrp, VrrpContext, VrrpInstance},
        runner::SharedStatus,
    },
};

/// How often expired flows are collected and drained backends released.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(2);
/// How often backend next hops are checked in the neighbour table (and
/// the set of health-checked backends is brought up to date).
const NEIGHBOR_INTERVAL: Duration = Duration::from_secs(1);
/// How often next hops the data path found unresolved are resolved. Short:
/// a packet that met an unresolved next hop was dropped, and the first
/// connections after a failover meet the clients' (or their router's)
/// unresolved entries on the new master. An empty map costs one syscall.
const NEIGH_MISS_INTERVAL: Duration = Duration::from_millis(10);
/// Most health probes in flight at once.
const MAX_CONCURRENT_CHECKS: usize = 64;

/// Options of `lb-agent run` besides the config file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub instance: String,
    pub config_path: PathBuf,
    /// Leave the program attached and maps pinned on exit.
    pub keep_forwarding: bool,
    /// BPF filesystem root (tests may point elsewhere).
    pub bpffs: PathBuf,
}

/// A reload request and where its outcome goes.
type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

struct Handler {
    agent: Arc<Mutex<Agent>>,
    instance: String,
    vrrp: Option<SharedStatus>,
    reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
}

impl Handler {
    /// Runs on a blocking thread (the control server's), so it may wait.
    fn reload(&self) -> Response {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.reloads.blocking_send(tx).is_err() {
            return Response::Error {
                message: "the agent is stopping; nothing was reloaded".into(),
            };
        }
        match rx.blocking_recv() {
            Ok(Ok(message)) => Response::Ok(Reply::Changed { message }),
            Ok(Err(message)) => Response::Error { message },
            Err(_) => Response::Error {
                message: "the reload was interrupted by the agent stopping".into(),
            },
        }
    }
}

/// Re-reads `path` and applies it: services, backends, health checks and
/// timeouts to the maps; changed `[vrrp]` settings by replacing the VRRP
/// instance (the floating IP stays where it is). An invalid file, or one
/// that changes what needs a restart, changes nothing.
async fn reload(
    path: &Path,
    agent: &Arc<Mutex<Agent>>,
    vrrp: &mut Option<VrrpInstance>,
    context: Option<&VrrpContext>,
) -> Result<String, String> {
    let shown = path.display().to_string();
    let text = crate::config::read_text(path)
        .map_err(|error| format!("{error}\nthe running config stays"))?;
    let new = Config::parse(&text, &shown)
        .map_err(|error| format!("{error}\nthe running config stays"))?;
    hide_secrets(&new);
    let running = vrrp.as_ref().map(|v| v.config.clone());
    let prepared = match (&new.vrrp, &running, context) {
        (new_vrrp, running, _) if new_vrrp == running => None,
        (Some(new_vrrp), Some(_), Some(context)) => Some(
            PreparedVrrp::new(context, new_vrrp)
                .map_err(|error| format!("[vrrp]: {error:#}; nothing was changed"))?,
        ),
        _ => {
            return Err(format!(
                "{}: adding or removing [vrrp] needs a restart of the agent (nothing was changed)",
                path.display()
            ))
        }
    };
    let summary = {
        let Some(mut agent) = lock(agent) else {
            return Err("agent state is poisoned by an earlier panic; restart the agent".into());
        };
        agent.reload(new).map_err(|error| {
            let message = error.located(&shown, &text);
            warn!(config = %shown, error = %message, "reload refused");
            message
        })?
    };
    if let Some(prepared) = prepared {
        if let Some(old) = vrrp.take() {
            old.handover().await;
        }
        let started = prepared.start().await.map_err(|error| {
            error!(%error, "the reloaded VRRP instance did not start; VRRP is stopped until the agent restarts");
            format!("[vrrp]: {error:#}; the config was applied but VRRP is stopped: restart the agent")
        })?;
        *vrrp = Some(started);
        info!("VRRP instance restarted with the new settings");
    }
    info!(config = %path.display(), changes = %summary, "config reloaded");
    Ok(format!("reloaded {}: {summary}", path.display()))
}

impl ControlHandler for Handler {
    fn handle(&self, request: Request) -> Response {
        let Ok(mut agent) = self.agent.lock() else {
            return Response::Error {
                message: "agent state is poisoned by an earlier panic; restart the agent".into(),
            };
        };
        let result = match request {
            Request::ServicesList => Ok(Reply::Services(agent.list_services())),
            Request::BackendsList { service } => agent.list_backends(&service).map(Reply::Backends),
            Request::BackendsAdd {
                service,
                address,
                port,
                weight,
            } => agent
                .add_backend(&service, address, port, weight)
                .map(|message| Reply::Changed { message }),
            Request::BackendsRemove {
                service,
                address,
                port,
                now,
            } => agent
                .remove_backend(&service, address, port, now)
                .map(|message| Reply::Changed { message }),
            Request::BackendsDrain {
                service,
                address,
                port,
            } => agent
                .drain_backend(&service, address, port)
                .map(|message| Reply::Changed { message }),
            Request::Stats => Ok(Reply::Stats(agent.stats())),
            Request::Reload => {
                // The reloader takes the agent's lock itself.
                drop(agent);
                return self.reload();
            }
            Request::Status => {
                let stats = agent.stats();
                Ok(Reply::Status(Box::new(NodeStatus {
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
                })))
            }
        };
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(error) => Response::Error {
                message: error.to_string(),
            },
        }
    }
}

fn attach_mode(mode: XdpMode) -> XdpAttachMode {
    match mode {
        XdpMode::Auto => XdpAttachMode::Auto,
        XdpMode::Native => XdpAttachMode::Native,
        XdpMode::Generic => XdpAttachMode::Generic,
    }
}

/// `bpf_fib_lookup` answers only for interfaces with IPv4 forwarding on.
fn enable_forwarding(interface: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/forwarding");
    std::fs::write(&path, "1").with_context(|| format!("enabling forwarding: write 1 to {path}"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            warn!(%error, "cannot watch SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
    }
}

/// Keeps the configured API token variable out of children's
/// environments, whichever provider is in use: the token may sit in the
/// agent's environment (packaging's `EnvironmentFile`) all the same.
fn hide_secrets(config: &Config) {
    if let Some(vrrp) = &config.vrrp {
        crate::shell::hide_from_children(&vrrp.floating_ip.token_env);
    }
}

/// Runs the agent until a shutdown signal.
pub async fn run(options: RunOptions) -> Result<()> {
    let config = Config::load(&options.config_path)?;
    let nofile = limits::raise_nofile_limit();
    let caps = ConnectionCaps::for_limit(nofile);
    info!(
        open_files = nofile,
        control_connections = caps.control,
        metrics_connections = caps.metrics,
        "descriptor limit and connection caps"
    );
    hide_secrets(&config);
    let node = &config.node;
    let interfaces = vec![
        node.public_interface.clone(),
        node.private_interface.clone(),
    ];
    for interface in &interfaces {
        if interface_index(interface).is_none() {
            anyhow::bail!(
                "interface {interface} from {} does not exist on this node (see `ip link`); fix node.public_interface / node.private_interface",
                options.config_path.display()
            );
        }
    }

    // Refuse early if another agent runs this instance, before anything
    // touches its data plane. The socket itself is bound only once the
    // program is attached: its appearance tells scripts the node forwards.
    let socket = socket_path(&options.instance);
    ensure_not_running(&socket).await?;

    let held = interface_ipv4_addresses(&node.private_interface);
    if let Some(missing) = config
        .snat_addresses()
        .into_iter()
        .find(|a| !held.contains(a))
    {
        anyhow::bail!(
            "SNAT address {missing} (node.snat_addresses in {}) is not on {}: backends could not reach it; \
             add it (`ip addr add {missing}/32 dev {}`) or take it out of the pool",
            options.config_path.display(),
            node.private_interface,
            node.private_interface
        );
    }
    let nat_ports = ports::reserve_nat_range(node.port_range[0], node.port_range[1])
        .context("preparing the NAT source port range")?;
    let snat_layout = SlotLayout::new(config.snat_addresses(), nat_ports);
    info!(
        addresses = snat_layout.addresses().len(),
        ports = snat_layout.ports(),
        per_backend = snat_layout.capacity(),
        "NAT sources per backend: SNAT addresses x ports"
    );
    for interface in &interfaces {
        enable_forwarding(interface)?;
    }

    let state_path = RuntimeState::path(&node.state_dir, &options.instance);
    let state = RuntimeState::load(&state_path, &config)?;

    let load = LoadOptions {
        instance: options.instance.clone(),
        interfaces: interfaces.clone(),
        mode: attach_mode(node.xdp_mode),
        max_flows: config.conntrack.max_flows,
        bpffs: options.bpffs.clone(),
    };
    let mut dataplane = Dataplane::load(&load, LB_OBJECT)?;
    let mut tables = dataplane.tables()?;
    let mut settings = config.to_settings();
    settings.public_mac = interface_mac(&node.public_interface).unwrap_or_default();
    settings.private_mac = interface_mac(&node.private_interface).unwrap_or_default();
    settings.half_open_per_cpu = half_open_per_cpu(
        config.conntrack.max_flows,
        snat_layout.capacity(),
        aya::util::nr_cpus().map_or(1, |n| n as u32),
    );
    match tokio::task::spawn_blocking(clock::calibrate)
        .await
        .context("calibrating the XDP clock")?
    {
        Ok(tick_clock) => {
            tick_clock.apply(&mut settings);
            info!(
                hz = tick_clock.hz,
                "XDP clock calibrated on the kernel tick"
            );
        }
        Err(error) => warn!(
            %error,
            "XDP clock not calibrated; the program reads the kernel clock per packet (slower)"
        ),
    }
    tables.ports_mut().adopt(snat_layout)?;
    tables.write_settings(settings)?;
    let ifindexes: Vec<u32> = interfaces
        .iter()
        .filter_map(|i| interface_index(i))
        .collect();
    tables.set_tx_ports(&ifindexes)?;
    let keep_forwarding = options.keep_forwarding || node.keep_forwarding_on_exit;
    let private_address = node.private_address;
    let private_interface = node.private_interface.clone();
    let public_interface = node.public_interface.clone();
    let vrrp_config = config.vrrp.clone();
    let metrics_config = config.metrics.clone();
    let mut vips: Vec<Ipv4Addr> = config.services.iter().map(|s| s.vip).collect();
    vips.sort_unstable();
    vips.dedup();
    let agent = Agent::new(config, state, state_path, tables)?;
    let agent = Arc::new(Mutex::new(agent));

    // Resolve backends before attaching, so first packets find their MACs.
    let neighbors = NeighborKeeper::new()?;
    let backends = lock(&agent)
        .map(|a| a.backend_addresses())
        .unwrap_or_default();
    neighbors.resolve_now(&backends, 20).await;

    let metrics_listener = match &metrics_config {
        Some(metrics) => Some(metrics::bind(metrics.listen).await?),
        None => None,
    };
    dataplane.attach()?;
    info!(instance = %options.instance, adopted = dataplane.adopted, "forwarding");

    let (stop_tx, stop_rx) = watch::channel(false);

    // High availability: the VRRP instance moves the floating IP.
    let vrrp_context = vrrp_config.as_ref().map(|_| VrrpContext {
        instance: options.instance.clone(),
        private_address,
        private_interface: private_interface.clone(),
        public_interface: public_interface.clone(),
        interfaces: interfaces.clone(),
        vips: vips.clone(),
        services: Agent::service_state(&agent),
        status: SharedStatus::default(),
    });
    let vrrp_status = vrrp_context.as_ref().map(|c| c.status.clone());
    let mut vrrp_instance = match (&vrrp_config, &vrrp_context) {
        (Some(vrrp), Some(context)) => Some(PreparedVrrp::new(context, vrrp)?.start().await?),
        _ => None,
    };

    let metrics = match metrics_listener {
        Some(listener) => {
            let (agent, instance) = (agent.clone(), options.instance.clone());
            let vrrp = vrrp_status.clone();
            let source: metrics::SnapshotSource = Arc::new(move || {
                let stats = lock(&agent)?.stats();
                let vrrp = vrrp.as_ref().map(SharedStatus::snapshot);
                Some(Snapshot {
                    instance: instance.clone(),
                    stats,
                    vrrp,
                })
            });
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(metrics::serve(
                listener,
                source,
                caps.metrics,
                async move {
                    let _ = stop.changed().await;
                },
            )))
        }
        None => None,
    };

    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let listener = bind(&socket).await?;
    let server = {
        let handler = Arc::new(Handler {
            agent: agent.clone(),
            instance: options.instance.clone(),
            vrrp: vrrp_status,
            reloads: reload_tx,
        });
        let mut stop = stop_rx.clone();
        tokio::spawn(serve(
            listener,
            handler,
            ServeLimits::new(caps.control),
            async move {
                let _ = stop.changed().await;
            },
        ))
    };
    let (report_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let mut checks = HealthScheduler::new(private_address, MAX_CONCURRENT_CHECKS, report_tx);
    if let Some(a) = lock(&agent) {
        checks.sync(&a.check_targets());
    }
    let upkeep = {
        let agent = agent.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            let mut neighbor_tick = tokio::time::interval(NEIGHBOR_INTERVAL);
            let mut miss_tick = tokio::time::interval(NEIGH_MISS_INTERVAL);
            // Netlink trouble repeats on every pass (every 10 ms for misses).
            let mut miss_errors = Throttle::new(limits::LOG_INTERVAL);
            let mut upkeep_errors = Throttle::new(limits::LOG_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    Some(report) = reports.recv() => {
                        if let Some(mut a) = lock(&agent) { a.on_check(report); }
                    }
                    _ = housekeeping.tick() => {
                        if let Some(mut a) = lock(&agent) {
                            a.housekeeping();
                            if a.ramping() {
                                if let Err(error) = a.apply() {
                                    warn!(%error, "slow start: rewriting the schedule");
                                }
                            }
                        }
                    }
                    _ = miss_tick.tick() => {
                        let misses = lock(&agent).map(|mut a| a.tables().take_neigh_misses()).unwrap_or_default();
                        if !misses.is_empty() {
                            if let Err(error) = neighbors.ensure(&misses).await {
                                if let Some(suppressed) = miss_errors.ready(std::time::Instant::now()) {
                                    warn!(%error, suppressed, "resolving next hops the data path missed");
                                }
                            }
                        }
                    }
                    _ = neighbor_tick.tick() => {
                        if let Some(targets) = lock(&agent).map(|a| a.check_targets()) {
                            checks.sync(&targets);
                        }
                        let addrs: Vec<Ipv4Addr> = lock(&agent).map(|a| a.backend_addresses()).unwrap_or_default();
                        if let Err(error) = neighbors.ensure(&addrs).await {
                            if let Some(suppressed) = upkeep_errors.ready(std::time::Instant::now()) {
                                warn!(%error, suppressed, "neighbour upkeep");
                            }
                        }
                    }
                }
            }
        })
    };

    // Reloads (SIGHUP and `lb-agent reload`) run one at a time here; this
    // task owns the VRRP instance, which a reload may replace.
    let reloader = {
        let (agent, path) = (agent.clone(), options.config_path.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hangup = match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(error) => {
                    warn!(%error, "cannot watch SIGHUP; use `lb-agent reload`");
                    None
                }
            };
            loop {
                let reply = tokio::select! {
                    _ = stop.changed() => break,
                    Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        info!("SIGHUP received: reloading the config");
                        None
                    }
                    Some(reply) = reload_rx.recv() => Some(reply),
                };
                let outcome =
                    reload(&path, &agent, &mut vrrp_instance, vrrp_context.as_ref()).await;
                if let Err(message) = &outcome {
                    warn!("reload failed: {message}");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            // Resign and release the floating IP before the data path goes.
            if let Some(instance) = vrrp_instance.take() {
                instance.shutdown().await;
            }
        })
    };

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    // The reloader shuts the VRRP instance down (resign, release).
    let _ = reloader.await;
    let _ = server.await;
    let _ = upkeep.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    let _ = std::fs::remove_file(&socket);

    if keep_forwarding {
        // The pins hold program, links and maps; dropping our handles keeps them.
        info!("keeping the XDP program attached and maps pinned (keep-forwarding)");
        drop(dataplane);
    } else {
        dataplane.detach_and_unpin()?;
        info!("detached and unpinned; bye");
    }
    Ok(())
}

fn lock(agent: &Arc<Mutex<Agent>>) -> Option<std::sync::MutexGuard<'_, Agent>> {
    match agent.lock() {
        Ok(guard) => Some(guard),
        Err(_) => {
            error!("agent state poisoned by a panic");
            None
        }
    }
}
