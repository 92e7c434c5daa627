//! The model against whole documents: defaults, every broken config with
//! its path, line and message, and writing then reading back.

use std::{net::Ipv4Addr, time::Duration};

use proptest::prelude::*;

use crate::*;

/// A config like the lab's lb1, also the agent's tests' base.
const LAB: &str = include_str!("../testdata/lab.toml");

#[test]
fn the_lab_config_parses_with_defaults() {
    let config = Config::parse(LAB, "lab.toml").expect("lab config is valid");
    assert_eq!(config.node.xdp_mode, XdpMode::Generic);
    assert_eq!(config.services.len(), 2);
    let www = &config.services[0];
    assert_eq!(www.backends[0].weight.get(), 1);
    assert_eq!(www.backends[0].port, None);
    assert_eq!(www.backends[1].weight.get(), 3);
    assert_eq!(config.conntrack.max_flows.get(), 65536);
    assert_eq!(
        config.conntrack.tcp_established_timeout,
        Duration::from_secs(900)
    );
    let check = www
        .check_for(Ipv4Addr::new(10, 200, 0, 21), 80)
        .expect("service check applies");
    assert_eq!(check.kind, CheckKind::Http);
    assert_eq!((check.rise.get(), check.fall.get()), (2, 3));
    assert_eq!(check.interval, Duration::from_secs(2));
    assert_eq!(check.expect_status, StatusRange::default());
    assert!(config.services[1]
        .check_for(Ipv4Addr::new(10, 200, 0, 21), 5353)
        .is_none());
    let settings = config.to_settings();
    assert_eq!(settings.snat_addrs[0], [10, 200, 0, 11]);
    assert_eq!((settings.port_min, settings.port_max), (20000, 29999));
    assert_eq!(settings.udp_ns, 60_000_000_000);
    assert_eq!(
        settings.flow_cache_ttl_ns, 250_000_000,
        "cached flow copies serve 250 ms at most (a quarter of a 15 min timeout is longer)"
    );
}

#[test]
fn a_backends_own_check_replaces_the_services() {
    let text = LAB.replacen(
        "  weight = 3\n",
        "  weight = 3\n  [service.backend.health_check]\n  type = \"tcp\"\n  port = 8080\n",
        1,
    );
    let config = Config::parse(&text, "h.toml").expect("valid");
    let own = config.services[0]
        .check_for(Ipv4Addr::new(10, 200, 0, 22), 80)
        .expect("backend check applies");
    assert_eq!((own.kind, own.port), (CheckKind::Tcp, Some(8080)));
}

/// `LAB` with the first `replace` replaced, which must be refused.
fn refused(replace: &str, with: &str) -> (String, Vec<Located>) {
    assert!(LAB.contains(replace), "the lab config lacks {replace:?}");
    refused_text(LAB.replacen(replace, with, 1))
}

fn refused_text(text: String) -> (String, Vec<Located>) {
    match Config::parse(&text, "broken.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ConfigError::Invalid { problems, .. }) => (text, problems),
        Err(other) => panic!("not a problem of the model: {other}\n{text}"),
    }
}

/// Appended to `LAB`: `[vrrp]` starts at line 30.
const VRRP: &str = "[vrrp]\nvrid = 33\npriority = 200\n";

