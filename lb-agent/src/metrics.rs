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

use crate::{
    control::protocol::{BackendStatus, Health, ServiceStatus, StatsReport},
    limits::AcceptGate,
    sync::{SyncState, SyncStatus},
    vrrp::runner::{VrrpState, VrrpStatus},
};

/// Everything one scrape shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub instance: String,
    pub stats: StatsReport,
    pub vrrp: Option<VrrpStatus>,
    pub sync: Option<SyncStatus>,
}

/// Escapes a label value as the exposition format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// One series of a family.
struct Sample {
    labels: Vec<(&'static str, String)>,
    value: u64,
}

/// A metric family and how to read its samples from a snapshot; `None`
/// leaves the family out (VRRP metrics on a node without VRRP).
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: fn(&Snapshot) -> Option<Vec<Sample>>,
}

fn single(value: u64) -> Option<Vec<Sample>> {
    Some(vec![Sample {
        labels: Vec::new(),
        value,
    }])
}

fn per_service(snapshot: &Snapshot, value: fn(&ServiceStatus) -> u64) -> Option<Vec<Sample>> {
    let samples = snapshot.stats.services.iter().map(|service| Sample {
        labels: vec![("service", service.name.clone())],
        value: value(service),
    });
    Some(samples.collect())
}

fn backend_labels(service: &str, backend: &BackendStatus) -> Vec<(&'static str, String)> {
    vec![
        ("service", service.to_string()),
        ("backend", format!("{}:{}", backend.address, backend.port)),
    ]
}

fn per_backend(snapshot: &Snapshot, value: fn(&BackendStatus) -> u64) -> Option<Vec<Sample>> {
    let samples = snapshot
        .stats
        .backends
        .iter()
        .map(|(service, backend)| Sample {
            labels: backend_labels(service, backend),
            value: value(backend),
        });
    Some(samples.collect())
}

fn admin_states(snapshot: &Snapshot) -> Option<Vec<Sample>> {
    let samples = snapshot.stats.backends.iter().map(|(service, backend)| {
        let mut labels = backend_labels(service, backend);
        labels.push(("state", backend.state.as_str().to_string()));
        Sample { labels, value: 1 }
    });
    Some(samples.collect())
}

fn reasons(snapshot: &Snapshot) -> Option<Vec<Sample>> {
    let samples = snapshot.stats.reasons.iter().map(|reason| Sample {
        labels: vec![("reason", reason.reason.clone())],
        value: reason.packets,
    });
    Some(samples.collect())
}

fn vrrp_single(snapshot: &Snapshot, value: fn(&VrrpStatus) -> u64) -> Option<Vec<Sample>> {
    single(value(snapshot.vrrp.as_ref()?))
}

/// One series per state of `all`, 1 for `current`.
fn one_hot<S: Copy + PartialEq>(all: &[S], current: S, name: fn(S) -> &'static str) -> Vec<Sample> {
    all.iter()
        .map(|&state| Sample {
            labels: vec![("state", name(state).to_string())],
            value: u64::from(state == current),
        })
        .collect()
}

/// 1 for the VRRP state the node is in.
fn vrrp_states(snapshot: &Snapshot) -> Option<Vec<Sample>> {
    let current = snapshot.vrrp.as_ref()?.state;
    Some(one_hot(&VrrpState::ALL, current, VrrpState::as_str))
}

fn adverts_rejected(snapshot: &Snapshot) -> Option<Vec<Sample>> {
    let vrrp = snapshot.vrrp.as_ref()?;
    let samples = vrrp.adverts_rejected.iter().map(|(reason, count)| Sample {
        labels: vec![("reason", reason.clone())],
        value: *count,
    });
    Some(samples.collect())
}

fn per_provider(snapshot: &Snapshot, value: fn(&VrrpStatus) -> u64) -> Option<Vec<Sample>> {
    let vrrp = snapshot.vrrp.as_ref()?;
    Some(vec![Sample {
        labels: vec![("provider", vrrp.provider.clone())],
        value: value(vrrp),
    }])
}

