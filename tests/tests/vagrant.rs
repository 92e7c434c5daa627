//! The multi-VM lab in `vagrant/`: the Vagrantfile validates (where the
//! `vagrant` binary exists), and its provisioning scripts run for real
//! against namespace nodes of the lab: web.sh serves a page with the
//! allow list, lb.sh installs the agent and writes a config that the
//! agent then runs with.

use std::{path::PathBuf, process::Command, time::Duration};

use integration_tests::{artifacts, e2e::*};
use xtask::lab::Node;

fn vagrant_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vagrant")
}

#[test]
fn the_vagrantfile_validates() {
    if xtask::cmd::which("vagrant").is_none() {
        eprintln!(
            "SKIP: no `vagrant` binary (Debian package `vagrant`); Vagrantfile not validated"
        );
        return;
    }
    let out = Command::new("vagrant")
        .args(["validate", "--ignore-provider"])
        .current_dir(vagrant_dir())
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .expect("vagrant validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn provisioning_scripts_set_up_namespace_nodes() {
    let Some(lab) = lab("vgprov") else { return };
    let Some(agent) = artifacts::agent_binary() else {
        return;
    };
    let scripts = vagrant_dir().join("provision");

    // web.sh on web3, on a second address (web3's own nginx keeps its).
    lab.exec_ok(
        Node::Web3,
        &["ip", "addr", "add", "10.200.0.33/24", "dev", "eth0"],
    )
    .expect("second address");
    let web_root = lab.run_dir().join("vagrant-web");
    let out = lab
        .nsenter(Node::Web3)
        .arg("sh")
        .arg(scripts.join("web.sh"))
        .env("LB_WEB_NAME", "vweb")
        .env("LB_WEB_ADDRESS", "10.200.0.33")
        .env("LB_ALLOW", "10.200.0.11 10.200.0.12")
        .env("LB_ROOT", &web_root)
        .env("LB_NO_SERVICE", "1")
        .output()
        .expect("web.sh");
    assert!(
        out.status.success(),
        "web.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = lab
        .http_get(Node::Lb1, "http://10.200.0.33/")
        .expect("from lb1");
    assert_eq!(page.trim(), "vweb");
    let refused = lab
        .exec(
            Node::Web1,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://10.200.0.33/",
            ],
        )
        .expect("from web1");
    assert_eq!(
        String::from_utf8_lossy(&refused.stdout),
        "403",
        "only the LBs are allowed"
    );

    // lb.sh on lb1: install into a staging root, write and check the config.
    let destdir = lab.run_dir().join("vagrant-lb1");
    let out = lab
        .nsenter(Node::Lb1)
        .arg("sh")
        .arg(scripts.join("lb.sh"))
        .env("LB_NODE", "lb1")
        .env("LB_SOURCE", xtask::workspace_root())
        .env("LB_PUBLIC_IF", "pub0")
        .env("LB_PRIVATE_IF", "priv0")
        .env("LB_PRIVATE_ADDRESS", "10.200.0.11")
        .env("LB_PRIORITY", "200")
        .env("LB_PEER", "10.200.0.12")
        .env("LB_XDP_MODE", "generic")
        .env("LB_DESTDIR", &destdir)
        .env("LB_AGENT_BIN", &agent)
        .env("LB_NO_SERVICE", "1")
        .output()
        .expect("lb.sh");
    assert!(
        out.status.success(),
        "lb.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "usr/local/bin/lb-agent",
        "etc/systemd/system/lb-agent.service",
        "usr/local/share/man/man8/lb-agent.8",
    ] {
        assert!(destdir.join(file).exists(), "{file} installed");
    }
    let config =
        std::fs::read_to_string(destdir.join("etc/lb-agent/lb-agent.toml")).expect("config");
    assert!(config.contains("priority = 200") && config.contains("\"10.200.0.12\""));

    // The agent runs with what lb.sh wrote, in place of the lab's.
    lab.stop_agent(Node::Lb1).expect("stop the lab's agent");
    lab.start_agent_with_config(Node::Lb1, &config)
        .expect("agent with the provisioned config");
    assert!(
        wait_for(Duration::from_secs(8), || vrrp_state(&lab, Node::Lb1)
            == "MASTER"),
        "lb1 is master (no peer in this lab)"
    );
    let round = http_round(&lab, 10);
    assert_eq!(
        round.get("web1").copied().unwrap_or(0) + round.get("web2").copied().unwrap_or(0),
        10,
        "{round:?}"
    );
}
