//! The part of `haproxy.cfg` a TCP-mode load balancer pair uses: sections
//! (`global`, `defaults`, `frontend`, `backend`, `listen`) and, in them,
//! `mode`, `bind`, `default_backend`, `use_backend`, `balance`, `server`,
//! `default-server`, `option httpchk`, `http-check expect status`. Every
//! other line is reported (`Note`), never silently dropped.

use std::{net::Ipv4Addr, time::Duration};

use super::{parse_haproxy_time, Note};

/// A `server` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: Option<u16>,
    pub check: bool,
    pub inter: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub weight: Option<u32>,
    pub check_port: Option<u16>,
    pub backup: bool,
    pub disabled: bool,
    pub line: usize,
}

/// A `frontend`, `backend` or `listen` section (a `listen` is both).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proxy {
    pub name: String,
    pub kind: String,
    pub line: usize,
    pub mode: Option<(String, usize)>,
    /// `bind` addresses: (address or None for `*`/empty, port, line).
    pub binds: Vec<(Option<Ipv4Addr>, u16, usize)>,
    pub default_backend: Option<String>,
    pub balance: Option<(String, usize)>,
    pub servers: Vec<Server>,
    /// `option httpchk [METHOD] [URI]`.
    pub httpchk: Option<(String, String)>,
    pub expect_status: Option<u16>,
    /// `default-server` options (inter, rise, fall).
    pub default_inter: Option<Duration>,
    pub default_rise: Option<u32>,
    pub default_fall: Option<u32>,
}

/// The parsed file.
#[derive(Debug, Clone, Default)]
pub struct HaproxyConfig {
    pub defaults: Proxy,
    pub proxies: Vec<Proxy>,
}

impl HaproxyConfig {
    pub fn backend(&self, name: &str) -> Option<&Proxy> {
        self.proxies
            .iter()
            .find(|p| p.name == name && (p.kind == "backend" || p.kind == "listen"))
    }
}

/// `ADDR:PORT`, `*:PORT`, `:PORT` (a port range or a list takes the first).
fn parse_bind(spec: &str) -> Option<(Option<Ipv4Addr>, u16)> {
    let spec = spec.split(',').next()?;
    let (addr, port) = spec.rsplit_once(':')?;
    let port: u16 = port.split('-').next()?.parse().ok()?;
    let addr = match addr {
        "" | "*" | "0.0.0.0" => None,
        a => Some(a.parse().ok()?),
    };
    Some((addr, port))
}

fn parse_server(words: &[&str], line: usize, file: &str, notes: &mut Vec<Note>) -> Option<Server> {
    let name = words.get(1)?.to_string();
    let target = words.get(2)?;
    let (addr, port) = match target.rsplit_once(':') {
        Some((a, p)) => (a, p.parse().ok()),
        None => (*target, None),
    };
    let Ok(address) = addr.parse::<Ipv4Addr>() else {
        notes.push(Note::new(
            file,
            line,
            &words.join(" "),
            "server address is not an IPv4 address (names are not resolved); write the address",
        ));
        return None;
    };
    let mut server = Server {
        name,
        address,
        port,
        check: false,
        inter: None,
        rise: None,
        fall: None,
        weight: None,
        check_port: None,
        backup: false,
        disabled: false,
        line,
    };
    let mut options = words[3..].iter();
    while let Some(option) = options.next() {
        let mut value = || options.next().copied().unwrap_or("");
        match *option {
            "check" => server.check = true,
            "inter" => server.inter = parse_haproxy_time(value()),
            "rise" => server.rise = value().parse().ok(),
            "fall" => server.fall = value().parse().ok(),
            "weight" => server.weight = value().parse().ok(),
            "port" => server.check_port = value().parse().ok(),
            "backup" => server.backup = true,
            "disabled" => server.disabled = true,
            other => notes.push(Note::new(
                file,
                line,
                &words.join(" "),
                &format!("server option `{other}` is not carried over"),
            )),
        }
    }
    Some(server)
}

