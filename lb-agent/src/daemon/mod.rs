//! `lb-agent run`: prepares the node, loads (or adopts) the data plane,
//! applies the wanted state, then serves the control API and does upkeep
//! until SIGINT/SIGTERM.

mod control;
mod reload;

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_common::half_open_per_cpu;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use self::{
    control::Handler,
    reload::{ReloadRequest, Reloader},
};
use crate::{
    agent::Agent,
    config::{Config, NodeConfig, SyncConfig, VrrpConfig, XdpMode},
    control::{
        protocol::SnatStatus,
        server::{bind, ensure_not_running, serve, ServeLimits},
        socket_path,
    },
    dataplane::{
        clock,
        loader::{interface_index, interface_ipv4_addresses, interface_mac},
        port_pools::SlotLayout,
        settings::{kernel_settings, RunFacts},
        Dataplane, LoadOptions, XdpAttachMode, LB_OBJECT,
    },
    health::{CheckTarget, HealthScheduler},
    limits::{self, ConnectionCaps, Throttle},
    metrics::{self, Snapshot},
    neighbors::NeighborKeeper,
    ports::{self, PortSlice},
    state::RuntimeState,
    sync::{self, SyncStatus},
    vrrp::{
        instance::{PreparedVrrp, VrrpContext},
        runner::SharedStatus,
    },
};

/// How often expired flows are collected and drained backends released.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(2);
/// How often backend next hops are checked in the neighbour table.
const NEIGHBOR_INTERVAL: Duration = Duration::from_secs(1);
/// How often next hops the data path found unresolved are resolved. Short:
/// a packet that met an unresolved next hop was dropped, and the first
/// connections after a failover meet the clients' (or their router's)
/// unresolved entries on the new master. An empty map costs one syscall.
const NEIGH_MISS_INTERVAL: Duration = Duration::from_millis(10);
/// Most health probes in flight at once.
const MAX_CONCURRENT_CHECKS: usize = 64;
/// Rounds of resolving backends' next hops before the program is attached.
const RESOLVE_ROUNDS_BEFORE_ATTACH: u32 = 20;

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

/// Runs the agent until a shutdown signal.
pub async fn run(options: RunOptions) -> Result<()> {
    let config = Config::load(&options.config_path)?;
    let caps = connection_caps();
    hide_secrets(&config);
    let snat = prepare_node(&config, &options).await?;
    let vrrp_config = config.vrrp.clone();
    let sync_config = config.sync.clone();
    let metrics_listen = config.metrics.as_ref().map(|m| m.listen);
    let vips = service_vips(&config);

    let mut daemon = Daemon::load(options, config, snat, caps).await?;
    // Resolve backends before attaching, so first packets find their MACs.
    let neighbors = NeighborKeeper::new()?;
    let backends = daemon.agent().map(|a| a.backend_addresses());
    neighbors
        .resolve_now(&backends.unwrap_or_default(), RESOLVE_ROUNDS_BEFORE_ATTACH)
        .await;
    // Bound before attaching, so a busy port stops the start cleanly.
    let metrics_listener = match metrics_listen {
        Some(listen) => Some(metrics::bind(listen).await?),
        None => None,
    };
    daemon.attach()?;

    let may_lead = match (&sync_config, &vrrp_config) {
        (Some(sync), Some(vrrp)) => {
            let own_sources =
                SlotLayout::new(daemon.snat.addresses.clone(), daemon.snat.ports.clone());
            daemon.start_sync(sync, vrrp, own_sources).await?
        }
        _ => watch::channel(true).1,
    };
    let reloader = daemon.start_vrrp(vrrp_config, vips, may_lead).await?;
    if let Some(listener) = metrics_listener {
        daemon.spawn_metrics(listener);
    }
    let (reloads, reload_requests) = mpsc::channel(4);
    daemon.spawn_control_server(reloads.clone()).await?;
    daemon.spawn_health();
    daemon.spawn_housekeeping();
    daemon.spawn_neighbours(neighbors);
    daemon.spawn_reload_handling(reloader, reload_requests);
    daemon.spawn_hangup_handling(reloads);

    shutdown_signal().await;
    daemon.stop().await
}

