//! `lb-agent import` on the classic pair's files: the DigitalOcean guide's
//! haproxy.cfg and keepalived.conf (tests/fixtures/classic) and the lab's
//! own classic node configs. The results pass check-config and carry the
//! services, backends, checks and VRRP settings; the lines left behind are
//! reported with file and line. In the lab (root), the imported configs
//! run the pair: traffic splits, health checks move it, lb1 is master.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use integration_tests::e2e::*;
use lb_agent::{
    check::check_text,
    config::{Config, XdpMode},
    import::{import, Imported, NodeFacts},
};
use xtask::lab::{haproxy_config, keepalived_config, Lab, Node, VrrpVersion};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/classic")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn facts() -> NodeFacts {
    NodeFacts {
        public_interface: Some("pub0".into()),
        ..NodeFacts::default()
    }
}

fn parsed(imported: &Imported) -> Config {
    let report = check_text(&imported.toml, "imported", true);
    assert!(report.is_valid(), "{report}\n{}", imported.toml);
    report.config.expect("config")
}

#[test]
fn the_digitalocean_guides_configs_import() {
    let haproxy = fixture("haproxy.cfg");
    for (file, priority, src, peer) in [
        (
            "keepalived-primary.conf",
            200,
            [10, 200, 0, 11],
            [10, 200, 0, 12],
        ),
        (
            "keepalived-secondary.conf",
            100,
            [10, 200, 0, 12],
            [10, 200, 0, 11],
        ),
    ] {
        let keepalived = fixture(file);
        let imported = import(
            ("haproxy.cfg", &haproxy),
            Some((file, &keepalived)),
            &facts(),
        )
        .expect("imports");
        let config = parsed(&imported);
        assert_eq!(
            config.node.private_interface, "priv0",
            "from keepalived's interface"
        );
        assert_eq!(
            config.node.private_address,
            Ipv4Addr::from(src),
            "from unicast_src_ip"
        );
        assert_eq!(config.services.len(), 1);
        let www = &config.services[0];
        assert_eq!(
            (www.name.as_str(), www.vip, www.port),
            ("www", Ipv4Addr::new(10, 100, 0, 100), 80)
        );
        let backends: Vec<Ipv4Addr> = www.backends.iter().map(|b| b.address).collect();
        assert_eq!(
            backends,
            [Ipv4Addr::new(10, 200, 0, 21), Ipv4Addr::new(10, 200, 0, 22)]
        );
        let check = www
            .health_check
            .as_ref()
            .expect("`check` became a health check");
        assert_eq!(
            (check.rise.get(), check.fall.get()),
            (2, 3),
            "HAProxy's defaults"
        );
        let vrrp = config.vrrp.expect("[vrrp]");
        assert_eq!((vrrp.vrid.get(), vrrp.priority.get()), (33, priority));
        assert_eq!(vrrp.unicast_peers, [Ipv4Addr::from(peer)]);
        assert_eq!(vrrp.auth_pass.as_deref(), Some("labpass"));
        assert_eq!(
            vrrp.notify_master.as_deref(),
            Some("/etc/keepalived/master.sh")
        );
        assert!(
            vrrp.track_program && vrrp.track_script.is_empty(),
            "pidof haproxy -> the program"
        );

        let report: Vec<String> = imported.notes.iter().map(ToString::to_string).collect();
        let noted = |file: &str, line: usize, word: &str| {
            assert!(
                imported
                    .notes
                    .iter()
                    .any(|n| n.file == file && n.line == line && n.to_string().contains(word)),
                "{file}:{line} ({word}) in\n{}",
                report.join("\n")
            );
        };
        noted("haproxy.cfg", 6, "global");
        noted("haproxy.cfg", 20, "timeouts");
        noted(file, 12, "state");
        noted(file, 5, "track_program");
    }
}