#[test]
fn each_broken_config_names_its_field_line_and_fix() {
    // (replace, with, field path, line, words of the message)
    let table: &[(&str, &str, &str, usize, &[&str])] = &[
        ("name = \"dns\"", "name = \"www\"", "service[1].name", 24, &["service \"www\" name: is used twice", "unique"]),
        ("name = \"dns\"", "name = \"DNS!\"", "service[1].name", 24, &["must be 1-32 characters"]),
        ("port = 5353\nprotocol = \"udp\"", "port = 80\nprotocol = \"tcp\"", "service[1].port", 26, &["10.100.0.100:80/tcp is already another service's"]),
        ("vip = \"10.100.0.100\"\nport = 80", "vip = \"224.0.0.1\"\nport = 80", "service[0].vip", 12, &["224.0.0.1 is not a usable unicast address"]),
        ("port = 80", "port = 0", "service[0].port", 13, &["service \"www\" port: 0 is not a service port"]),
        ("address = \"10.200.0.22\"", "address = \"10.200.0.21\"", "service[0].backend[1].address", 21, &["backend 10.200.0.21:80 address: listed twice"]),
        ("address = \"10.200.0.22\"", "address = \"10.100.0.100\"", "service[0].backend[1].address", 21, &["is a VIP of this balancer", "not a VIP"]),
        ("address = \"10.200.0.22\"", "address = \"10.200.0.11\"", "service[0].backend[1].address", 21, &["service \"www\" backend 10.200.0.11:80 address: 10.200.0.11 is this node's own address"]),
        ("address = \"10.200.0.22\"", "address = \"255.255.255.255\"", "service[0].backend[1].address", 21, &["not a unicast address"]),
        ("address = \"10.200.0.22\"", "address = \"127.0.0.1\"", "service[0].backend[1].address", 21, &["not a unicast address"]),
        ("address = \"10.200.0.22\"", "address = \"239.1.2.3\"", "service[0].backend[1].address", 21, &["239.1.2.3 is not a unicast address"]),
        ("weight = 3", "weight = 0", "service[0].backend[1].weight", 22, &["service \"www\" backend 10.200.0.22:80 weight: 0 is out of range 1..=100"]),
        ("weight = 3", "weight = 300", "service[0].backend[1].weight", 22, &["300 is out of range 1..=100"]),
        ("port_range = [20000, 29999]", "port_range = [30000, 20000]", "node.port_range", 6, &["node.port_range: [30000, 20000]", "0 < first <= last"]),
        ("port_range = [20000, 29999]", "port_range = [20000, 20010]", "node.port_range", 6, &["at least 1024"]),
        ("port_range = [20000, 29999]", "port_range = [20000, 29999, 40000]", "node.port_range", 6, &["has 3 items", "exactly two"]),
        ("max_flows = 65536", "max_flows = 10", "conntrack.max_flows", 9, &["conntrack.max_flows: 10 is out of range 1024..=16777216"]),
        ("max_flows = 65536", "max_flows = 65536\nudp_timeout = \"0s\"", "conntrack.udp_timeout", 10, &["conntrack.udp_timeout: must be longer than zero"]),
        ("max_flows = 65536", "max_flows = 65536\ntcp_handshake_timeout = \"2h\"", "conntrack.tcp_handshake_timeout", 10, &["must not exceed tcp_established_timeout"]),
        ("max_flows = 65536", "max_flows = 65536\nudp_timeout = \"60\"", "conntrack.udp_timeout", 10, &["has no unit"]),
        ("max_flows = 65536", "max_flow = 65536", "conntrack.max_flow", 9, &["unknown field `max_flow`"]),
        ("private_address = \"10.200.0.11\"", "private_address = \"0.0.0.0\"", "node.private_address", 4, &["node.private_address: 0.0.0.0 is not a usable unicast address"]),
        ("private_address = \"10.200.0.11\"", "private_address = \"10.100.0.100\"", "service[0].vip", 12, &["is node.private_address"]),
        ("private_address = \"10.200.0.11\"", "private_address = \"10.200.0.300\"", "node.private_address", 4, &["invalid"]),
        ("xdp_mode = \"generic\"", "xdp_mode = \"fast\"", "node.xdp_mode", 5, &["unknown variant"]),
        ("state_dir = \"/run/lb-lab/lab/state\"", "state_dir = \"\"", "node.state_dir", 7, &["node.state_dir: \"\" is not an absolute directory", "write an absolute directory"]),
        ("state_dir = \"/run/lb-lab/lab/state\"", "state_dir = \"state\"", "node.state_dir", 7, &["\"state\" is not an absolute directory"]),
        ("protocol = \"tcp\"", "protocol = \"tcp\"\nprotcol = 1", "service[0].protcol", 15, &["unknown field", "protcol"]),
        ("protocol = \"udp\"\n", "", "service[1]", 23, &["missing field `protocol`"]),
        ("path = \"/health\"", "path = \"health\"", "service[0].health_check.path", 17, &["service \"www\" health_check.path: \"health\" must start with '/'"]),
        ("path = \"/health\"", "path = \"/health\\r\\nX-Injected: 1\"", "service[0].health_check.path", 17, &["control character"]),
        ("path = \"/health\"", "path = \"/a b\"", "service[0].health_check.path", 17, &["percent-encode"]),
        ("path = \"/health\"", "path = \"/health\"\n  host = \"www\\u0000\"", "service[0].health_check.host", 18, &["host: \"www\\0\" must be a host name", "control characters"]),
        ("path = \"/health\"", "path = \"/health\"\n  method = \"DELETE\"", "service[0].health_check.method", 18, &["\"DELETE\" is not one of GET, HEAD, POST, OPTIONS"]),
        ("path = \"/health\"", "path = \"/health\"\n  expect_status = [500, 200]", "service[0].health_check.expect_status", 18, &["[500, 200]", "within 100..=599"]),
        ("path = \"/health\"", "path = \"/health\"\n  expect_status = [200, 299, 399]", "service[0].health_check.expect_status", 18, &["has 3 items"]),
        ("path = \"/health\"", "path = \"/health\"\n  interval = \"1s\"\n  timeout = \"2s\"", "service[0].health_check.timeout", 19, &["at most the interval"]),
        ("path = \"/health\"", "path = \"/health\"\n  rise = 0", "service[0].health_check.rise", 18, &["health_check.rise: 0 is out of range 1..=100"]),
        ("path = \"/health\"", "path = \"/health\"\n  jitter = 0.9", "service[0].health_check.jitter", 18, &["0.9 is out of range 0.0..=0.5"]),
        ("type = \"http\"", "type = \"smtp\"", "service[0].health_check.type", 16, &["unknown variant"]),
        ("type = \"http\"", "type = \"exec\"", "service[0].health_check.command", 15, &["needs command"]),
        ("max_flows = 65536", "max_flows = 65536\n[metrics]\nlisten = \"127.0.0.1:0\"", "metrics.listen", 11, &["metrics.listen: \"127.0.0.1:0\": port 0", "9650"]),
    ];
    for (replace, with, path, line, words) in table {
        let (text, problems) = refused(replace, with);
        let Some(first) = problems.first() else {
            panic!("{with:?}: no problem");
        };
        let shown = first.problem.to_string();
        assert_eq!(first.problem.path.to_string(), *path, "{with:?}: {shown}");
        assert_eq!(first.line, Some(*line), "{with:?}: {shown}\n{text}");
        for word in *words {
            assert!(shown.contains(word), "{with:?}: {word:?} in {shown}");
        }
    }
}

