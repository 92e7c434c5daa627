//! Runs one VRRP instance: feeds the state machine with the socket's
//! advertisements and its own timers, carries out its actions (send
//! adverts, move the floating IP, run notify hooks) and publishes status.
//!
//! The runner lives on its own thread with its own runtime (see
//! `instance`); everything that may take long runs on the agent's main
//! runtime instead (`main`): provider calls in the provider's worker,
//! notify hooks as tasks there. The runner only sends wishes and reads
//! published snapshots, so neither can hold up an advert.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::{runtime::Handle, sync::watch};
use tracing::{debug, info, warn};

use super::{
    io::{RawVrrpSocket, VrrpSocket},
    machine::{Action, Machine, Params, State},
    packet::{split_ipv4, Advert, Auth, Version},
};
use crate::{
    config::VrrpConfig,
    config::VrrpVersion,
    dataplane::liveness::Heartbeat,
    floating_ip::{Holder, ProviderHandle},
    limits::{Throttle, LOG_INTERVAL},
};

/// How often the status shows the provider's latest view.
const PROVIDER_STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// How long a stopping agent waits for the provider to release.
const PROVIDER_SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// The state `lb-agent status` and the metrics show: the machine's
/// states plus `STOPPED` for an instance that has shut down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VrrpState {
    #[default]
    Init,
    Backup,
    Master,
    Fault,
    Stopped,
}

impl VrrpState {
    pub const ALL: [Self; 5] = [
        Self::Init,
        Self::Backup,
        Self::Master,
        Self::Fault,
        Self::Stopped,
    ];

    /// The name in the status JSON, the metrics' labels and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "INIT",
            Self::Backup => "BACKUP",
            Self::Master => "MASTER",
            Self::Fault => "FAULT",
            Self::Stopped => "STOPPED",
        }
    }
}

impl From<State> for VrrpState {
    fn from(state: State) -> Self {
        match state {
            State::Initialize => Self::Init,
            State::Backup => Self::Backup,
            State::Master => Self::Master,
            State::Fault => Self::Fault,
        }
    }
}

impl std::fmt::Display for VrrpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `lb-agent status` shows of VRRP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpStatus {
    pub state: VrrpState,
    pub vrid: u8,
    pub priority: u8,
    pub version: u8,
    /// The master we last heard (or ourselves).
    pub master: Option<Ipv4Addr>,
    /// Unix time of the last transition and why it happened.
    pub last_transition_unix: Option<u64>,
    pub last_transition_reason: String,
    /// State changes since the agent started.
    #[serde(default)]
    pub transitions: u64,
    pub provider: String,
    /// Floating addresses this node holds now.
    pub holds: Vec<Ipv4Addr>,
    /// Floating SNAT addresses (`vrrp.snat_address`, `snat_pool`) this
    /// node holds now on its private interface.
    #[serde(default)]
    pub snat_holds: Vec<Ipv4Addr>,
    /// Provider operations (address changes, API requests, commands), how
    /// many failed, and the last failure.
    #[serde(default)]
    pub provider_calls: u64,
    #[serde(default)]
    pub provider_errors: u64,
    #[serde(default)]
    pub provider_last_error: Option<String>,
    /// Times this master found another node answering ARP for an address
    /// it holds (`vrrp.garp_refresh`), each answered by announcing again.
    #[serde(default)]
    pub second_owners: u64,
    /// Timers (an advert due, the master-down interval) that fired more
    /// than half an advert interval late: the VRRP thread did not get a
    /// CPU in time, the first sign of a spurious transition to come.
    #[serde(default)]
    pub missed_deadlines: u64,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Ignored advertisements by reason (wrong source, TTL, auth, ...).
    pub adverts_rejected: BTreeMap<String, u64>,
}

impl VrrpStatus {
    /// Records entering `state`; `false` (nothing recorded) when already
    /// in it. A reload's new instance starts in its predecessor's state,
    /// so resuming that is not a transition.
    fn enter(&mut self, state: VrrpState, reason: &str, unix: u64) -> bool {
        if self.state == state {
            return false;
        }
        self.state = state;
        self.last_transition_unix = Some(unix);
        self.transitions += 1;
        self.last_transition_reason = reason.into();
        true
    }

