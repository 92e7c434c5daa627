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

use std::{fmt, net::Ipv4Addr, time::Duration};

use crate::config::{
    BackendConfig, CheckKind, Config, HealthCheckConfig, NodeConfig, OutOfBounds, Priority,
    Protocol, RiseFall, ServiceConfig, StatusRange, TrackScript, TrackWeight, Vrid, VrrpConfig,
    VrrpVersion, Weight,
};

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

/// Whether a keepalived script checks HAProxy (which the agent replaces).
fn checks_haproxy(script: &str) -> bool {
    let s = script.to_ascii_lowercase();
    s.contains("haproxy")
        && (s.contains("pidof")
            || s.contains("killall -0")
            || s.contains("pgrep")
            || s.contains("systemctl"))
}

/// A value of the classic files that the model bounds, or why it does
/// not fit (`FILE:LINE: what: reason`).
fn bounded<T>(
    made: Result<T, OutOfBounds>,
    file: &str,
    line: usize,
    what: &str,
) -> Result<T, ImportError> {
    made.map_err(|error| ImportError::Invalid(format!("{file}:{line}: {what}: {error}")))
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
    let instance = ka.as_ref().and_then(|(file, config)| {
        for extra in config.instances.iter().skip(1) {
            notes.push(Note::new(
                file,
                extra.line,
                &format!("vrrp_instance {}", extra.name),
                "only the first vrrp_instance is carried over (the agent runs one virtual router)",
            ));
        }
        config.instances.first().cloned()
    });
    let mut config = Config::new(node_of(facts, instance.as_ref())?);
    let vip_default = instance
        .as_ref()
        .and_then(|i| i.virtual_addresses.first().copied());
    config.services = services_of(&ha, haproxy.0, vip_default, &mut notes)?;
    if config.services.is_empty() {
        return Err(ImportError::Unusable(format!(
            "{}: no TCP-mode frontend or listen section with a bind address and servers was found",
            haproxy.0
        )));
    }
    if let (Some(instance), Some((file, keepalived))) = (&instance, &ka) {
        config.vrrp = Some(vrrp_of(instance, keepalived, file, &mut notes)?);
    }
    let problems = config.problems();
    if !problems.is_empty() {
        let listed: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        return Err(ImportError::Invalid(listed.join("\n")));
    }
    let body = config
        .to_toml()
        .map_err(|error| ImportError::Invalid(format!("cannot be written as TOML: {error}")))?;
    let sources = match &ka {
        Some((file, _)) => format!("{} and {file}", haproxy.0),
        None => haproxy.0.to_string(),
    };
    let toml = format!(
        "# Imported by `lb-agent import` from {sources}.\n# Review it, then: lb-agent check-config --config FILE\n\n{body}"
    );
    Ok(Imported { toml, notes })
}

/// `[node]` from the facts given, else from keepalived's interface and
/// unicast source.
fn node_of(
    facts: &NodeFacts,
    instance: Option<&keepalived::Instance>,
) -> Result<NodeConfig, ImportError> {
    let private_interface = facts
        .private_interface
        .clone()
        .or_else(|| instance.and_then(|i| i.interface.clone()));
    let private_address = facts
        .private_address
        .or_else(|| instance.and_then(|i| i.unicast_src));
    match (&facts.public_interface, private_interface, private_address) {
        (Some(public), Some(private), Some(address)) => {
            Ok(NodeConfig::new(public, &private, address))
        }
        _ => Err(ImportError::Unusable(
            "the node's interfaces and private address are not in the classic files: pass --public-interface, and --private-interface / --private-address unless keepalived's `interface` / `unicast_src_ip` give them".into(),
        )),
    }
}

