//! The keep-alive holder of the failover benchmark: `connections` HTTP/1.1
//! keep-alive connections to the VIP, each asking for `/` every `every`
//! for `duration`. A connection survives when every one of its requests got
//! a whole `200` answer on the connection it opened first; one error, one
//! timeout or one close by the far end and it has not. A hidden xtask
//! subcommand, run inside the client's namespace; it prints one `Held` line
//! per connection.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

/// At most this many connections, whatever the options say.
pub const MAX_CONNECTIONS: usize = 2000;
/// At most this long.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Longest answer header or body a request may get.
const MAX_ANSWER: usize = 64 * 1024;

/// What became of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Requests answered with a whole `200`.
    pub answered: u32,
    /// Why it ended early; `None`: it lasted the whole run.
    pub failure: Option<String>,
}

impl Held {
    pub fn survived(&self) -> bool {
        self.failure.is_none()
    }

    /// `ok <answered>` or `fail <answered> <why>`, the line `run` prints.
    pub fn line(&self) -> String {
        match &self.failure {
            None => format!("ok {}", self.answered),
            Some(why) => format!("fail {} {why}", self.answered),
        }
    }

    /// Parses a line `line()` printed.
    pub fn parse(line: &str) -> Option<Held> {
        let mut words = line.trim().splitn(3, ' ');
        let verdict = words.next()?;
        let answered = words.next()?.parse().ok()?;
        let failure = match verdict {
            "ok" => None,
            "fail" => Some(words.next().unwrap_or("").to_owned()),
            _ => return None,
        };
        Some(Held { answered, failure })
    }
}

/// One GET on `stream`; an error says what went wrong.
fn request(stream: &mut BufReader<TcpStream>, host: &str) -> Result<(), String> {
    let ask = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream
        .get_mut()
        .write_all(ask.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    match stream.read_line(&mut status) {
        Ok(0) => return Err("closed by the far end".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {}", status.trim()));
    }
    let mut length = None;
    let mut header_bytes = 0;
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line) {
            Ok(0) => return Err("closed in the headers".into()),
            Ok(n) => header_bytes += n,
            Err(e) => return Err(format!("read: {e}")),
        }
        if header_bytes > MAX_ANSWER {
            return Err("headers too long".into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            return Err("the server closes the connection".into());
        }
    }
    let length = length
        .filter(|&n| n <= MAX_ANSWER)
        .ok_or("no usable Content-Length")?;
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))
}

fn hold_one(
    target: SocketAddr,
    offset: Duration,
    every: Duration,
    end: Instant,
    timeout: Duration,
) -> Held {
    let mut held = Held {
        answered: 0,
        failure: None,
    };
    let stream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(stream) => stream,
        Err(e) => {
            held.failure = Some(format!("connect: {e}"));
            return held;
        }
    };
    if let Err(e) = stream.set_read_timeout(Some(timeout)) {
        held.failure = Some(format!("read timeout: {e}"));
        return held;
    }
    let host = target.to_string();
    let mut stream = BufReader::new(stream);
    let mut due = Instant::now() + offset;
    while due < end {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if let Err(why) = request(&mut stream, &host) {
            held.failure = Some(why);
            return held;
        }
        held.answered += 1;
        due += every;
    }
    held
}

/// Opens `connections` connections to `target` and uses each for
/// `duration`, one request every `every` (spread over the interval so the
/// requests do not come in bursts), each answer within `timeout`.
pub fn run(
    target: SocketAddr,
    connections: usize,
    every: Duration,
    duration: Duration,
    timeout: Duration,
) -> Result<Vec<Held>> {
    if connections == 0 || connections > MAX_CONNECTIONS {
        bail!("--connections must be 1..={MAX_CONNECTIONS}");
    }
    if every.is_zero() || duration > MAX_DURATION {
        bail!("--every must be more than 0 and --duration at most {MAX_DURATION:?}");
    }
    let end = Instant::now() + duration;
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let offset = every * i as u32 / connections as u32;
            std::thread::spawn(move || hold_one(target, offset, every, end, timeout))
        })
        .collect();
    Ok(threads
        .into_iter()
        .map(|thread| {
            thread.join().unwrap_or_else(|_| Held {
                answered: 0,
                failure: Some("the connection's thread panicked".into()),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn lines_round_trip() {
        for held in [
            Held {
                answered: 7,
                failure: None,
            },
            Held {
                answered: 3,
                failure: Some("read: Connection reset by peer (os error 104)".into()),
            },
        ] {
            assert_eq!(Held::parse(&held.line()), Some(held));
        }
        assert_eq!(Held::parse("maybe 3"), None);
        assert_eq!(Held::parse("ok x"), None);
    }

    /// A server that answers `answers` requests on each connection, then
    /// closes it.
    fn server(answers: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    for _ in 0..answers {
                        let mut line = String::new();
                        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                            if line == "\r\n" {
                                break;
                            }
                            line.clear();
                        }
                        let _ = reader
                            .get_mut()
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nweb1\n");
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn a_connection_that_lasts_survives_and_one_closed_early_does_not() {
        let every = Duration::from_millis(20);
        let lasting = run(
            server(100),
            2,
            every,
            Duration::from_millis(200),
            Duration::from_secs(2),
        )
        .unwrap();
        assert!(lasting.iter().all(Held::survived), "{lasting:?}");
        assert!(lasting.iter().all(|h| h.answered >= 5), "{lasting:?}");
        let closed = run(
            server(2),
            1,
            every,
            Duration::from_millis(200),
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(closed[0].answered, 2, "{closed:?}");
        assert!(!closed[0].survived());
    }
}
