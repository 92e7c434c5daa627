//! The lab itself, with a stand-in agent (a shell script that creates its
//! "control socket"): topology, web servers, reachability rules, agent
//! start/kill/restart, and tear-down by the guard. Needs root; skips otherwise.

use std::{net::SocketAddrV4, path::PathBuf, time::Duration};

use xtask::{
    cmd,
    lab::{self, Lab, LabOptions, LbSetup, Node},
};

const FAKE_AGENT: &str = r#"#!/bin/sh
# Stand-in for lb-agent: `--instance NAME run --config FILE` or `--instance NAME CLI...`.
instance=$2; shift 2
if [ "$1" != run ]; then echo "fake cli $instance: $*"; exit 0; fi
if grep -q fail-now "$3"; then echo "config says fail-now" >&2; exit 3; fi
echo "fake agent $instance starting with $3"
mkdir -p /run/lb-agent
sock=/run/lb-agent/$instance.sock
trap 'rm -f $sock; exit 0' TERM
touch $sock
i=0
while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
"#;

fn fake_agent() -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join(format!("xtask-fake-agent-{}", std::process::id()));
    std::fs::write(&path, FAKE_AGENT).expect("write the fake agent");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the fake agent");
    path
}

#[test]
fn lab_up_agent_restart_and_guard_teardown() {
    if !cmd::is_root() {
        eprintln!("SKIP: the lab needs root");
        return;
    }
    let prefix = "xt";
    let agent = fake_agent();
    let options = LabOptions {
        agent_bin: Some(agent.clone()),
        xtask_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_xtask"))),
        lbs: LbSetup::SingleAgent,
        ..LabOptions::with_prefix(prefix)
    };
    {
        let lab = Lab::up_guarded(&options).expect("lab up");
        assert_eq!(lab.ns(Node::Lb1), "xt-lb1");
        // Another handle learns how the lab was brought up from its state file.
        let attached = Lab::attach(prefix).expect("attach");
        assert_eq!(attached.state(), lab.state());
        assert_eq!(attached.state().lbs, LbSetup::SingleAgent);

        // Web servers answer the LB nodes with their names, and log them.
        for (node, name) in [
            (Node::Web1, "web1"),
            (Node::Web2, "web2"),
            (Node::Web3, "web3"),
        ] {
            let url = format!("http://{}/", node.private_address().unwrap());
            assert_eq!(lab.http_get(Node::Lb1, &url).unwrap(), format!("{name}\n"));
        }
        assert_eq!(
            lab.http_get(Node::Lb2, "http://10.200.0.22/").unwrap(),
            "web2\n"
        );
        let log = std::fs::read_to_string(lab.access_log_path(Node::Web1)).unwrap();
        assert!(log.starts_with("10.200.0.11 "), "{log}");
        // Web servers refuse other private addresses; the client has no route.
        let denied = lab
            .exec(
                Node::Web2,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://10.200.0.21/",
                ],
            )
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&denied.stdout), "403");
        assert!(lab.http_get(Node::Client, "http://10.200.0.21/").is_err());
        // UDP responders.
        let replies = lab
            .udp_query(
                Node::Lb1,
                SocketAddrV4::new(Node::Web2.private_address().unwrap(), lab::UDP_PORT),
                3,
                Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(replies, vec![Some("web2".to_owned()); 3]);

        // The agent: config, socket, kill -9, restart, CLI.
        let config = std::fs::read_to_string(lab.agent_config_path(Node::Lb1)).unwrap();
        assert_eq!(
            config,
            lab::agent_config(prefix, Node::Lb1, lab.xtask_bin()).unwrap()
        );
        let first = lab.agent_pid(Node::Lb1).expect("agent runs");
        assert!(lab.socket_path(Node::Lb1).exists());
        lab.kill_agent(Node::Lb1, libc::SIGKILL).unwrap();
        assert_eq!(lab.agent_pid(Node::Lb1), None);
        let second = lab.start_agent(Node::Lb1).unwrap();
        assert_ne!(first, second);
        assert!(
            lab.start_agent(Node::Lb1).is_err(),
            "a second agent must be refused"
        );
        let out = lab.agent_cli(Node::Lb1, &["services", "list"]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "fake cli xt-lb1: services list\n"
        );
        lab.kill_agent(Node::Lb1, libc::SIGTERM).unwrap();
        assert!(!lab.socket_path(Node::Lb1).exists());

        // An agent that exits at once is reported with its log.
        let err = lab
            .start_agent_with_config(Node::Lb1, "fail-now\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("config says fail-now"), "{err}");
        lab.start_agent_with_config(
            Node::Lb2,
            &lab::agent_config(prefix, Node::Lb2, lab.xtask_bin()).unwrap(),
        )
        .unwrap();
        assert!(lab.status().contains("agent lb2"));
    }
    // The guard tore everything down.
    assert!(!Lab::exists(prefix));
    assert!(!PathBuf::from("/run/lb-agent/xt-lb2.sock").exists());
    let _ = std::fs::remove_file(agent);
}

#[test]
fn down_cleans_a_half_built_lab() {
    if !cmd::is_root() {
        eprintln!("SKIP: the lab needs root");
        return;
    }
    let prefix = "xthalf";
    let ns = lab::ns_name(prefix, Node::Web2);
    cmd::run(std::process::Command::new("ip").args(["netns", "add", &ns])).unwrap();
    let mut stray = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "60"])
        .spawn()
        .unwrap();
    // `ip netns exec` needs a moment to enter the namespace; until then the
    // process is not the namespace's and `down` could not know it.
    let pid = stray.id();
    let entered = cmd::wait_until(Duration::from_secs(5), || {
        xtask::lab::process::netns_pids(&ns).contains(&pid)
    });
    assert!(entered, "the stray process never entered {ns}");
    let run_dir = lab::run_dir(prefix);
    std::fs::create_dir_all(run_dir.join("web2")).unwrap();
    // A stale pid file naming an unrelated process (this test) must be ignored.
    std::fs::write(
        run_dir.join("web2/nginx.pid"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    assert!(Lab::exists(prefix));
    // A lab of an older build kept its options in marker files: no handle
    // to it, but `down` still clears it.
    std::fs::write(run_dir.join("ha"), "2 1s").unwrap();
    let refused = format!("{:#}", Lab::attach(prefix).unwrap_err());
    assert!(
        refused.contains("cargo xtask lab down --prefix xthalf"),
        "{refused}"
    );
    Lab::down(prefix).unwrap();
    assert!(!Lab::exists(prefix));
    assert!(stray.wait().is_ok());
    // And again on nothing.
    Lab::down(prefix).unwrap();
}
