//! `lb-agent import`: turns the classic pair's `haproxy.cfg` (TCP mode) and
//! `keepalived.conf` into this agent's config, and reports every line it
//! could not carry over (`FILE:LINE: what, why`).
//!
//! Mapping: a `frontend`/`listen` in TCP mode with `bind ADDR:PORT` and a
//! `default_backend` becomes a `[[service]]` (a `listen` is its own
//! backend); its `server`s become backends (`weight` scaled into 1..=100,
//! `backup` and `disabled` servers left out), `check` becomes a `tcp`
//! health check or, with `option httpchk`, an `http` one (`inter`, `rise`,
//! `fall`, `http-check expect status`). `balance roundrobin`/`static-rr`
//! map directly; `leastconn`, `source`, `first` and hashing map to the
//! agent's weighted round robin per connection, with a note (the XDP path
//! keeps no per-backend connection counts, and a connection sticks to its
//! backend anyway). `mode http` sections are refused: they need an L7 proxy.
//! The `vrrp_instance` becomes `[vrrp]`; a `vrrp_script` that checks HAProxy
//! (`pidof haproxy`, `killall -0 haproxy`, ...) becomes `track_program`,
//! since the agent replaces HAProxy; other scripts are kept as
//! `[[vrrp.track_script]]`.

pub mod haproxy;
pub mod keepalived;

use std::{fmt, fmt::Write as _, net::Ipv4Addr, time::Duration};

/// A line that was not carried over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub file: String,
    pub line: usize,
    pub text: String,
    pub why: String,
}

impl Note {
    pub fn new(file: &str, line: usize, text: &str, why: &str) -> Self {
        Self {
            file: file.to_string(),
            line,
            text: text.trim().to_string(),
            why: why.to_string(),
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: `{}`: {}",
            self.file, self.line, self.text, self.why
        )
    }
}

/// Why nothing usable came out.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Unusable(String),
    #[error("the imported config does not validate:\n{0}")]
    Invalid(String),
}

/// HAProxy time values: `2000` (ms), `2s`, `500ms`, `1m`.
pub fn parse_haproxy_time(value: &str) -> Option<Duration> {
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    let number: u64 = digits.parse().ok()?;
    match &value[digits.len()..] {
        "" | "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number * 60)),
        "h" => Some(Duration::from_secs(number * 3600)),
        "us" => Some(Duration::from_micros(number)),
        _ => None,
    }
}

fn duration_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// What only the node can say (the classic files do not carry it).
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub public_interface: Option<String>,
    pub private_interface: Option<String>,
    pub private_address: Option<Ipv4Addr>,
}

/// The result: the config text and the notes.
#[derive(Debug, Clone)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<Note>,
}

