//! Prometheus metrics: the counters of the XDP program and the agent in the
//! text exposition format, served on `[metrics] listen` (off by default).
//! Names follow Prometheus conventions: an `lb_` prefix, `_total` for
//! counters, bytes and seconds as base units.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tracing::{debug, info};

use crate::{control::protocol::StatsReport, limits::AcceptGate, vrrp::runner::VrrpStatus};

/// Everything one scrape shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub instance: String,
    pub stats: StatsReport,
    pub vrrp: Option<VrrpStatus>,
}

/// The VRRP states `lb_vrrp_state` has a series for.
const VRRP_STATES: [&str; 5] = ["INIT", "BACKUP", "MASTER", "FAULT", "STOPPED"];

/// Escapes a label value as the exposition format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes metric families; each family's HELP and TYPE come once, before
/// its samples.
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
            return;
        }
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
    }

    /// One family with one sample per item.
    fn each<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: &[T],
        sample: impl Fn(&T) -> (Vec<(&str, String)>, u64),
    ) {
        self.family(name, kind, help);
        for item in items {
            let (labels, value) = sample(item);
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.sample(name, &labels, value);
        }
    }
}

/// The exposition text of `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut w = Writer { out: String::new() };
    let stats = &snapshot.stats;
    let service = |name: &str| vec![("service", name.to_string())];

    w.family("lb_info", "gauge", "The agent: instance and version.");
    w.sample(
        "lb_info",
        &[
            ("instance", &snapshot.instance),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );

    type S = crate::control::protocol::ServiceStatus;
    let services = &stats.services;
    w.each(
        "lb_service_packets_total",
        "counter",
        "Packets of the service's flows, both directions.",
        services,
        |s: &S| (service(&s.name), s.packets),
    );
    w.each(
        "lb_service_bytes_total",
        "counter",
        "Bytes of the service's flows, both directions.",
        services,
        |s: &S| (service(&s.name), s.bytes),
    );
    w.each(
        "lb_service_new_flows_total",
        "counter",
        "Connections scheduled to a backend.",
        services,
        |s: &S| (service(&s.name), s.new_flows),
    );
    w.each(
        "lb_service_rejected_total",
        "counter",
        "New connections refused with no backend up (TCP RST, UDP dropped).",
        services,
        |s: &S| (service(&s.name), s.rejected),
    );
    w.each(
        "lb_service_active_flows",
        "gauge",
        "Live flows of the service.",
        services,
        |s: &S| (service(&s.name), s.active_flows),
    );
    w.each(
        "lb_service_backends_up",
        "gauge",
        "Backends taking new connections (healthy and active).",
        services,
        |s: &S| (service(&s.name), u64::from(s.active_backends)),
    );

    type B = (String, crate::control::protocol::BackendStatus);
    let backend = |(name, b): &B| {
        vec![
            ("service", name.clone()),
            ("backend", format!("{}:{}", b.address, b.port)),
        ]
    };
    let backends = &stats.backends;
    w.each(
        "lb_backend_packets_total",
        "counter",
        "Packets of the backend's flows, both directions.",
        backends,
        |b: &B| (backend(b), b.1.packets),
    );
    w.each(
        "lb_backend_bytes_total",
        "counter",
        "Bytes of the backend's flows, both directions.",
        backends,
        |b: &B| (backend(b), b.1.bytes),
    );
    w.each(
        "lb_backend_new_flows_total",
        "counter",
        "Connections handed to the backend.",
        backends,
        |b: &B| (backend(b), b.1.new_flows),
    );
    w.each(
        "lb_backend_active_flows",
        "gauge",
        "Live flows to the backend.",
        backends,
        |b: &B| (backend(b), b.1.active_flows),
    );
    w.each(
        "lb_backend_nat_ports_in_use",
        "gauge",
        "NAT sources (SNAT address, port) towards the backend held by flows.",
        backends,
        |b: &B| (backend(b), b.1.nat_ports_in_use),
    );
    w.each(
        "lb_backend_nat_ports_capacity",
        "gauge",
        "NAT sources the backend's pool has: SNAT addresses x usable ports.",
        backends,
        |b: &B| (backend(b), b.1.nat_ports_capacity),
    );
    w.each(
        "lb_backend_up",
        "gauge",
        "1 while the backend's health checks pass (or it has none), else 0.",
        backends,
        |b: &B| {
            let up = !matches!(b.1.health, crate::control::protocol::Health::Down);
            (backend(b), u64::from(up))
        },
    );
    w.each(
        "lb_backend_health_transitions_total",
        "counter",
        "Health state changes since the agent started.",
        backends,
        |b: &B| (backend(b), b.1.transitions),
    );
    w.each(
        "lb_backend_effective_weight",
        "gauge",
        "Weight scheduled now (lower during slow start, 0 when not taking connections).",
        backends,
        |b: &B| (backend(b), u64::from(b.1.effective_weight)),
    );
    w.each(
        "lb_backend_admin_state",
        "gauge",
        "1 for the backend's admin state (active, draining, drained).",
        backends,
        |b: &B| {
            let state = serde_json::to_value(b.1.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut labels = backend(b);
            labels.push(("state", state));
            (labels, 1)
        },
    );

    w.each(
        "lb_xdp_packets_total",
        "counter",
        "Packets the XDP program handled, by what it did and why.",
        &stats.reasons,
        |r: &crate::control::protocol::ReasonCount| (vec![("reason", r.reason.clone())], r.packets),
    );
    w.family(
        "lb_conntrack_entries",
        "gauge",
        "Live flows in the connection table.",
    );
    w.sample("lb_conntrack_entries", &[], stats.flows);
    w.family(
        "lb_conntrack_capacity",
        "gauge",
        "Size of the connection table (conntrack.max_flows).",
    );
    w.sample("lb_conntrack_capacity", &[], stats.max_flows);
    w.family(
        "lb_conntrack_half_open_evicted_total",
        "counter",
        "Half-open flows ended to make room for new ones (the table's half-open share was full).",
    );
    w.sample(
        "lb_conntrack_half_open_evicted_total",
        &[],
        stats.half_open_evicted,
    );

    if let Some(vrrp) = &snapshot.vrrp {
        render_vrrp(&mut w, vrrp);
    }
    w.out
}

fn render_vrrp(w: &mut Writer, vrrp: &VrrpStatus) {
    w.family(
        "lb_vrrp_state",
        "gauge",
        "1 for the VRRP state this node is in.",
    );
    for state in VRRP_STATES {
        w.sample(
            "lb_vrrp_state",
            &[("state", state)],
            u64::from(vrrp.state == state),
        );
    }
    w.family(
        "lb_vrrp_priority",
        "gauge",
        "Priority advertised now (after tracking).",
    );
    w.sample("lb_vrrp_priority", &[], vrrp.priority);
    w.family(
        "lb_vrrp_transitions_total",
        "counter",
        "VRRP state changes since the agent started.",
    );
    w.sample("lb_vrrp_transitions_total", &[], vrrp.transitions);
    w.family(
        "lb_vrrp_adverts_sent_total",
        "counter",
        "VRRP advertisements sent.",
    );
    w.sample("lb_vrrp_adverts_sent_total", &[], vrrp.adverts_sent);
    w.family(
        "lb_vrrp_adverts_received_total",
        "counter",
        "Valid VRRP advertisements received.",
    );
    w.sample("lb_vrrp_adverts_received_total", &[], vrrp.adverts_received);
    w.family(
        "lb_vrrp_adverts_rejected_total",
        "counter",
        "VRRP advertisements ignored, by reason.",
    );
    for (reason, count) in &vrrp.adverts_rejected {
        w.sample(
            "lb_vrrp_adverts_rejected_total",
            &[("reason", reason)],
            count,
        );
    }
    w.family(
        "lb_floating_ip_provider_calls_total",
        "counter",
        "Floating IP provider operations (address changes, API requests, commands).",
    );
    w.sample(
        "lb_floating_ip_provider_calls_total",
        &[("provider", &vrrp.provider)],
        vrrp.provider_calls,
    );
    w.family(
        "lb_floating_ip_provider_errors_total",
        "counter",
        "Floating IP provider operations that failed.",
    );
    w.sample(
        "lb_floating_ip_provider_errors_total",
        &[("provider", &vrrp.provider)],
        vrrp.provider_errors,
    );
    w.family(
        "lb_floating_ip_held",
        "gauge",
        "1 for each floating address this node holds.",
    );
    for addr in &vrrp.holds {
        w.sample(
            "lb_floating_ip_held",
            &[("address", &addr.to_string()), ("provider", &vrrp.provider)],
            1,
        );
    }
}

/// Takes a snapshot per scrape (`None`: the agent's state is unavailable).
pub type SnapshotSource = Arc<dyn Fn() -> Option<Snapshot> + Send + Sync>;

async fn scrape(State(source): State<SnapshotSource>) -> impl IntoResponse {
    // Taking a snapshot waits for the agent's lock and may walk the flow
    // table: on a blocking thread, so the runtime's workers stay free.
    let snapshot = tokio::task::spawn_blocking(move || source())
        .await
        .ok()
        .flatten();
    match snapshot {
        Some(snapshot) => (
            axum::http::StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            render(&snapshot),
        ),
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "agent state unavailable\n".to_string(),
        ),
    }
}

