//! Renders control API replies for people (aligned tables) or as JSON, and
//! writes the CLI's output.

use std::io::Write;

use crate::{
    control::protocol::{
        BackendState, BackendStatus, Health, Reply, ServiceStatus, SnatStatus, StatsReport,
    },
    ports::PortSlice,
    vrrp::runner::VrrpStatus,
};

/// The exit status of a command whose reader went away, as a shell shows
/// a process killed by SIGPIPE (128 + 13).
pub const EXIT_BROKEN_PIPE: i32 = 141;

/// Writes `text` to stdout. When the reader is gone (`lb-agent stats |
/// head -1`) the rest is not wanted: the command ends at once, quietly,
/// with `EXIT_BROKEN_PIPE`, as classic tools do (Rust ignores SIGPIPE, so
/// `print!` would panic instead). Any other failure is told on stderr.
pub fn stdout(text: &str) {
    if let Err(error) = write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        stderr(&format!("lb-agent: cannot write the output: {error}\n"));
        std::process::exit(1);
    }
}

/// Writes `text` to stderr; a closed stderr ends the command like a closed
/// stdout does, and other failures have nowhere to be told.
pub fn stderr(text: &str) {
    if let Err(error) = write_all(&mut std::io::stderr().lock(), text.as_bytes()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
    }
}

fn write_all(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    debug_assert!(
        rows.iter().all(|r| r.len() == headers.len()),
        "every row has a cell per header"
    );
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().cloned().map(line));
    out.join("\n") + "\n"
}

fn services(list: &[ServiceStatus]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("{}:{}/{}", s.vip, s.port, s.protocol),
                format!("{}/{}", s.active_backends, s.backends),
                s.active_flows.to_string(),
                s.new_flows.to_string(),
                s.rejected.to_string(),
                s.packets.to_string(),
                s.bytes.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "VIP",
            "BACKENDS",
            "FLOWS",
            "NEW FLOWS",
            "REJECTED",
            "PACKETS",
            "BYTES",
        ],
        &rows,
    )
}

fn backend_row(b: &BackendStatus) -> Vec<String> {
    vec![
        format!("{}:{}", b.address, b.port),
        if b.effective_weight == b.weight {
            b.weight.to_string()
        } else {
            format!("{}/{}", b.effective_weight, b.weight)
        },
        match b.state {
            BackendState::Active => "active".into(),
            BackendState::Draining => "draining".into(),
            BackendState::Drained => "drained".into(),
        },
        match (b.health, b.health_changed_secs) {
            (Health::Unchecked, _) => "-".into(),
            (Health::Up, Some(secs)) => format!("up {secs}s"),
            (Health::Down, Some(secs)) => format!("down {secs}s"),
            (Health::Up, None) => "up".into(),
            (Health::Down, None) => "down".into(),
        },
        b.last_check.clone().unwrap_or_else(|| "-".into()),
        b.active_flows.to_string(),
        format!("{}/{}", b.nat_ports_in_use, b.nat_ports_capacity),
        b.new_flows.to_string(),
        b.packets.to_string(),
        b.bytes.to_string(),
    ]
}

const BACKEND_HEADERS: [&str; 10] = [
    "BACKEND",
    "WEIGHT",
    "STATE",
    "HEALTH",
    "LAST CHECK",
    "FLOWS",
    "NAT PORTS",
    "NEW FLOWS",
    "PACKETS",
    "BYTES",
];

/// Backends with their service, reasons with packets, flow table fill.
fn counters<'a>(
    backends: impl Iterator<Item = (&'a str, &'a BackendStatus)>,
    reasons: &[crate::control::protocol::ReasonCount],
    flows: u64,
    max_flows: u64,
) -> String {
    let rows: Vec<Vec<String>> = backends
        .map(|(service, b)| {
            let mut row = vec![service.to_string()];
            row.extend(backend_row(b));
            row
        })
        .collect();
    let mut headers = vec!["SERVICE"];
    headers.extend(BACKEND_HEADERS);
    let mut out = table(&headers, &rows);
    out.push('\n');
    let rows: Vec<Vec<String>> = reasons
        .iter()
        .filter(|r| r.packets > 0)
        .map(|r| vec![r.reason.clone(), r.packets.to_string()])
        .collect();
    out.push_str(&table(&["REASON", "PACKETS"], &rows));
    out.push_str(&format!(
        "\nflow table: {flows} live of {max_flows} entries\n"
    ));
    out
}

fn stats(report: &StatsReport) -> String {
    let mut out = services(&report.services);
    out.push('\n');
    out.push_str(&counters(
        report.backends.iter().map(|(s, b)| (s.as_str(), b)),
        &report.reasons,
        report.flows,
        report.max_flows,
    ));
    if report.half_open_evicted > 0 {
        out.push_str(&format!(
            "half-open flows that gave way to new ones: {}\n",
            report.half_open_evicted
        ));
    }
    if report.nat_source_push_failures > 0 {
        out.push_str(&format!(
            "NAT sources lost to their pools (a fault; see the agent's log): {}\n",
            report.nat_source_push_failures
        ));
    }
    out
}