fn floating_ips_held(snapshot: &Snapshot) -> Option<Vec<Sample>> {
    let vrrp = snapshot.vrrp.as_ref()?;
    let samples = vrrp.holds.iter().map(|address| Sample {
        labels: vec![
            ("address", address.to_string()),
            ("provider", vrrp.provider.clone()),
        ],
        value: 1,
    });
    Some(samples.collect())
}

/// Every family the agent exposes, in exposition order.
fn sync_single(snapshot: &Snapshot, value: fn(&SyncStatus) -> u64) -> Option<Vec<Sample>> {
    single(value(snapshot.sync.as_ref()?))
}

/// 1 for the state of the sync link.
fn sync_states(snapshot: &Snapshot) -> Option<Vec<Sample>> {
    let current = snapshot.sync.as_ref()?.state;
    Some(one_hot(&SyncState::ALL, current, SyncState::as_str))
}

fn by_reason(counts: &std::collections::BTreeMap<String, u64>) -> Option<Vec<Sample>> {
    let samples = counts.iter().map(|(reason, count)| Sample {
        labels: vec![("reason", reason.clone())],
        value: *count,
    });
    Some(samples.collect())
}

/// The lag percentiles, in microseconds.
fn sync_lag(snapshot: &Snapshot) -> Option<Vec<Sample>> {
    let sync = snapshot.sync.as_ref()?;
    let samples = [("0.5", sync.lag_p50_us), ("0.99", sync.lag_p99_us)]
        .into_iter()
        .filter_map(|(quantile, lag)| {
            Some(Sample {
                labels: vec![("quantile", quantile.to_string())],
                value: lag?,
            })
        });
    Some(samples.collect())
}

