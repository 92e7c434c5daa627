//! `lb-agent check-config`: everything `Config` validates, plus what only
//! this node can tell (its interfaces), each problem reported as
//! `FILE:LINE: what, and how to fix it`, like `haproxy -c`.
//!
//! Validation messages name the field they are about (`node.port_range`,
//! `service "www" backend 10.200.0.21:80`, `vrrp.track_script "x"`); the
//! locator finds that field in the document with toml_edit's spans.

use std::{fmt, path::Path};

use toml_edit::{ImDocument, Item, Table};

use crate::{
    config::{Config, ConfigError},
    dataplane::loader::{interface_index, interface_ipv4_addresses},
    ports,
};

/// sysexits.h: the configuration is wrong.
pub const EX_CONFIG: u8 = 78;
/// sysexits.h: the command line is wrong.
pub const EX_USAGE: u8 = 64;

/// One problem, with the line it is about when it can be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub line: Option<usize>,
    pub message: String,
}

/// The outcome of checking one file.
#[derive(Debug)]
pub struct Report {
    pub path: String,
    pub config: Option<Config>,
    pub findings: Vec<Finding>,
    /// What works but will not carry what the config says it must.
    pub warnings: Vec<Finding>,
}

impl Finding {
    /// A finding at the line `locate` finds for `message` in `text`.
    fn located(text: &str, message: String) -> Self {
        Self {
            line: locate(text, &message),
            message,
        }
    }
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.findings.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            match finding.line {
                Some(line) => writeln!(f, "{}:{line}: {}", self.path, finding.message)?,
                None => writeln!(f, "{}: {}", self.path, finding.message)?,
            }
        }
        for warning in &self.warnings {
            match warning.line {
                Some(line) => writeln!(f, "{}:{line}: warning: {}", self.path, warning.message)?,
                None => writeln!(f, "{}: warning: {}", self.path, warning.message)?,
            }
        }
        Ok(())
    }
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where a table starts: its header, or its first key for inline/implicit
/// tables.
fn table_start(table: &Table) -> Option<usize> {
    table
        .span()
        .map(|s| s.start)
        .or_else(|| table.iter().next().and_then(|(k, _)| key_start(table, k)))
}

fn key_start(table: &Table, key: &str) -> Option<usize> {
    table
        .key(key)
        .and_then(|k| k.span())
        .map(|s| s.start)
        .or_else(|| table.get(key).and_then(Item::span).map(|s| s.start))
}

/// The tables of an array of tables `key` in `table`.
fn array_tables<'a>(table: &'a Table, key: &str) -> Vec<&'a Table> {
    table
        .get(key)
        .and_then(Item::as_array_of_tables)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn str_field<'a>(table: &'a Table, key: &str) -> Option<&'a str> {
    table.get(key).and_then(Item::as_str)
}

/// A key of `table` named in `rest` (the message after the subject), e.g.
/// `port 0 is ...` or `jitter = 0.9 ...`; else the table itself.
fn key_or_table(table: &Table, rest: &str) -> Option<usize> {
    let word = rest
        .trim_start_matches([':', ' ', '.'])
        .split([' ', '=', ':'])
        .next()
        .unwrap_or("");
    if !word.is_empty() && table.contains_key(word) {
        return key_start(table, word);
    }
    table_start(table)
}

/// The offset a message is about, from the subject it starts with.
fn locate_offset(doc: &Table, message: &str) -> Option<usize> {
    if let Some(rest) = message.strip_prefix("service ") {
        return locate_service(doc, rest);
    }
    let (subject, rest) = message
        .split_once([' ', ':'])
        .map_or((message, ""), |(s, r)| (s, r));
    let mut parts = subject.splitn(2, '.');
    let section = parts.next().unwrap_or("");
    let key = parts.next();
    let table = doc.get(section).and_then(Item::as_table)?;
    if key == Some("track_script") {
        let name = rest.split('"').nth(1).unwrap_or("");
        let scripts = array_tables(table, "track_script");
        let script = scripts.iter().find(|t| str_field(t, "name") == Some(name));
        return script
            .and_then(|t| key_or_table(t, rest.split_once(':').map_or("", |(_, r)| r)))
            .or_else(|| key_start(table, "track_script"));
    }
    match key {
        Some(key) if table.contains_key(key) => key_start(table, key),
        _ => table_start(table),
    }
}

