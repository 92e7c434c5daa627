//! Calibrates the XDP program's clock: jiffies scaled and shifted onto
//! CLOCK_MONOTONIC nanoseconds (see `Settings::tick_ns`), so the program
//! reads time with an inlined load instead of a helper call while every
//! timestamp in the maps stays comparable with `monotonic_ns()`.
//!
//! The kernel's tick rate (CONFIG_HZ) is not exposed directly, so it is
//! measured: `/proc/timer_list` prints the monotonic time ("now at N
//! nsecs") and the jiffies counter ("jiffies: N") together; two readings a
//! short time apart give the rate, which must be one of the kernel's
//! configurable values. Jiffies advance in lock step with the monotonic
//! clock (the tick code derives them from it), so the mapping does not
//! drift.

use std::time::Duration;

use lb_common::Settings;

/// Where the kernel prints its timers, the monotonic time and jiffies.
pub const TIMER_LIST: &str = "/proc/timer_list";

/// The tick rates Linux offers (kernel/Kconfig.hz). A kernel with another
/// rate is not calibrated: the program then uses the clock helper.
const KNOWN_HZ: [u32; 4] = [100, 250, 300, 1000];

/// How far apart the two readings are: long enough that one tick of
/// uncertainty at each end cannot turn 250 Hz into 300 Hz.
pub const SAMPLE_GAP: Duration = Duration::from_millis(150);

/// Why the clock could not be calibrated.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("cannot read {TIMER_LIST}: {0}")]
    Read(#[source] std::io::Error),
    #[error("{TIMER_LIST} has no `{0}` line")]
    Missing(&'static str),
    #[error("the kernel's jiffies did not advance in {0:?}")]
    Stalled(Duration),
    #[error("the kernel tick rate measured {0:.0} Hz, which is none of the configurable rates")]
    UnknownRate(f64),
}

/// One simultaneous reading of the monotonic clock and jiffies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub now_ns: u64,
    pub jiffies: u64,
}

/// The calibrated mapping `ns = jiffies * tick_ns + offset_ns` (wrapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickClock {
    pub hz: u32,
    pub tick_ns: u64,
    pub offset_ns: u64,
}

impl TickClock {
    /// The mapping through `hz` that puts `reading.jiffies` at `reading.now_ns`.
    pub fn new(hz: u32, reading: Reading) -> Self {
        // The kernel's TICK_NSEC: the length of one jiffy, rounded.
        let tick_ns = (1_000_000_000 + u64::from(hz) / 2) / u64::from(hz);
        TickClock {
            hz,
            tick_ns,
            offset_ns: reading
                .now_ns
                .wrapping_sub(reading.jiffies.wrapping_mul(tick_ns)),
        }
    }

    /// Measures the tick rate from two readings taken some time apart.
    pub fn from_readings(first: Reading, second: Reading) -> Result<Self, ClockError> {
        let elapsed_ns = second.now_ns.saturating_sub(first.now_ns);
        let ticks = second.jiffies.wrapping_sub(first.jiffies);
        if ticks == 0 || ticks > u64::from(u32::MAX) {
            return Err(ClockError::Stalled(Duration::from_nanos(elapsed_ns)));
        }
        let measured = ticks as f64 * 1e9 / elapsed_ns.max(1) as f64;
        let nearest = KNOWN_HZ
            .iter()
            .copied()
            .min_by(|a, b| {
                let off = |hz: u32| (f64::from(hz) - measured).abs();
                off(*a).total_cmp(&off(*b))
            })
            .unwrap_or(KNOWN_HZ[0]);
        // Within 12%: two readings each up to a tick off, over SAMPLE_GAP.
        if (f64::from(nearest) - measured).abs() > f64::from(nearest) * 0.12 {
            return Err(ClockError::UnknownRate(measured));
        }
        Ok(Self::new(nearest, second))
    }

    /// Writes the mapping into the program's settings.
    pub fn apply(&self, settings: &mut Settings) {
        settings.tick_ns = self.tick_ns;
        settings.tick_offset_ns = self.offset_ns;
    }
}

/// Extracts the monotonic time and jiffies from `/proc/timer_list` text.
pub fn parse_timer_list(text: &str) -> Result<Reading, ClockError> {
    let now_ns = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("now at ")?
                .strip_suffix(" nsecs")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or(ClockError::Missing("now at <N> nsecs"))?;
    let jiffies = text
        .lines()
        .find_map(|line| line.strip_prefix("jiffies:")?.trim().parse().ok())
        .ok_or(ClockError::Missing("jiffies: <N>"))?;
    Ok(Reading { now_ns, jiffies })
}