/// One `[[service]]` per bind of every TCP-mode frontend and listen.
fn services_of(
    ha: &haproxy::HaproxyConfig,
    file: &str,
    vip_default: Option<Ipv4Addr>,
    notes: &mut Vec<Note>,
) -> Result<Vec<ServiceConfig>, ImportError> {
    let mut services = Vec::new();
    let mut names = std::collections::HashSet::new();
    for proxy in ha
        .proxies
        .iter()
        .filter(|p| p.kind == "frontend" || p.kind == "listen")
    {
        let Some(backend) = backend_of(ha, proxy, file, notes) else {
            continue;
        };
        for (index, (addr, port, line)) in proxy.binds.iter().enumerate() {
            let Some(vip) = addr.or(vip_default) else {
                notes.push(Note::new(
                    file,
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
            let mut service = ServiceConfig::new(&name, vip, *port, Protocol::Tcp);
            service.health_check = check_of(backend, &ha.defaults, file)?;
            service.backends = servers_of(backend, *port, file, notes);
            services.push(service);
        }
    }
    Ok(services)
}

/// The section whose servers a TCP-mode `proxy` balances over (a `listen`
/// is its own), noting what is left out and how balancing maps.
fn backend_of<'h>(
    ha: &'h haproxy::HaproxyConfig,
    proxy: &'h haproxy::Proxy,
    file: &str,
    notes: &mut Vec<Note>,
) -> Option<&'h haproxy::Proxy> {
    let mode = proxy
        .mode
        .clone()
        .or_else(|| ha.defaults.mode.clone())
        .map(|m| m.0)
        .unwrap_or_else(|| "http".into());
    if mode != "tcp" {
        notes.push(Note::new(file, proxy.line, &format!("{} {}", proxy.kind, proxy.name), &format!("mode {mode}: an L7 proxy is needed; lb-agent balances TCP and UDP connections (mode tcp) only")));
        return None;
    }
    let backend = if proxy.kind == "listen" {
        proxy
    } else if let Some(backend) = proxy.default_backend.as_deref().and_then(|b| ha.backend(b)) {
        backend
    } else {
        notes.push(Note::new(
            file,
            proxy.line,
            &format!("frontend {}", proxy.name),
            "no default_backend found; skipped",
        ));
        return None;
    };
    if let Some((algorithm, line)) = backend
        .balance
        .clone()
        .or_else(|| ha.defaults.balance.clone())
    {
        if !matches!(algorithm.as_str(), "roundrobin" | "static-rr") {
            notes.push(Note::new(file, line, &format!("balance {algorithm}"), "mapped to weighted round robin per connection (the XDP path keeps no per-backend connection counts or hashes; each connection still sticks to its backend)"));
        }
    }
    Some(backend)
}

/// The servers that carry traffic (not `backup`, not `disabled`), weights
/// fitted into the agent's bounds.
fn servers_of(
    backend: &haproxy::Proxy,
    service_port: u16,
    file: &str,
    notes: &mut Vec<Note>,
) -> Vec<BackendConfig> {
    let any_checked = backend.servers.iter().any(|s| s.check);
    let mut backends = Vec::new();
    for server in &backend.servers {
        if server.backup || server.disabled {
            let what = if server.backup { "backup" } else { "disabled" };
            notes.push(Note::new(file, server.line, &format!("server {} {}", server.name, server.address), &format!("{what} server left out (the agent has no backup servers; add it later with `lb-agent backends add`)")));
            continue;
        }
        let mut imported = BackendConfig::new(server.address);
        imported.port = server.port.filter(|p| *p != service_port);
        if let Some(w) = server.weight {
            let scaled = w.clamp(Weight::MIN, Weight::MAX);
            if scaled != w {
                notes.push(Note::new(
                    file,
                    server.line,
                    &format!("server {} weight {w}", server.name),
                    &format!(
                        "weight {w} is outside {}..={}; written as {scaled}",
                        Weight::MIN,
                        Weight::MAX
                    ),
                ));
            }
            imported.weight = Weight::new(scaled).unwrap_or_default();
        }
        if !server.check && any_checked {
            imported.health_check = Some(HealthCheckConfig::of_kind(CheckKind::None));
        }
        backends.push(imported);
    }
    backends
}

/// The service's health check from its first checked server (HAProxy
/// checks per server; the agent per service).
fn check_of(
    backend: &haproxy::Proxy,
    defaults: &haproxy::Proxy,
    file: &str,
) -> Result<Option<HealthCheckConfig>, ImportError> {
    let Some(first) = backend.servers.iter().find(|s| s.check) else {
        return Ok(None);
    };
    let inter = first
        .inter
        .or(backend.default_inter)
        .or(defaults.default_inter)
        .unwrap_or(Duration::from_secs(2));
    let rise = first
        .rise
        .or(backend.default_rise)
        .or(defaults.default_rise);
    let fall = first
        .fall
        .or(backend.default_fall)
        .or(defaults.default_fall);
    let mut check = HealthCheckConfig {
        interval: inter,
        // HAProxy's check timeout defaults to `inter`; keep it under it.
        timeout: (inter / 2).max(Duration::from_millis(100)),
        port: first.check_port,
        ..HealthCheckConfig::default()
    };
    if let Some(rise) = rise {
        check.rise = bounded(RiseFall::new(rise), file, first.line, "rise")?;
    }
    if let Some(fall) = fall {
        check.fall = bounded(RiseFall::new(fall), file, first.line, "fall")?;
    }
    if let Some((method, uri)) = &backend.httpchk {
        check.kind = CheckKind::Http;
        check.method = method.clone();
        check.path = uri.clone();
        if let Some(code) = backend.expect_status {
            check.expect_status = bounded(
                StatusRange::new(code, code),
                file,
                backend.line,
                "http-check expect status",
            )?;
        }
    }
    Ok(Some(check))
}

/// `[vrrp]` from the first `vrrp_instance`; a script checking HAProxy
/// becomes `track_program`, other scripts track scripts.
fn vrrp_of(
    instance: &keepalived::Instance,
    config: &keepalived::KeepalivedConfig,
    file: &str,
    notes: &mut Vec<Note>,
) -> Result<VrrpConfig, ImportError> {
    let line = instance.line;
    let Some(vrid) = instance.vrid else {
        return Err(ImportError::Invalid(format!(
            "{file}:{line}: vrrp_instance {} has no virtual_router_id",
            instance.name
        )));
    };
    let vrid = bounded(Vrid::new(vrid), file, line, "virtual_router_id")?;
    let priority = bounded(
        Priority::new(instance.priority.unwrap_or(100)),
        file,
        line,
        "priority",
    )?;
    let mut vrrp = VrrpConfig::new(vrid, priority);
    let version = instance.version.or(config.version).unwrap_or(2);
    vrrp.version = bounded(
        VrrpVersion::try_from(i64::from(version)),
        file,
        line,
        "vrrp_version",
    )?;
    if let Some(advert) = instance.advert_int {
        vrrp.advert_int = advert;
    }
    vrrp.unicast_src = instance.unicast_src;
    vrrp.unicast_peers = instance.unicast_peers.clone();
    vrrp.auth_pass = instance.auth_pass.clone();
    vrrp.preempt = !instance.nopreempt;
    vrrp.preempt_delay = instance.preempt_delay.unwrap_or_default();
    vrrp.virtual_addresses = instance.virtual_addresses.clone();
    vrrp.notify_master = instance.notify_master.clone();
    vrrp.notify_backup = instance.notify_backup.clone();
    vrrp.notify_fault = instance.notify_fault.clone();
    vrrp.notify_stop = instance.notify_stop.clone();
    vrrp.notify = instance.notify.clone();
    if !instance.track_interfaces.is_empty() {
        vrrp.track_interfaces = Some(instance.track_interfaces.clone());
    }
    vrrp.track_program = true;
    for name in &instance.track_scripts {
        let Some(script) = config.scripts.iter().find(|s| &s.name == name) else {
            notes.push(Note::new(
                file,
                line,
                &format!("track_script {name}"),
                "no vrrp_script of that name",
            ));
            continue;
        };
        if checks_haproxy(&script.script) {
            notes.push(Note::new(file, script.line, &format!("vrrp_script {} ({})", script.name, script.script), "it checked HAProxy, which the agent replaces: tracked as `track_program = true` (FAULT while the XDP program is not attached)"));
            continue;
        }
        vrrp.track_script.push(track_script_of(script, file)?);
    }
    Ok(vrrp)
}

fn track_script_of(script: &keepalived::Script, file: &str) -> Result<TrackScript, ImportError> {
    let line = script.line;
    let mut tracked = TrackScript::new(&script.name, &script.script);
    if let Some(interval) = script.interval {
        tracked.interval = interval;
    }
    if let Some(timeout) = script.timeout {
        tracked.timeout = timeout;
    }
    if let Some(weight) = script.weight {
        tracked.weight = bounded(TrackWeight::new(weight), file, line, "weight")?;
    }
    if let Some(rise) = script.rise {
        tracked.rise = bounded(RiseFall::new(rise), file, line, "rise")?;
    }
    if let Some(fall) = script.fall {
        tracked.fall = bounded(RiseFall::new(fall), file, line, "fall")?;
    }
    Ok(tracked)
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