const FAMILIES: &[Family] = &[
    Family {
        name: "lb_info",
        kind: Kind::Gauge,
        help: "The agent: instance and version.",
        samples: |s| {
            Some(vec![Sample {
                labels: vec![
                    ("instance", s.instance.clone()),
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                ],
                value: 1,
            }])
        },
    },
    Family {
        name: "lb_service_packets_total",
        kind: Kind::Counter,
        help: "Packets of the service's flows, both directions.",
        samples: |s| per_service(s, |service| service.packets),
    },
    Family {
        name: "lb_service_bytes_total",
        kind: Kind::Counter,
        help: "Bytes of the service's flows, both directions.",
        samples: |s| per_service(s, |service| service.bytes),
    },
    Family {
        name: "lb_service_new_flows_total",
        kind: Kind::Counter,
        help: "Connections scheduled to a backend.",
        samples: |s| per_service(s, |service| service.new_flows),
    },
    Family {
        name: "lb_service_rejected_total",
        kind: Kind::Counter,
        help: "New connections refused with no backend up (TCP RST, UDP dropped).",
        samples: |s| per_service(s, |service| service.rejected),
    },
    Family {
        name: "lb_service_active_flows",
        kind: Kind::Gauge,
        help: "Live flows of the service.",
        samples: |s| per_service(s, |service| service.active_flows),
    },
    Family {
        name: "lb_service_backends_up",
        kind: Kind::Gauge,
        help: "Backends taking new connections (healthy and active).",
        samples: |s| per_service(s, |service| u64::from(service.active_backends)),
    },
    Family {
        name: "lb_backend_packets_total",
        kind: Kind::Counter,
        help: "Packets of the backend's flows, both directions.",
        samples: |s| per_backend(s, |backend| backend.packets),
    },
    Family {
        name: "lb_backend_bytes_total",
        kind: Kind::Counter,
        help: "Bytes of the backend's flows, both directions.",
        samples: |s| per_backend(s, |backend| backend.bytes),
    },
    Family {
        name: "lb_backend_new_flows_total",
        kind: Kind::Counter,
        help: "Connections handed to the backend.",
        samples: |s| per_backend(s, |backend| backend.new_flows),
    },
    Family {
        name: "lb_backend_active_flows",
        kind: Kind::Gauge,
        help: "Live flows to the backend.",
        samples: |s| per_backend(s, |backend| backend.active_flows),
    },
    Family {
        name: "lb_backend_nat_ports_in_use",
        kind: Kind::Gauge,
        help: "NAT sources (SNAT address, port) towards the backend held by flows.",
        samples: |s| per_backend(s, |backend| backend.nat_ports_in_use),
    },
    Family {
        name: "lb_backend_nat_ports_capacity",
        kind: Kind::Gauge,
        help: "NAT sources the backend's pool has: SNAT addresses x usable ports.",
        samples: |s| per_backend(s, |backend| backend.nat_ports_capacity),
    },
    Family {
        name: "lb_backend_up",
        kind: Kind::Gauge,
        help: "1 while the backend's health checks pass (or it has none), else 0.",
        samples: |s| per_backend(s, |backend| u64::from(backend.health != Health::Down)),
    },
    Family {
        name: "lb_backend_health_transitions_total",
        kind: Kind::Counter,
        help: "Health state changes since the agent started.",
        samples: |s| per_backend(s, |backend| backend.transitions),
    },
    Family {
        name: "lb_backend_effective_weight",
        kind: Kind::Gauge,
        help: "Weight scheduled now (lower during slow start, 0 when not taking connections).",
        samples: |s| per_backend(s, |backend| u64::from(backend.effective_weight)),
    },
    Family {
        name: "lb_backend_admin_state",
        kind: Kind::Gauge,
        help: "1 for the backend's admin state (active, draining, drained).",
        samples: admin_states,
    },
    Family {
        name: "lb_xdp_packets_total",
        kind: Kind::Counter,
        help: "Packets the XDP program handled, by what it did and why.",
        samples: reasons,
    },
    Family {
        name: "lb_conntrack_entries",
        kind: Kind::Gauge,
        help: "Live flows in the connection table.",
        samples: |s| single(s.stats.flows),
    },
    Family {
        name: "lb_conntrack_capacity",
        kind: Kind::Gauge,
        help: "Size of the connection table (conntrack.max_flows).",
        samples: |s| single(s.stats.max_flows),
    },
    Family {
        name: "lb_conntrack_half_open_evicted_total",
        kind: Kind::Counter,
        help: "Half-open flows ended to make room for new ones (the table's half-open share was full).",
        samples: |s| single(s.stats.half_open_evicted),
    },
    Family {
        name: "lb_nat_source_push_failures_total",
        kind: Kind::Counter,
        help: "NAT sources a port pool's queue refused to take back, each lost to its pool until a restart (a fault: alert on any).",
        samples: |s| single(s.stats.nat_source_push_failures),
    },
    Family {
        name: "lb_vrrp_state",
        kind: Kind::Gauge,
        help: "1 for the VRRP state this node is in.",
        samples: vrrp_states,
    },
    Family {
        name: "lb_vrrp_priority",
        kind: Kind::Gauge,
        help: "Priority advertised now (after tracking).",
        samples: |s| vrrp_single(s, |vrrp| u64::from(vrrp.priority)),
    },
    Family {
        name: "lb_vrrp_transitions_total",
        kind: Kind::Counter,
        help: "VRRP state changes since the agent started.",
        samples: |s| vrrp_single(s, |vrrp| vrrp.transitions),
    },
    Family {
        name: "lb_vrrp_missed_deadlines_total",
        kind: Kind::Counter,
        help: "VRRP timers (advert due, master down) that fired more than half an advert interval late.",
        samples: |s| vrrp_single(s, |vrrp| vrrp.missed_deadlines),
    },
    Family {
        name: "lb_vrrp_adverts_sent_total",
        kind: Kind::Counter,
        help: "VRRP advertisements sent.",
        samples: |s| vrrp_single(s, |vrrp| vrrp.adverts_sent),
    },
    Family {
        name: "lb_vrrp_adverts_received_total",
        kind: Kind::Counter,
        help: "Valid VRRP advertisements received.",
        samples: |s| vrrp_single(s, |vrrp| vrrp.adverts_received),
    },
    Family {
        name: "lb_vrrp_adverts_rejected_total",
        kind: Kind::Counter,
        help: "VRRP advertisements ignored, by reason.",
        samples: adverts_rejected,
    },
    Family {
        name: "lb_floating_ip_provider_calls_total",
        kind: Kind::Counter,
        help: "Floating IP provider operations (address changes, API requests, commands).",
        samples: |s| per_provider(s, |vrrp| vrrp.provider_calls),
    },
    Family {
        name: "lb_floating_ip_provider_errors_total",
        kind: Kind::Counter,
        help: "Floating IP provider operations that failed.",
        samples: |s| per_provider(s, |vrrp| vrrp.provider_errors),
    },
    Family {
        name: "lb_floating_ip_held",
        kind: Kind::Gauge,
        help: "1 for each floating address this node holds.",
        samples: floating_ips_held,
    },
    Family {
        name: "lb_sync_state",
        kind: Kind::Gauge,
        help: "1 for the state of flow sync with the peer (connecting, resyncing, in-sync).",
        samples: sync_states,
    },
    Family {
        name: "lb_sync_lag_microseconds",
        kind: Kind::Gauge,
        help: "Time from a flow change here to the peer's acknowledgement, over recent changes.",
        samples: sync_lag,
    },
    Family {
        name: "lb_sync_records_sent_total",
        kind: Kind::Counter,
        help: "Flow records sent to the peer (live and full transfers).",
        samples: |s| sync_single(s, |sync| sync.records_sent),
    },
    Family {
        name: "lb_sync_records_received_total",
        kind: Kind::Counter,
        help: "Flow records received from the peer.",
        samples: |s| sync_single(s, |sync| sync.records_received),
    },
    Family {
        name: "lb_sync_flows_installed_total",
        kind: Kind::Counter,
        help: "The peer's flows installed in this node's tables.",
        samples: |s| sync_single(s, |sync| sync.installed),
    },
    Family {
        name: "lb_sync_records_refused_total",
        kind: Kind::Counter,
        help: "The peer's records this node could not install, by reason.",
        samples: |s| by_reason(&s.sync.as_ref()?.refused),
    },
    Family {
        name: "lb_sync_datagrams_rejected_total",
        kind: Kind::Counter,
        help: "Sync datagrams rejected (forged, replayed, wrong key, ...), by reason.",
        samples: |s| by_reason(&s.sync.as_ref()?.rejected),
    },
    Family {
        name: "lb_sync_messages_lost_total",
        kind: Kind::Counter,
        help: "Messages of the peer that never arrived.",
        samples: |s| sync_single(s, |sync| sync.lost_messages),
    },
    Family {
        name: "lb_sync_dropped_total",
        kind: Kind::Counter,
        help: "Changes dropped before reaching the peer: a full send queue or a full event ring.",
        samples: |s| sync_single(s, |sync| sync.queue_dropped + sync.events_lost),
    },
    Family {
        name: "lb_sync_transfers_received_total",
        kind: Kind::Counter,
        help: "Complete full transfers of the peer's table received.",
        samples: |s| sync_single(s, |sync| sync.transfers_received),
    },
];

