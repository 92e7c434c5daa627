//! One health probe of one backend: TCP connect, HTTP request or command.
//! Probes always leave from the LB node's private address, the address the
//! backends allow, and go to the configured backend only.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use tokio::net::TcpSocket;

use crate::config::{CheckKind, HealthCheckConfig};

/// Largest HTTP body read when looking for `body_contains`.
const MAX_BODY: usize = 64 * 1024;

/// A check, ready to run against one backend.
#[derive(Debug, Clone)]
pub enum Probe {
    Tcp,
    Http {
        client: reqwest::Client,
        method: reqwest::Method,
        path: String,
        expect: [u16; 2],
        host: Option<String>,
        body_contains: Option<String>,
    },
    Exec {
        command: String,
        service: String,
    },
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub ok: bool,
    /// Short human-readable result ("connected", "HTTP 500", "exit 1: ...").
    pub detail: String,
}

impl CheckOutcome {
    fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    fn failed(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// The innermost error's message ("Connection refused (os error 111)"):
/// the outer ones only say which URL failed, which the backend column shows.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

impl Probe {
    /// The probe for `config`, or `None` for `type = "none"`. HTTP probes
    /// get a client bound to `source`.
    pub fn new(
        config: &HealthCheckConfig,
        service: &str,
        source: Ipv4Addr,
    ) -> Result<Option<Self>, String> {
        Ok(match config.kind {
            CheckKind::None => None,
            CheckKind::Tcp => Some(Self::Tcp),
            CheckKind::Exec => Some(Self::Exec {
                command: config.command.clone().unwrap_or_default(),
                service: service.to_string(),
            }),
            CheckKind::Http => {
                let client = reqwest::Client::builder()
                    .local_address(IpAddr::V4(source))
                    .timeout(config.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .build()
                    .map_err(|e| format!("building the HTTP check client: {e}"))?;
                let method = reqwest::Method::from_bytes(config.method.as_bytes())
                    .map_err(|e| format!("method {:?}: {e}", config.method))?;
                Some(Self::Http {
                    client,
                    method,
                    path: config.path.clone(),
                    expect: config.expect_status.into(),
                    host: config.host.clone(),
                    body_contains: config.body_contains.clone(),
                })
            }
        })
    }

    /// Runs the probe from `source` against `target`, failing after `timeout`.
    pub async fn run(
        &self,
        source: Ipv4Addr,
        target: SocketAddrV4,
        timeout: Duration,
    ) -> CheckOutcome {
        match tokio::time::timeout(timeout, self.run_inner(source, target)).await {
            Ok(outcome) => outcome,
            Err(_) => CheckOutcome::failed(format!("timed out after {timeout:?}")),
        }
    }

    async fn run_inner(&self, source: Ipv4Addr, target: SocketAddrV4) -> CheckOutcome {
        match self {
            Probe::Tcp => {
                let socket = match TcpSocket::new_v4() {
                    Ok(s) => s,
                    Err(e) => return CheckOutcome::failed(format!("socket: {e}")),
                };
                if let Err(e) = socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0))) {
                    return CheckOutcome::failed(format!("bind {source}: {e}"));
                }
                match socket.connect(SocketAddr::V4(target)).await {
                    Ok(_) => CheckOutcome::ok("connected"),
                    Err(e) => CheckOutcome::failed(format!("connect: {e}")),
                }
            }
            Probe::Http {
                client,
                method,
                path,
                expect,
                host,
                body_contains,
            } => {
                let mut request = client.request(method.clone(), format!("http://{target}{path}"));
                if let Some(host) = host {
                    request = request.header(reqwest::header::HOST, host);
                }
                let response = match request.send().await {
                    Ok(r) => r,
                    Err(e) => return CheckOutcome::failed(format!("request: {}", root_cause(&e))),
                };
                let status = response.status().as_u16();
                if status < expect[0] || status > expect[1] {
                    return CheckOutcome::failed(format!(
                        "HTTP {status} (expected {}-{})",
                        expect[0], expect[1]
                    ));
                }
                if let Some(needle) = body_contains {
                    let mut response = response;
                    let mut body = Vec::new();
                    loop {
                        match response.chunk().await {
                            Ok(Some(chunk)) => {
                                body.extend_from_slice(&chunk);
                                if body.len() >= MAX_BODY {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return CheckOutcome::failed(format!("reading body: {e}")),
                        }
                    }
                    if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                        return CheckOutcome::failed(format!(
                            "HTTP {status} but the body lacks {needle:?}"
                        ));
                    }
                }
                CheckOutcome::ok(format!("HTTP {status}"))
            }
            Probe::Exec { command, service } => {
                let (addr, port) = (target.ip().to_string(), target.port().to_string());
                let env = [
                    ("LB_BACKEND_ADDR", addr.as_str()),
                    ("LB_BACKEND_PORT", port.as_str()),
                    ("LB_SERVICE", service.as_str()),
                ];
                // The caller's timeout bounds it; dropping the future kills it.
                match crate::shell::run(command, "check", &[], &env, None).await {
                    Ok(done) if done.success() => {
                        CheckOutcome::ok(format!("exit 0 {}", done.first_line()).trim().to_string())
                    }
                    Ok(done) => {
                        CheckOutcome::failed(format!("{}: {}", done.status, done.last_words()))
                    }
                    Err(error) => CheckOutcome::failed(format!("check command: {error}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthCheckConfig;

    fn check(kind: &str, extra: &str) -> HealthCheckConfig {
        toml::from_str(&format!("type = \"{kind}\"\n{extra}")).expect("check config")
    }

    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

    #[tokio::test]
    async fn tcp_probe_sees_listeners() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let probe = Probe::new(&check("tcp", ""), "s", LOOPBACK)
            .expect("probe")
            .expect("some");
        let target = SocketAddrV4::new(LOOPBACK, port);
        assert!(probe.run(LOOPBACK, target, Duration::from_secs(1)).await.ok);
        drop(listener);
        // Not the freed port: a parallel test may take it, or the probe's
        // own ephemeral source port may equal it (a TCP self-connect).
        // Nothing listens on port 1 and no ephemeral port is that low.
        let closed = SocketAddrV4::new(LOOPBACK, 1);
        let outcome = probe.run(LOOPBACK, closed, Duration::from_secs(1)).await;
        assert!(
            !outcome.ok && outcome.detail.contains("connect"),
            "{outcome:?}"
        );
    }

    /// A one-shot HTTP server on loopback answering `status` with `body`.
    fn http_server(status: u16, body: &'static str) -> u16 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probe_checks_status_and_body() {
        let ok = check("http", "path = \"/health\"\nbody_contains = \"ok\"");
        let probe = Probe::new(&ok, "s", LOOPBACK)
            .expect("probe")
            .expect("some");
        let port = http_server(200, "ok\n");
        let outcome = probe
            .run(
                LOOPBACK,
                SocketAddrV4::new(LOOPBACK, port),
                Duration::from_secs(2),
            )
            .await;
        assert!(outcome.ok, "{outcome:?}");

        let port = http_server(500, "broken");
        let outcome = probe
            .run(
                LOOPBACK,
                SocketAddrV4::new(LOOPBACK, port),
                Duration::from_secs(2),
            )
            .await;
        assert!(
            !outcome.ok && outcome.detail.contains("HTTP 500"),
            "{outcome:?}"
        );

        let port = http_server(200, "nope");
        let outcome = probe
            .run(
                LOOPBACK,
                SocketAddrV4::new(LOOPBACK, port),
                Duration::from_secs(2),
            )
            .await;
        assert!(
            !outcome.ok && outcome.detail.contains("lacks"),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn exec_probe_gets_the_backend_and_times_out() {
        let config = check("exec", "command = \"test \\\"$LB_BACKEND_ADDR:$LB_BACKEND_PORT $LB_SERVICE\\\" = \\\"10.1.2.3:80 www\\\"\"");
        let probe = Probe::new(&config, "www", LOOPBACK)
            .expect("probe")
            .expect("some");
        let target = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 80);
        assert!(probe.run(LOOPBACK, target, Duration::from_secs(2)).await.ok);
        let other = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 4), 80);
        assert!(!probe.run(LOOPBACK, other, Duration::from_secs(2)).await.ok);

        let slow = Probe::new(&check("exec", "command = \"sleep 5\""), "www", LOOPBACK)
            .expect("probe")
            .expect("some");
        let outcome = slow.run(LOOPBACK, target, Duration::from_millis(200)).await;
        assert!(
            !outcome.ok && outcome.detail.contains("timed out"),
            "{outcome:?}"
        );
    }
}