#[test]
fn broken_vrrp_sections_name_their_field_line_and_fix() {
    // (what follows [vrrp] vrid/priority, field path, line, words)
    let table: &[(&str, &str, usize, &[&str])] = &[
        ("advert_int = \"100ms\"", "vrrp.advert_int", 33, &["100ms: VRRPv2 carries whole seconds", "version = 3"]),
        ("version = 3\nauth_pass = \"x\"", "vrrp.auth_pass", 34, &["VRRPv3 has no authentication"]),
        ("auth_pass = \"123456789\"", "vrrp.auth_pass", 33, &["must be 1-8 bytes"]),
        ("version = 4", "vrrp.version", 33, &["4: use 2 or 3"]),
        ("track_services = [\"www\", \"wwww\"]", "vrrp.track_services[1]", 33, &["vrrp.track_services[1]: no service named \"wwww\""]),
        ("garp_count = 100000000", "vrrp.garp_count", 33, &["100000000 is out of range 0..=100", "keepalived sends 5"]),
        ("preempt_delay = \"1000000h\"", "vrrp.preempt_delay", 33, &["at most 1000s"]),
        ("unicast_peers = [\"10.200.0.12\", \"10.200.0.11\"]", "vrrp.unicast_peers[1]", 33, &["10.200.0.11 is this node's own address"]),
        ("[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\nrise = 0", "vrrp.track_script[0].rise", 36, &["vrrp.track_script \"t\" rise: 0 is out of range"]),
        ("[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\nfall = 0", "vrrp.track_script[0].fall", 36, &["vrrp.track_script \"t\" fall: 0 is out of range"]),
        ("[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\ninterval = \"0s\"", "vrrp.track_script[0].interval", 36, &["vrrp.track_script \"t\" interval: must be longer than zero"]),
        ("[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\ninterval = \"2h\"\ntimeout = \"1h\"", "vrrp.track_script[0].timeout", 37, &["1h must be longer than zero", "at most 60s"]),
        ("[[vrrp.track_script]]\nname = \"t\"\ncommand = \" \"", "vrrp.track_script[0].command", 35, &["is empty"]),
        ("[[vrrp.track_script]]\nname = \"t\"\ncommand = \"true\"\nweight = 300", "vrrp.track_script[0].weight", 36, &["300 is out of range -253..=253"]),
        ("[vrrp.floating_ip]\nprovider = \"exec\"", "vrrp.floating_ip.assign", 33, &["needs assign"]),
        ("[vrrp.floating_ip]\ncheck = \"true\"", "vrrp.floating_ip.check", 34, &["belongs to provider = \"exec\""]),
        ("[vrrp.floating_ip]\nprovider = \"digitalocean\"\napi_url = \"ftp://x\"", "vrrp.floating_ip.api_url", 35, &["write an http:// or https:// URL"]),
        ("snat_pool = [\"10.200.0.101\"]", "vrrp.snat_pool", 33, &["vrrp.snat_pool: needs vrrp.snat_address"]),
        ("snat_address = \"10.200.0.10\"", "vrrp.snat_address", 33, &["needs vrrp.unicast_peers", "slice of the NAT ports"]),
        ("unicast_peers = [\"10.200.0.12\"]\nsnat_address = \"10.200.0.11\"", "vrrp.snat_address", 34, &["10.200.0.11 is this node's own address"]),
        ("unicast_peers = [\"10.200.0.12\"]\nsnat_address = \"10.200.0.12\"", "vrrp.snat_address", 34, &["10.200.0.12 is the peer's address"]),
        ("unicast_peers = [\"10.200.0.12\"]\nsnat_address = \"10.100.0.100\"", "vrrp.snat_address", 34, &["10.100.0.100 is a VIP of this balancer"]),
        ("unicast_peers = [\"10.200.0.12\"]\nsnat_address = \"224.0.0.5\"", "vrrp.snat_address", 34, &["224.0.0.5 is not a usable unicast address"]),
        ("unicast_peers = [\"10.200.0.12\"]\nsnat_address = \"10.200.0.10\"\nsnat_pool = [\"10.200.0.101\", \"10.200.0.10\"]", "vrrp.snat_pool[1]", 35, &["vrrp.snat_pool[1]: 10.200.0.10 is listed twice"]),
    ];
    for (extra, path, line, words) in table {
        let (text, problems) = refused_text(format!("{LAB}{VRRP}{extra}\n"));
        let first = problems.first().expect("a problem");
        let shown = first.problem.to_string();
        assert_eq!(first.problem.path.to_string(), *path, "{extra:?}: {shown}");
        assert_eq!(first.line, Some(*line), "{extra:?}: {shown}\n{text}");
        for word in *words {
            assert!(shown.contains(word), "{extra:?}: {word:?} in {shown}");
        }
    }
    let (_, problems) = refused_text(format!("{LAB}[vrrp]\nvrid = 0\npriority = 1\n"));
    assert!(problems[0]
        .problem
        .to_string()
        .contains("vrrp.vrid: 0 is out of range 1..=255"));
    let (_, problems) = refused_text(format!("{LAB}[vrrp]\nvrid = 1\npriority = 0\n"));
    assert!(problems[0]
        .problem
        .to_string()
        .contains("reserved for resigning"));
}

