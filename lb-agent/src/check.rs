//! `lb-agent check-config`: everything `Config` validates, plus what only
//! this node can tell (its interfaces, addresses and ephemeral ports), each
//! problem reported as `FILE:LINE: field: what; how to fix it`, like
//! `haproxy -c`. Lines come from the field paths of the problems, located
//! in the document by the parser's spans.

use std::{fmt, path::Path};

use crate::{
    config::{locate::Document, Config, ConfigError, FieldPath, Located, Problem},
    dataplane::loader::{interface_index, interface_ipv4_addresses},
    ports,
    state::{RuntimeState, StateError},
};

/// sysexits.h: the configuration is wrong.
pub const EX_CONFIG: u8 = 78;
/// sysexits.h: the command line is wrong.
pub const EX_USAGE: u8 = 64;

/// The outcome of checking one file.
#[derive(Debug)]
pub struct Report {
    pub path: String,
    pub config: Option<Config>,
    pub findings: Vec<Located>,
    /// What works but will not carry what the config says it must.
    pub warnings: Vec<Located>,
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
        let at = |line: Option<usize>| match line {
            Some(line) => format!("{}:{line}", self.path),
            None => self.path.clone(),
        };
        for finding in &self.findings {
            writeln!(f, "{}: {}", at(finding.line), finding.problem)?;
        }
        for warning in &self.warnings {
            writeln!(f, "{}: warning: {}", at(warning.line), warning.problem)?;
        }
        for problem in &self.elsewhere {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// The hint of every problem only this node can tell.
const ELSEWHERE: &str = "or use --offline to check the file elsewhere";

/// Interfaces the config names that this node does not have.
fn missing_interfaces(config: &Config) -> Vec<Problem> {
    let node = FieldPath::root().key("node");
    let mut named = vec![
        (node.key("public_interface"), &config.node.public_interface),
        (
            node.key("private_interface"),
            &config.node.private_interface,
        ),
    ];
    if let Some(vrrp) = &config.vrrp {
        let at = FieldPath::root().key("vrrp");
        if let Some(interface) = &vrrp.interface {
            named.push((at.key("interface"), interface));
        }
        for (index, interface) in vrrp.track_interfaces.iter().flatten().enumerate() {
            named.push((at.key("track_interfaces").index(index, None), interface));
        }
    }
    named
        .into_iter()
        .filter(|(_, name)| !name.is_empty() && interface_index(name).is_none())
        .map(|(path, name)| {
            Problem::new(
                path,
                format!("{name:?}: no such interface on this node (see `ip link`)"),
            )
            .with_hint(format!("fix the name, {ELSEWHERE}"))
        })
        .collect()
}

/// SNAT addresses that are not on the private interface of this node.
fn missing_snat_addresses(config: &Config) -> Vec<Problem> {
    let iface = &config.node.private_interface;
    if interface_index(iface).is_none() {
        return Vec::new();
    }
    let held = interface_ipv4_addresses(iface);
    let pool = FieldPath::root().key("node");
    let path = |index: usize| {
        if config.node.snat_addresses.is_empty() {
            pool.key("private_address")
        } else {
            pool.key("snat_addresses").index(index, None)
        }
    };
    config
        .node
        .snat_pool()
        .into_iter()
        .enumerate()
        .filter(|(_, addr)| !held.contains(addr))
        .map(|(index, addr)| {
            Problem::new(
                path(index),
                format!("{addr} is not on {iface} of this node, so backends could not answer it"),
            )
            .with_hint(format!(
                "add it (`ip addr add {addr}/32 dev {iface}`) or take it out, {ELSEWHERE}"
            ))
        })
        .collect()
}

/// The node's ephemeral port range, unless checking `offline`.
fn ephemeral_range(offline: bool) -> Option<(u16, u16)> {
    if offline {
        return None;
    }
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| ports::parse_port_range(&text))
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
    let config = match Config::parse(text, path) {
        Ok(config) => config,
        Err(error) => {
            report.findings.extend(findings_of(error));
            return report;
        }
    };
    let document = Document::parse(text);
    let mut findings = Vec::new();
    if !offline {
        findings.extend(missing_interfaces(&config));
        // Floating addresses are on the master only, and added by the agent.
        if config.floating_snat_addresses().is_empty() {
            findings.extend(missing_snat_addresses(&config));
        }
    }
    let range = config.node.port_range;
    let ephemeral = ephemeral_range(offline);
    if let Some(ephemeral) = ephemeral {
        // The agent refuses to start on this; say so before.
        if let Err(error) = ports::nat_ports(range.first(), range.last(), ephemeral) {
            findings.push(
                Problem::new(
                    FieldPath::root().key("node").key("port_range"),
                    error.to_string(),
                )
                .with_hint(ELSEWHERE),
            );
        }
    }
    let usable = ports::usable_ranges(
        (range.first(), range.last()),
        ephemeral.unwrap_or(ports::LINUX_EPHEMERAL_RANGE),
    );
    let nat_ports = ports::port_count(&ports::PortSlice::of(&config).apply(&usable));
    report.findings = findings.into_iter().map(|p| document.locate(p)).collect();
    let mut warnings = config.capacity_warnings(nat_ports);
    if !offline {
        warnings.extend(node_memory_bytes().and_then(|bytes| config.reply_memory_warning(bytes)));
    }
    report.warnings = warnings.into_iter().map(|p| document.locate(p)).collect();
    report.config = Some(config);
    report
}

/// This machine's memory (`MemTotal`), if /proc/meminfo says.
fn node_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The findings a config error is made of, without the file name (the
/// report prefixes every one with it).
fn findings_of(error: ConfigError) -> Vec<Located> {
    let unplaced = |line, message: String| Located {
        line,
        problem: Problem::new(FieldPath::root(), message),
    };
    match error {
        ConfigError::Syntax { line, message, .. } => vec![unplaced(line, message)],
        ConfigError::Invalid { problems, .. } => problems,
        ConfigError::NotUtf8 { byte, line, .. } => {
            vec![unplaced(Some(line), crate::config::not_utf8(byte))]
        }
        ConfigError::Read { source, .. } => {
            vec![unplaced(None, format!("cannot read it: {source}"))]
        }
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
    use crate::config::PortRange;

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

    fn good() -> Config {
        Config::parse(GOOD, "lb.toml").expect("valid")
    }

    /// The 1-based line of `text` that starts with `key`.
    fn line_of(text: &str, key: &str) -> usize {
        text.lines()
            .position(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no line starts with {key:?} in:\n{text}"))
            + 1
    }

    #[test]
    fn the_good_config_passes() {
        let report = check_text(GOOD, "lb.toml", true);
        assert!(report.is_valid(), "{report}");
        assert!(report.config.is_some());
    }

    // The rules of the config and their messages are lb-config's (its
    // table of broken configs); here only how a report shows them.

    #[test]
    fn a_syntax_error_is_a_finding_at_its_line() {
        let report = check_text(
            &GOOD.replacen("port = 80", "port = = 80", 1),
            "lb.toml",
            true,
        );
        assert_eq!(report.findings.len(), 1, "{report}");
        let shown = report.to_string();
        assert!(shown.starts_with("lb.toml:9: "), "{shown}");
        assert!(shown.contains("expected"), "{shown}");
    }

    #[test]
    fn overlapping_services_are_found() {
        let text = format!(
            "{GOOD}\n[[service]]\nname = \"www2\"\nvip = \"10.100.0.100\"\nport = 80\nprotocol = \"tcp\"\n"
        );
        let report = check_text(&text, "lb.toml", true);
        assert_eq!(report.findings.len(), 1, "{report}");
        assert_eq!(report.findings[0].line, Some(22), "{report}");
        assert!(
            report
                .to_string()
                .starts_with("lb.toml:22: service \"www2\" port: 10.100.0.100:80/tcp is already"),
            "{report}"
        );
    }

    #[test]
    fn a_pool_too_small_for_the_stated_rate_is_a_warning_on_its_service() {
        // Default port range offline: 1024-65535 without 32768-60999 =
        // 36,280 ports, one address: 604/s per backend; 2,000/s over two
        // backends is 1,000/s each.
        let at_rate = |rate| {
            let mut config = good();
            config.service_mut("www").expect("www").expected_rate = Some(rate);
            config.to_toml().expect("serializes")
        };
        let text = at_rate(2000);
        let report = check_text(&text, "lb.toml", true);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.warnings.len(), 1, "{report}");
        let line = line_of(&text, "expected_rate");
        assert_eq!(report.warnings[0].line, Some(line), "{report}");
        let shown = report.to_string();
        assert!(
            shown.starts_with(&format!(
                "lb.toml:{line}: warning: service \"www\" expected_rate: 2000 new connections/s"
            )),
            "{shown}"
        );
        assert!(shown.contains("604/s per backend"), "{shown}");
        assert!(check_text(&at_rate(1200), "lb.toml", true)
            .warnings
            .is_empty());
    }

    #[test]
    fn missing_interfaces_are_reported_unless_offline() {
        let mut config = good();
        config.node.private_interface = "no-such-if0".into();
        let text = config.to_toml().expect("serializes");
        let line = line_of(&text, "private_interface");
        let online = check_text(&text, "lb.toml", false);
        assert!(
            online.findings.iter().any(|f| f.line == Some(line)
                && f.problem.path.to_string() == "node.private_interface"
                && f.problem.message.contains("no such interface")),
            "{online}"
        );
        assert!(check_text(&text, "lb.toml", true)
            .findings
            .iter()
            .all(|f| !f.problem.message.contains("no such interface")));
    }

    #[test]
    fn snat_addresses_missing_from_the_private_interface_are_reported_unless_offline() {
        // `lo` exists everywhere and never holds 10.200.0.11.
        let mut config = good();
        config.node.private_interface = "lo".into();
        let text = config.to_toml().expect("serializes");
        let line = line_of(&text, "private_address");
        let online = check_text(&text, "lb.toml", false);
        assert!(
            online
                .findings
                .iter()
                .any(|f| f.problem.message.contains("10.200.0.11 is not on lo")
                    && f.line == Some(line)),
            "{online}"
        );
        assert!(check_text(&text, "lb.toml", true)
            .findings
            .iter()
            .all(|f| !f.problem.message.contains("is not on lo")));
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
        let mut config = good();
        config.node.port_range = PortRange::new(low + 10, low + 1060).expect("range");
        let text = config.to_toml().expect("serializes");
        let line = line_of(&text, "port_range");
        let online = check_text(&text, "lb.toml", false);
        assert!(
            online.findings.iter().any(|f| f.line == Some(line)
                && f.problem.message.contains("leaves only 0 ports")
                && f.problem.message.contains("ip_local_port_range")),
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
        let mut config = good();
        config.node.state_dir = dir.clone();
        let text = config.to_toml().expect("serializes");
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
