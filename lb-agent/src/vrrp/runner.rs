//! Runs one VRRP instance: feeds the state machine with the socket's
//! advertisements and its own timers, carries out its actions (send
//! adverts, move the floating IP, run notify hooks) and publishes status.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    io::VrrpSocket,
    machine::{Action, Machine, Params, State},
    packet::{split_ipv4, Advert, Auth, Version},
};
use crate::{
    config::VrrpConfig,
    floating_ip::{Provider, ProviderHandle},
    limits::{Throttle, LOG_INTERVAL},
};

/// How often the status shows the provider's latest view.
const PROVIDER_STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// How long a stopping agent waits for the provider to release.
const PROVIDER_SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// What `lb-agent status` shows of VRRP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpStatus {
    pub state: String,
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
    /// Provider operations (address changes, API requests, commands), how
    /// many failed, and the last failure.
    #[serde(default)]
    pub provider_calls: u64,
    #[serde(default)]
    pub provider_errors: u64,
    #[serde(default)]
    pub provider_last_error: Option<String>,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Ignored advertisements by reason (wrong source, TTL, auth, ...).
    pub adverts_rejected: BTreeMap<String, u64>,
}

impl VrrpStatus {
    /// Records entering `state`; `false` (nothing recorded) when already
    /// in it. A reload's new instance starts in its predecessor's state,
    /// so resuming that is not a transition.
    fn enter(&mut self, state: &str, reason: &str, unix: u64) -> bool {
        if self.state == state {
            return false;
        }
        self.state = state.into();
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

pub type SharedStatus = Arc<Mutex<VrrpStatus>>;

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

fn update(status: &SharedStatus, f: impl FnOnce(&mut VrrpStatus)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Initialize => "INIT",
        State::Backup => "BACKUP",
        State::Master => "MASTER",
        State::Fault => "FAULT",
    }
}

pub struct VrrpRunner {
    machine: Machine,
    socket: VrrpSocket,
    /// The provider until `run` starts its worker.
    pending_provider: Option<Provider>,
    provider: Option<ProviderHandle>,
    reconcile_interval: Duration,
    config: VrrpConfig,
    instance: String,
    src: Ipv4Addr,
    addresses: Vec<Ipv4Addr>,
    auth: Auth,
    status: SharedStatus,
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
}

impl VrrpRunner {
    pub fn new(
        config: &VrrpConfig,
        instance: &str,
        src: Ipv4Addr,
        interface: &str,
        public_interface: &str,
        addresses: Vec<Ipv4Addr>,
        status: SharedStatus,
    ) -> anyhow::Result<Self> {
        let version = if config.version == 3 {
            Version::V3
        } else {
            Version::V2
        };
        let machine = Machine::new(Params {
            version,
            vrid: config.vrid,
            priority: config.priority,
            advert_interval: config.advert_int,
            preempt: config.preempt,
            preempt_delay: config.preempt_delay,
            address: src,
        });
        let socket = VrrpSocket::open(src, interface, &config.unicast_peers)?;
        let provider = Provider::from_config(
            &config.floating_ip,
            public_interface,
            addresses.clone(),
            config.garp_count,
            config.garp_interval,
            instance,
        )?;
        let auth = match &config.auth_pass {
            Some(pass) if version == Version::V2 => Auth::simple(pass),
            _ => Auth::None,
        };
        update(&status, |s| {
            // A reload's successor keeps showing its predecessor's state
            // until it has decided its own.
            if s.state.is_empty() {
                s.state = "INIT".into();
            }
            s.vrid = config.vrid;
            s.priority = config.priority;
            s.version = config.version;
        });
        Ok(Self {
            machine,
            socket,
            pending_provider: Some(provider),
            provider: None,
            reconcile_interval: config.floating_ip.reconcile_interval,
            config: config.clone(),
            instance: instance.to_string(),
            src,
            addresses,
            auth,
            status,
            check_stale: true,
            peer_claimed: None,
            provider_base: (0, 0),
            send_errors: Throttle::new(LOG_INTERVAL),
            receive_errors: Throttle::new(LOG_INTERVAL),
        })
    }

