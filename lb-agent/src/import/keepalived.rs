//! The part of `keepalived.conf` an HA load balancer pair uses:
//! `global_defs` (`vrrp_version`), `vrrp_script` blocks and `vrrp_instance`
//! blocks with their settings and sub-blocks (`unicast_peer`,
//! `authentication`, `virtual_ipaddress`, `track_script`,
//! `track_interface`). Everything else is reported (`Note`).

use std::{net::Ipv4Addr, time::Duration};

use super::Note;

/// A `vrrp_script NAME { ... }`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    pub name: String,
    pub script: String,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub weight: Option<i32>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub line: usize,
}

/// A `vrrp_instance NAME { ... }`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instance {
    pub name: String,
    pub line: usize,
    pub interface: Option<String>,
    pub vrid: Option<u8>,
    pub priority: Option<u8>,
    pub advert_int: Option<Duration>,
    pub nopreempt: bool,
    pub preempt_delay: Option<Duration>,
    pub unicast_src: Option<Ipv4Addr>,
    pub unicast_peers: Vec<Ipv4Addr>,
    pub auth_pass: Option<String>,
    pub virtual_addresses: Vec<Ipv4Addr>,
    pub track_scripts: Vec<String>,
    pub track_interfaces: Vec<String>,
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    pub notify_stop: Option<String>,
    pub notify: Option<String>,
    pub version: Option<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct KeepalivedConfig {
    pub version: Option<u8>,
    pub scripts: Vec<Script>,
    pub instances: Vec<Instance>,
}

/// A word with the line it is on; quoted strings are one word.
#[derive(Debug, Clone, PartialEq)]
struct Token {
    text: String,
    line: usize,
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let mut chars = raw.chars().peekable();
        let mut word = String::new();
        let push = |word: &mut String, tokens: &mut Vec<Token>| {
            if !word.is_empty() {
                tokens.push(Token {
                    text: std::mem::take(word),
                    line,
                });
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '#' | '!' if word.is_empty() => break,
                '"' => {
                    push(&mut word, &mut tokens);
                    let quoted: String = chars.by_ref().take_while(|&c| c != '"').collect();
                    tokens.push(Token { text: quoted, line });
                }
                '{' | '}' => {
                    push(&mut word, &mut tokens);
                    tokens.push(Token {
                        text: c.to_string(),
                        line,
                    });
                }
                c if c.is_whitespace() => push(&mut word, &mut tokens),
                c => word.push(c),
            }
        }
        push(&mut word, &mut tokens);
    }
    tokens
}

/// Statements: the words of a line, and a block if one follows.
#[derive(Debug, Clone)]
struct Statement {
    words: Vec<String>,
    line: usize,
    block: Option<Vec<Statement>>,
}

fn statements(tokens: &[Token], at: &mut usize) -> Vec<Statement> {
    let mut out: Vec<Statement> = Vec::new();
    while *at < tokens.len() {
        let token = &tokens[*at];
        match token.text.as_str() {
            "}" => {
                *at += 1;
                return out;
            }
            "{" => {
                *at += 1;
                let block = statements(tokens, at);
                match out.last_mut() {
                    Some(last) if last.block.is_none() => last.block = Some(block),
                    _ => out.push(Statement {
                        words: Vec::new(),
                        line: token.line,
                        block: Some(block),
                    }),
                }
            }
            _ => {
                let line = token.line;
                let mut words = Vec::new();
                while *at < tokens.len()
                    && tokens[*at].line == line
                    && tokens[*at].text != "{"
                    && tokens[*at].text != "}"
                {
                    words.push(tokens[*at].text.clone());
                    *at += 1;
                }
                out.push(Statement {
                    words,
                    line,
                    block: None,
                });
            }
        }
    }
    out
}

fn seconds(value: &str) -> Option<Duration> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// `10.0.0.5`, `10.0.0.5/32`, `10.0.0.5/24 dev eth0 label eth0:1`.
fn address(words: &[String]) -> Option<Ipv4Addr> {
    words.first()?.split('/').next()?.parse().ok()
}