#[test]
fn the_labs_classic_configs_import_to_the_labs_settings() {
    for (node, priority) in [(Node::Lb1, 200), (Node::Lb2, 100)] {
        let config = parsed(&import_lab_classic(node, "/n.sh"));
        let vrrp = config.vrrp.expect("[vrrp]");
        assert_eq!(
            (vrrp.vrid.get(), vrrp.priority.get(), vrrp.version.number()),
            (33, priority, 2)
        );
        assert_eq!(vrrp.virtual_addresses, [Ipv4Addr::new(10, 100, 0, 100)]);
        assert_eq!(vrrp.notify.as_deref(), Some("/n.sh"));
        let check = config.services[0].health_check.as_ref().expect("check");
        assert_eq!(
            (check.interval, check.rise.get(), check.fall.get()),
            (Duration::from_secs(1), 2, 2)
        );
    }
}

#[test]
fn the_binary_reports_lines_and_refuses_unusable_input() {
    let Some(agent) = integration_tests::artifacts::agent_binary() else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/classic");
    let out = std::process::Command::new(&agent)
        .args(["import", "--public-interface", "pub0", "--haproxy"])
        .arg(dir.join("haproxy.cfg"))
        .arg("--keepalived")
        .arg(dir.join("keepalived-primary.conf"))
        .output()
        .expect("lb-agent import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("haproxy.cfg:6: `log /dev/log"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("[[service]]"));

    let out = std::process::Command::new(&agent)
        .args(["import", "--haproxy"])
        .arg(dir.join("haproxy.cfg"))
        .output()
        .expect("lb-agent import");
    assert_eq!(out.status.code(), Some(78), "no node facts: unusable");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--public-interface"));
}

/// The lab's classic keepalived + HAProxy configs of `node`, imported.
fn import_lab_classic(node: Node, notify: &str) -> Imported {
    let keepalived = keepalived_config(
        node,
        VrrpVersion::V2,
        Duration::from_secs(1),
        Path::new("/bin/true"),
        Path::new(notify),
    )
    .expect("keepalived config");
    import(
        ("haproxy.cfg", &haproxy_config()),
        Some(("keepalived.conf", &keepalived)),
        &facts(),
    )
    .expect("imports")
}

/// The imported config for `node`, with the lab's node-local settings.
fn imported_for_lab(lab: &Lab, node: Node) -> Config {
    let imported = import_lab_classic(node, "/bin/true");
    let mut model = parsed(&imported);
    model.node.xdp_mode = XdpMode::Generic;
    model.node.state_dir = lab.run_dir().join(format!("state-import-{node}"));
    model
}

#[test]
fn imported_configs_run_the_lab_pair() {
    let Some(lab) = lab_ha("imrun") else { return };
    lab.stop_agent(Node::Lb2).expect("stop lb2");
    lab.stop_agent(Node::Lb1).expect("stop lb1");
    for node in Node::LBS {
        lab.start_agent_with_model(node, &imported_for_lab(&lab, node))
            .expect("agent with the imported config");
    }
    assert!(
        wait_for(Duration::from_secs(10), || lab.vip_holder()
            == Some(Node::Lb1)),
        "lb1 (priority 200) is master"
    );
    assert!(wait_for(Duration::from_secs(5), || vrrp_state(
        &lab,
        Node::Lb2
    ) == "BACKUP"));
    // Both backends start up; the split is even.
    let round = http_round(&lab, 40);
    let (web1, web2) = (
        round.get("web1").copied().unwrap_or(0),
        round.get("web2").copied().unwrap_or(0),
    );
    assert!(web1 >= 15 && web2 >= 15, "{round:?}");
    // The imported tcp check takes a stopped nginx out.
    lab.stop_nginx(Node::Web1).expect("stop nginx on web1");
    let web1_down = || {
        backends_json(&lab, "www")
            .iter()
            .any(|b| b["address"] == "10.200.0.21" && b["health"] == "down")
    };
    assert!(
        wait_for(Duration::from_secs(10), web1_down),
        "web1 marked down"
    );
    let round = http_round(&lab, 10);
    assert_eq!(round.get("web2"), Some(&10), "{round:?}");
    lab.start_nginx(Node::Web1).expect("start nginx on web1");
}