    /// What a new instance's provider `name` counts on top of: the
    /// predecessor's counts when it was the same provider, so counters
    /// survive reloads.
    fn provider_base(&self, name: &str) -> (u64, u64) {
        if self.provider == name {
            (self.provider_calls, self.provider_errors)
        } else {
            (0, 0)
        }
    }
}

/// The VRRP status as the runner last published it. The runner swaps in
/// whole snapshots and readers (`status`, metrics) load one: neither ever
/// waits for the other, so no request or scrape can hold up the runner.
#[derive(Clone, Default)]
pub struct SharedStatus(Arc<ArcSwap<VrrpStatus>>);

impl SharedStatus {
    /// The latest published status.
    pub fn snapshot(&self) -> VrrpStatus {
        VrrpStatus::clone(&self.0.load())
    }

    fn publish(&self, status: &VrrpStatus) {
        self.0.store(Arc::new(status.clone()));
    }
}

/// How a running instance is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Run,
    /// The agent stops: resign (priority 0), release the floating IP.
    Shutdown,
    /// A reload replaces this instance with one built from new settings:
    /// stop silently and leave the floating IP where it is, so the
    /// successor resumes as master without a failover.
    Handover,
}

/// A runner built on the agent's side (settings checked, socket and
/// provider open, so errors surface before anything changes), to be
/// registered with the VRRP thread's runtime there.
pub struct PreparedRunner {
    machine: Machine,
    socket: RawVrrpSocket,
    provider: Holder,
    config: VrrpConfig,
    instance: String,
    src: Ipv4Addr,
    addresses: Vec<Ipv4Addr>,
    auth: Auth,
    heartbeat: Option<Heartbeat>,
}

pub struct VrrpRunner {
    machine: Machine,
    socket: VrrpSocket,
    /// The provider until `run` starts its worker.
    pending_provider: Option<Holder>,
    provider: Option<ProviderHandle>,
    reconcile_interval: Duration,
    config: VrrpConfig,
    instance: String,
    src: Ipv4Addr,
    addresses: Vec<Ipv4Addr>,
    auth: Auth,
    /// The runner's own status, published to `shared` after each event.
    status: VrrpStatus,
    shared: SharedStatus,
    /// The agent's main runtime: provider calls and hooks run there.
    main: Handle,
    /// The floating IP may be left from a crashed run: drop it once a
    /// legitimate master is heard.
    check_stale: bool,
    /// When a lower-priority peer last claimed mastership while this node
    /// was master (a split brain). Once it falls silent the floating IP is
    /// announced once more, so the last announcement neighbours saw is
    /// this node's.
    peer_claimed: Option<Instant>,
    /// Provider calls and errors of the instances this one replaced.
    provider_base: (u64, u64),
    send_errors: Throttle,
    receive_errors: Throttle,
    preemption_held: bool,
    /// Written every advert interval while this thread runs.
    heartbeat: Option<Heartbeat>,
    heartbeat_errors: Throttle,
}

/// What drives a running runner besides the network.
pub struct RunnerInputs {
    pub stop: watch::Receiver<Stop>,
    pub verdicts: watch::Receiver<super::track::Verdict>,
    /// See `VrrpContext::may_lead`.
    pub may_lead: watch::Receiver<bool>,
}

impl PreparedRunner {
    pub fn new(
        config: &VrrpConfig,
        instance: &str,
        src: Ipv4Addr,
        interface: &str,
        provider: Holder,
        addresses: Vec<Ipv4Addr>,
        heartbeat: Option<Heartbeat>,
    ) -> anyhow::Result<Self> {
        let version = match config.version {
            VrrpVersion::V2 => Version::V2,
            VrrpVersion::V3 => Version::V3,
        };
        let machine = Machine::new(Params {
            version,
            priority: config.priority.get(),
            advert_interval: config.advert_int,
            preempt: config.preempt,
            preempt_delay: config.preempt_delay,
            address: src,
        });
        let socket = RawVrrpSocket::open(src, interface, &config.unicast_peers)?;
        let auth = match &config.auth_pass {
            Some(pass) if version == Version::V2 => Auth::simple(pass),
            _ => Auth::None,
        };
        Ok(Self {
            machine,
            socket,
            provider,
            config: config.clone(),
            instance: instance.to_string(),
            src,
            addresses,
            auth,
            heartbeat,
        })
    }