/// `[vrrp]` of a pair sharing `10.200.0.10` (and `pool`) as SNAT source.
fn floating_snat(pool: &[String]) -> String {
    let pool: Vec<String> = pool.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "{VRRP}unicast_peers = [\"10.200.0.12\"]\nsnat_address = \"10.200.0.10\"\nsnat_pool = [{}]\n",
        pool.join(", ")
    )
}

#[test]
fn a_floating_snat_address_replaces_the_nodes_own_pool() {
    let text = format!("{LAB}{}", floating_snat(&["10.200.0.101".into()]));
    let config = Config::parse(&text, "f.toml").expect("valid");
    let shared = [
        Ipv4Addr::new(10, 200, 0, 10),
        Ipv4Addr::new(10, 200, 0, 101),
    ];
    assert_eq!(config.snat_addresses(), shared);
    assert_eq!(config.floating_snat_addresses(), shared);
    let settings = config.to_settings();
    assert_eq!(settings.snat_count, 2);
    assert_eq!(
        settings.snat_addrs[..2],
        [[10, 200, 0, 10], [10, 200, 0, 101]]
    );
    // The whole range: replies to the peer's slice (synced flows) are
    // recognised too.
    assert_eq!((settings.port_min, settings.port_max), (20000, 29999));
    let written = config.to_toml().expect("serializes");
    assert_eq!(
        Config::parse(&written, "w.toml").expect("reads back"),
        config
    );

    let with_own = text.replacen(
        "private_address = \"10.200.0.11\"",
        "private_address = \"10.200.0.11\"\nsnat_addresses = [\"10.200.0.111\"]",
        1,
    );
    let (_, problems) = refused_text(with_own);
    let first = &problems[0];
    assert_eq!(first.problem.path.to_string(), "node.snat_addresses");
    assert_eq!(first.line, Some(5));
    assert!(
        first
            .problem
            .to_string()
            .contains("replaces this node's own pool"),
        "{}",
        first.problem
    );

    let backend = text.replacen("address = \"10.200.0.22\"", "address = \"10.200.0.101\"", 1);
    let message = Config::parse(&backend, "b.toml").unwrap_err().to_string();
    assert!(
        message.contains("10.200.0.101 is this node's own address"),
        "{message}"
    );
}