/// `"www" backend 10.200.0.21:80 health_check: ...`, `#2: ...`.
fn locate_service(doc: &Table, rest: &str) -> Option<usize> {
    let services = array_tables(doc, "service");
    let (service, rest) = if let Some(after) = rest.strip_prefix('#') {
        let (n, rest) = after.split_once(':').unwrap_or((after, ""));
        let index: usize = n.trim().parse().ok()?;
        (*services.get(index.checked_sub(1)?)?, rest)
    } else {
        let name = rest.split('"').nth(1)?;
        let rest = rest.splitn(3, '"').nth(2).unwrap_or("");
        let found = services
            .iter()
            .find(|t| str_field(t, "name") == Some(name))?;
        (*found, rest)
    };
    let rest = rest.trim_start();
    if let Some(after) = rest.strip_prefix("backend ") {
        let endpoint = after.split([' ', ':']).next().unwrap_or("");
        let backends = array_tables(service, "backend");
        let matches = |t: &&&Table| str_field(t, "address") == Some(endpoint);
        // A duplicate is reported at its second appearance.
        let backend = if after.contains("listed twice") {
            backends.iter().rev().find(matches)
        } else {
            backends.iter().find(matches)
        };
        let after = after.split_once(' ').map_or("", |(_, r)| r);
        return match backend {
            Some(b) => locate_check_or_key(b, after),
            None => key_start(service, "backend"),
        };
    }
    locate_check_or_key(service, rest)
}

fn locate_check_or_key(table: &Table, rest: &str) -> Option<usize> {
    if let Some(after) = rest.strip_prefix("health_check") {
        if let Some(check) = table.get("health_check").and_then(Item::as_table) {
            return key_or_table(check, after.trim_start_matches(':'));
        }
    }
    let after_colon = rest.split_once(':').map_or(rest, |(_, r)| r);
    key_or_table(table, after_colon)
}

/// The 1-based line `message` is about in `text`, if it can be found.
pub fn locate(text: &str, message: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    locate_offset(doc.as_table(), message).map(|offset| line_of(text, offset))
}

/// Line and message of a TOML syntax/schema error from the toml crate,
/// whose text starts "TOML parse error at line L, column C".
fn syntax_finding(message: &str) -> Finding {
    let line = message
        .strip_prefix("TOML parse error at line ")
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse().ok());
    // The toml crate's message repeats the line with a caret; keep its
    // last line, the reason.
    let reason = message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('|'))
        .unwrap_or(message)
        .trim()
        .to_string();
    Finding {
        line,
        message: reason,
    }
}

/// Interfaces the config names that this node does not have.
fn missing_interfaces(config: &Config, text: &str) -> Vec<Finding> {
    let mut named = vec![
        (
            "node.public_interface",
            config.node.public_interface.clone(),
        ),
        (
            "node.private_interface",
            config.node.private_interface.clone(),
        ),
    ];
    if let Some(vrrp) = &config.vrrp {
        if let Some(interface) = &vrrp.interface {
            named.push(("vrrp.interface", interface.clone()));
        }
        for interface in vrrp.track_interfaces.iter().flatten() {
            named.push(("vrrp.track_interfaces", interface.clone()));
        }
    }
    named
        .into_iter()
        .filter(|(_, name)| !name.is_empty() && interface_index(name).is_none())
        .map(|(field, name)| {
            let message = format!(
                "{field} = {name:?}: no such interface on this node (see `ip link`); fix the name, or use --offline to check the file elsewhere"
            );
            Finding::located(text, message)
        })
        .collect()
}

/// SNAT addresses that are not on the private interface of this node.
fn missing_snat_addresses(config: &Config, text: &str) -> Vec<Finding> {
    let held = interface_ipv4_addresses(&config.node.private_interface);
    if interface_index(&config.node.private_interface).is_none() {
        return Vec::new();
    }
    config
        .snat_addresses()
        .into_iter()
        .filter(|addr| !held.contains(addr))
        .map(|addr| {
            let message = format!(
                "node.snat_addresses: {addr} is not on {iface} of this node, so backends could not answer it; add it (`ip addr add {addr}/32 dev {iface}`) or take it out, or use --offline to check the file elsewhere",
                iface = config.node.private_interface
            );
            Finding::located(text, message)
        })
        .collect()
}