fn read() -> Result<Reading, ClockError> {
    parse_timer_list(&std::fs::read_to_string(TIMER_LIST).map_err(ClockError::Read)?)
}

/// Calibrates against the running kernel; blocks for `SAMPLE_GAP`.
pub fn calibrate() -> Result<TickClock, ClockError> {
    let first = read()?;
    std::thread::sleep(SAMPLE_GAP);
    let second = read()?;
    TickClock::from_readings(first, second)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\n\
        now at 2114282262085 nsecs\n\ncpu: 0\n clock 0:\n  .base:       0000000005ec3b74\n\
        \x20 .idle_jiffies   : 4295420803\n  .last_jiffies   : 4295420804\n\
        jiffies: 4295420804\n\ncpu: 1\njiffies: 4295420805\n";

    fn reading(now_ns: u64, jiffies: u64) -> Reading {
        Reading { now_ns, jiffies }
    }

    #[test]
    fn reads_time_and_the_first_jiffies_line() {
        assert_eq!(
            parse_timer_list(SAMPLE).unwrap(),
            reading(2_114_282_262_085, 4_295_420_804)
        );
    }

    #[test]
    fn missing_lines_are_named() {
        let err = parse_timer_list("now at 5 nsecs\n").unwrap_err();
        assert!(err.to_string().contains("jiffies"), "{err}");
        let err = parse_timer_list("jiffies: 5\n").unwrap_err();
        assert!(err.to_string().contains("now at"), "{err}");
    }

    #[test]
    fn rates_one_tick_off_at_either_end_are_still_recognised() {
        let gap = SAMPLE_GAP.as_nanos() as u64;
        for hz in [100u64, 250, 300, 1000] {
            let ticks = hz * gap / 1_000_000_000;
            for measured in [ticks - 1, ticks, ticks + 1] {
                let clock = TickClock::from_readings(
                    reading(1_000, 4_294_000_000),
                    reading(1_000 + gap, 4_294_000_000 + measured),
                )
                .unwrap();
                assert_eq!(u64::from(clock.hz), hz, "{measured} ticks in {gap} ns");
            }
        }
    }

    #[test]
    fn the_mapping_puts_the_second_reading_on_the_monotonic_clock() {
        let clock = TickClock::from_readings(
            reading(10_000_000_000, (1 << 32) - 75_000),
            reading(10_150_000_000, (1 << 32) - 75_000 + 37),
        )
        .unwrap();
        assert_eq!(clock.hz, 250);
        assert_eq!(clock.tick_ns, 4_000_000);
        let mut settings = Settings::default();
        clock.apply(&mut settings);
        assert_eq!(
            settings.ticks_to_ns((1 << 32) - 75_000 + 37),
            Some(10_150_000_000)
        );
        assert_eq!(
            settings.ticks_to_ns((1 << 32) - 75_000 + 37 + 250),
            Some(11_150_000_000),
            "one second of ticks later"
        );
    }

    #[test]
    fn the_kernels_rounded_tick_length() {
        assert_eq!(TickClock::new(300, reading(0, 0)).tick_ns, 3_333_333);
        assert_eq!(TickClock::new(1000, reading(0, 0)).tick_ns, 1_000_000);
    }

    #[test]
    fn stalled_or_odd_rates_are_refused() {
        let err = TickClock::from_readings(reading(0, 7), reading(150_000_000, 7)).unwrap_err();
        assert!(matches!(err, ClockError::Stalled(_)), "{err}");
        let err = TickClock::from_readings(reading(0, 0), reading(150_000_000, 100)).unwrap_err();
        assert!(matches!(err, ClockError::UnknownRate(_)), "{err}");
    }

    #[test]
    fn calibrates_against_this_kernel_when_it_prints_its_timers() {
        if std::fs::metadata(TIMER_LIST).is_err() {
            return;
        }
        let clock = calibrate().unwrap();
        assert!(KNOWN_HZ.contains(&clock.hz), "{clock:?}");
        let mut settings = Settings::default();
        clock.apply(&mut settings);
        let now = parse_timer_list(&std::fs::read_to_string(TIMER_LIST).unwrap()).unwrap();
        let mapped = settings.ticks_to_ns(now.jiffies).unwrap();
        // Within two ticks of the kernel's own monotonic time.
        assert!(
            mapped.abs_diff(now.now_ns) <= 2 * clock.tick_ns,
            "mapped {mapped} vs monotonic {}",
            now.now_ns
        );
    }
}