#[test]
fn at_most_the_programs_snat_slots_are_shared() {
    let pool: Vec<String> = (0..lb_common::MAX_SNAT_ADDRESSES)
        .map(|n| format!("10.200.1.{}", n + 1))
        .collect();
    let (_, problems) = refused_text(format!("{LAB}{}", floating_snat(&pool)));
    let shown = problems[0].problem.to_string();
    assert_eq!(
        problems[0].problem.path.to_string(),
        "vrrp.snat_pool",
        "{shown}"
    );
    assert!(shown.contains("17 addresses; at most 16 fit"), "{shown}");
    let fits = format!("{LAB}{}", floating_snat(&pool[1..]));
    assert!(Config::parse(&fits, "f.toml").is_ok());
}

#[test]
fn the_vrrp_section_has_keepalived_defaults() {
    let config = Config::parse(&format!("{LAB}{VRRP}"), "v.toml").expect("valid");
    let vrrp = config.vrrp.expect("vrrp");
    assert_eq!(
        (vrrp.version, vrrp.vrid.get(), vrrp.priority.get()),
        (VrrpVersion::V2, 33, 200)
    );
    assert_eq!(vrrp.advert_int, Duration::from_secs(1));
    assert!(vrrp.preempt && vrrp.track_program);
    assert_eq!(vrrp.garp_count.get(), 5);
    assert_eq!(vrrp.floating_ip, FloatingIpConfig::default());
}

#[test]
fn an_invalid_config_says_file_line_and_field_as_check_config_does() {
    let text = LAB.replacen("weight = 3", "weight = 300", 1);
    let message = Config::parse(&text, "x.toml").unwrap_err().to_string();
    assert!(
        message.contains(
            "x.toml:22: service \"www\" backend 10.200.0.22:80 weight: 300 is out of range 1..=100"
        ),
        "{message}"
    );
    let text = LAB.replacen("port = 80", "port = = 80", 1);
    let message = Config::parse(&text, "x.toml").unwrap_err().to_string();
    assert!(message.starts_with("x.toml:13: "), "{message}");
}

