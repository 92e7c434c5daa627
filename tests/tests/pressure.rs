//! The agent under pressure, in the HA lab (prefix `hc`): more idle
//! clients of the control socket and the metrics port than it has file
//! descriptors must cost neither its health checks nor its mastership,
//! nor flood its log; a reload of `[vrrp]` is no VRRP transition and keeps
//! the provider's counters; an unreachable backend's next hop is not
//! warned about every second; hooks never see the API token.

use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{artifacts, e2e::*, netns::NetNs};
use lb_config::Priority;
use xtask::lab::{Lab, LabOptions, LbSetup, Node};

/// The agents' open file limit (soft and hard): half of systemd's default.
const NOFILE: usize = 512;
/// Idle connections per server: more than the agent could hold.
const IDLE: usize = NOFILE + 100;
/// In the agents' environment, where packaging's EnvironmentFile puts it.
const TOKEN: &str = "hc-secret-token-do-not-leak";

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stand-in for the agent binary that runs it under `NOFILE` open files
/// with the API token in its environment, as systemd would.
fn limited_agent(dir: &Path, agent: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("wrapper dir");
    let wrapper = dir.join("lb-agent");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport DIGITALOCEAN_TOKEN={TOKEN}\nexec prlimit --nofile={NOFILE}:{NOFILE} -- {} \"$@\"\n",
            agent.display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    wrapper
}

/// lb1's CLI, killed after 10 s: an agent that stopped accepting leaves
/// its clients waiting in the listen backlog for good.
fn lb1_cli(lab: &Lab, args: &[&str]) -> String {
    let cli = lab.agent_command(Node::Lb1);
    let out = Command::new("timeout")
        .arg("10")
        .arg(cli.get_program())
        .args(cli.get_args())
        .args(args)
        .output()
        .expect("run lb-agent");
    assert!(
        out.status.success(),
        "lb-agent {args:?} on lb1 ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(&lb1_cli(lab, &["status", "--json"])).expect("status JSON")
}

fn lb1_health(lab: &Lab, backend: &str) -> String {
    let list: serde_json::Value = serde_json::from_str(&lb1_cli(
        lab,
        &["backends", "list", "--service", "www", "--json"],
    ))
    .expect("backends JSON");
    list.as_array()
        .and_then(|l| {
            l.iter().find(|b| {
                format!("{}:{}", b["address"].as_str().unwrap_or(""), b["port"]) == backend
            })
        })
        .and_then(|b| b["health"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Size of lb1's agent log, in bytes.
fn log_size(lab: &Lab) -> u64 {
    std::fs::metadata(lab.agent_log_path(Node::Lb1)).map_or(0, |m| m.len())
}

/// lb1's agent log from byte `from` on, at most 1 MiB of it (a flooded
/// log grows by gigabytes).
fn log_since(lab: &Lab, from: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(lab.agent_log_path(Node::Lb1)) else {
        return String::new();
    };
    let mut text = Vec::new();
    let _ = file.seek(SeekFrom::Start(from));
    let _ = file.take(1 << 20).read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// Opens up to `count` connections to `path`, each given at most 1 s: a
/// server that stopped accepting fills its backlog, and connects block.
fn control_clients(path: &Path, count: usize) -> Vec<UnixStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut streams = Vec::new();
        for _ in 0..count {
            let connect = tokio::net::UnixStream::connect(path);
            match tokio::time::timeout(Duration::from_secs(1), connect).await {
                Ok(Ok(stream)) => match stream.into_std() {
                    Ok(stream) => streams.push(stream),
                    Err(_) => break,
                },
                _ => break,
            }
        }
        streams
    })
}

/// Opens `count` connections to `lb1`'s metrics port from inside its
/// namespace (a thread of our own enters it; its sockets stay there).
fn metrics_clients(lab: &Lab, count: usize) -> Vec<TcpStream> {
    let ns = lab.ns(Node::Lb1);
    std::thread::spawn(move || {
        NetNs::existing(&ns).enter_current_thread();
        let to: SocketAddr = "127.0.0.1:9650".parse().expect("address");
        // Up to the first that fails: a full accept queue drops SYNs, and
        // each further try would take its whole timeout.
        (0..count)
            .map_while(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok())
            .collect::<Vec<_>>()
    })
    .join()
    .expect("connecting thread")
}

/// Whether the server has closed `stream` (EOF or reset) before its read
/// timeout runs out.
fn closed_by_server(stream: &mut impl Read) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// "service address:port" -> health transitions, of every backend.
fn health_transitions(status: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    status["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                format!("{} {}:{}", b["service"], b["address"], b["port"]),
                b["transitions"].clone(),
            )
        })
        .collect()
}