/// A service name from a proxy name: `[a-z0-9_-]{1,32}`.
fn service_name(name: &str) -> String {
    let mut out: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    if out.is_empty() {
        out = "service".into();
    }
    out
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// Whether a keepalived script checks HAProxy (which the agent replaces).
fn checks_haproxy(script: &str) -> bool {
    let s = script.to_ascii_lowercase();
    s.contains("haproxy")
        && (s.contains("pidof")
            || s.contains("killall -0")
            || s.contains("pgrep")
            || s.contains("systemctl"))
}

/// Imports the classic pair's files. `haproxy` and `keepalived` are
/// (file name, text).
pub fn import(
    haproxy: (&str, &str),
    keepalived: Option<(&str, &str)>,
    facts: &NodeFacts,
) -> Result<Imported, ImportError> {
    let mut notes = Vec::new();
    let ha = haproxy::parse(haproxy.1, haproxy.0, &mut notes);
    let ka = keepalived.map(|(file, text)| (file, keepalived::parse(text, file, &mut notes)));
    let instance = match &ka {
        Some((file, config)) => {
            if config.instances.len() > 1 {
                for extra in &config.instances[1..] {
                    notes.push(Note::new(file, extra.line, &format!("vrrp_instance {}", extra.name), "only the first vrrp_instance is carried over (the agent runs one virtual router)"));
                }
            }
            config.instances.first().cloned()
        }
        None => None,
    };
    let vip_default = instance
        .as_ref()
        .and_then(|i| i.virtual_addresses.first().copied());

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Imported by `lb-agent import` from {}{}.",
        haproxy.0,
        ka.as_ref()
            .map(|(f, _)| format!(" and {f}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "# Review it, then: lb-agent check-config --config FILE\n"
    );

    let private_interface = facts
        .private_interface
        .clone()
        .or_else(|| instance.as_ref().and_then(|i| i.interface.clone()));
    let private_address = facts
        .private_address
        .or_else(|| instance.as_ref().and_then(|i| i.unicast_src));
    let (Some(public_interface), Some(private_interface), Some(private_address)) = (
        facts.public_interface.clone(),
        private_interface,
        private_address,
    ) else {
        return Err(ImportError::Unusable(
            "the node's interfaces and private address are not in the classic files: pass --public-interface, and --private-interface / --private-address unless keepalived's `interface` / `unicast_src_ip` give them".into(),
        ));
    };
    let _ = writeln!(out, "[node]");
    let _ = writeln!(out, "public_interface = {}", quoted(&public_interface));
    let _ = writeln!(out, "private_interface = {}", quoted(&private_interface));
    let _ = writeln!(out, "private_address = \"{private_address}\"\n");

    let mut services = 0;
    let mut names = std::collections::HashSet::new();
    for proxy in ha
        .proxies
        .iter()
        .filter(|p| p.kind == "frontend" || p.kind == "listen")
    {
        let mode = proxy
            .mode
            .clone()
            .or_else(|| ha.defaults.mode.clone())
            .map(|m| m.0)
            .unwrap_or_else(|| "http".into());
        if mode != "tcp" {
            notes.push(Note::new(haproxy.0, proxy.line, &format!("{} {}", proxy.kind, proxy.name), &format!("mode {mode}: an L7 proxy is needed; lb-agent balances TCP and UDP connections (mode tcp) only")));
            continue;
        }
        let backend = if proxy.kind == "listen" {
            Some(proxy)
        } else {
            match proxy.default_backend.as_deref().and_then(|b| ha.backend(b)) {
                Some(b) => Some(b),
                None => {
                    notes.push(Note::new(
                        haproxy.0,
                        proxy.line,
                        &format!("frontend {}", proxy.name),
                        "no default_backend found; skipped",
                    ));
                    None
                }
            }
        };
        let Some(backend) = backend else { continue };
        if let Some((algorithm, line)) = backend
            .balance
            .clone()
            .or_else(|| ha.defaults.balance.clone())
        {
            if !matches!(algorithm.as_str(), "roundrobin" | "static-rr") {
                notes.push(Note::new(haproxy.0, line, &format!("balance {algorithm}"), "mapped to weighted round robin per connection (the XDP path keeps no per-backend connection counts or hashes; each connection still sticks to its backend)"));
            }
        }
        for (index, (addr, port, line)) in proxy.binds.iter().enumerate() {
            let Some(vip) = addr.or(vip_default) else {
                notes.push(Note::new(
                    haproxy.0,
                    *line,
                    &format!("bind *:{port}"),
                    "no address to balance: bind the VIP, or give keepalived a virtual_ipaddress",
                ));
                continue;
            };
            let mut name = service_name(&proxy.name);
            if index > 0 || !names.insert(name.clone()) {
                name = service_name(&format!("{}-{port}", proxy.name));
                names.insert(name.clone());
            }
            services += 1;
            let _ = writeln!(
                out,
                "[[service]]\nname = {}\nvip = \"{vip}\"\nport = {port}\nprotocol = \"tcp\"",
                quoted(&name)
            );
            write_check(&mut out, backend, &ha.defaults);
            for server in &backend.servers {
                if server.backup || server.disabled {
                    let what = if server.backup { "backup" } else { "disabled" };
                    notes.push(Note::new(haproxy.0, server.line, &format!("server {} {}", server.name, server.address), &format!("{what} server left out (the agent has no backup servers; add it later with `lb-agent backends add`)")));
                    continue;
                }
                let _ = writeln!(
                    out,
                    "  [[service.backend]]\n  address = \"{}\"",
                    server.address
                );
                if let Some(p) = server.port.filter(|p| *p != *port) {
                    let _ = writeln!(out, "  port = {p}");
                }
                if let Some(w) = server.weight {
                    use crate::config::{MAX_WEIGHT, MIN_WEIGHT};
                    let scaled = w.clamp(MIN_WEIGHT, MAX_WEIGHT);
                    if scaled != w {
                        notes.push(Note::new(
                            haproxy.0,
                            server.line,
                            &format!("server {} weight {w}", server.name),
                            &format!(
                                "weight {w} is outside {MIN_WEIGHT}..={MAX_WEIGHT}; written as {scaled}"
                            ),
                        ));
                    }
                    let _ = writeln!(out, "  weight = {scaled}");
                }
                if !server.check && backend.servers.iter().any(|s| s.check) {
                    let _ = writeln!(
                        out,
                        "    [service.backend.health_check]\n    type = \"none\""
                    );
                }
            }
            out.push('\n');
        }
    }
    if services == 0 {
        return Err(ImportError::Unusable(format!(
            "{}: no TCP-mode frontend or listen section with a bind address and servers was found",
            haproxy.0
        )));
    }

    if let (Some(instance), Some((file, config))) = (&instance, &ka) {
        write_vrrp(&mut out, instance, config, file, &mut notes);
    }
    let imported = Imported { toml: out, notes };
    if let Err(error) = crate::config::Config::parse(&imported.toml, "the imported config") {
        return Err(ImportError::Invalid(error.to_string()));
    }
    Ok(imported)
}

fn write_check(out: &mut String, backend: &haproxy::Proxy, defaults: &haproxy::Proxy) {
    let Some(first) = backend.servers.iter().find(|s| s.check) else {
        return;
    };
    let inter = first
        .inter
        .or(backend.default_inter)
        .or(defaults.default_inter)
        .unwrap_or(Duration::from_secs(2));
    let rise = first
        .rise
        .or(backend.default_rise)
        .or(defaults.default_rise)
        .unwrap_or(2);
    let fall = first
        .fall
        .or(backend.default_fall)
        .or(defaults.default_fall)
        .unwrap_or(3);
    // HAProxy's check timeout defaults to `inter`; keep it under it.
    let timeout = (inter / 2).max(Duration::from_millis(100));
    let _ = writeln!(out, "  [service.health_check]");
    match &backend.httpchk {
        Some((method, uri)) => {
            let _ = writeln!(
                out,
                "  type = \"http\"\n  method = {}\n  path = {}",
                quoted(method),
                quoted(uri)
            );
            if let Some(code) = backend.expect_status {
                let _ = writeln!(out, "  expect_status = [{code}, {code}]");
            }
        }
        None => {
            let _ = writeln!(out, "  type = \"tcp\"");
        }
    }
    let _ = writeln!(
        out,
        "  interval = \"{}\"\n  timeout = \"{}\"\n  rise = {rise}\n  fall = {fall}",
        duration_text(inter),
        duration_text(timeout)
    );
    if let Some(port) = first.check_port {
        let _ = writeln!(out, "  port = {port}");
    }
}

fn write_vrrp(
    out: &mut String,
    instance: &keepalived::Instance,
    config: &keepalived::KeepalivedConfig,
    file: &str,
    notes: &mut Vec<Note>,
) {
    let version = instance.version.or(config.version).unwrap_or(2);
    let _ = writeln!(out, "[vrrp]\nversion = {version}");
    if let Some(vrid) = instance.vrid {
        let _ = writeln!(out, "vrid = {vrid}");
    }
    let _ = writeln!(out, "priority = {}", instance.priority.unwrap_or(100));
    if let Some(advert) = instance.advert_int {
        let _ = writeln!(out, "advert_int = \"{}\"", duration_text(advert));
    }
    if let Some(src) = instance.unicast_src {
        let _ = writeln!(out, "unicast_src = \"{src}\"");
    }
    let peers: Vec<String> = instance
        .unicast_peers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect();
    let _ = writeln!(out, "unicast_peers = [{}]", peers.join(", "));
    if let Some(pass) = &instance.auth_pass {
        let _ = writeln!(out, "auth_pass = {}", quoted(pass));
    }
    if instance.nopreempt {
        let _ = writeln!(out, "preempt = false");
    }
    if let Some(delay) = instance.preempt_delay {
        let _ = writeln!(out, "preempt_delay = \"{}\"", duration_text(delay));
    }
    if !instance.virtual_addresses.is_empty() {
        let vips: Vec<String> = instance
            .virtual_addresses
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        let _ = writeln!(out, "virtual_addresses = [{}]", vips.join(", "));
    }
    for (key, value) in [
        ("notify_master", &instance.notify_master),
        ("notify_backup", &instance.notify_backup),
        ("notify_fault", &instance.notify_fault),
        ("notify_stop", &instance.notify_stop),
        ("notify", &instance.notify),
    ] {
        if let Some(command) = value {
            let _ = writeln!(out, "{key} = {}", quoted(command));
        }
    }
    if !instance.track_interfaces.is_empty() {
        let names: Vec<String> = instance
            .track_interfaces
            .iter()
            .map(|i| quoted(i))
            .collect();
        let _ = writeln!(out, "track_interfaces = [{}]", names.join(", "));
    }
    let mut scripts = String::new();
    for name in &instance.track_scripts {
        let Some(script) = config.scripts.iter().find(|s| &s.name == name) else {
            notes.push(Note::new(
                file,
                instance.line,
                &format!("track_script {name}"),
                "no vrrp_script of that name",
            ));
            continue;
        };
        if checks_haproxy(&script.script) {
            notes.push(Note::new(file, script.line, &format!("vrrp_script {} ({})", script.name, script.script), "it checked HAProxy, which the agent replaces: tracked as `track_program = true` (FAULT while the XDP program is not attached)"));
            continue;
        }
        let _ = writeln!(
            scripts,
            "\n[[vrrp.track_script]]\nname = {}\ncommand = {}",
            quoted(&script.name),
            quoted(&script.script)
        );
        if let Some(i) = script.interval {
            let _ = writeln!(scripts, "interval = \"{}\"", duration_text(i));
        }
        if let Some(t) = script.timeout {
            let _ = writeln!(scripts, "timeout = \"{}\"", duration_text(t));
        }
        if let Some(w) = script.weight {
            let _ = writeln!(scripts, "weight = {w}");
        }
        if let Some(r) = script.rise {
            let _ = writeln!(scripts, "rise = {r}");
        }
        if let Some(f) = script.fall {
            let _ = writeln!(scripts, "fall = {f}");
        }
    }
    let _ = writeln!(out, "track_program = true");
    out.push_str(&scripts);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            public_interface: Some("eth0".into()),
            ..NodeFacts::default()
        }
    }

    #[test]
    fn haproxy_times() {
        assert_eq!(parse_haproxy_time("2000"), Some(Duration::from_secs(2)));
        assert_eq!(parse_haproxy_time("3s"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_haproxy_time("250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_haproxy_time("x"), None);
    }

    #[test]
    fn http_mode_is_refused_and_leastconn_is_mapped_with_a_note() {
        let ha = "defaults\n  mode tcp\nfrontend web\n  mode http\n  bind 10.0.0.5:80\n  default_backend b\nfrontend db\n  bind 10.0.0.5:5432\n  default_backend pg\nbackend pg\n  balance leastconn\n  server p1 10.1.0.1:5432 check\nbackend b\n  server w 10.1.0.2:80\n";
        let facts = NodeFacts {
            public_interface: Some("eth0".into()),
            private_interface: Some("eth1".into()),
            private_address: Some(Ipv4Addr::new(10, 1, 0, 9)),
        };
        let imported = import(("h.cfg", ha), None, &facts).expect("db imports");
        assert!(
            imported.toml.contains("name = \"db\"") && !imported.toml.contains("name = \"web\""),
            "{}",
            imported.toml
        );
        let refused = imported
            .notes
            .iter()
            .find(|n| n.line == 3)
            .expect("web refused");
        assert!(refused.why.contains("mode http"), "{refused}");
        let mapped = imported
            .notes
            .iter()
            .find(|n| n.line == 11)
            .expect("leastconn noted");
        assert!(mapped.why.contains("round robin"), "{mapped}");
    }

    #[test]
    fn missing_node_facts_are_asked_for() {
        let ha = "frontend f\n  mode tcp\n  bind 10.0.0.5:80\n  default_backend b\nbackend b\n  server w 10.1.0.2:80\n";
        let error = import(("h", ha), None, &facts()).expect_err("no private address");
        assert!(error.to_string().contains("--private-address"), "{error}");
    }
}