/// Checks `text` (from `path`); `offline` skips what only the node itself
/// can tell (its interfaces).
pub fn check_text(text: &str, path: &str, offline: bool) -> Report {
    let mut report = Report {
        path: path.to_string(),
        config: None,
        findings: Vec::new(),
        warnings: Vec::new(),
    };
    match Config::parse(text, path) {
        Ok(config) => {
            if !offline {
                report.findings.extend(missing_interfaces(&config, text));
                report
                    .findings
                    .extend(missing_snat_addresses(&config, text));
            }
            let ephemeral = if offline {
                None
            } else {
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                    .ok()
                    .and_then(|text| ports::parse_port_range(&text))
            };
            let [low, high] = config.node.port_range;
            let nat_ports = ports::port_count(&ports::usable_ranges(
                (low, high),
                ephemeral.unwrap_or(ports::LINUX_EPHEMERAL_RANGE),
            ));
            report.warnings = config
                .capacity_warnings(nat_ports)
                .into_iter()
                .map(|message| Finding::located(text, message))
                .collect();
            report.config = Some(config);
        }
        Err(ConfigError::Syntax { message, .. }) => {
            report.findings.push(syntax_finding(&message));
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            report.findings.extend(
                problems
                    .into_iter()
                    .map(|message| Finding::located(text, message)),
            );
        }
        Err(error @ ConfigError::Read { .. }) => report.findings.push(Finding {
            line: None,
            message: error.to_string(),
        }),
    }
    report
}

