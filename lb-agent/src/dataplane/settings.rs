//! The program's `Settings`, from one place: the config's part plus what
//! only the running node knows (its MACs, the calibrated clock, the
//! half-open share of the flow table).

use lb_common::Settings;

use super::clock::TickClock;
use crate::config::Config;

/// What the program's settings hold besides the config: facts of this
/// node and this run, found out at start-up and kept across reloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunFacts {
    /// All zero: the program does not check frames' destination MACs.
    pub public_mac: [u8; 6],
    pub private_mac: [u8; 6],
    /// `lb_common::half_open_per_cpu` of the table size, the NAT pool and
    /// the CPUs.
    pub half_open_per_cpu: u32,
    /// `ns = jiffies * tick_ns + tick_offset_ns`; a `tick_ns` of 0 leaves
    /// the program on the kernel clock (uncalibrated).
    pub tick_ns: u64,
    pub tick_offset_ns: u64,
}

impl RunFacts {
    /// The facts the running program was given, so a reload keeps them.
    pub fn of(settings: &Settings) -> Self {
        Self {
            public_mac: settings.public_mac,
            private_mac: settings.private_mac,
            half_open_per_cpu: settings.half_open_per_cpu,
            tick_ns: settings.tick_ns,
            tick_offset_ns: settings.tick_offset_ns,
        }
    }

    pub fn with_clock(self, clock: &TickClock) -> Self {
        Self {
            tick_ns: clock.tick_ns,
            tick_offset_ns: clock.offset_ns,
            ..self
        }
    }
}

/// The complete settings the program runs with under `config`.
pub fn kernel_settings(config: &Config, facts: &RunFacts) -> Settings {
    Settings {
        public_mac: facts.public_mac,
        private_mac: facts.private_mac,
        half_open_per_cpu: facts.half_open_per_cpu,
        tick_ns: facts.tick_ns,
        tick_offset_ns: facts.tick_offset_ns,
        ..config.to_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TEST_CONFIG;

    #[test]
    fn run_facts_survive_a_round_trip_through_the_settings() {
        let config = Config::parse(TEST_CONFIG, "lb.toml").expect("config");
        let facts = RunFacts {
            public_mac: [2, 0, 0, 0, 0, 1],
            private_mac: [2, 0, 0, 0, 0, 2],
            half_open_per_cpu: 4096,
            ..RunFacts::default()
        }
        .with_clock(&TickClock {
            hz: 250,
            tick_ns: 4_000_000,
            offset_ns: 17,
        });
        let settings = kernel_settings(&config, &facts);
        assert_eq!(RunFacts::of(&settings), facts);
        assert_eq!(
            settings.tcp_handshake_ns,
            config.to_settings().tcp_handshake_ns
        );
        assert_eq!(settings.ready, 1);
    }
}
