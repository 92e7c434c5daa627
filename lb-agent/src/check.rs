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
    config::{line_of, Config, ConfigError},
    dataplane::loader::{interface_index, interface_ipv4_addresses},
    ports,
    state::{RuntimeState, StateError},
};

/// sysexits.h: the configuration is wrong.
pub const EX_CONFIG: u8 = 78;
/// sysexits.h: the command line is wrong.
pub const EX_USAGE: u8 = 64;

/// One problem, with the line it is about when it can be found (the
/// config's own validation errors carry these too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub line: Option<usize>,
    pub message: String,
}

impl Finding {
    /// `message` at the line it is about in `text` (by the field it names).
    pub fn in_text(text: &str, message: String) -> Self {
        Self {
            line: locate(text, &message),
            message,
        }
    }
}

/// The outcome of checking one file.
#[derive(Debug)]
pub struct Report {
    pub path: String,
    pub config: Option<Config>,
    pub findings: Vec<Finding>,
    /// What works but will not carry what the config says it must.
    pub warnings: Vec<Finding>,
    /// Problems of the other files the agent reads at start (the state
    /// file), each line naming its file.
    pub elsewhere: Vec<String>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.findings.is_empty() && self.elsewhere.is_empty()
    }

    /// Checks the state file of `instance` as the agent does at start
    /// (the state directory is the config's), so that a file the agent
    /// would refuse is found before a restart fails on it.
    pub fn check_state_file(&mut self, instance: &str) {
        let Some(config) = &self.config else {
            return;
        };
        let path = RuntimeState::path(&config.node.state_dir, instance);
        self.elsewhere.extend(state_file_problems(&path, config));
    }
}

/// Why the agent would refuse the state file at `path` at start, one line
/// per problem, each starting with the file's path.
fn state_file_problems(path: &Path, config: &Config) -> Vec<String> {
    match RuntimeState::load(path, config) {
        Ok(_) => Vec::new(),
        Err(StateError::Invalid { path, problems }) => problems
            .into_iter()
            .map(|problem| {
                format!("{path}: {problem}; the agent does not start with this state file")
            })
            .collect(),
        // These name the file themselves.
        Err(error) => vec![error.to_string()],
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
        for problem in &self.elsewhere {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
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
    // `address 10.0.0.1 is ...`: the reason names its field first.
    let first = rest.split([' ', '=', ':']).next().unwrap_or("");
    if !first.is_empty() && table.contains_key(first) {
        return key_start(table, first);
    }
    let after_colon = rest.split_once(':').map_or(rest, |(_, r)| r);
    key_or_table(table, after_colon)
}

/// The 1-based line `message` is about in `text`, if it can be found.
pub fn locate(text: &str, message: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    locate_offset(doc.as_table(), message).map(|offset| line_of(text, offset))
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
            Finding::in_text(text, message)
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
            Finding::in_text(text, message)
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
        elsewhere: Vec::new(),
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
            if let Some(ephemeral) = ephemeral {
                // The agent refuses to start on this; say so before.
                if let Err(error) = ports::nat_ports(low, high, ephemeral) {
                    report.findings.push(Finding::in_text(
                        text,
                        format!("{error}; or use --offline to check the file elsewhere"),
                    ));
                }
            }
            let nat_ports = ports::port_count(&ports::usable_ranges(
                (low, high),
                ephemeral.unwrap_or(ports::LINUX_EPHEMERAL_RANGE),
            ));
            report.warnings = config
                .capacity_warnings(nat_ports)
                .into_iter()
                .map(|message| Finding::in_text(text, message))
                .collect();
            report.config = Some(config);
        }
        Err(error) => report.findings.extend(findings_of(error)),
    }
    report
}

/// The findings a config error is made of, without the file name (the
/// report prefixes every one with it).
fn findings_of(error: ConfigError) -> Vec<Finding> {
    match error {
        ConfigError::Syntax { line, message, .. } => vec![Finding { line, message }],
        ConfigError::Invalid { problems, .. } => problems,
        ConfigError::NotUtf8 { byte, line, .. } => vec![Finding {
            line: Some(line),
            message: crate::config::not_utf8(byte),
        }],
        ConfigError::Read { source, .. } => vec![Finding {
            line: None,
            message: format!("cannot read it: {source}"),
        }],
    }
}