fn scrape_lb1(lab: &Lab) -> String {
    lab.exec_ok(
        Node::Lb1,
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://127.0.0.1:9650/metrics",
        ],
    )
    .expect("GET /metrics")
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_agent_stands_idle_floods_reloads_and_unreachable_backends() {
    let (Some(agent_bin), Some(xtask_bin)) = (artifacts::agent_binary(), artifacts::xtask_binary())
    else {
        return;
    };
    let dir = TempDir(std::env::temp_dir().join(format!("hc-pressure-{}", std::process::id())));
    let options = LabOptions {
        agent_bin: Some(limited_agent(&dir.0, &agent_bin)),
        xtask_bin: Some(xtask_bin),
        lbs: LbSetup::HaPair,
        ..LabOptions::with_prefix("hc")
    };
    let lab = Lab::up_guarded(&options).unwrap_or_else(|e| panic!("lab hc up: {e:#}"));
    assert!(
        wait_for(Duration::from_secs(15), || status(&lab)["vrrp"]["state"]
            == "MASTER"
            && lb1_health(&lab, "10.200.0.21:80") == "up"
            && lb1_health(&lab, "10.200.0.22:80") == "up"),
        "lb1 is master with www up"
    );
    let pid = lab.agent_pid(Node::Lb1).expect("lb1's agent");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(&format!(" {NOFILE} "))),
        "the agent runs under {NOFILE} open files:\n{limits}"
    );
    let before = status(&lab);
    let transitions = before["vrrp"]["transitions"].clone();
    let health_before = health_transitions(&before);
    let log_before = log_size(&lab);

    // More idle clients on each server than the agent has descriptors.
    let socket = lab.socket_path(Node::Lb1);
    let started = Instant::now();
    let mut control = control_clients(&socket, IDLE);
    let mut metrics = metrics_clients(&lab, IDLE);
    assert!(
        control.len() + metrics.len() > NOFILE,
        "{} control and {} metrics connections made",
        control.len(),
        metrics.len()
    );
    // Past the servers' request timeouts (5 s) health checks have run
    // about eight times: the VIP, the backends and the pair stay put.
    while started.elapsed() < Duration::from_secs(8) {
        assert_eq!(lab.vip_holder(), Some(Node::Lb1), "lb1 keeps the VIP");
        assert_eq!(vrrp_state(&lab, Node::Lb2), "BACKUP", "lb2 stays backup");
        let round = http_round(&lab, 2);
        assert!(
            round.keys().all(|k| k == "web1" || k == "web2"),
            "served through the VIP during the flood: {round:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The idle ones it took were closed on their timeouts, so the control
    // socket answers again although we still hold every connection.
    let answered = status(&lab);
    assert_eq!(answered["vrrp"]["state"], "MASTER", "{answered}");
    let mut timed_out = 0;
    for stream in control.iter_mut().take(20) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        timed_out += usize::from(closed_by_server(stream));
    }
    for stream in metrics.iter_mut().take(20) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        timed_out += usize::from(closed_by_server(stream));
    }
    assert_eq!(timed_out, 40, "idle connections are closed by the agent");
    drop(control);
    drop(metrics);

    let after = status(&lab);
    assert_eq!(after["vrrp"]["state"], "MASTER");
    assert_eq!(
        after["vrrp"]["transitions"], transitions,
        "no VRRP transition"
    );
    for backend in after["backends"].as_array().expect("backends") {
        assert_eq!(backend["health"], "up", "{backend}");
    }
    assert_eq!(
        health_transitions(&after),
        health_before,
        "no backend was marked down"
    );
    let text = scrape_lb1(&lab);
    assert!(text.contains("lb_vrrp_state{state=\"MASTER\"} 1"), "{text}");
    let grown = log_size(&lab) - log_before;
    let log = log_since(&lab, log_before);
    let flood: Vec<&str> = log.lines().take(100).collect();
    eprintln!(
        "{IDLE} control and {IDLE} metrics connections held for 8 s: the log grew by {grown} bytes ({} lines)",
        flood.len()
    );
    assert!(
        grown < 8 << 10,
        "the log grew by {grown} bytes during the flood:\n{}",
        flood.join("\n")
    );
    assert!(
        !flood
            .iter()
            .any(|l| l.contains("Too many open files") || l.contains("FAULT")),
        "{}",
        flood.join("\n")
    );

    // A reload that changes [vrrp] (a lower priority still above lb2's)
    // and adds an on_change hook to www: no transition, counters go on.
    let mut model = lab.default_agent_model(Node::Lb1).expect("lb1's model");
    let env_file = lab.run_dir().join("on-change-env");
    model.vrrp.as_mut().expect("[vrrp]").priority = Priority::new(190).expect("priority");
    // Written whole, then renamed: a later run is never half read. The
    // agent appends the hook's arguments ("$@"): `:` takes them.
    model.service_mut("www").expect("www").on_change = Some(format!(
        "env > {0}.$$; mv {0}.$$ {0}; :",
        env_file.display()
    ));
    lab.write_agent_model(Node::Lb1, &model)
        .expect("write lb1 config");
    let calls_before = status(&lab)["vrrp"]["provider_calls"].as_u64().unwrap_or(0);
    assert!(calls_before > 0, "the provider took the VIP");
    let said = lb1_cli(&lab, &["reload"]);
    assert!(said.contains("VRRP settings changed"), "{said}");
    std::thread::sleep(Duration::from_secs(2));
    let reloaded = status(&lab);
    assert_eq!(reloaded["vrrp"]["state"], "MASTER");
    assert_eq!(reloaded["vrrp"]["priority"], 190);
    assert_eq!(
        reloaded["vrrp"]["transitions"], transitions,
        "a reload is no transition"
    );
    assert!(
        reloaded["vrrp"]["provider_calls"].as_u64().unwrap_or(0) >= calls_before,
        "provider calls persist: {calls_before} -> {}",
        reloaded["vrrp"]["provider_calls"]
    );
    let text = scrape_lb1(&lab);
    assert_eq!(
        metric(&text, "lb_vrrp_transitions_total"),
        transitions.as_f64(),
        "{text}"
    );

    // A backend nothing routes to: its health goes down (the hook runs)
    // and its next hop is warned about once, not every second.
    let unreachable = "198.18.7.7";
    let route = lab
        .exec(Node::Lb1, &["ip", "route", "get", unreachable])
        .expect("ip route get");
    assert!(
        !route.status.success(),
        "the lab has no route to {unreachable}"
    );
    lb1_cli(&lab, &["backends", "add", "--service", "www", unreachable]);
    let log_before = log_size(&lab);
    assert!(
        wait_for(Duration::from_secs(10), || lb1_health(
            &lab,
            &format!("{unreachable}:80")
        ) == "down"),
        "the unreachable backend goes down"
    );
    std::thread::sleep(Duration::from_secs(5));
    let log = log_since(&lab, log_before);
    let warned = log
        .lines()
        .filter(|l| l.contains(unreachable) && l.contains("next hop"))
        .count();
    assert!(warned <= 1, "{warned} next-hop warnings in 5+ s:\n{log}");
    lb1_cli(
        &lab,
        &[
            "backends",
            "remove",
            "--now",
            "--service",
            "www",
            unreachable,
        ],
    );

    // The hook ran with the agent's environment, less the token.
    assert!(
        wait_for(Duration::from_secs(5), || env_file.exists()),
        "the on_change hook ran"
    );
    std::thread::sleep(Duration::from_millis(200));
    let env = std::fs::read_to_string(&env_file).expect("hook environment");
    assert!(
        env.contains("LB_SERVICE=www"),
        "hook environment {env:?}; agent log:\n{}",
        log_since(&lab, log_before)
    );
    assert!(
        !env.contains(TOKEN) && !env.contains("DIGITALOCEAN_TOKEN"),
        "the API token reached a hook:\n{env}"
    );
    assert_eq!(status(&lab)["vrrp"]["state"], "MASTER");
}