fn parse_instance(
    name: &str,
    line: usize,
    block: &[Statement],
    file: &str,
    notes: &mut Vec<Note>,
) -> Instance {
    let mut instance = Instance {
        name: name.to_string(),
        line,
        ..Instance::default()
    };
    for s in block {
        let text = s.words.join(" ");
        let key = s.words.first().map(String::as_str).unwrap_or("");
        let value = s.words.get(1).map(String::as_str).unwrap_or("");
        let mut note = |why: &str| notes.push(Note::new(file, s.line, &text, why));
        match key {
            "interface" => instance.interface = Some(value.to_string()),
            "virtual_router_id" => instance.vrid = value.parse().ok(),
            "priority" => instance.priority = value.parse().ok(),
            "advert_int" => instance.advert_int = seconds(value),
            "nopreempt" => instance.nopreempt = true,
            "preempt_delay" => instance.preempt_delay = seconds(value),
            "unicast_src_ip" => instance.unicast_src = value.parse().ok(),
            "version" => instance.version = value.parse().ok(),
            "state" => note("lb-agent elects by priority from INIT; `state` is not needed"),
            "notify_master" => instance.notify_master = Some(s.words[1..].join(" ")),
            "notify_backup" => instance.notify_backup = Some(s.words[1..].join(" ")),
            "notify_fault" => instance.notify_fault = Some(s.words[1..].join(" ")),
            "notify_stop" => instance.notify_stop = Some(s.words[1..].join(" ")),
            "notify" => instance.notify = Some(s.words[1..].join(" ")),
            "unicast_peer" => {
                for peer in s.block.iter().flatten() {
                    match address(&peer.words) {
                        Some(a) => instance.unicast_peers.push(a),
                        None => notes.push(Note::new(
                            file,
                            peer.line,
                            &peer.words.join(" "),
                            "not an IPv4 peer address",
                        )),
                    }
                }
            }
            "virtual_ipaddress" => {
                for vip in s.block.iter().flatten() {
                    match address(&vip.words) {
                        Some(a) => instance.virtual_addresses.push(a),
                        None => notes.push(Note::new(
                            file,
                            vip.line,
                            &vip.words.join(" "),
                            "not an IPv4 address",
                        )),
                    }
                }
            }
            "authentication" => {
                for a in s.block.iter().flatten() {
                    match (a.words.first().map(String::as_str), a.words.get(1)) {
                        (Some("auth_type"), Some(t)) if t == "PASS" => {}
                        (Some("auth_type"), Some(t)) => notes.push(Note::new(file, a.line, &a.words.join(" "), &format!("auth_type {t} is not supported (PASS is; AH was removed from VRRP)"))),
                        (Some("auth_pass"), Some(p)) => instance.auth_pass = Some(p.clone()),
                        _ => notes.push(Note::new(file, a.line, &a.words.join(" "), "not understood")),
                    }
                }
            }
            "track_script" => {
                instance.track_scripts.extend(
                    s.block
                        .iter()
                        .flatten()
                        .filter_map(|t| t.words.first().cloned()),
                );
            }
            "track_interface" => {
                instance.track_interfaces.extend(
                    s.block
                        .iter()
                        .flatten()
                        .filter_map(|t| t.words.first().cloned()),
                );
            }
            _ => note("not carried over"),
        }
    }
    instance
}

fn parse_script(
    name: &str,
    line: usize,
    block: &[Statement],
    file: &str,
    notes: &mut Vec<Note>,
) -> Script {
    let mut script = Script {
        name: name.to_string(),
        line,
        ..Script::default()
    };
    for s in block {
        let value = s.words.get(1).map(String::as_str).unwrap_or("");
        match s.words.first().map(String::as_str).unwrap_or("") {
            "script" => script.script = s.words[1..].join(" "),
            "interval" => script.interval = seconds(value),
            "timeout" => script.timeout = seconds(value),
            "weight" => script.weight = value.parse().ok(),
            "rise" => script.rise = value.parse().ok(),
            "fall" => script.fall = value.parse().ok(),
            _ => notes.push(Note::new(
                file,
                s.line,
                &s.words.join(" "),
                "not carried over",
            )),
        }
    }
    script
}