/// Reads and checks the file at `path`.
pub fn check_file(path: &Path, offline: bool) -> Report {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => check_text(&text, &shown, offline),
        Err(error) => Report {
            path: shown,
            config: None,
            findings: vec![Finding {
                line: None,
                message: format!("cannot read it: {error}"),
            }],
            warnings: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"[node]
public_interface = "pub0"
private_interface = "priv0"
private_address = "10.200.0.11"

[[service]]
name = "www"
vip = "10.100.0.100"
port = 80
protocol = "tcp"
  [service.health_check]
  type = "http"
  path = "/health"
  [[service.backend]]
  address = "10.200.0.21"
  [[service.backend]]
  address = "10.200.0.22"
"#;

    /// Replaces the first `from` with `to` in the good config, checks it
    /// offline, and returns its findings.
    fn broken(from: &str, to: &str) -> Vec<Finding> {
        assert!(GOOD.contains(from), "{from:?}");
        check_text(&GOOD.replacen(from, to, 1), "lb.toml", true).findings
    }

    #[test]
    fn the_good_config_passes() {
        let report = check_text(GOOD, "lb.toml", true);
        assert!(report.is_valid(), "{report}");
        assert!(report.config.is_some());
    }

    #[test]
    fn each_broken_config_names_its_line_and_field() {
        // (what is broken, replace this, with this, line, words the message has)
        let table: &[(&str, &str, &str, usize, &[&str])] = &[
            ("syntax", "port = 80", "port = = 80", 9, &["expected"]),
            (
                "unknown field",
                "protocol = \"tcp\"",
                "protocol = \"tcp\"\nprotcol = 1",
                11,
                &["unknown field", "protcol"],
            ),
            (
                "bad address",
                "private_address = \"10.200.0.11\"",
                "private_address = \"10.200.0.300\"",
                4,
                &["invalid"],
            ),
            (
                "port range",
                "private_address = \"10.200.0.11\"",
                "private_address = \"10.200.0.11\"\nport_range = [3000, 2000]",
                5,
                &["node.port_range", "first <= last"],
            ),
            (
                "service port 0",
                "port = 80",
                "port = 0",
                9,
                &["service \"www\"", "port 0"],
            ),
            (
                "backend weight",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n  weight = 500",
                18,
                &["backend 10.200.0.22:80", "weight 500", "1..=100"],
            ),
            (
                "backend listed twice",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.21\"",
                16,
                &["listed twice"],
            ),
            (
                "health check path",
                "path = \"/health\"",
                "path = \"health\"",
                13,
                &["health_check", "must start with '/'"],
            ),
            (
                "backend is the VIP",
                "address = \"10.200.0.22\"",
                "address = \"10.100.0.100\"",
                17,
                &["not a VIP"],
            ),
        ];
        for (what, from, to, line, words) in table {
            let findings = broken(from, to);
            let Some(finding) = findings.first() else {
                panic!("{what}: not found");
            };
            assert_eq!(finding.line, Some(*line), "{what}: {finding:?}");
            for word in *words {
                assert!(
                    finding.message.contains(word),
                    "{what}: {word:?} in {finding:?}"
                );
            }
        }
    }

    #[test]
    fn overlapping_services_are_found() {
        let text = format!(
            "{GOOD}\n[[service]]\nname = \"www2\"\nvip = \"10.100.0.100\"\nport = 80\nprotocol = \"tcp\"\n"
        );
        let report = check_text(&text, "lb.toml", true);
        assert_eq!(report.findings.len(), 1, "{report}");
        assert_eq!(report.findings[0].line, Some(19), "{report}");
        assert!(
            report
                .to_string()
                .starts_with("lb.toml:19: service \"www2\": 10.100.0.100:80/tcp is already"),
            "{report}"
        );
    }

    #[test]
    fn a_pool_too_small_for_the_stated_rate_is_a_warning_on_its_service() {
        // Default port range offline: 1024-65535 without 32768-60999 =
        // 36,280 ports, one address: 604/s per backend; 2,000/s over two
        // backends is 1,000/s each.
        let text = GOOD.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nexpected_rate = 2000",
        );
        let report = check_text(&text, "lb.toml", true);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.warnings.len(), 1, "{report}");
        assert_eq!(report.warnings[0].line, Some(11), "{report}");
        let shown = report.to_string();
        assert!(
            shown.starts_with("lb.toml:11: warning: service \"www\""),
            "{shown}"
        );
        assert!(shown.contains("604/s per backend"), "{shown}");
        let fits = GOOD.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nexpected_rate = 1200",
        );
        assert!(check_text(&fits, "lb.toml", true).warnings.is_empty());
    }

    #[test]
    fn vrrp_settings_keepalived_would_reject_are_found() {
        let text = format!(
            "{GOOD}\n[vrrp]\nvrid = 33\npriority = 200\nversion = 2\nadvert_int = \"100ms\"\nunicast_peers = [\"10.200.0.12\"]\n"
        );
        let report = check_text(&text, "lb.toml", true);
        assert_eq!(report.findings.len(), 1, "{report}");
        assert_eq!(report.findings[0].line, Some(23), "{report}");
        assert!(
            report.findings[0].message.contains("whole seconds"),
            "{report}"
        );
    }

    #[test]
    fn missing_interfaces_are_reported_unless_offline() {
        let text = GOOD.replace("\"priv0\"", "\"no-such-if0\"");
        let online = check_text(&text, "lb.toml", false);
        assert!(
            online.findings.iter().any(|f| f.line == Some(3)
                && f.message.contains("node.private_interface")
                && f.message.contains("no such interface")),
            "{online}"
        );
        assert!(check_text(&text, "lb.toml", true)
            .findings
            .iter()
            .all(|f| !f.message.contains("no such interface")));
    }

    #[test]
    fn snat_addresses_missing_from_the_private_interface_are_reported_unless_offline() {
        // `lo` exists everywhere and never holds 10.200.0.11.
        let text = GOOD.replace(
            "private_interface = \"priv0\"",
            "private_interface = \"lo\"",
        );
        let online = check_text(&text, "lb.toml", false);
        assert!(
            online
                .findings
                .iter()
                .any(|f| f.message.contains("10.200.0.11 is not on lo")),
            "{online}"
        );
        assert!(check_text(&text, "lb.toml", true)
            .findings
            .iter()
            .all(|f| !f.message.contains("snat_addresses")));
        assert!(interface_ipv4_addresses("lo").contains(&std::net::Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn an_unreadable_file_is_a_finding() {
        let report = check_file(Path::new("/nonexistent/lb.toml"), true);
        assert!(!report.is_valid());
        assert!(report.to_string().contains("cannot read it"), "{report}");
    }
}
