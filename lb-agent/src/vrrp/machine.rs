//! The VRRP state machine of one virtual router (RFC 5798 section 6.4, with
//! RFC 3768's whole-second timers for v2), with keepalived's additions:
//! `nopreempt`, `preempt_delay` and a FAULT state for tracked failures.
//! Pure: the caller passes the time in and carries out the returned
//! actions (send an advertisement, take or release the floating IP), so
//! every timing rule is tested without sleeping.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use super::packet::Version;

/// Priority of the address owner: always master at once.
pub const PRIORITY_OWNER: u8 = 255;
/// Priority a master advertises when it stops: backups take over after skew time.
pub const PRIORITY_RESIGN: u8 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Initialize,
    Backup,
    Master,
    /// A tracked failure: no advertisements, no floating IP.
    Fault,
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority.
    Advertise { priority: u8 },
    /// Take the floating IP (and announce it with gratuitous ARPs).
    BecomeMaster,
    /// Release the floating IP.
    BecomeBackup,
    /// Release the floating IP; stop advertising.
    BecomeFault,
}

/// Configuration of one virtual router.
#[derive(Debug, Clone)]
pub struct Params {
    pub version: Version,
    /// 1-255 (255 = address owner).
    pub priority: u8,
    pub advert_interval: Duration,
    /// Take mastership from a lower-priority master (default true).
    pub preempt: bool,
    /// Wait this long before preempting.
    pub preempt_delay: Duration,
    /// Our own address (ties between equal priorities go to the higher address).
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct Machine {
    params: Params,
    state: State,
    /// Interval the current master advertises with (v3 learns it).
    master_interval: Duration,
    master_down_at: Option<Instant>,
    next_advert_at: Option<Instant>,
    preempt_at: Option<Instant>,
    /// Preemption waits while this is set: flow sync holds it until this
    /// node has the master's flows, so that taking over ends none of them.
    preempt_held: bool,
    /// Who we last heard as master.
    pub master: Option<Ipv4Addr>,
}

impl Machine {
    pub fn new(params: Params) -> Self {
        let master_interval = params.advert_interval;
        Self {
            params,
            state: State::Initialize,
            master_interval,
            master_down_at: None,
            next_advert_at: None,
            preempt_at: None,
            preempt_held: false,
            master: None,
        }
    }

    /// Holds preemption back (`true`) or lets it happen again (`false`):
    /// a lower-priority master is then followed as with `nopreempt` until
    /// the hold ends, and overtaken at its next advertisement after that.
    pub fn hold_preemption(&mut self, held: bool) {
        self.preempt_held = held;
    }

    fn preempts(&self) -> bool {
        self.params.preempt && !self.preempt_held
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Skew_Time: how much later than a higher-priority router a lower one
    /// declares the master down.
    pub fn skew_time(&self) -> Duration {
        let weight = 256 - u32::from(self.params.priority);
        match self.params.version {
            // RFC 3768: (256 - Priority) / 256 seconds.
            Version::V2 => Duration::from_secs(1) * weight / 256,
            // RFC 5798: ((256 - Priority) * Master_Adver_Interval) / 256.
            Version::V3 => self.master_interval * weight / 256,
        }
    }

    /// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        self.master_interval * 3 + self.skew_time()
    }

    /// The earliest time `on_timer` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.master_down_at, self.next_advert_at, self.preempt_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Startup (RFC 5798 6.4.1).
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        if self.params.priority == PRIORITY_OWNER {
            return self.become_master(now);
        }
        self.become_backup(now);
        vec![Action::BecomeBackup]
    }

    /// Startup of an agent that finds the floating IP still on this node:
    /// it was master when its previous run died, and the data path kept
    /// forwarding. It resumes as master at once (advertising right away),
    /// so a quick restart causes no failover; a better peer still wins the
    /// usual way.
    pub fn resume_master(&mut self, now: Instant) -> Vec<Action> {
        self.become_master(now)
    }

    fn become_master(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Master;
        self.master = Some(self.params.address);
        self.master_down_at = None;
        self.preempt_at = None;
        self.next_advert_at = Some(now + self.params.advert_interval);
        vec![
            Action::Advertise {
                priority: self.params.priority,
            },
            Action::BecomeMaster,
        ]
    }