/// Appends `family`'s HELP and TYPE, then its samples.
fn write_family(out: &mut String, family: &Family, samples: &[Sample]) {
    let Family {
        name, kind, help, ..
    } = family;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
    for Sample { labels, value } in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
            continue;
        }
        let labels: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// The exposition text of `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for family in FAMILIES {
        if let Some(samples) = (family.samples)(snapshot) {
            write_family(&mut out, family, &samples);
        }
    }
    out
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
    use crate::control::protocol::{BackendState, ReasonCount};

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
                nat_source_push_failures: 2,
            },
            vrrp: Some(VrrpStatus {
                state: VrrpState::Master,
                priority: 200,
                transitions: 1,
                adverts_rejected: [("ttl".to_string(), 2)].into_iter().collect(),
                holds: vec!["10.100.0.100".parse().expect("vip")],
                provider: "local".into(),
                provider_calls: 3,
                ..VrrpStatus::default()
            }),
            sync: Some(SyncStatus {
                state: SyncState::InSync,
                lag_p50_us: Some(1200),
                lag_p99_us: Some(4800),
                installed: 9,
                rejected: [("bad_tag".to_string(), 1)].into_iter().collect(),
                ..SyncStatus::default()
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
        assert!(text.contains("lb_nat_source_push_failures_total 2\n"));
        assert!(text.contains("lb_sync_state{state=\"in-sync\"} 1\n"));
        assert!(text.contains("lb_sync_lag_microseconds{quantile=\"0.99\"} 4800\n"));
        assert!(text.contains("lb_sync_flows_installed_total 9\n"));
        assert!(text.contains("lb_sync_datagrams_rejected_total{reason=\"bad_tag\"} 1\n"));
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