    /// Registers the socket with the runtime the caller runs inside (the
    /// VRRP thread's); provider calls and hooks will run on `main`.
    pub fn register(self, main: Handle, shared: SharedStatus) -> std::io::Result<VrrpRunner> {
        Ok(VrrpRunner {
            machine: self.machine,
            socket: self.socket.register()?,
            pending_provider: Some(self.provider),
            provider: None,
            reconcile_interval: self.config.floating_ip.reconcile_interval,
            config: self.config,
            instance: self.instance,
            src: self.src,
            addresses: self.addresses,
            auth: self.auth,
            status: VrrpStatus::default(),
            shared,
            main,
            check_stale: true,
            peer_claimed: None,
            provider_base: (0, 0),
            send_errors: Throttle::new(LOG_INTERVAL),
            receive_errors: Throttle::new(LOG_INTERVAL),
            heartbeat: self.heartbeat,
            heartbeat_errors: Throttle::new(LOG_INTERVAL),
            preemption_held: false,
        })
    }
}

impl VrrpRunner {
    fn advert(&self, priority: u8) -> Advert {
        Advert {
            version: self.machine.params().version,
            vrid: self.config.vrid.get(),
            priority,
            interval_cs: (self.config.advert_int.as_millis() / 10) as u16,
            addresses: self.addresses.clone(),
            auth: self.auth,
        }
    }

    async fn perform(&mut self, actions: Vec<Action>, reason: &str) {
        for action in actions {
            match action {
                Action::Advertise { priority } => {
                    let advert = self.advert(priority);
                    for to in self.socket.destinations().to_vec() {
                        let bytes = advert.encode(self.src, to);
                        match self.socket.send_to(&bytes, to).await {
                            Ok(()) => self.status.adverts_sent += 1,
                            Err(error) => {
                                // Every advert interval (10 ms with VRRPv3) while it lasts.
                                if let Some(suppressed) = self.send_errors.ready(Instant::now()) {
                                    warn!(%error, %to, suppressed, "sending a VRRP advertisement");
                                }
                            }
                        }
                    }
                }
                Action::BecomeMaster => {
                    let entered = self.transition(State::Master, reason);
                    if let Some(provider) = &self.provider {
                        provider.hold();
                    }
                    // Hooks announce transitions, not reloads.
                    if entered {
                        let _ = self.run_notify(State::Master);
                    }
                }
                Action::BecomeBackup if reason == "startup" => {
                    // Keep a floating IP found at startup until a master is
                    // heard: it may still carry this node's live flows.
                    if self.transition(State::Backup, reason) {
                        let _ = self.run_notify(State::Backup);
                    }
                }
                Action::BecomeBackup | Action::BecomeFault => {
                    let state = if action == Action::BecomeFault {
                        State::Fault
                    } else {
                        self.machine.state()
                    };
                    let entered = self.transition(state, reason);
                    if let Some(provider) = &self.provider {
                        provider.release();
                    }
                    if entered {
                        let _ = self.run_notify(state);
                    }
                }
            }
        }
        self.status.master = self.machine.master;
        self.status.state = self.machine.state().into();
        self.show_provider();
        self.publish();
    }

    /// Makes the status visible to `status` and the metrics.
    fn publish(&self) {
        self.shared.publish(&self.status);
    }

    /// Copies the provider's latest view into the status.
    fn show_provider(&mut self) {
        if let Some(provider) = &self.provider {
            let p = provider.status();
            let s = &mut self.status;
            s.holds = p.held.clone();
            s.snat_holds = p.snat_held.clone();
            s.provider_calls = self.provider_base.0 + p.calls;
            s.provider_errors = self.provider_base.1 + p.errors;
            s.provider_last_error = p.last_error.clone();
            s.second_owners = p.second_owners;
        }
    }