fn sync_status(sync: Option<&crate::sync::SyncStatus>, ha: bool) -> String {
    let Some(s) = sync else {
        return if ha {
            "flow sync: not configured (established connections end when the peer takes over)\n"
                .into()
        } else {
            String::new()
        };
    };
    let ms = |us: Option<u64>| {
        us.map_or_else(|| "-".into(), |us| format!("{:.1} ms", us as f64 / 1000.0))
    };
    let peer = s.peer.map_or_else(|| "-".into(), |p| p.to_string());
    let heard = s
        .peer_heard_secs
        .map_or_else(|| "never".into(), |secs| format!("{secs}s ago"));
    format!(
        "flow sync: {} with {peer} (heard {heard}; peer {} this node's flows)\n  lag p50 {}, p99 {}; records sent {}, received {}, installed {}, removed {}\n  refused {:?}, rejected {:?}, lost messages {}, queue dropped {}, events lost {}\n  full transfers sent {}, received {} (last: {} records)\n",
        s.state.as_str(),
        if s.peer_in_sync { "holds" } else { "does not hold yet" },
        ms(s.lag_p50_us),
        ms(s.lag_p99_us),
        s.records_sent,
        s.records_received,
        s.installed,
        s.removed,
        s.refused,
        s.rejected,
        s.lost_messages,
        s.queue_dropped,
        s.events_lost,
        s.transfers_sent,
        s.transfers_received,
        s.last_transfer_records.map_or_else(|| "-".into(), |n| n.to_string()),
    )
}

fn node_status(status: &crate::control::protocol::NodeStatus) -> String {
    let mut out = format!("instance {}\n", status.instance);
    match &status.vrrp {
        None => out.push_str("vrrp: not configured (this node always serves its VIPs)\n"),
        Some(v) => {
            let ago = v
                .last_transition_unix
                .and_then(|t| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|now| now.as_secs().saturating_sub(t))
                })
                .map_or_else(|| "-".to_string(), |s| format!("{s}s ago"));
            let holds: Vec<String> = v.holds.iter().map(|a| a.to_string()).collect();
            out.push_str(&format!(
                "vrrp: {} (vrid {}, priority {}, v{}), master {}\n  last transition {ago}: {}\n  floating IP ({}): {} (provider calls {}, errors {}{})\n  adverts sent {}, received {}, rejected {:?}\n",
                v.state,
                v.vrid,
                v.priority,
                v.version,
                v.master.map_or_else(|| "unknown".to_string(), |m| m.to_string()),
                v.last_transition_reason,
                v.provider,
                if holds.is_empty() { "not held".to_string() } else { holds.join(", ") },
                v.provider_calls,
                v.provider_errors,
                v.provider_last_error
                    .as_ref()
                    .map_or_else(String::new, |e| format!("; last: {e}")),
                v.adverts_sent,
                v.adverts_received,
                v.adverts_rejected,
            ));
        }
    }
    if let Some(snat) = &status.snat {
        out.push_str(&snat_status(snat, status.vrrp.as_ref()));
    }
    out.push_str(&sync_status(status.sync.as_ref(), status.vrrp.is_some()));
    out.push('\n');
    out.push_str(&services(&status.services));
    out.push('\n');
    out.push_str(&counters(
        status
            .backends
            .iter()
            .map(|b| (b.service.as_str(), &b.backend)),
        &status.reasons,
        status.flows,
        status.max_flows,
    ));
    out
}

/// The SNAT sources, which of them this node holds, its NAT port slice and
/// what they mean for a failover.
fn snat_status(snat: &SnatStatus, vrrp: Option<&VrrpStatus>) -> String {
    let list = |addresses: &[std::net::Ipv4Addr]| {
        let shown: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        shown.join(", ")
    };
    let ranges: Vec<String> = snat.ports.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    let slice = match snat.port_slice {
        PortSlice::Whole => String::new(),
        half => format!(" (this node's {} half)", half.as_str()),
    };
    let mut out = format!(
        "snat: {}; NAT ports {}{slice}\n",
        list(&snat.addresses),
        ranges.join(", ")
    );
    if snat.floating {
        let held = vrrp.map(|v| v.snat_holds.as_slice()).unwrap_or_default();
        let held = if held.is_empty() {
            "not held here".to_string()
        } else {
            format!("held here: {}", list(held))
        };
        out.push_str(&format!(
            "  shared by the pair, held by the VRRP master ({held}): established flows can survive a failover\n"
        ));
    } else if vrrp.is_some() {
        out.push_str(
            "  this node's own addresses: established flows cannot survive a failover (backends reply to this node's own address; set vrrp.snat_address)\n",
        );
    }
    out
}

