//! Every config this project ships passes `check-config`: the README's
//! complete examples and the lab's agent configs (with and without VRRP),
//! and the classic keepalived/HAProxy node configs render. No root needed.

use std::path::Path;

use lb_agent::check::check_text;
use xtask::lab::{agent_config, ha_agent_config, vrrp_model, Node, XdpMode};

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The README's ```toml blocks that are whole configs (have `[node]`).
fn readme_configs() -> Vec<String> {
    let text = readme();
    text.split("```toml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.contains("[node]"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_configs_pass_check_config() {
    let configs = readme_configs();
    assert!(!configs.is_empty(), "the README shows a whole config");
    for (index, text) in configs.iter().enumerate() {
        let report = check_text(text, &format!("README.md toml block {index}"), true);
        assert!(report.is_valid(), "{report}");
    }
}

/// The lab's config of `node` in the HA pair with VRRP `version`.
fn ha_config(node: Node, version: u8, interval: &str) -> String {
    let xtask = Path::new("/usr/local/bin/xtask");
    let vrrp = vrrp_model(node, version, interval, Path::new("/run/flag")).expect("vrrp");
    ha_agent_config("lab", node, xtask, XdpMode::Generic, vrrp).expect("lab config")
}

#[test]
fn lab_configs_pass_check_config() {
    let xtask = Path::new("/usr/local/bin/xtask");
    for node in Node::LBS {
        let plain = agent_config("lab", node, xtask).expect("lab config");
        let report = check_text(&plain, &format!("lab {node}"), true);
        assert!(report.is_valid(), "{report}");
        for (version, interval) in [(2, "1s"), (3, "100ms")] {
            let ha = ha_config(node, version, interval);
            let report = check_text(&ha, &format!("lab {node} VRRPv{version}"), true);
            assert!(report.is_valid(), "{report}");
            let vrrp = report.config.and_then(|c| c.vrrp).expect("[vrrp]");
            assert_eq!((vrrp.vrid.get(), vrrp.version.number()), (33, version));
        }
    }
}

/// Every shipped config, by name: the packaged example, the README's
/// whole configs, the lab's (each LB node, without and with VRRP), the
/// Vagrant lab's and the importer's output for the lab's classic pair.
fn shipped_configs() -> Vec<(String, String)> {
    let mut configs = vec![("packaging-example".to_string(), example())];
    for (index, text) in readme_configs().into_iter().enumerate() {
        configs.push((format!("readme-{index}"), text));
    }
    let xtask = Path::new("/usr/local/bin/xtask");
    for node in Node::LBS {
        let plain = agent_config("lab", node, xtask).expect("lab config");
        configs.push((format!("lab-{node}-ha"), ha_config(node, 2, "1s")));
        configs.push((format!("lab-{node}"), plain));
    }
    let vagrant = xtask::vagrant::VagrantNode {
        public_interface: "eth1".into(),
        private_interface: "eth2".into(),
        private_address: std::net::Ipv4Addr::new(10, 200, 0, 11),
        priority: 200,
        peer: std::net::Ipv4Addr::new(10, 200, 0, 12),
        vip: std::net::Ipv4Addr::new(10, 100, 0, 100),
        backends: vec![
            std::net::Ipv4Addr::new(10, 200, 0, 21),
            std::net::Ipv4Addr::new(10, 200, 0, 22),
        ],
        xdp_mode: lb_config::XdpMode::Auto,
        state_dir: "/var/lib/lb-agent".into(),
    };
    let text = xtask::vagrant::config(&vagrant, "the golden test").expect("vagrant config");
    configs.push(("vagrant-lb1".to_string(), text));
    // What `lb-agent import` makes of the lab's classic pair.
    for node in Node::LBS {
        let keepalived = xtask::lab::keepalived_config(
            node,
            xtask::lab::VrrpVersion::V2,
            std::time::Duration::from_secs(1),
            Path::new("/bin/true"),
            Path::new("/bin/true"),
        )
        .expect("keepalived config");
        let imported = lb_agent::import::import(
            ("haproxy.cfg", &xtask::lab::haproxy_config()),
            Some(("keepalived.conf", &keepalived)),
            &lb_agent::import::NodeFacts {
                public_interface: Some("pub0".into()),
                ..lb_agent::import::NodeFacts::default()
            },
        )
        .expect("imports");
        configs.push((format!("import-lab-{node}"), imported.toml));
    }
    configs
}

/// Each shipped config parses to the model recorded in
/// `tests/golden/NAME.toml` (written out with every default), so a change
/// of parsing or of a default shows as a diff here; and writing it then
/// reading it back gives the same model. `LB_UPDATE_GOLDEN=1` rewrites
/// the recorded models after a deliberate change.
#[test]
fn shipped_configs_parse_to_their_recorded_models_and_read_back() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let update = std::env::var_os("LB_UPDATE_GOLDEN").is_some();
    let mut differ = Vec::new();
    for (name, text) in shipped_configs() {
        let config = lb_config::Config::parse(&text, &name).unwrap_or_else(|e| panic!("{e}"));
        let full = config.to_toml_full().expect("serializes");
        let path = golden.join(format!("{name}.toml"));
        if update {
            std::fs::create_dir_all(&golden).expect("golden dir");
            std::fs::write(&path, &full).expect("write golden");
        }
        let recorded = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (LB_UPDATE_GOLDEN=1 writes it)", path.display()));
        if recorded != full {
            differ.push(name.clone());
        }
        let written = config.to_toml().expect("serializes");
        let back = lb_config::Config::parse(&written, &name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, config, "{name} written:\n{written}");
    }
    assert!(
        differ.is_empty(),
        "parse differently from tests/golden: {differ:?}"
    );
}

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/lb-agent.example.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_packaged_example_is_valid_and_names_every_field() {
    let text = example();
    let report = check_text(&text, "packaging/lb-agent.example.toml", true);
    assert!(report.is_valid(), "{report}");
    // Every field of the config structs (their serde names) is shown, set
    // or commented, so the example cannot fall behind the code.
    let source = [
        include_str!("../../lb-config/src/lib.rs"),
        include_str!("../../lb-config/src/node.rs"),
        include_str!("../../lb-config/src/service.rs"),
        include_str!("../../lb-config/src/health.rs"),
        include_str!("../../lb-config/src/vrrp.rs"),
        include_str!("../../lb-config/src/floating_ip.rs"),
    ]
    .concat();
    fn renamed(field: &str) -> &str {
        match field {
            "services" => "service",
            "backends" => "backend",
            "kind" => "type",
            other => other,
        }
    }
    let mut missing = Vec::new();
    let mut fields = 0;
    for line in source.lines() {
        let Some(rest) = line.strip_prefix("    pub ") else {
            continue;
        };
        let Some((field, _)) = rest.split_once(':') else {
            continue;
        };
        if field.contains(' ') || field.contains('(') {
            continue;
        }
        let name = renamed(field);
        fields += 1;
        let shown = text.contains(&format!("{name} =")) || text.contains(&format!("{name}]"));
        if !shown {
            missing.push(name.to_string());
        }
    }
    assert!(fields > 60, "found {fields} fields in lb-config's sections");
    assert!(
        missing.is_empty(),
        "fields missing from the example: {missing:?}"
    );
}

/// Someone who clones the repository has only the repository: no tracked
/// file may point at the notes and data beside the checkout.
#[test]
fn no_tracked_file_refers_to_the_directory_beside_the_checkout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output();
    let Some(listed) = listed.ok().filter(|o| o.status.success()) else {
        eprintln!("skipped: not a git checkout");
        return;
    };
    // Spelled in two halves so this file does not match itself.
    let needle = format!("../{}", "shared");
    let mut offenders = Vec::new();
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let Ok(bytes) = std::fs::read(root.join(&name)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        offenders.extend(
            text.lines()
                .enumerate()
                .filter(|(_, line)| line.contains(&needle))
                .map(|(index, _)| format!("{name}:{}", index + 1)),
        );
    }
    assert!(offenders.is_empty(), "refer to {needle}: {offenders:?}");
}