    fn become_backup(&mut self, now: Instant) {
        self.state = State::Backup;
        self.next_advert_at = None;
        self.master_down_at = Some(now + self.master_down_interval());
    }

    /// Timers (call at or after `next_deadline`).
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            State::Backup => {
                if self.preempt_at.is_some_and(|at| now >= at)
                    || self.master_down_at.is_some_and(|at| now >= at)
                {
                    return self.become_master(now);
                }
                Vec::new()
            }
            State::Master => {
                if self.next_advert_at.is_some_and(|at| now >= at) {
                    self.next_advert_at = Some(now + self.params.advert_interval);
                    return vec![Action::Advertise {
                        priority: self.params.priority,
                    }];
                }
                Vec::new()
            }
            State::Initialize | State::Fault => Vec::new(),
        }
    }

    /// A valid advertisement (already checked by the decoder and the peer
    /// list) from `from` with `priority` and `interval`.
    pub fn on_advert(
        &mut self,
        from: Ipv4Addr,
        priority: u8,
        interval: Duration,
        now: Instant,
    ) -> Vec<Action> {
        match self.state {
            State::Backup => {
                if priority == PRIORITY_RESIGN {
                    // The master left: take over after skew time only.
                    self.master_down_at = Some(now + self.skew_time());
                    return Vec::new();
                }
                if !self.preempts() || priority >= self.params.priority {
                    if self.params.version == Version::V3 {
                        self.master_interval = interval;
                    }
                    self.master = Some(from);
                    self.preempt_at = None;
                    self.master_down_at = Some(now + self.master_down_interval());
                    return Vec::new();
                }
                // A lower-priority master and we preempt: let its adverts
                // run out, or with a preempt delay take over once it passes.
                if !self.params.preempt_delay.is_zero() {
                    let at = *self
                        .preempt_at
                        .get_or_insert(now + self.params.preempt_delay);
                    if now < at {
                        self.master_down_at = Some(now + self.master_down_interval());
                    }
                }
                Vec::new()
            }
            State::Master => {
                if priority == PRIORITY_RESIGN {
                    // Another master resigned: assert ourselves at once.
                    self.next_advert_at = Some(now + self.params.advert_interval);
                    return vec![Action::Advertise {
                        priority: self.params.priority,
                    }];
                }
                let wins = priority > self.params.priority
                    || (priority == self.params.priority
                        && u32::from(from) > u32::from(self.params.address));
                if wins {
                    if self.params.version == Version::V3 {
                        self.master_interval = interval;
                    }
                    self.master = Some(from);
                    self.become_backup(now);
                    return vec![Action::BecomeBackup];
                }
                Vec::new()
            }
            State::Initialize | State::Fault => Vec::new(),
        }
    }

    /// Graceful stop: a master resigns with priority 0.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let was_master = self.state == State::Master;
        self.state = State::Initialize;
        self.master_down_at = None;
        self.next_advert_at = None;
        self.preempt_at = None;
        if was_master {
            vec![
                Action::Advertise {
                    priority: PRIORITY_RESIGN,
                },
                Action::BecomeBackup,
            ]
        } else {
            Vec::new()
        }
    }

    /// Changes the advertised priority (tracking weights). Takes effect
    /// with the next advertisement and in every comparison.
    pub fn set_priority(&mut self, priority: u8) {
        self.params.priority = priority.max(1);
    }

    /// A tracked failure starts (`true`) or ends (`false`).
    pub fn set_fault(&mut self, fault: bool, now: Instant) -> Vec<Action> {
        match (fault, self.state) {
            (true, State::Fault) | (false, State::Backup | State::Master | State::Initialize) => {
                Vec::new()
            }
            (true, state) => {
                let mut actions = Vec::new();
                if state == State::Master {
                    actions.push(Action::Advertise {
                        priority: PRIORITY_RESIGN,
                    });
                }
                self.state = State::Fault;
                self.master_down_at = None;
                self.next_advert_at = None;
                self.preempt_at = None;
                actions.push(Action::BecomeFault);
                actions
            }
            (false, State::Fault) => {
                self.become_backup(now);
                vec![Action::BecomeBackup]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB1: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
    const LB2: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 12);
    const SECOND: Duration = Duration::from_secs(1);

    fn params(version: Version, priority: u8, address: Ipv4Addr, interval: Duration) -> Params {
        Params {
            version,
            priority,
            advert_interval: interval,
            preempt: true,
            preempt_delay: Duration::ZERO,
            address,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs timers until `until`; returns when the state first became master.
    fn run_until(m: &mut Machine, start: Instant, until: Duration) -> Option<Duration> {
        let mut now = start;
        while now <= start + until {
            let deadline = m.next_deadline()?;
            now = deadline.max(now);
            if now > start + until {
                break;
            }
            if m.on_timer(now).contains(&Action::BecomeMaster) {
                return Some(now - start);
            }
        }
        None
    }

    #[test]
    fn skew_and_master_down_match_the_rfcs_and_keepalived() {
        // lb2, priority 100, v2 at 1 s: skew (256-100)/256 s = 0.609 s.
        let m = Machine::new(params(Version::V2, 100, LB2, SECOND));
        assert_eq!(m.skew_time(), Duration::from_nanos(609_375_000));
        assert_eq!(
            m.master_down_interval(),
            Duration::from_nanos(3_609_375_000)
        );
        // v3 at 0.1 s: skew 60.9 ms, down interval 360.9 ms (the captures
        // show 0.06 s and 0.361 s).
        let m = Machine::new(params(Version::V3, 100, LB2, ms(100)));
        assert_eq!(m.skew_time(), Duration::from_nanos(60_937_500));
        assert_eq!(m.master_down_interval(), Duration::from_nanos(360_937_500));
    }

    #[test]
    fn lone_router_becomes_master_after_master_down_interval() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(Version::V2, 100, LB2, SECOND));
        assert_eq!(m.start(t0), vec![Action::BecomeBackup]);
        let took = run_until(&mut m, t0, Duration::from_secs(10)).expect("becomes master");
        assert_eq!(took, Duration::from_nanos(3_609_375_000));
        assert_eq!(m.state(), State::Master);
        // And then advertises every interval.
        let next = m.next_deadline().expect("advert timer");
        assert_eq!(next - (t0 + took), SECOND);
        assert_eq!(m.on_timer(next), vec![Action::Advertise { priority: 100 }]);
    }

    #[test]
    fn backup_follows_the_master_and_takes_over_when_it_dies() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(Version::V2, 100, LB2, SECOND));
        m.start(t0);
        // lb1 (200) advertises every second for 10 s: lb2 stays backup.
        for i in 0..10 {
            let now = t0 + SECOND * i;
            assert!(m.on_timer(now).is_empty());
            assert!(m.on_advert(LB1, 200, SECOND, now).is_empty());
        }
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.master, Some(LB1));
        // kill -9: no more adverts; lb2 takes over 3.609 s after the last one.
        let last = t0 + SECOND * 9;
        let took = run_until(&mut m, last, Duration::from_secs(10)).expect("takes over");
        assert_eq!(took, Duration::from_nanos(3_609_375_000));
    }

    #[test]
    fn priority_zero_hands_over_after_skew_time_only() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(Version::V2, 100, LB2, SECOND));
        m.start(t0);
        m.on_advert(LB1, 200, SECOND, t0);
        m.on_advert(LB1, 0, SECOND, t0 + ms(500));
        let took = run_until(&mut m, t0 + ms(500), Duration::from_secs(5)).expect("takes over");
        assert_eq!(took, Duration::from_nanos(609_375_000));
    }

    #[test]
    fn master_yields_to_higher_priority_and_wins_ties_by_address() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(Version::V3, 100, LB2, SECOND));
        m.start(t0);
        run_until(&mut m, t0, Duration::from_secs(10)).expect("master");
        let now = t0 + Duration::from_secs(5);
        assert!(
            m.on_advert(LB1, 50, SECOND, now).is_empty(),
            "lower priority ignored"
        );
        assert!(
            m.on_advert(LB1, 100, SECOND, now).is_empty(),
            "equal priority, lower address"
        );
        assert_eq!(m.state(), State::Master);
        assert_eq!(
            m.on_advert(LB1, 200, SECOND, now),
            vec![Action::BecomeBackup]
        );
        assert_eq!(m.state(), State::Backup);
    }

    #[test]
    fn held_preemption_waits_and_then_takes_over() {
        let t0 = Instant::now();
        let mut lb1 = Machine::new(params(Version::V2, 200, LB1, SECOND));
        lb1.hold_preemption(true);
        lb1.start(t0);
        for i in 0..20 {
            lb1.on_advert(LB2, 100, SECOND, t0 + SECOND * i);
            assert!(lb1.on_timer(t0 + SECOND * i).is_empty(), "held at {i} s");
        }
        assert_eq!(lb1.state(), State::Backup);
        lb1.hold_preemption(false);
        let mut took = None;
        for i in 20..30 {
            let now = t0 + SECOND * i;
            lb1.on_advert(LB2, 100, SECOND, now);
            if lb1.on_timer(now).contains(&Action::BecomeMaster) {
                took = Some(i);
                break;
            }
        }
        let took = took.expect("preempts once the hold ends");
        assert!(took <= 24, "within a master down interval: {took} s");
    }

    #[test]
    fn preempt_nopreempt_and_preempt_delay() {
        let t0 = Instant::now();
        // lb1 (200) comes back while lb2 (100) is master: lb1 as backup
        // hears lower-priority adverts and preempts once they are ignored.
        let mut lb1 = Machine::new(params(Version::V2, 200, LB1, SECOND));
        lb1.start(t0);
        for i in 0..3 {
            lb1.on_advert(LB2, 100, SECOND, t0 + SECOND * i);
        }
        let took = run_until(&mut lb1, t0, Duration::from_secs(10)).expect("preempts");
        // Adverts from a lower priority do not reset the timer.
        assert_eq!(took, lb1.master_down_interval());

        let mut nopreempt = Machine::new(Params {
            preempt: false,
            ..params(Version::V2, 200, LB1, SECOND)
        });
        nopreempt.start(t0);
        for i in 0..20 {
            nopreempt.on_advert(LB2, 100, SECOND, t0 + SECOND * i);
            assert!(nopreempt.on_timer(t0 + SECOND * i).is_empty());
        }
        assert_eq!(
            nopreempt.state(),
            State::Backup,
            "nopreempt keeps the current master"
        );

        let mut delayed = Machine::new(Params {
            preempt_delay: Duration::from_secs(10),
            ..params(Version::V2, 200, LB1, SECOND)
        });
        delayed.start(t0);
        let mut became = None;
        for i in 0..30 {
            let now = t0 + SECOND * i;
            delayed.on_advert(LB2, 100, SECOND, now);
            if delayed.on_timer(now).contains(&Action::BecomeMaster) {
                became = Some(i);
                break;
            }
        }
        assert_eq!(became, Some(10), "preempts once the delay has passed");
    }

    #[test]
    fn resumed_master_keeps_mastership_until_a_better_peer_speaks() {
        let t0 = Instant::now();
        let mut m = Machine::new(params(Version::V2, 100, LB2, SECOND));
        assert_eq!(
            m.resume_master(t0),
            vec![Action::Advertise { priority: 100 }, Action::BecomeMaster]
        );
        assert_eq!(
            m.on_advert(LB1, 200, SECOND, t0 + SECOND),
            vec![Action::BecomeBackup]
        );
    }

    #[test]
    fn graceful_stop_and_fault_resign_with_priority_zero() {
        let t0 = Instant::now();
        let owner = PRIORITY_OWNER;
        let mut m = Machine::new(params(Version::V2, owner, LB1, SECOND));
        assert_eq!(
            m.start(t0),
            vec![Action::Advertise { priority: 255 }, Action::BecomeMaster],
            "the address owner is master at once"
        );
        assert_eq!(
            m.set_fault(true, t0),
            vec![Action::Advertise { priority: 0 }, Action::BecomeFault]
        );
        assert!(
            m.on_advert(LB2, 100, SECOND, t0).is_empty(),
            "FAULT ignores adverts"
        );
        assert!(m.next_deadline().is_none(), "FAULT sends nothing");
        assert_eq!(m.set_fault(false, t0 + SECOND), vec![Action::BecomeBackup]);

        let mut m = Machine::new(params(Version::V2, 200, LB1, SECOND));
        m.start(t0);
        run_until(&mut m, t0, Duration::from_secs(10)).expect("master");
        assert_eq!(
            m.shutdown(),
            vec![Action::Advertise { priority: 0 }, Action::BecomeBackup]
        );
        assert_eq!(m.state(), State::Initialize);
    }
}
