//! The lab's UDP responder (answers every datagram with the server's name)
//! and a bounded UDP client for it; both are hidden xtask subcommands.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
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