/// The running agent: its data plane, its state and the tasks that serve
/// and maintain them until the agent stops.
struct Daemon {
    options: RunOptions,
    /// The `[node]` settings, which only a restart changes.
    node: NodeConfig,
    dataplane: Dataplane,
    /// The NAT sources, as found at start.
    snat: SnatStatus,
    agent: Arc<Mutex<Agent>>,
    caps: ConnectionCaps,
    vrrp_status: Option<SharedStatus>,
    sync_status: Option<watch::Receiver<SyncStatus>>,
    check_targets: CheckTargetsFeed,
    check_targets_seen: watch::Receiver<Vec<CheckTarget>>,
    stop: watch::Sender<bool>,
    /// Awaited in order on stop.
    tasks: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Loads (or adopts) the data plane and brings its maps to the config
    /// and the persisted run-time changes; nothing is attached yet.
    async fn load(
        options: RunOptions,
        config: Config,
        snat: SnatStatus,
        caps: ConnectionCaps,
    ) -> Result<Self> {
        let snat_layout = SlotLayout::new(snat.addresses.clone(), snat.ports.clone());
        let node = config.node.clone();
        let state_path = RuntimeState::path(&node.state_dir, &options.instance);
        let state = RuntimeState::load(&state_path, &config)?;
        let load = LoadOptions {
            instance: options.instance.clone(),
            interfaces: interfaces(&node),
            mode: attach_mode(node.xdp_mode),
            max_flows: config.conntrack.max_flows.get(),
            bpffs: options.bpffs.clone(),
        };
        let mut dataplane = Dataplane::load(&load, LB_OBJECT)?;
        let mut tables = dataplane.tables()?;
        let facts = run_facts(
            &node,
            config.conntrack.max_flows.get(),
            snat_layout.capacity(),
        )
        .await?;
        tables.ports_mut().adopt(snat_layout)?;
        if dataplane.legacy_replies {
            // Before the new program replaces the old one in the links, so
            // that it finds every live flow's NAT source claimed.
            let flows = tables.restore_reply_entries()?;
            dataplane.drop_legacy_replies()?;
            info!(
                flows,
                "carried the flows of an earlier version over into the reply tables"
            );
        }
        tables.write_settings(kernel_settings(&config, &facts))?;
        // The program ran on while no agent did; copies it cached of flows
        // this start rewrote (or a peer's transfer will) must not serve.
        tables.end_flow_cache_copies();
        let ifindexes: Vec<u32> = load
            .interfaces
            .iter()
            .filter_map(|i| interface_index(i))
            .collect();
        tables.set_tx_ports(&ifindexes)?;
        let agent = Agent::new(config, state, state_path, tables)?;
        let (check_targets, check_targets_seen) = CheckTargetsFeed::new(&agent);
        Ok(Self {
            options,
            node,
            dataplane,
            snat,
            agent: Arc::new(Mutex::new(agent)),
            caps,
            vrrp_status: None,
            sync_status: None,
            check_targets,
            check_targets_seen,
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        })
    }