#[test]
fn validation_reports_every_problem_at_once() {
    let text = LAB
        .replacen("name = \"dns\"", "name = \"DNS!\"", 1)
        .replacen(
            "state_dir = \"/run/lb-lab/lab/state\"",
            "state_dir = \"x\"",
            1,
        );
    let Err(ConfigError::Invalid { problems, .. }) = Config::parse(&text, "x.toml") else {
        panic!("accepted");
    };
    let paths: Vec<String> = problems
        .iter()
        .map(|p| p.problem.path.to_string())
        .collect();
    assert_eq!(paths, ["node.state_dir", "service[1].name"]);
}

#[test]
fn a_file_that_is_not_utf8_is_reported_at_its_byte_and_line() {
    let dir = std::env::temp_dir().join(format!("lb-config-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("binary.toml");
    let mut bytes = b"[node]\npublic_interface = \"pub0\"\n".to_vec();
    let byte = bytes.len() + 3;
    bytes.extend_from_slice(b"pri\xff\xfe\x00garbage\n");
    std::fs::write(&path, &bytes).expect("write");
    let message = Config::load(&path).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        message,
        format!(
            "{}:3: not UTF-8 at byte {byte}; a config file is UTF-8 text (was another file copied over it?)",
            path.display()
        )
    );
}

#[test]
fn backends_at_the_nodes_own_or_floating_addresses_are_refused() {
    let text = LAB
        .replacen(
            "private_address = \"10.200.0.11\"",
            "private_address = \"10.200.0.11\"\nsnat_addresses = [\"10.200.0.11\", \"10.200.0.111\"]",
            1,
        )
        .replacen("address = \"10.200.0.22\"", "address = \"10.200.0.111\"", 1);
    let message = Config::parse(&text, "t.toml").unwrap_err().to_string();
    assert!(
        message
            .contains("backend 10.200.0.111:80 address: 10.200.0.111 is this node's own address"),
        "{message}"
    );
    let text = format!(
        "{}\n[vrrp]\nvrid = 1\npriority = 100\nvirtual_addresses = [\"10.100.0.200\"]\n",
        LAB.replacen("address = \"10.200.0.22\"", "address = \"10.100.0.200\"", 1)
    );
    let message = Config::parse(&text, "t.toml").unwrap_err().to_string();
    assert!(
        message.contains("10.100.0.200 is a VIP of this balancer"),
        "{message}"
    );
}

#[test]
fn snat_addresses_are_checked() {
    let text = LAB.replacen(
        "private_address = \"10.200.0.11\"",
        "private_address = \"10.200.0.11\"\nsnat_addresses = [\"10.200.0.111\", \"224.0.0.1\", \"10.200.0.111\"]",
        1,
    );
    let message = Config::parse(&text, "t.toml").unwrap_err().to_string();
    assert!(
        message.contains("t.toml:5: node.snat_addresses[1]: 224.0.0.1 is not a usable"),
        "{message}"
    );
    assert!(
        message.contains("node.snat_addresses[2]: 10.200.0.111 is listed twice"),
        "{message}"
    );
}

#[test]
fn pool_capacity_against_a_stated_rate() {
    let with_rate = LAB.replacen(
        "protocol = \"tcp\"",
        "protocol = \"tcp\"\nexpected_rate = 1000",
        1,
    );
    let config = Config::parse(&with_rate, "t.toml").expect("valid");
    // One address: 10,000 sources / 60 s = 166/s; the weight-3 backend gets 750/s.
    let warnings = config.capacity_warnings(10_000);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].path.to_string(), "service[0].expected_rate");
    let shown = warnings[0].to_string();
    assert!(
        shown.contains("750/s") && shown.contains("166/s per backend"),
        "{shown}"
    );
    let pooled = with_rate.replacen(
        "private_address = \"10.200.0.11\"",
        "private_address = \"10.200.0.11\"\nsnat_addresses = [\"10.200.0.11\", \"10.200.0.111\", \"10.200.0.112\", \"10.200.0.113\", \"10.200.0.114\"]",
        1,
    );
    let config = Config::parse(&pooled, "t.toml").expect("valid");
    assert!(config.capacity_warnings(10_000).is_empty());
    assert_eq!(config.to_settings().snat_count, 5);

    // Reply tables: 4 MiB per SNAT address and backend endpoint.
    let endpoints = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.address, b.port_or(s.port))))
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    assert!(endpoints > 0);
    assert_eq!(config.reply_table_bytes(), endpoints * 5 * (4 << 20));
    assert!(config.reply_memory_warning(1 << 40).is_none());
    let warning = config
        .reply_memory_warning(endpoints * 5 * (4 << 20) * 2)
        .expect("more than a quarter of the memory");
    assert_eq!(warning.path.to_string(), "node.snat_addresses");
    assert!(
        warning.to_string().contains("4 MiB per SNAT address"),
        "{warning}"
    );
}