    /// Records entering `to`; `false` when this node was in it already
    /// (a reloaded instance resuming its predecessor's state).
    fn transition(&mut self, to: State, reason: &str) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let state = VrrpState::from(to);
        let entered = self.status.enter(state, reason, now);
        if entered {
            info!(%state, reason, "VRRP transition");
        } else {
            debug!(%state, reason, "VRRP state resumed");
        }
        entered
    }

    /// Starts the hooks for `state` in the background; the handles let a
    /// stopping agent wait for `notify_stop` (each hook is bounded by
    /// `notify_timeout`).
    fn run_notify(&self, state: State) -> Vec<tokio::task::JoinHandle<()>> {
        let specific = match state {
            State::Master => self.config.notify_master.clone(),
            State::Backup => self.config.notify_backup.clone(),
            State::Fault => self.config.notify_fault.clone(),
            State::Initialize => self.config.notify_stop.clone(),
        };
        // keepalived's notify names the stopped state STOP.
        let name = match state {
            State::Initialize => "STOP",
            state => VrrpState::from(state).as_str(),
        };
        let generic = self.config.notify.clone().map(|cmd| {
            format!(
                "{cmd} INSTANCE {} {name} {}",
                self.instance, self.config.priority
            )
        });
        let mut hooks = Vec::new();
        for command in [specific, generic].into_iter().flatten() {
            let timeout = self.config.notify_timeout;
            // On the main runtime: starting a process (fork, exec, its
            // pipes) must not take the VRRP thread's time.
            hooks.push(self.main.spawn(async move {
                match crate::shell::run(&command, "notify", &[], &[], Some(timeout)).await {
                    Ok(done) if done.success() => {}
                    Ok(done) => {
                        warn!(%command, status = %done.status, output = %done.last_words(), "notify hook failed")
                    }
                    Err(crate::shell::ShellError::TimedOut(_)) => {
                        warn!(%command, "notify hook timed out; killed")
                    }
                    Err(error) => warn!(%command, %error, "notify hook"),
                }
            }));
        }
        hooks
    }

    fn reject(&mut self, reason: &str) {
        debug!(reason, "VRRP advertisement ignored");
        *self
            .status
            .adverts_rejected
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// Handles one received IP packet.
    async fn on_packet(&mut self, packet: &[u8]) {
        let (info, payload) = match split_ipv4(packet) {
            Ok(split) => split,
            Err(_) => return self.reject("malformed"),
        };
        if info.src == self.src {
            return; // our own multicast
        }
        if !self.config.unicast_peers.is_empty() && !self.config.unicast_peers.contains(&info.src) {
            return self.reject("not_a_peer");
        }
        let expect = (self.machine.params().version, self.auth);
        let advert = match Advert::decode(payload, info.src, info.dst, info.ttl, expect) {
            Ok(a) => a,
            Err(error) => {
                let reason = match error {
                    super::packet::DecodeError::BadTtl { .. } => "ttl",
                    super::packet::DecodeError::BadVersion { .. } => "version",
                    super::packet::DecodeError::BadChecksum => "checksum",
                    super::packet::DecodeError::BadAuth => "auth",
                    super::packet::DecodeError::BadType { .. } => "type",
                    _ => "length",
                };
                return self.reject(reason);
            }
        };
        if advert.vrid != self.config.vrid.get() {
            return self.reject("vrid");
        }
        self.status.adverts_received += 1;
        let was = self.machine.state();
        if self.check_stale
            && was == State::Backup
            && (advert.priority >= self.config.priority.get() || !self.config.preempt)
            && advert.priority != 0
        {
            self.check_stale = false;
            if let Some(provider) = &self.provider {
                let left = provider.status();
                if !left.held.is_empty() || !left.snat_held.is_empty() {
                    info!(master = %info.src, "another node is master: removing a floating IP left by an earlier run");
                    provider.release();
                }
            }
        }
        let interval = Duration::from_millis(u64::from(advert.interval_cs) * 10);
        let actions = self
            .machine
            .on_advert(info.src, advert.priority, interval, Instant::now());
        let reason = format!(
            "advert from {} priority {} while {}",
            info.src,
            advert.priority,
            VrrpState::from(was)
        );
        self.perform(actions, &reason).await;
        if self.machine.state() == State::Master && advert.priority < self.config.priority.get() {
            // A peer that thinks it is master (a healed partition): make
            // sure the floating IP and the neighbours' caches are ours.
            if let Some(provider) = &self.provider {
                provider.reassert();
            }
            self.peer_claimed = Some(Instant::now());
        }
    }

    /// After a split brain: once the peer stopped claiming mastership (two
    /// advert intervals of silence), announce the floating IP once more.
    fn after_split_brain(&mut self) {
        let Some(claimed) = self.peer_claimed else {
            return;
        };
        if self.machine.state() != State::Master {
            self.peer_claimed = None;
        } else if claimed.elapsed() > self.config.advert_int * 2 {
            info!("the peer stopped claiming mastership: announcing the floating IP again");
            if let Some(provider) = &self.provider {
                provider.reassert();
            }
            self.peer_claimed = None;
        }
    }

    /// Applies what tracking says: FAULT or not, and the priority.
    async fn on_verdict(&mut self, verdict: super::track::Verdict) {
        if verdict.priority != self.machine.params().priority {
            info!(priority = verdict.priority, "tracking changed the priority");
            self.machine.set_priority(verdict.priority);
            self.status.priority = verdict.priority;
        }
        let now = Instant::now();
        match verdict.fault {
            Some(reason) if self.machine.state() != State::Fault => {
                let actions = self.machine.set_fault(true, now);
                self.perform(actions, &reason).await;
            }
            None if self.machine.state() == State::Fault => {
                let actions = self.machine.set_fault(false, now);
                self.perform(actions, "tracked failures cleared").await;
            }
            _ => {}
        }
    }

    /// Takes over the published status (a reload's predecessor has
    /// stopped by now, and its successor keeps showing its state until it
    /// has decided its own) with this instance's settings and provider.
    fn resume_status(&mut self, provider: &str) {
        let mut status = self.shared.snapshot();
        status.vrid = self.config.vrid.get();
        status.priority = self.config.priority.get();
        status.version = self.config.version.number();
        self.provider_base = status.provider_base(provider);
        status.provider = provider.into();
        self.status = status;
        self.publish();
    }

    /// Asks the provider whether this node still holds the floating IP,
    /// then starts its worker, both on the main runtime (the provider's
    /// netlink connection and HTTP client live there); `None` when the
    /// main runtime is going away.
    async fn start_provider(&mut self, mut provider: Holder) -> Option<bool> {
        let check = self.main.spawn(async move {
            let held = provider.held_at_start().await;
            (provider, held)
        });
        match check.await {
            Ok((provider, held)) => {
                self.provider = Some(ProviderHandle::start(
                    &self.main,
                    provider,
                    self.reconcile_interval,
                ));
                Some(held)
            }
            Err(error) => {
                warn!(%error, "the floating IP provider's start-up check did not finish");
                None
            }
        }
    }

    /// Runs until `stop` flips; then resigns (priority 0) and releases.
    pub async fn run(mut self, mut inputs: RunnerInputs) {
        let Some(provider) = self.pending_provider.take() else {
            warn!("VRRP runner started twice");
            return;
        };
        self.resume_status(provider.name());
        let Some(held_at_start) = self.start_provider(provider).await else {
            return;
        };
        let actions = if held_at_start {
            info!("the floating IP is still here: resuming as master");
            self.check_stale = false;
            self.machine.resume_master(Instant::now())
        } else {
            self.machine.start(Instant::now())
        };
        self.perform(actions, "startup").await;
        self.serve(&mut inputs).await;
        let how = *inputs.stop.borrow();
        self.finish(how).await;
    }

    /// The event loop: adverts in, timers, verdicts; until told to stop.
    async fn serve(&mut self, inputs: &mut RunnerInputs) {
        let RunnerInputs {
            stop,
            verdicts,
            may_lead,
        } = inputs;
        self.hold_preemption(!*may_lead.borrow_and_update());
        let mut buf = vec![0u8; 2048];
        let mut provider_tick = tokio::time::interval(PROVIDER_STATUS_INTERVAL);
        let mut heartbeat_tick = tokio::time::interval(self.config.advert_int);
        heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .machine
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() != Stop::Run {
                        return;
                    }
                }
                _ = provider_tick.tick() => {
                    self.show_provider();
                    self.after_split_brain();
                }
                _ = heartbeat_tick.tick() => self.beat(),
                Ok(()) = verdicts.changed() => {
                    let verdict = verdicts.borrow_and_update().clone();
                    self.on_verdict(verdict).await;
                }
                Ok(()) = may_lead.changed() => {
                    let may = *may_lead.borrow_and_update();
                    self.hold_preemption(!may);
                }
                received = self.socket.recv(&mut buf) => match received {
                    Ok(n) => {
                        let packet = buf[..n].to_vec();
                        self.on_packet(&packet).await;
                    }
                    Err(error) => {
                        if let Some(suppressed) = self.receive_errors.ready(Instant::now()) {
                            warn!(%error, suppressed, "VRRP receive");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if deadline.elapsed() > self.config.advert_int / 2 {
                        self.status.missed_deadlines += 1;
                    }
                    let was = self.machine.state();
                    let actions = self.machine.on_timer(Instant::now());
                    let reason = if was == State::Backup { "master down interval expired" } else { "advert timer" };
                    self.perform(actions, reason).await;
                }
            }
            self.publish();
        }
    }

    /// Tells the program this agent is alive (see `dataplane::liveness`).
    fn beat(&mut self) {
        let Some(heartbeat) = &mut self.heartbeat else {
            return;
        };
        if let Err(error) = heartbeat.beat() {
            if let Some(suppressed) = self.heartbeat_errors.ready(Instant::now()) {
                warn!(%error, suppressed, "writing the agent's heartbeat for the XDP program");
            }
        }
    }

    fn hold_preemption(&mut self, held: bool) {
        if held {
            info!("preemption waits for the peer's flows (flow sync)");
        } else if self.preemption_held {
            info!("flow sync holds the peer's flows: preemption may go on");
        }
        self.preemption_held = held;
        self.machine.hold_preemption(held);
    }

    /// Hands over silently (a reload), or resigns, releases the floating
    /// IP and runs `notify_stop` (the agent stops).
    async fn finish(mut self, how: Stop) {
        if how == Stop::Handover {
            info!("VRRP settings reloaded: handing over to the new instance");
            if let Some(provider) = self.provider.take() {
                provider.abandon().await;
            }
            return;
        }
        let actions = self.machine.shutdown();
        self.perform(actions, "agent stopping").await;
        if let Some(provider) = self.provider.take() {
            let last = provider.shutdown(PROVIDER_SHUTDOWN_LIMIT).await;
            (self.status.holds, self.status.snat_holds) = (last.held, last.snat_held);
            self.publish();
        }
        for hook in self.run_notify(State::Initialize) {
            let _ = hook.await;
        }
        self.status.state = VrrpState::Stopped;
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_state_changes_count_as_transitions() {
        let mut status = VrrpStatus {
            state: VrrpState::Init,
            ..VrrpStatus::default()
        };
        assert!(status.enter(VrrpState::Backup, "startup", 10));
        assert!(status.enter(VrrpState::Master, "master down interval expired", 12));
        // A reload replaced the instance; the new one resumes as master.
        assert!(!status.enter(VrrpState::Master, "startup", 20));
        assert_eq!(status.transitions, 2);
        assert_eq!(status.last_transition_unix, Some(12));
        assert_eq!(
            status.last_transition_reason,
            "master down interval expired"
        );
        assert!(status.enter(VrrpState::Fault, "service www has no backend up", 30));
        assert_eq!(status.transitions, 3);
    }

    #[test]
    fn provider_counts_carry_over_to_the_same_provider_only() {
        let status = VrrpStatus {
            provider: "local".into(),
            provider_calls: 7,
            provider_errors: 2,
            ..VrrpStatus::default()
        };
        assert_eq!(status.provider_base("local"), (7, 2));
        assert_eq!(status.provider_base("exec"), (0, 0));
    }

    #[test]
    fn states_serialize_as_the_status_schema_names_them() {
        for state in VrrpState::ALL {
            let json = serde_json::to_string(&state).expect("serialize");
            assert_eq!(json, format!("\"{state}\""));
            let back: VrrpState = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, state);
        }
    }
}