    fn agent(&self) -> Option<MutexGuard<'_, Agent>> {
        lock(&self.agent)
    }

    fn attach(&mut self) -> Result<()> {
        self.dataplane.attach()?;
        info!(instance = %self.options.instance, adopted = self.dataplane.adopted, "forwarding");
        Ok(())
    }

    /// Resolves when the agent stops.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.changed().await;
        }
    }

    /// High availability: starts the VRRP instance, which moves the
    /// floating IP. The reloader owns it, as a reload may replace it.
    async fn start_vrrp(
        &mut self,
        config: Option<VrrpConfig>,
        vips: Vec<Ipv4Addr>,
        may_lead: watch::Receiver<bool>,
    ) -> Result<Reloader> {
        let mut reloader = Reloader {
            path: self.options.config_path.clone(),
            agent: self.agent.clone(),
            check_targets: self.check_targets.clone(),
            vrrp: None,
            vrrp_context: None,
        };
        let Some(config) = config else {
            return Ok(reloader);
        };
        let node = &self.node;
        let context = VrrpContext {
            instance: self.options.instance.clone(),
            private_address: node.private_address,
            private_interface: node.private_interface.clone(),
            public_interface: node.public_interface.clone(),
            interfaces: interfaces(node),
            vips,
            services: Agent::service_state(&self.agent),
            status: SharedStatus::default(),
            may_lead,
            pin_dir: self.dataplane.pin_dir().to_path_buf(),
        };
        reloader.vrrp = Some(PreparedVrrp::new(&context, &config)?.start().await?);
        self.vrrp_status = Some(context.status.clone());
        reloader.vrrp_context = Some(context);
        Ok(reloader)
    }

    /// Flow sync with the VRRP peer; returns whether this node may take
    /// mastership yet (it waits for the peer's flows).
    async fn start_sync(
        &mut self,
        config: &SyncConfig,
        vrrp: &VrrpConfig,
        own_sources: SlotLayout,
    ) -> Result<watch::Receiver<bool>> {
        let place = sync::SyncPlace {
            private_address: vrrp.unicast_src.unwrap_or(self.node.private_address),
            unicast_peers: &vrrp.unicast_peers,
            pin_dir: self.dataplane.pin_dir(),
            layout: own_sources,
        };
        let handle = sync::start(config, place, self.stop.subscribe()).await?;
        if let Some(mut agent) = self.agent() {
            agent.tables().feed_removals(handle.removals);
            agent.tables().take_pool_notes(handle.pool_notes);
        }
        self.sync_status = Some(handle.status);
        self.tasks.push(handle.task);
        Ok(handle.may_lead)
    }

    fn spawn_metrics(&mut self, listener: TcpListener) {
        let (agent, instance) = (self.agent.clone(), self.options.instance.clone());
        let vrrp = self.vrrp_status.clone();
        let sync = self.sync_status.clone();
        let source: metrics::SnapshotSource = Arc::new(move || {
            Some(Snapshot {
                instance: instance.clone(),
                stats: lock(&agent)?.stats(),
                vrrp: vrrp.as_ref().map(SharedStatus::snapshot),
                sync: sync.as_ref().map(|s| s.borrow().clone()),
            })
        });
        let stopped = self.stopped();
        let served = metrics::serve(listener, source, self.caps.metrics, stopped);
        self.tasks.push(tokio::spawn(served));
    }

    /// Binds the control socket: its appearance tells scripts the node
    /// forwards.
    async fn spawn_control_server(&mut self, reloads: mpsc::Sender<ReloadRequest>) -> Result<()> {
        let listener = bind(&socket_path(&self.options.instance)).await?;
        let handler = Arc::new(Handler {
            agent: self.agent.clone(),
            instance: self.options.instance.clone(),
            vrrp: self.vrrp_status.clone(),
            sync: self.sync_status.clone(),
            snat: self.snat.clone(),
            reloads,
            check_targets: self.check_targets.clone(),
        });
        let limits = ServeLimits::new(self.caps.control);
        let served = serve(listener, handler, limits, self.stopped());
        self.tasks.push(tokio::spawn(served));
        Ok(())
    }

    /// Runs the health checks of the backends the agent publishes, and
    /// hands their results to the agent.
    fn spawn_health(&mut self) {
        let (reports_tx, mut reports) = mpsc::unbounded_channel();
        let mut checks =
            HealthScheduler::new(self.node.private_address, MAX_CONCURRENT_CHECKS, reports_tx);
        let mut targets = self.check_targets_seen.clone();
        let agent = self.agent.clone();
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(async move {
            tokio::pin!(stopped);
            let wanted = targets.borrow_and_update().clone();
            checks.sync(&wanted);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    Ok(()) = targets.changed() => {
                        let wanted = targets.borrow_and_update().clone();
                        checks.sync(&wanted);
                    }
                    Some(report) = reports.recv() => {
                        if let Some(mut agent) = lock(&agent) {
                            agent.on_check(report);
                        }
                    }
                }
            }
        }));
    }

    /// Collects expired flows, releases drained backends and advances
    /// slow starts.
    fn spawn_housekeeping(&mut self) {
        let agent = self.agent.clone();
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(async move {
            tokio::pin!(stopped);
            let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = housekeeping.tick() => {
                        if let Some(mut agent) = lock(&agent) {
                            housekeep(&mut agent);
                        }
                    }
                }
            }
        }));
    }

    /// Keeps the next hops of backends, and of those the data path missed,
    /// resolved.
    fn spawn_neighbours(&mut self, neighbors: NeighborKeeper) {
        let agent = self.agent.clone();
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(async move {
            tokio::pin!(stopped);
            let mut backends_tick = tokio::time::interval(NEIGHBOR_INTERVAL);
            let mut misses_tick = tokio::time::interval(NEIGH_MISS_INTERVAL);
            // Netlink trouble repeats on every pass (every 10 ms for misses).
            let mut miss_errors = Throttle::new(limits::LOG_INTERVAL);
            let mut backend_errors = Throttle::new(limits::LOG_INTERVAL);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = misses_tick.tick() => {
                        let misses = lock(&agent).map(|mut a| a.tables().take_neigh_misses());
                        let misses = misses.unwrap_or_default();
                        if misses.is_empty() {
                            continue;
                        }
                        if let Err(error) = neighbors.ensure(&misses).await {
                            if let Some(suppressed) = miss_errors.ready(Instant::now()) {
                                warn!(%error, suppressed, "resolving next hops the data path missed");
                            }
                        }
                    }
                    _ = backends_tick.tick() => {
                        let backends = lock(&agent).map(|a| a.backend_addresses());
                        if let Err(error) = neighbors.ensure(&backends.unwrap_or_default()).await {
                            if let Some(suppressed) = backend_errors.ready(Instant::now()) {
                                warn!(%error, suppressed, "neighbour upkeep");
                            }
                        }
                    }
                }
            }
        }));
    }

    /// Runs reloads one at a time; on stop, shuts the VRRP instance down
    /// (resign, release) before the data path goes.
    fn spawn_reload_handling(
        &mut self,
        mut reloader: Reloader,
        mut requests: mpsc::Receiver<ReloadRequest>,
    ) {
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(async move {
            tokio::pin!(stopped);
            loop {
                let request = tokio::select! {
                    _ = &mut stopped => break,
                    Some(request) = requests.recv() => request,
                };
                let outcome = reloader.reload().await;
                if let Err(message) = &outcome {
                    warn!("reload failed: {message}");
                }
                if let Some(reply) = request.reply {
                    let _ = reply.send(outcome);
                }
            }
            reloader.shutdown().await;
        }));
    }

    /// SIGHUP reloads the config, as `lb-agent reload` does.
    fn spawn_hangup_handling(&mut self, reloads: mpsc::Sender<ReloadRequest>) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(error) => {
                warn!(%error, "cannot watch SIGHUP; use `lb-agent reload`");
                return;
            }
        };
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(async move {
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    Some(()) = hangup.recv() => {
                        info!("SIGHUP received: reloading the config");
                        if reloads.send(ReloadRequest { reply: None }).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }

    /// Stops every task, then detaches and unpins, or leaves the program
    /// forwarding (keep-forwarding).
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = std::fs::remove_file(socket_path(&self.options.instance));
        if self.options.keep_forwarding || self.node.keep_forwarding_on_exit {
            // The pins hold program, links and maps; dropping our handles keeps them.
            info!("keeping the XDP program attached and maps pinned (keep-forwarding)");
            drop(self.dataplane);
        } else {
            self.dataplane.detach_and_unpin()?;
            info!("detached and unpinned; bye");
        }
        Ok(())
    }
}