/// Human rendering of a reply.
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Services(list) => services(list),
        Reply::Backends(list) => table(
            &BACKEND_HEADERS,
            &list.iter().map(backend_row).collect::<Vec<_>>(),
        ),
        Reply::Stats(report) => stats(report),
        Reply::Status(status) => node_status(status),
        Reply::Changed { message } => format!("{message}\n"),
    }
}

/// JSON rendering of a reply's payload.
pub fn render_json(reply: &Reply) -> String {
    let value = match reply {
        Reply::Services(list) => serde_json::to_string_pretty(list),
        Reply::Backends(list) => serde_json::to_string_pretty(list),
        Reply::Stats(report) => serde_json::to_string_pretty(report),
        Reply::Status(status) => serde_json::to_string_pretty(status),
        Reply::Changed { message } => {
            serde_json::to_string_pretty(&serde_json::json!({ "message": message }))
        }
    };
    value.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn backend_table_is_aligned() {
        let reply = Reply::Backends(vec![
            BackendStatus {
                address: Ipv4Addr::new(10, 200, 0, 21),
                port: 80,
                weight: 1,
                state: BackendState::Active,
                health: Health::Up,
                last_check: Some("HTTP 200".into()),
                health_changed_secs: Some(12),
                transitions: 0,
                effective_weight: 1,
                active_flows: 3,
                packets: 100,
                bytes: 5000,
                new_flows: 7,
                nat_ports_in_use: 3,
                nat_ports_capacity: 113_840,
            },
            BackendStatus {
                address: Ipv4Addr::new(10, 200, 0, 3),
                port: 8080,
                weight: 10,
                state: BackendState::Draining,
                health: Health::Unchecked,
                last_check: None,
                health_changed_secs: None,
                transitions: 0,
                effective_weight: 10,
                active_flows: 1,
                packets: 0,
                bytes: 0,
                new_flows: 0,
                nat_ports_in_use: 0,
                nat_ports_capacity: 0,
            },
        ]);
        let text = render(&reply);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("BACKEND          WEIGHT"), "{text}");
        assert!(lines[2].contains("draining"), "{text}");
        let health = lines[0].find("HEALTH").expect("health header");
        assert_eq!(&lines[1][health..health + 6], "up 12s");
        let last = lines[0].find("LAST CHECK").expect("last check header");
        assert_eq!(&lines[1][last..last + 8], "HTTP 200");
        let col = lines[0].find("STATE").expect("header");
        assert_eq!(&lines[1][col..col + 6], "active");
        let ports = lines[0].find("NAT PORTS").expect("nat ports header");
        assert_eq!(&lines[1][ports..ports + 8], "3/113840", "{text}");
    }

    #[test]
    fn snat_status_tells_what_a_failover_keeps() {
        let floating = SnatStatus {
            addresses: vec![Ipv4Addr::new(10, 200, 0, 10)],
            floating: true,
            port_slice: PortSlice::Lower,
            ports: vec![(1024, 19163)],
        };
        let master = VrrpStatus {
            snat_holds: vec![Ipv4Addr::new(10, 200, 0, 10)],
            ..VrrpStatus::default()
        };
        let text = snat_status(&floating, Some(&master));
        assert!(
            text.starts_with("snat: 10.200.0.10; NAT ports 1024-19163 (this node's lower half)\n"),
            "{text}"
        );
        assert!(text.contains("held here: 10.200.0.10"), "{text}");
        let backup = snat_status(&floating, Some(&VrrpStatus::default()));
        assert!(backup.contains("not held here"), "{backup}");
        let own = SnatStatus {
            addresses: vec![Ipv4Addr::new(10, 200, 0, 11)],
            floating: false,
            port_slice: PortSlice::Whole,
            ports: vec![(1024, 32767), (61000, 65535)],
        };
        let text = snat_status(&own, Some(&VrrpStatus::default()));
        assert!(
            text.contains("NAT ports 1024-32767, 61000-65535\n")
                && text.contains("established flows cannot survive a failover"),
            "{text}"
        );
        assert!(!snat_status(&own, None).contains("failover"));
    }

    #[test]
    fn services_table_has_a_cell_per_header() {
        let reply = Reply::Services(vec![ServiceStatus {
            name: "www".into(),
            vip: Ipv4Addr::new(10, 100, 0, 100),
            port: 80,
            protocol: "tcp".into(),
            backends: 2,
            active_backends: 1,
            packets: 10,
            bytes: 600,
            new_flows: 2,
            active_flows: 1,
            rejected: 3,
        }]);
        let text = render(&reply);
        let lines: Vec<&str> = text.lines().collect();
        let col = lines[0].find("REJECTED").expect("rejected header");
        assert_eq!(&lines[1][col..col + 1], "3", "{text}");
    }
}