/// Binds `listen`; the error says what to fix. Done before the program is
/// attached, so a busy port stops the start cleanly.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await.map_err(|error| {
        anyhow::anyhow!(
            "metrics.listen = {listen}: cannot listen ({error}); choose a free address or remove [metrics]"
        )
    })
}

/// For a request's headers to arrive: an idle or half-sent request gives
/// its connection back after this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept, keep-alive included; also bounds a
/// client that stops reading its response.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// What a connection beyond the cap gets before it is closed.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Serves `GET /metrics` on `listener` until `stop` completes, at most
/// `max_connections` at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: SnapshotSource,
    max_connections: usize,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Ok(listen) = listener.local_addr() {
        info!(%listen, max_connections, "serving Prometheus metrics on /metrics");
    }
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(source);
    let mut gate = AcceptGate::new("metrics", max_connections);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) if gate.back_off(&error, &mut stop).await => continue,
                    Err(_) => break,
                };
                let Some(permit) = gate.admit() else {
                    let _ = stream.try_write(REFUSED);
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _permit = permit;
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    match tokio::time::timeout(CONNECTION_LIFETIME, served).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => debug!(%error, "metrics connection"),
                        Err(_) => debug!("metrics connection closed after its lifetime"),
                    }
                });
            }
        }
    }
    // Scrapes in flight are cut: the agent is stopping.
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{
        BackendState, BackendStatus, Health, ReasonCount, ServiceStatus,
    };

    fn snapshot() -> Snapshot {
        let backend = BackendStatus {
            address: "10.200.0.21".parse().expect("address"),
            port: 80,
            weight: 1,
            state: BackendState::Active,
            health: Health::Up,
            last_check: Some("HTTP 200".into()),
            health_changed_secs: Some(3),
            transitions: 2,
            effective_weight: 1,
            active_flows: 4,
            packets: 100,
            bytes: 6400,
            new_flows: 7,
            nat_ports_in_use: 4,
            nat_ports_capacity: 113_840,
        };
        Snapshot {
            instance: "lab-lb1".into(),
            stats: StatsReport {
                services: vec![ServiceStatus {
                    name: "www".into(),
                    vip: "10.100.0.100".parse().expect("vip"),
                    port: 80,
                    protocol: "tcp".into(),
                    backends: 1,
                    active_backends: 1,
                    packets: 100,
                    bytes: 6400,
                    new_flows: 7,
                    active_flows: 4,
                    rejected: 0,
                }],
                backends: vec![("www".into(), backend)],
                reasons: vec![ReasonCount {
                    reason: "forwarded_to_backend".into(),
                    packets: 60,
                }],
                flows: 4,
                max_flows: 65536,
                half_open_evicted: 3,
            },
            vrrp: Some(VrrpStatus {
                state: "MASTER".into(),
                priority: 200,
                transitions: 1,
                adverts_rejected: [("ttl".to_string(), 2)].into_iter().collect(),
                holds: vec!["10.100.0.100".parse().expect("vip")],
                provider: "local".into(),
                provider_calls: 3,
                ..VrrpStatus::default()
            }),
        }
    }

    #[test]
    fn families_are_declared_once_before_their_samples() {
        let text = render(&snapshot());
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name");
                assert!(declared.insert(name.to_string()), "{name} declared twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("sample name");
                assert!(declared.contains(name), "{name} before its TYPE");
            }
        }
        assert!(text.contains("lb_service_packets_total{service=\"www\"} 100\n"));
        assert!(text
            .contains("lb_backend_active_flows{service=\"www\",backend=\"10.200.0.21:80\"} 4\n"));
        assert!(text.contains(
            "lb_backend_nat_ports_capacity{service=\"www\",backend=\"10.200.0.21:80\"} 113840\n"
        ));
        assert!(text.contains("lb_vrrp_state{state=\"MASTER\"} 1\n"));
        assert!(text.contains("lb_vrrp_state{state=\"BACKUP\"} 0\n"));
        assert!(text.contains("lb_vrrp_adverts_rejected_total{reason=\"ttl\"} 2\n"));
        assert!(text.contains("lb_xdp_packets_total{reason=\"forwarded_to_backend\"} 60\n"));
        assert!(text.contains("lb_floating_ip_provider_calls_total{provider=\"local\"} 3\n"));
        assert!(text.contains("lb_conntrack_half_open_evicted_total 3\n"));
    }

    #[test]
    fn counters_end_in_total_and_label_values_are_escaped() {
        let text = render(&snapshot());
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split(' ').skip(2);
            let (name, kind) = (parts.next().expect("name"), parts.next().expect("kind"));
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// Sends `request` (if any) and reads until the server closes (bounded).
    async fn http(addr: SocketAddr, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        if !request.is_empty() {
            stream.write_all(request).await.expect("write");
        }
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("closed within 5 s")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_refused_and_idle_ones_closed() {
        use tokio::io::AsyncReadExt;
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let source: SnapshotSource = Arc::new(|| Some(snapshot()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, source, 2, async {
            let _ = stopped.await;
        }));
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        // Nothing sent: closing a TCP socket with unread data resets it,
        // which could beat the 503 to the client.
        let refused = http(addr, b"").await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );

        // Idle connections are closed after the header timeout.
        for mut stream in idle {
            let mut rest = Vec::new();
            tokio::time::timeout(
                HEADER_TIMEOUT + Duration::from_secs(3),
                stream.read_to_end(&mut rest),
            )
            .await
            .expect("an idle connection is closed by the server")
            .ok();
        }
        let answer = http(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("lb_vrrp_state{state=\"MASTER\"} 1"));
        let _ = stop.send(());
        server.await.expect("the server stops");
    }
}