/// One housekeeping pass; a slow start in progress rewrites the schedule.
fn housekeep(agent: &mut Agent) {
    agent.housekeeping();
    if agent.ramping() {
        if let Err(error) = agent.apply() {
            warn!(%error, "slow start: rewriting the schedule");
        }
    }
}

/// Pushes the health-checked backends to the health task whenever they may
/// have changed: backends added or removed, reloads.
#[derive(Clone)]
struct CheckTargetsFeed(Arc<watch::Sender<Vec<CheckTarget>>>);

impl CheckTargetsFeed {
    fn new(agent: &Agent) -> (Self, watch::Receiver<Vec<CheckTarget>>) {
        let (sender, receiver) = watch::channel(agent.check_targets());
        (Self(Arc::new(sender)), receiver)
    }

    /// Sends the agent's targets if they differ from the last sent.
    fn publish(&self, agent: &Agent) {
        let targets = agent.check_targets();
        self.0.send_if_modified(|current| {
            let changed = *current != targets;
            if changed {
                *current = targets;
            }
            changed
        });
    }
}

/// Raises the descriptor limit and sizes the connection caps by it.
fn connection_caps() -> ConnectionCaps {
    let nofile = limits::raise_nofile_limit();
    let caps = ConnectionCaps::for_limit(nofile);
    info!(
        open_files = nofile,
        control_connections = caps.control,
        metrics_connections = caps.metrics,
        "descriptor limit and connection caps"
    );
    caps
}