    fn advert(&self, priority: u8) -> Advert {
        Advert {
            version: self.machine.params().version,
            vrid: self.config.vrid,
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
                            Ok(()) => update(&self.status, |s| s.adverts_sent += 1),
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
        let master = self.machine.master;
        let state = state_name(self.machine.state());
        update(&self.status, |s| {
            s.master = master;
            s.state = state.into();
        });
        self.show_provider();
    }

    /// Copies the provider's latest view into the status.
    fn show_provider(&self) {
        if let Some(provider) = &self.provider {
            let p = provider.status();
            update(&self.status, |s| {
                s.holds = p.held;
                s.provider_calls = self.provider_base.0 + p.calls;
                s.provider_errors = self.provider_base.1 + p.errors;
                s.provider_last_error = p.last_error;
            });
        }
    }

    /// Records entering `to`; `false` when this node was in it already
    /// (a reloaded instance resuming its predecessor's state).
    fn transition(&self, to: State, reason: &str) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut entered = false;
        update(&self.status, |s| {
            entered = s.enter(state_name(to), reason, now)
        });
        if entered {
            info!(state = state_name(to), reason, "VRRP transition");
        } else {
            debug!(state = state_name(to), reason, "VRRP state resumed");
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
        let name = state_name(state).replace("INIT", "STOP");
        let generic = self.config.notify.clone().map(|cmd| {
            format!(
                "{cmd} INSTANCE {} {name} {}",
                self.instance, self.config.priority
            )
        });
        let mut hooks = Vec::new();
        for command in [specific, generic].into_iter().flatten() {
            let timeout = self.config.notify_timeout;
            hooks.push(tokio::spawn(async move {
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

    fn reject(&self, reason: &str) {
        debug!(reason, "VRRP advertisement ignored");
        update(&self.status, |s| {
            *s.adverts_rejected.entry(reason.to_string()).or_default() += 1
        });
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
        if advert.vrid != self.config.vrid {
            return self.reject("vrid");
        }
        update(&self.status, |s| s.adverts_received += 1);
        let was = self.machine.state();
        if self.check_stale
            && was == State::Backup
            && (advert.priority >= self.config.priority || !self.config.preempt)
            && advert.priority != 0
        {
            self.check_stale = false;
            if let Some(provider) = &self.provider {
                if !provider.status().held.is_empty() {
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
            state_name(was)
        );
        self.perform(actions, &reason).await;
        if self.machine.state() == State::Master && advert.priority < self.config.priority {
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
            update(&self.status, |s| s.priority = verdict.priority);
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

    /// Runs until `stop` flips; then resigns (priority 0) and releases.
    pub async fn run(
        mut self,
        mut stop: watch::Receiver<Stop>,
        mut verdicts: watch::Receiver<super::track::Verdict>,
    ) {
        let Some(mut provider) = self.pending_provider.take() else {
            warn!("VRRP runner started twice");
            return;
        };
        // Counted on from here: a reload's predecessor has stopped by now.
        let name = provider.name();
        let mut base = (0, 0);
        update(&self.status, |s| {
            base = s.provider_base(name);
            s.provider = name.into();
        });
        self.provider_base = base;
        let held_at_start = provider.held_at_start().await;
        self.provider = Some(ProviderHandle::start(provider, self.reconcile_interval));
        let actions = if held_at_start {
            info!("the floating IP is still here: resuming as master");
            self.check_stale = false;
            self.machine.resume_master(Instant::now())
        } else {
            self.machine.start(Instant::now())
        };
        self.perform(actions, "startup").await;
        let mut buf = vec![0u8; 2048];
        let mut provider_tick = tokio::time::interval(PROVIDER_STATUS_INTERVAL);
        loop {
            let deadline = self
                .machine
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() != Stop::Run {
                        break;
                    }
                }
                _ = provider_tick.tick() => {
                    self.show_provider();
                    self.after_split_brain();
                }
                Ok(()) = verdicts.changed() => {
                    let verdict = verdicts.borrow_and_update().clone();
                    self.on_verdict(verdict).await;
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
                    let was = self.machine.state();
                    let actions = self.machine.on_timer(Instant::now());
                    let reason = if was == State::Backup { "master down interval expired" } else { "advert timer" };
                    self.perform(actions, reason).await;
                }
            }
        }
        if *stop.borrow() == Stop::Handover {
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
            update(&self.status, |s| s.holds = last.held);
        }
        for hook in self.run_notify(State::Initialize) {
            let _ = hook.await;
        }
        update(&self.status, |s| s.state = "STOPPED".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_state_changes_count_as_transitions() {
        let mut status = VrrpStatus {
            state: "INIT".into(),
            ..VrrpStatus::default()
        };
        assert!(status.enter("BACKUP", "startup", 10));
        assert!(status.enter("MASTER", "master down interval expired", 12));
        // A reload replaced the instance; the new one resumes as master.
        assert!(!status.enter("MASTER", "startup", 20));
        assert_eq!(status.transitions, 2);
        assert_eq!(status.last_transition_unix, Some(12));
        assert_eq!(
            status.last_transition_reason,
            "master down interval expired"
        );
        assert!(status.enter("FAULT", "service www has no backend up", 30));
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
}