#[test]
fn a_written_config_leaves_out_defaults_and_reads_back() {
    let config = Config::parse(LAB, "lab.toml").expect("valid");
    let written = config.to_toml().expect("serializes");
    assert_eq!(
        Config::parse(&written, "written.toml").expect("reads back"),
        config
    );
    assert!(!written.contains("tcp_established_timeout"), "{written}");
    assert!(!written.contains("weight = 1\n"), "{written}");
    assert!(written.contains("weight = 3"), "{written}");
    assert!(written.contains("[service.health_check]"), "{written}");
    let full = config.to_toml_full().expect("serializes");
    assert!(full.contains("tcp_established_timeout = \"15m\""), "{full}");
    assert_eq!(
        Config::parse(&full, "full.toml").expect("reads back"),
        config
    );
    // An empty health check still means "checked, by TCP".
    let text = LAB.replacen("  type = \"http\"\n  path = \"/health\"\n", "", 1);
    let config = Config::parse(&text, "t.toml").expect("valid");
    let back = Config::parse(&config.to_toml().expect("serializes"), "w.toml").expect("reads back");
    assert_eq!(
        back.services[0].health_check,
        Some(HealthCheckConfig::default())
    );
}

#[test]
fn sections_written_alone_append_to_a_config() {
    let base = Config::parse(LAB, "lab.toml").expect("valid");
    let mut vrrp = VrrpConfig::new(
        Vrid::new(33).expect("vrid"),
        Priority::new(200).expect("priority"),
    );
    vrrp.track_script.push(TrackScript::new("flag", "true"));
    let floating_ip = FloatingIpConfig {
        provider: ProviderKind::Exec,
        assign: Some("assign-ip".into()),
        ..FloatingIpConfig::default()
    };
    let text = format!(
        "{}\n{}\n{}",
        base.to_toml().expect("base"),
        vrrp.to_toml_section().expect("vrrp"),
        floating_ip.to_toml_section().expect("floating_ip")
    );
    let config = Config::parse(&text, "t.toml").expect("valid");
    vrrp.floating_ip = floating_ip;
    assert_eq!(config.vrrp, Some(vrrp), "{text}");
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..=3600).prop_map(Duration::from_secs),
        (1u64..=100_000).prop_map(Duration::from_millis),
    ]
}

fn backend() -> impl Strategy<Value = BackendConfig> {
    (
        1u8..=250,
        proptest::option::of(1u16..=65535),
        1u32..=100,
        proptest::bool::ANY,
    )
        .prop_map(|(last, port, weight, own_check)| BackendConfig {
            address: Ipv4Addr::new(10, 200, 1, last),
            port,
            weight: Weight::new(weight).unwrap_or_default(),
            health_check: own_check.then(|| HealthCheckConfig::of_kind(CheckKind::Tcp)),
        })
}