/// Parses `text` (from `file`), adding a note for every line not used.
pub fn parse(text: &str, file: &str, notes: &mut Vec<Note>) -> HaproxyConfig {
    let mut config = HaproxyConfig::default();
    // None: global (or before any section).
    let mut current: Option<Proxy> = None;
    let mut in_defaults = false;
    let finish = |current: &mut Option<Proxy>, config: &mut HaproxyConfig| {
        if let Some(proxy) = current.take() {
            config.proxies.push(proxy);
        }
    };
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let words: Vec<&str> = content.split_whitespace().collect();
        match words[0] {
            "global" => {
                finish(&mut current, &mut config);
                in_defaults = false;
                continue;
            }
            "defaults" => {
                finish(&mut current, &mut config);
                in_defaults = true;
                continue;
            }
            kind @ ("frontend" | "backend" | "listen") => {
                finish(&mut current, &mut config);
                in_defaults = false;
                current = Some(Proxy {
                    name: words.get(1).unwrap_or(&"").to_string(),
                    kind: kind.to_string(),
                    line,
                    ..Proxy::default()
                });
                continue;
            }
            _ => {}
        }
        let target = if in_defaults {
            Some(&mut config.defaults)
        } else {
            current.as_mut()
        };
        let Some(proxy) = target else {
            // `global`: process settings (maxconn, log, user, ...).
            notes.push(Note::new(
                file,
                line,
                content,
                "global settings are HAProxy's process settings; nothing to carry over",
            ));
            continue;
        };
        let unused =
            |notes: &mut Vec<Note>, why: &str| notes.push(Note::new(file, line, content, why));
        match (words[0], words.get(1).copied()) {
            ("mode", Some(mode)) => proxy.mode = Some((mode.to_string(), line)),
            ("bind", Some(spec)) => match parse_bind(spec) {
                Some((addr, port)) => proxy.binds.push((addr, port, line)),
                None => unused(notes, "bind address not understood (IPv4 ADDR:PORT expected)"),
            },
            ("default_backend", Some(name)) => proxy.default_backend = Some(name.to_string()),
            ("use_backend", _) => unused(notes, "use_backend rules (ACLs) are not supported: one backend per service"),
            ("balance", Some(algorithm)) => proxy.balance = Some((algorithm.to_string(), line)),
            ("server", _) => {
                if let Some(server) = parse_server(&words, line, file, notes) {
                    proxy.servers.push(server);
                }
            }
            ("default-server", _) => {
                let mut options = words[1..].iter();
                while let Some(option) = options.next() {
                    let value = options.next().copied().unwrap_or("");
                    match *option {
                        "inter" => proxy.default_inter = parse_haproxy_time(value),
                        "rise" => proxy.default_rise = value.parse().ok(),
                        "fall" => proxy.default_fall = value.parse().ok(),
                        other => unused(notes, &format!("default-server option `{other}` is not carried over")),
                    }
                }
            }
            ("option", Some("httpchk")) => {
                let (method, uri) = match (words.get(2), words.get(3)) {
                    (Some(m), Some(u)) => (m.to_string(), u.to_string()),
                    (Some(u), None) if u.starts_with('/') => ("OPTIONS".into(), u.to_string()),
                    _ => ("OPTIONS".into(), "/".into()),
                };
                proxy.httpchk = Some((method, uri));
            }
            ("http-check", Some("expect")) => {
                match (words.get(2), words.get(3).and_then(|s| s.parse().ok())) {
                    (Some(&"status"), Some(code)) => proxy.expect_status = Some(code),
                    _ => unused(notes, "only `http-check expect status N` is carried over"),
                }
            }
            ("timeout", _) => unused(notes, "HAProxy timeouts apply to proxied connections; the XDP path keeps flows by idle timeouts ([conntrack])"),
            ("option", Some("tcplog" | "dontlognull" | "redispatch" | "tcpka" | "log-health-checks")) | ("log", _) | ("maxconn", _) | ("retries", _) => {
                unused(notes, "proxy logging/connection settings have no XDP equivalent")
            }
            _ => unused(notes, "not understood; not carried over"),
        }
    }
    finish(&mut current, &mut config);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_servers_and_checks_are_read() {
        let text = "global\n  maxconn 100\ndefaults\n  mode tcp\n  default-server inter 3s rise 2 fall 4\nfrontend www\n  bind 10.0.0.5:80\n  default_backend pool # the web servers\nbackend pool\n  balance roundrobin\n  option httpchk GET /health\n  http-check expect status 200\n  server web1 10.1.0.1:80 check weight 3\n  server web2 10.1.0.2:8080 check inter 1s backup\n";
        let mut notes = Vec::new();
        let config = parse(text, "h.cfg", &mut notes);
        assert_eq!(
            config.defaults.mode.as_ref().map(|m| m.0.as_str()),
            Some("tcp")
        );
        assert_eq!(config.defaults.default_inter, Some(Duration::from_secs(3)));
        let www = &config.proxies[0];
        assert_eq!(www.binds, vec![(Some(Ipv4Addr::new(10, 0, 0, 5)), 80, 7)]);
        assert_eq!(www.default_backend.as_deref(), Some("pool"));
        let pool = config.backend("pool").expect("pool");
        assert_eq!(pool.httpchk, Some(("GET".into(), "/health".into())));
        assert_eq!(pool.expect_status, Some(200));
        assert_eq!(pool.servers.len(), 2);
        assert_eq!(pool.servers[0].weight, Some(3));
        assert!(pool.servers[1].backup);
        assert_eq!(pool.servers[1].port, Some(8080));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].line, 2, "maxconn in global");
    }

    #[test]
    fn binds_take_any_address_forms() {
        assert_eq!(parse_bind("*:80"), Some((None, 80)));
        assert_eq!(parse_bind(":443"), Some((None, 443)));
        assert_eq!(
            parse_bind("10.0.0.1:8000-8010"),
            Some((Some(Ipv4Addr::new(10, 0, 0, 1)), 8000))
        );
        assert_eq!(parse_bind("ipv6@:80"), None);
    }
}