/// Reads and checks the file at `path`.
pub fn check_file(path: &Path, offline: bool) -> Report {
    let shown = path.display().to_string();
    match crate::config::read_text(path) {
        Ok(text) => check_text(&text, &shown, offline),
        Err(error) => Report {
            path: shown,
            config: None,
            findings: findings_of(error),
            warnings: Vec::new(),
            elsewhere: Vec::new(),
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
            (
                "backend is private_address",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.11\"",
                17,
                &["backend 10.200.0.11:80", "this node's own address"],
            ),
            (
                "backend is multicast",
                "address = \"10.200.0.22\"",
                "address = \"239.1.2.3\"",
                17,
                &["239.1.2.3", "not a unicast address"],
            ),
            (
                "port_range with a third item",
                "private_address = \"10.200.0.11\"",
                "private_address = \"10.200.0.11\"\nport_range = [20000, 29999, 40000]",
                5,
                &["node.port_range has 3 items", "exactly two"],
            ),
            (
                "empty state_dir",
                "private_address = \"10.200.0.11\"",
                "private_address = \"10.200.0.11\"\nstate_dir = \"\"",
                5,
                &["node.state_dir", "absolute"],
            ),
            (
                "relative state_dir",
                "private_address = \"10.200.0.11\"",
                "private_address = \"10.200.0.11\"\nstate_dir = \"var/lib/lb-agent\"",
                5,
                &["node.state_dir = \"var/lib/lb-agent\"", "absolute"],
            ),
            (
                "CR LF in the health check's path",
                "path = \"/health\"",
                "path = \"/health\\r\\nX-Injected: 1\"",
                13,
                &["health_check", "control character"],
            ),
            (
                "NUL in the health check's Host",
                "path = \"/health\"",
                "path = \"/health\"\n  host = \"www\\u0000\"",
                14,
                &["health_check", "host", "control characters"],
            ),
            (
                "metrics on port 0",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"",
                20,
                &["metrics.listen", "port 0"],
            ),
            (
                "tracking a service that does not exist",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n\n[vrrp]\nvrid = 33\npriority = 200\ntrack_services = [\"wwww\"]",
                22,
                &["vrrp.track_services", "no service named \"wwww\""],
            ),
            (
                "garp_count out of bounds",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n\n[vrrp]\nvrid = 33\npriority = 200\ngarp_count = 100000000",
                22,
                &["vrrp.garp_count = 100000000", "0..=100"],
            ),
            (
                "preempt_delay of a million hours",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n\n[vrrp]\nvrid = 33\npriority = 200\npreempt_delay = \"1000000h\"",
                22,
                &["vrrp.preempt_delay", "at most 1000s"],
            ),
            (
                "track script rise 0",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n\n[vrrp]\nvrid = 33\npriority = 200\n[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\nrise = 0",
                25,
                &["vrrp.track_script \"t\"", "rise = 0"],
            ),
            (
                "track script fall 0",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n\n[vrrp]\nvrid = 33\npriority = 200\n[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\nfall = 0",
                25,
                &["vrrp.track_script \"t\"", "fall = 0"],
            ),
            (
                "track script interval 0",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n\n[vrrp]\nvrid = 33\npriority = 200\n[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\ninterval = \"0s\"",
                25,
                &["vrrp.track_script \"t\"", "interval must be longer than zero"],
            ),
            (
                "track script timeout of an hour",
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n\n[vrrp]\nvrid = 33\npriority = 200\n[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\ninterval = \"2h\"\ntimeout = \"1h\"",
                26,
                &["vrrp.track_script \"t\"", "timeout = 3600s", "at most 60s"],
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
    fn a_port_range_inside_the_ephemeral_range_is_reported_unless_offline() {
        let Some((low, high)) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| ports::parse_port_range(&text))
            .filter(|(low, high)| high - low >= 1100)
        else {
            eprintln!("skipped: this node's ephemeral port range is too small to overlap");
            return;
        };
        let range = format!("port_range = [{}, {}]", low + 10, low + 1060);
        let text = GOOD.replacen(
            "private_address = \"10.200.0.11\"",
            &format!("private_address = \"10.200.0.11\"\n{range}"),
            1,
        );
        let online = check_text(&text, "lb.toml", false);
        assert!(
            online.findings.iter().any(|f| f.line == Some(5)
                && f.message.contains("leaves only 0 ports")
                && f.message.contains("ip_local_port_range")),
            "{high}: {online}"
        );
        assert!(check_text(&text, "lb.toml", true).is_valid());
    }

    #[test]
    fn binary_garbage_is_reported_at_its_byte_and_line() {
        let dir = std::env::temp_dir().join(format!("lb-agent-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("garbage.toml");
        let mut bytes = GOOD.as_bytes()[..40].to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, 0x00, 0xef, b'\n']);
        std::fs::write(&path, &bytes).expect("write");
        let report = check_file(&path, true);
        assert_eq!(report.findings.len(), 1, "{report}");
        assert_eq!(report.findings[0].line, Some(3), "{report}");
        assert!(
            report
                .to_string()
                .starts_with(&format!("{}:3: not UTF-8 at byte 40", path.display())),
            "{report}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unreadable_file_is_a_finding() {
        let report = check_file(Path::new("/nonexistent/lb.toml"), true);
        assert!(!report.is_valid());
        assert!(report.to_string().contains("cannot read it"), "{report}");
    }

    #[test]
    fn the_state_file_is_checked_as_the_agent_checks_it_at_start() {
        let dir = std::env::temp_dir().join(format!("lb-check-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let text = GOOD.replacen(
            "private_address = \"10.200.0.11\"",
            &format!(
                "private_address = \"10.200.0.11\"\nstate_dir = \"{}\"",
                dir.display()
            ),
            1,
        );
        let state = dir.join("t.json");
        let shown = state.display().to_string();
        let check = |contents: Option<&str>| {
            let _ = std::fs::remove_file(&state);
            if let Some(contents) = contents {
                std::fs::write(&state, contents).expect("state file");
            }
            let mut report = check_text(&text, "lb.toml", true);
            report.check_state_file("t");
            report
        };
        assert!(check(None).is_valid(), "no state file is an empty state");
        assert!(check(Some("{\"services\": {}}")).is_valid());
        let report = check(Some("[]"));
        assert!(!report.is_valid());
        let said = report.to_string();
        assert!(
            said.starts_with(&format!("state file {shown} is corrupt")),
            "{said}"
        );
        let report = check(Some(
            "{\"services\": {\"www\": {\"added\": [{\"address\": \"10.100.0.100\", \"port\": 80, \"weight\": 1}]}}}",
        ));
        let said = report.to_string();
        assert!(
            said.starts_with(&format!(
                "{shown}: service \"www\" backend 10.100.0.100:80 (added at run time): "
            )) && said.contains("not a VIP"),
            "{said}"
        );
        assert_eq!(
            std::fs::read_dir(&dir).expect("dir").count(),
            1,
            "nothing written"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