/// Checks the node is ready for `config` and prepares it: interfaces and
/// SNAT addresses present, no other agent on this instance, NAT ports
/// reserved, forwarding on. Returns the NAT sources per backend.
async fn prepare_node(config: &Config, options: &RunOptions) -> Result<SnatStatus> {
    let node = &config.node;
    let shown = options.config_path.display();
    for interface in interfaces(node) {
        if interface_index(&interface).is_none() {
            anyhow::bail!(
                "interface {interface} from {shown} does not exist on this node (see `ip link`); fix node.public_interface / node.private_interface"
            );
        }
    }
    // Refuse early if another agent runs this instance, before anything
    // touches its data plane. The socket itself is bound only once the
    // program is attached.
    ensure_not_running(&socket_path(&options.instance)).await?;
    let floating = !config.floating_snat_addresses().is_empty();
    // Floating addresses are the VRRP master's to add.
    if !floating {
        require_snat_addresses(config, &shown.to_string())?;
    }
    // The whole range is reserved: the peer's slice comes here with its
    // flows after a failover.
    let nat_ports = ports::reserve_nat_range(node.port_range.first(), node.port_range.last())
        .context("preparing the NAT source port range")?;
    let port_slice = PortSlice::of(config);
    let snat = SnatStatus {
        addresses: config.snat_addresses(),
        floating,
        port_slice,
        ports: port_slice.apply(&nat_ports),
    };
    let layout = SlotLayout::new(snat.addresses.clone(), snat.ports.clone());
    info!(
        addresses = layout.addresses().len(),
        floating,
        port_slice = port_slice.as_str(),
        ports = layout.ports(),
        per_backend = layout.capacity(),
        "NAT sources per backend: SNAT addresses x ports"
    );
    for interface in interfaces(node) {
        enable_forwarding(&interface)?;
    }
    Ok(snat)
}

/// Refuses to start when one of this node's own SNAT addresses is not on
/// the private interface (`shown`: the config file).
fn require_snat_addresses(config: &Config, shown: &str) -> Result<()> {
    let interface = &config.node.private_interface;
    let held = interface_ipv4_addresses(interface);
    if let Some(missing) = config.snat_addresses().iter().find(|a| !held.contains(a)) {
        anyhow::bail!(
            "SNAT address {missing} (node.snat_addresses in {shown}) is not on {interface}: backends could not reach it; \
             add it (`ip addr add {missing}/32 dev {interface}`) or take it out of the pool"
        );
    }
    Ok(())
}

/// This node's facts for the program's settings: the interfaces' MACs,
/// the half-open share of `max_flows`, the clock calibrated on the kernel
/// tick.
async fn run_facts(node: &NodeConfig, max_flows: u32, pool_capacity: u32) -> Result<RunFacts> {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n as u32);
    let facts = RunFacts {
        public_mac: interface_mac(&node.public_interface).unwrap_or_default(),
        private_mac: interface_mac(&node.private_interface).unwrap_or_default(),
        half_open_per_cpu: half_open_per_cpu(max_flows, pool_capacity, cpus),
        ..RunFacts::default()
    };
    let calibrated = tokio::task::spawn_blocking(clock::calibrate)
        .await
        .context("calibrating the XDP clock")?;
    Ok(match calibrated {
        Ok(tick_clock) => {
            info!(
                hz = tick_clock.hz,
                "XDP clock calibrated on the kernel tick"
            );
            facts.with_clock(&tick_clock)
        }
        Err(error) => {
            warn!(
                %error,
                "XDP clock not calibrated; the program reads the kernel clock per packet (slower)"
            );
            facts
        }
    })
}

fn interfaces(node: &NodeConfig) -> Vec<String> {
    vec![
        node.public_interface.clone(),
        node.private_interface.clone(),
    ]
}

/// The services' VIPs, each once.
fn service_vips(config: &Config) -> Vec<Ipv4Addr> {
    let mut vips: Vec<Ipv4Addr> = config.services.iter().map(|s| s.vip).collect();
    vips.sort_unstable();
    vips.dedup();
    vips
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
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
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

fn lock(agent: &Arc<Mutex<Agent>>) -> Option<MutexGuard<'_, Agent>> {
    match agent.lock() {
        Ok(guard) => Some(guard),
        Err(_) => {
            error!("agent state poisoned by a panic");
            None
        }
    }
}
