//! The failover probe: a new TCP connection with an HTTP request through the
//! VIP every few milliseconds, each on its own thread so that a hanging
//! probe does not stop the clock. What it prints is a list of samples; the
//! outage is read off them (`outage`). A hidden xtask subcommand, run inside
//! the client's namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

/// At most this many probes per run, whatever the options say.
pub const MAX_PROBES: usize = 5000;

/// One probe: when it started (since the run began) and whether a whole
/// HTTP answer came back within the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub started: Duration,
    pub ok: bool,
}

impl Sample {
    /// `<started ms> <ok|fail>`, the line format `probe` prints.
    pub fn line(&self) -> String {
        let verdict = if self.ok { "ok" } else { "fail" };
        format!("{:.1} {verdict}", self.started.as_secs_f64() * 1000.0)
    }

    /// Parses a line `line()` printed.
    pub fn parse(line: &str) -> Option<Sample> {
        let (ms, verdict) = line.trim().split_once(' ')?;
        let ms: f64 = ms.parse().ok()?;
        let ok = match verdict {
            "ok" => true,
            "fail" => false,
            _ => return None,
        };
        Some(Sample {
            started: Duration::from_secs_f64(ms / 1000.0),
            ok,
        })
    }
}

/// One HTTP/1.0 GET on a new connection; true when a `200` status line
/// arrived before `timeout`.
fn probe_once(target: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let Ok(mut stream) = TcpStream::connect_timeout(&target, timeout) else {
        return false;
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero()
        || stream.set_read_timeout(Some(left)).is_err()
        || stream
            .write_all(format!("GET / HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())
            .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline && answer.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
    }
    answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200")
}

/// Starts a probe every `every` for `duration` and returns the samples in
/// start order once every probe has finished.
pub fn run(
    target: SocketAddr,
    every: Duration,
    duration: Duration,
    timeout: Duration,
) -> Result<Vec<Sample>> {
    if every.is_zero() {
        bail!("--every must be more than 0");
    }
    let count = (duration.as_nanos() / every.as_nanos()) as usize;
    if count == 0 || count > MAX_PROBES {
        bail!("{count} probes: choose --every and --duration for 1..={MAX_PROBES}");
    }
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let mut threads = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            let started = start.elapsed();
            let ok = probe_once(target, timeout);
            let _ = tx.send(Sample { started, ok });
        }));
    }
    drop(tx);
    for thread in threads {
        let _ = thread.join();
    }
    let mut samples: Vec<Sample> = rx.into_iter().collect();
    samples.sort_by_key(|s| s.started);
    Ok(samples)
}

/// The samples among the lines `probe` printed.
pub fn samples(lines: &[String]) -> Vec<Sample> {
    lines
        .iter()
        .filter_map(|line| Sample::parse(line))
        .collect()
}

/// The outage the samples show: from the start of the first failed probe to
/// the start of the first successful probe after the last failure (the time
/// during which a new connection could fail). Zero when none failed.
pub fn outage(samples: &[Sample]) -> Duration {
    let Some(first_fail) = samples.iter().find(|s| !s.ok) else {
        return Duration::ZERO;
    };
    let Some(last_fail) = samples.iter().rev().find(|s| !s.ok) else {
        return Duration::ZERO;
    };
    let recovered = samples
        .iter()
        .find(|s| s.ok && s.started > last_fail.started)
        .map_or(last_fail.started, |s| s.started);
    recovered.saturating_sub(first_fail.started)
}

/// IP protocol number of VRRP.
const IPPROTO_VRRP: i32 = 112;

/// Waits until a VRRP advertisement from `from` arrives in this network
/// namespace (a raw socket sees a copy; the VRRP speaker still gets it).
/// The failover benchmark kills the master right after one, so every run
/// starts at the same phase of the advert timer.
pub fn wait_advert(from: std::net::Ipv4Addr, timeout: Duration) -> Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, IPPROTO_VRRP) };
    if raw < 0 {
        bail!("raw VRRP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros().max(1) as libc::suseconds_t,
        };
        // SAFETY: valid fd and option value of the size passed.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 20 && buf[12..16] == from.octets() {
            return Ok(());
        }
    }
    bail!("no VRRP advertisement from {from} within {timeout:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64, ok: bool) -> Sample {
        Sample {
            started: Duration::from_millis(ms),
            ok,
        }
    }

    #[test]
    fn outage_spans_first_failure_to_recovery() {
        let samples = [s(0, true), s(10, false), s(20, false), s(30, true)];
        assert_eq!(outage(&samples), Duration::from_millis(20));
        let scattered = [s(0, false), s(10, true), s(20, false), s(30, true)];
        assert_eq!(outage(&scattered), Duration::from_millis(30));
        assert_eq!(outage(&[s(0, true), s(10, true)]), Duration::ZERO);
    }

    #[test]
    fn lines_round_trip() {
        let sample = s(1234, false);
        assert_eq!(Sample::parse(&sample.line()), Some(sample));
        assert_eq!(Sample::parse("12.5 maybe"), None);
    }

    #[test]
    fn probes_count_failures_against_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let target = listener.local_addr().expect("addr");
        drop(listener);
        let samples = run(
            target,
            Duration::from_millis(10),
            Duration::from_millis(50),
            Duration::from_millis(100),
        )
        .expect("probe run");
        assert_eq!(samples.len(), 5);
        assert!(samples.iter().all(|s| !s.ok));
    }
}
