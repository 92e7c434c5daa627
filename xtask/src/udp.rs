//! The lab's UDP responder (answers every datagram with the server's name)
//! and a bounded UDP client for it; both are hidden xtask subcommands.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// What `udp-query` prints for a query without a reply.
pub const NO_REPLY: &str = "<no reply>";
/// Most queries one `udp-query` sends.
pub const MAX_QUERIES: u32 = 1000;
/// Default lifetime of a responder: it stops by itself after a day.
pub const DEFAULT_RESPONDER_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Binds `bind`, writes `pid_file` (once bound), then answers every datagram
/// with `<name>\n` until `lifetime` has passed.
pub fn respond(
    bind: SocketAddr,
    name: &str,
    pid_file: Option<&Path>,
    lifetime: Duration,
) -> Result<()> {
    let socket = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    if let Some(pid_file) = pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pid_file.display()))?;
    }
    eprintln!("udp-responder {name}: answering on {bind} for {lifetime:?}");
    let reply = format!("{name}\n");
    let deadline = Instant::now() + lifetime;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(err) = socket.send_to(reply.as_bytes(), peer) {
                    eprintln!("udp-responder {name}: reply to {peer}: {err}");
                }
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err).context("receiving"),
        }
    }
    Ok(())
}

/// Sends one datagram to `to` from a fresh socket on `source_port` (0: a
/// fresh port, so a new flow each time) and waits up to `timeout` for the
/// reply.
pub fn query(
    to: SocketAddr,
    payload: &[u8],
    timeout: Duration,
    source_port: u16,
) -> Result<Option<String>> {
    let socket = UdpSocket::bind(("0.0.0.0", source_port)).context("binding a UDP socket")?;
    socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    socket
        .send_to(payload, to)
        .with_context(|| format!("sending to {to}"))?;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + timeout;
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == to => {
                return Ok(Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned()))
            }
            Ok(_) => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(None)
            }
            Err(err) if err.kind() == ErrorKind::ConnectionRefused => return Ok(None),
            Err(err) => return Err(err).context("receiving"),
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// `count` queries in a row; prints each reply (or `NO_REPLY`) on a line.
pub fn query_many(to: SocketAddr, count: u32, timeout: Duration, source_port: u16) -> Result<()> {
    if count > MAX_QUERIES {
        bail!("at most {MAX_QUERIES} queries");
    }
    for i in 0..count {
        let reply = query(to, format!("query {i}\n").as_bytes(), timeout, source_port)?;
        println!("{}", reply.as_deref().unwrap_or(NO_REPLY));
    }
    Ok(())
}

/// Most datagrams per second `flood` sends.
pub const MAX_FLOOD_RATE: u32 = 100_000;
/// Longest `flood`.
pub const MAX_FLOOD_DURATION: Duration = Duration::from_secs(60);
/// The source ports `flood` cycles through: below them the privileged
/// ports, and a new port for each datagram makes each one a new flow.
const FLOOD_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// What `flood` did.
#[derive(Debug, Clone, Copy)]
pub struct Flooded {
    pub datagrams: u64,
    pub took: Duration,
}

/// The UDP checksum of `segment` (header with a zero checksum + payload)
/// from `source` to `destination` (RFC 768's pseudo-header).
fn udp_checksum(source: Ipv4Addr, destination: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&source.octets());
    add(&destination.octets());
    add(&[0, 17]);
    add(&(segment.len() as u16).to_be_bytes());
    add(segment);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        // 0 means "no checksum" in UDP over IPv4.
        0 => 0xffff,
        checksum => checksum,
    }
}

/// A UDP datagram (header + payload) from `source`:`source_port`.
fn datagram(source: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let length = (8 + payload.len()) as u16;
    let mut segment = Vec::with_capacity(length as usize);
    segment.extend_from_slice(&source.port().to_be_bytes());
    segment.extend_from_slice(&to.port().to_be_bytes());
    segment.extend_from_slice(&length.to_be_bytes());
    segment.extend_from_slice(&[0, 0]);
    segment.extend_from_slice(payload);
    let checksum = udp_checksum(*source.ip(), *to.ip(), &segment);
    segment[6..8].copy_from_slice(&checksum.to_be_bytes());
    segment
}