fn check() -> impl Strategy<Value = HealthCheckConfig> {
    (
        prop_oneof![
            Just(CheckKind::Tcp),
            Just(CheckKind::Http),
            Just(CheckKind::None)
        ],
        duration(),
        1u32..=100,
        0.0f64..=0.5,
        proptest::option::of("[a-z]{1,12}"),
        proptest::bool::ANY,
    )
        .prop_map(
            |(kind, interval, rise, jitter, host, down)| HealthCheckConfig {
                kind,
                interval,
                timeout: interval / 2,
                rise: RiseFall::new(rise).unwrap_or_default(),
                jitter: Jitter::new(jitter).unwrap_or_default(),
                host,
                start_as: if down { StartAs::Down } else { StartAs::Up },
                ..HealthCheckConfig::default()
            },
        )
}

fn service() -> impl Strategy<Value = ServiceConfig> {
    (
        "[a-z][a-z0-9_-]{0,31}",
        1u8..=250,
        1u16..=65535,
        proptest::bool::ANY,
        proptest::collection::vec(backend(), 0..4),
        proptest::option::of(check()),
        duration(),
        proptest::option::of(1u32..=1_000_000),
    )
        .prop_map(
            |(name, last, port, udp, backends, health_check, slow_start, rate)| {
                let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
                ServiceConfig {
                    backends,
                    health_check,
                    slow_start,
                    expected_rate: rate,
                    on_down: if udp {
                        OnDown::ShutdownFlows
                    } else {
                        OnDown::KeepFlows
                    },
                    ..ServiceConfig::new(&name, Ipv4Addr::new(10, 100, 0, last), port, protocol)
                }
            },
        )
}

fn vrrp() -> impl Strategy<Value = VrrpConfig> {
    (
        1u8..=255,
        1u8..=255,
        proptest::bool::ANY,
        0u32..=100,
        proptest::collection::vec("[a-z]{1,8}", 0..3),
    )
        .prop_map(|(vrid, priority, v3, garp, scripts)| {
            let mut vrrp = VrrpConfig::new(
                Vrid::new(vrid).unwrap_or_default(),
                Priority::new(priority).unwrap_or_default(),
            );
            vrrp.version = if v3 { VrrpVersion::V3 } else { VrrpVersion::V2 };
            vrrp.garp_count = GarpCount::new(garp).unwrap_or_default();
            vrrp.unicast_peers = vec![Ipv4Addr::new(10, 200, 0, 12)];
            if garp % 2 == 0 {
                vrrp.snat_address = Some(Ipv4Addr::new(10, 200, 0, 10));
                vrrp.snat_pool = vec![Ipv4Addr::new(10, 200, 0, 101)];
            }
            vrrp.track_script = scripts
                .iter()
                .map(|name| TrackScript::new(name, "true"))
                .collect();
            if v3 {
                vrrp.floating_ip.provider = ProviderKind::Exec;
                vrrp.floating_ip.assign = Some("assign-ip".into());
            }
            vrrp
        })
}

fn config() -> impl Strategy<Value = Config> {
    (
        proptest::collection::vec(service(), 0..4),
        proptest::option::of(vrrp()),
        1024u32..=1_000_000,
        duration(),
        (1024u16..=30000, 1024u16..=30000),
        proptest::collection::vec(1u8..=250, 0..4),
    )
        .prop_map(|(services, vrrp, max_flows, udp, (first, extra), pool)| {
            let mut node = NodeConfig::new("pub0", "priv0", Ipv4Addr::new(10, 200, 0, 11));
            node.port_range = PortRange::new(first, first.saturating_add(extra).max(first + 1023))
                .unwrap_or_default();
            node.snat_addresses = pool
                .into_iter()
                .map(|last| Ipv4Addr::new(10, 200, 2, last))
                .collect();
            let mut config = Config::new(node);
            config.services = services;
            config.vrrp = vrrp;
            config.conntrack.max_flows = MaxFlows::new(max_flows).unwrap_or_default();
            config.conntrack.udp_timeout = udp;
            config
        })
}

proptest! {
    #[test]
    fn writing_then_reading_gives_the_same_model(config in config()) {
        for text in [config.to_toml().expect("serializes"), config.to_toml_full().expect("serializes")] {
            let back: Config = toml::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(&back, &config, "{}", text);
        }
    }
}