/// Parses `text` (from `file`), adding a note for every statement not used.
pub fn parse(text: &str, file: &str, notes: &mut Vec<Note>) -> KeepalivedConfig {
    let tokens = tokenize(text);
    let mut at = 0;
    let top = statements(&tokens, &mut at);
    let mut config = KeepalivedConfig::default();
    for s in &top {
        let key = s.words.first().map(String::as_str).unwrap_or("");
        let name = s.words.get(1).map(String::as_str).unwrap_or("");
        let block = s.block.as_deref().unwrap_or(&[]);
        match key {
            "global_defs" => {
                for g in block {
                    match (g.words.first().map(String::as_str), g.words.get(1)) {
                        (Some("vrrp_version"), Some(v)) => config.version = v.parse().ok(),
                        _ => notes.push(Note::new(
                            file,
                            g.line,
                            &g.words.join(" "),
                            "global_defs setting not carried over",
                        )),
                    }
                }
            }
            "vrrp_script" => config
                .scripts
                .push(parse_script(name, s.line, block, file, notes)),
            "vrrp_instance" => config
                .instances
                .push(parse_instance(name, s.line, block, file, notes)),
            _ => notes.push(Note::new(
                file,
                s.line,
                &s.words.join(" "),
                "block not carried over (only global_defs, vrrp_script and vrrp_instance are)",
            )),
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC: &str = r#"
global_defs {
    router_id lb1
}
vrrp_script chk_haproxy {
    script "pidof haproxy"
    interval 2
}
vrrp_instance VI_1 {
    interface eth1
    state MASTER
    priority 200
    virtual_router_id 33
    unicast_src_ip 10.200.0.11
    unicast_peer {
        10.200.0.12
    }
    authentication {
        auth_type PASS
        auth_pass password
    }
    virtual_ipaddress {
        10.100.0.100/32 dev eth0
    }
    track_script {
        chk_haproxy
    }
    notify_master /etc/keepalived/master.sh
}
"#;

    #[test]
    fn the_classic_config_is_read_with_line_numbers_for_what_is_left() {
        let mut notes = Vec::new();
        let config = parse(CLASSIC, "k.conf", &mut notes);
        assert_eq!(config.scripts.len(), 1);
        assert_eq!(config.scripts[0].script, "pidof haproxy");
        assert_eq!(config.scripts[0].interval, Some(Duration::from_secs(2)));
        let vi = &config.instances[0];
        assert_eq!(vi.name, "VI_1");
        assert_eq!((vi.vrid, vi.priority), (Some(33), Some(200)));
        assert_eq!(vi.interface.as_deref(), Some("eth1"));
        assert_eq!(vi.unicast_src, Some(Ipv4Addr::new(10, 200, 0, 11)));
        assert_eq!(vi.unicast_peers, vec![Ipv4Addr::new(10, 200, 0, 12)]);
        assert_eq!(vi.auth_pass.as_deref(), Some("password"));
        assert_eq!(vi.virtual_addresses, vec![Ipv4Addr::new(10, 100, 0, 100)]);
        assert_eq!(vi.track_scripts, vec!["chk_haproxy".to_string()]);
        assert_eq!(
            vi.notify_master.as_deref(),
            Some("/etc/keepalived/master.sh")
        );
        let lines: Vec<usize> = notes.iter().map(|n| n.line).collect();
        assert_eq!(lines, vec![3, 11], "router_id and state: {notes:?}");
    }

    #[test]
    fn quotes_comments_and_same_line_blocks() {
        let text = "vrrp_instance X { priority 9 # comment\n  virtual_ipaddress { 10.0.0.1 }\n}\n! bang comment\n";
        let mut notes = Vec::new();
        let config = parse(text, "k", &mut notes);
        assert_eq!(config.instances[0].priority, Some(9));
        assert_eq!(
            config.instances[0].virtual_addresses,
            vec![Ipv4Addr::new(10, 0, 0, 1)]
        );
        assert!(notes.is_empty(), "{notes:?}");
    }
}