/// Sends `rate` datagrams a second to `to` for `duration`, each from the
/// next source port, so that each is a new flow for a balancer: the
/// replication-lag benchmark's bounded new-flow load. A raw socket writes
/// the UDP headers (binding 50,000 sockets would measure the sender).
pub fn flood(to: SocketAddrV4, rate: u32, duration: Duration) -> Result<Flooded> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    if rate == 0 || rate > MAX_FLOOD_RATE || duration > MAX_FLOOD_DURATION {
        bail!("--rate must be 1..={MAX_FLOOD_RATE} and --duration at most {MAX_FLOOD_DURATION:?}");
    }
    // The address the route to `to` leaves from: the checksum covers it.
    let probe = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    probe
        .connect(to)
        .with_context(|| format!("no route to {to}"))?;
    let SocketAddr::V4(local) = probe.local_addr()? else {
        bail!("the route to {to} leaves from an IPv6 address");
    };
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    if raw < 0 {
        bail!("raw UDP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let destination = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let total = u64::from(rate) * duration.as_millis() as u64 / 1000;
    let mut ports = FLOOD_PORTS.cycle();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        // Catch up with the schedule, then sleep a little: an even rate.
        let due =
            (started.elapsed().as_nanos() as u64 * u64::from(rate) / 1_000_000_000).min(total);
        while sent < due {
            let port = ports.next().unwrap_or(*FLOOD_PORTS.start());
            let bytes = datagram(SocketAddrV4::new(*local.ip(), port), to, b"flood\n");
            // SAFETY: valid fd, buffer and address of the size passed.
            let n = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&destination as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                // A full socket buffer: the next round tries again.
                if error.raw_os_error() == Some(libc::ENOBUFS) {
                    break;
                }
                return Err(error).context("sending a datagram");
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(Flooded {
        datagrams: sent,
        took: started.elapsed(),
    })
}

/// Parses a duration with a unit (`1s`, `500ms`, `2m`, `1m30s`) by the
/// agent's own rule (lb-config's): a bare number is refused.
pub fn parse_duration(text: &str) -> Result<Duration> {
    lb_config::parse_duration(text).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(
            parse_duration("2").is_err(),
            "as the agent: no unit, no duration"
        );
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn flood_datagrams_carry_a_valid_checksum() {
        let source = SocketAddrV4::new(Ipv4Addr::new(10, 100, 0, 2), 1024);
        let to = SocketAddrV4::new(Ipv4Addr::new(10, 100, 0, 100), 5353);
        let bytes = datagram(source, to, b"flood\n");
        assert_eq!(&bytes[0..2], &1024u16.to_be_bytes());
        assert_eq!(&bytes[2..4], &5353u16.to_be_bytes());
        assert_eq!(&bytes[4..6], &14u16.to_be_bytes());
        // With its checksum in place, a valid segment and its pseudo-header
        // add up to all ones (RFC 1071).
        let mut words: Vec<u8> = Vec::new();
        words.extend_from_slice(&source.ip().octets());
        words.extend_from_slice(&to.ip().octets());
        words.extend_from_slice(&[0, 17, 0, bytes.len() as u8]);
        words.extend_from_slice(&bytes);
        words.push(0);
        let mut sum: u32 = words
            .chunks_exact(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert_ne!(&bytes[6..8], &[0, 0]);
        assert!(flood(to, 0, Duration::from_secs(1)).is_err());
        assert!(flood(to, MAX_FLOOD_RATE + 1, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn responder_answers_on_loopback() {
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Find a free port, then run the responder on it for a moment.
        let port = UdpSocket::bind(bind).unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server =
            std::thread::spawn(move || respond(addr, "webX", None, Duration::from_secs(2)));
        let reply = (0..20).find_map(|_| {
            query(addr, b"hi", Duration::from_millis(100), 0)
                .ok()
                .flatten()
        });
        assert_eq!(reply.as_deref(), Some("webX"));
        server.join().unwrap().unwrap();
    }
}
