//! End-to-end tests in the namespace lab with real nginx: traffic through
//! the XDP load balancer, live backend changes, drain and cut, non-VIP
//! traffic, kill -9 with adoption, restarts keeping run-time changes, and a
//! clean tear-down. Each test has its own lab prefix; the guard removes the
//! lab even when the test fails.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddrV4, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{e2e::*, netns::NetNs};
use xtask::lab::Node;

#[test]
fn http_splits_evenly_and_backends_see_the_lb_address() {
    let Some(lab) = lab("e2split") else { return };
    let counts = http_round(&lab, 200);
    let web1 = counts.get("web1").copied().unwrap_or(0);
    let web2 = counts.get("web2").copied().unwrap_or(0);
    assert_eq!(
        web1 + web2,
        200,
        "every request answered by web1/web2: {counts:?}"
    );
    assert!(
        (90..=110).contains(&web1),
        "split within 100±10%: {counts:?}"
    );

    let pool = lb1_snat_pool();
    for web in [Node::Web1, Node::Web2] {
        let clients = access_log_clients(&lab, web);
        assert!(
            !clients.is_empty() && clients.iter().all(|c| pool.iter().any(|a| a == c)),
            "{web}: only lb1's SNAT pool {pool:?} reaches nginx, saw {clients:?}"
        );
    }
    let stats = agent(&lab, &["stats"]);
    assert!(stats.contains("forwarded_to_backend"), "{stats}");
}

#[test]
fn udp_is_answered_by_both_responders() {
    let Some(lab) = lab("e2udp") else { return };
    let vip = SocketAddrV4::new("10.100.0.100".parse().expect("ip"), 5353);
    let answers = lab
        .udp_query(Node::Client, vip, 8, Duration::from_secs(1))
        .expect("udp queries");
    let mut seen = BTreeMap::new();
    for answer in &answers {
        let answer = answer.clone().unwrap_or_else(|| "no reply".into());
        *seen.entry(answer).or_insert(0) += 1;
    }
    // Each CPU alternates on its own, so the split is even per CPU only.
    let web1 = seen.get("web1").copied().unwrap_or(0);
    let web2 = seen.get("web2").copied().unwrap_or(0);
    assert_eq!(web1 + web2, 8, "every query answered: {seen:?}");
    assert!(web1 >= 2 && web2 >= 2, "both responders answer: {seen:?}");
}

#[test]
fn backends_added_live_drain_and_cut() {
    let Some(lab) = lab("e2live") else { return };
    let added = agent(
        &lab,
        &["backends", "add", "--service", "www", "10.200.0.23:80"],
    );
    assert!(added.contains("added 10.200.0.23:80"), "{added}");
    let counts = http_round(&lab, 30);
    // Each CPU walks the schedule with its own cursor: shares are exact per
    // CPU, so the total may be off by one per CPU.
    let web3 = counts.get("web3").copied().unwrap_or(0);
    assert!(
        (8..=12).contains(&web3),
        "web3 takes its share at once: {counts:?}"
    );

    // Drain: a long download through web3 keeps going, new ones skip web3.
    let mut download = download_on(&lab, "web3");
    let removed = agent(
        &lab,
        &["backends", "remove", "--service", "www", "10.200.0.23:80"],
    );
    assert!(removed.contains("draining"), "{removed}");
    assert_eq!(
        backend_field(&lab, "www", "10.200.0.23:80", "state"),
        "draining"
    );
    let counts = http_round(&lab, 20);
    assert!(
        !counts.contains_key("web3"),
        "no new connection to a draining backend: {counts:?}"
    );
    assert!(download.progresses(), "drained download keeps receiving");
    assert!(download.running());

    // --now cuts it.
    let cut = agent(
        &lab,
        &[
            "backends",
            "remove",
            "--service",
            "www",
            "10.200.0.23:80",
            "--now",
        ],
    );
    assert!(
        cut.contains("; cut ") && !cut.contains("cut 0 flows"),
        "{cut}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while download.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!download.running(), "--now ended the download within 5 s");
    assert!(
        download.received() < 2 * 1024 * 1024,
        "download was cut short"
    );
}

#[test]
fn drained_backend_stays_listed_until_added_again() {
    let Some(lab) = lab("e2drain") else { return };
    let drained = agent(
        &lab,
        &["backends", "drain", "--service", "www", "10.200.0.22"],
    );
    assert!(drained.contains("drained 10.200.0.22:80"), "{drained}");
    assert_eq!(
        backend_field(&lab, "www", "10.200.0.22:80", "state"),
        "drained"
    );
    let counts = http_round(&lab, 10);
    assert_eq!(counts.get("web1"), Some(&10), "{counts:?}");
    agent(
        &lab,
        &["backends", "add", "--service", "www", "10.200.0.22"],
    );
    assert_eq!(
        backend_field(&lab, "www", "10.200.0.22:80", "state"),
        "active"
    );
    let counts = http_round(&lab, 10);
    assert!(counts.get("web2").copied().unwrap_or(0) >= 3, "{counts:?}");
}

#[test]
fn non_vip_tcp_to_the_lb_node_still_works() {
    let Some(lab) = lab("e2ssh") else { return };
    let lb1 = NetNs::existing(&lab.ns(Node::Lb1));
    let client = NetNs::existing(&lab.ns(Node::Client));
    // An SSH-like service on the LB's own public address.
    let server = std::thread::spawn(move || {
        lb1.enter_current_thread();
        let listener = TcpListener::bind("10.100.0.11:2222").expect("bind on lb1");
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).expect("read");
        stream.write_all(b"pong!").expect("write");
    });
    std::thread::sleep(Duration::from_millis(200));
    let reply = std::thread::spawn(move || {
        client.enter_current_thread();
        let mut stream = TcpStream::connect_timeout(
            &"10.100.0.11:2222".parse().expect("addr"),
            Duration::from_secs(3),
        )
        .expect("connect to lb1's own address");
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        stream.write_all(b"ping!").expect("write");
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).expect("read");
        buf
    })
    .join()
    .expect("client thread");
    server.join().expect("server thread");
    assert_eq!(&reply, b"pong!");
}

#[test]
fn kill_9_keeps_forwarding_and_restart_adopts_flows() {
    let Some(lab) = lab("e2kill") else { return };
    let mut download = download_on(&lab, "web1");

    // A bounded client loop runs across the kill and the restart.
    let requests = ClientLoop::start(&lab, Duration::from_millis(20), 400);
    std::thread::sleep(Duration::from_secs(1));
    lab.kill_agent(Node::Lb1, libc::SIGKILL).expect("kill -9");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        download.progresses(),
        "download continues without the agent"
    );
    lab.start_agent(Node::Lb1).expect("restart");
    std::thread::sleep(Duration::from_secs(1));
    let seen = requests.finish();
    let (ok, failed) = (seen.ok(), seen.failed);
    assert!(ok > 20, "client loop ran ({ok} requests)");
    assert!(
        failed.is_empty(),
        "requests failed around kill -9/restart: {failed:?}"
    );

    let log = std::fs::read_to_string(lab.agent_log_path(Node::Lb1)).expect("agent log");
    assert!(
        log.contains("adopted pinned maps"),
        "restart adopted the maps:\n{log}"
    );
    assert!(
        log.contains("swapped the new program into the existing link"),
        "{log}"
    );
    let flows = backend_field(&lab, "www", "10.200.0.21:80", "active_flows")
        .as_u64()
        .expect("active_flows");
    let list = backends_json(&lab, "www");
    assert!(
        flows >= 1,
        "the download's flow survived the restart: {list:?}"
    );
    assert!(download.progresses(), "download continues after restart");
    assert!(download.running());
}

#[test]
fn runtime_changes_survive_a_restart() {
    let Some(lab) = lab("e2state") else { return };
    agent(
        &lab,
        &[
            "backends",
            "add",
            "--service",
            "www",
            "10.200.0.23:80",
            "--weight",
            "2",
        ],
    );
    agent(
        &lab,
        &[
            "backends",
            "remove",
            "--service",
            "www",
            "10.200.0.21:80",
            "--now",
        ],
    );
    lab.stop_agent(Node::Lb1).expect("graceful stop");
    lab.start_agent(Node::Lb1).expect("start again");
    let list = backends_json(&lab, "www");
    let active: Vec<String> = list
        .iter()
        .filter(|b| b["state"] == "active")
        .map(|b| format!("{}:{}", b["address"].as_str().unwrap_or(""), b["port"]))
        .collect();
    assert_eq!(active, vec!["10.200.0.22:80", "10.200.0.23:80"], "{list:?}");
    let counts = http_round(&lab, 30);
    let web3 = counts.get("web3").copied().unwrap_or(0);
    assert!((18..=22).contains(&web3), "weight 2 of 3: {counts:?}");
    assert_eq!(counts.get("web1"), None, "{counts:?}");
}

#[test]
fn lab_down_leaves_nothing_behind() {
    let Some(lab) = lab("e2down") else { return };
    let _ = http_round(&lab, 3);
    let run_dir = lab.run_dir().to_path_buf();
    drop(lab);
    let namespaces = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns")
            .stdout,
    )
    .into_owned();
    assert!(
        !namespaces.contains("e2down-"),
        "namespaces left: {namespaces}"
    );
    for path in [
        run_dir,
        PathBuf::from("/sys/fs/bpf/e2down-lb1"),
        PathBuf::from("/run/lb-agent/e2down-lb1.sock"),
    ] {
        assert!(!path.exists(), "{} left behind", path.display());
    }
    let ps = String::from_utf8_lossy(
        &Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .expect("ps")
            .stdout,
    )
    .into_owned();
    assert!(!ps.contains("/run/lb-lab/e2down"), "processes left:\n{ps}");
    assert!(!ps.contains("e2down-lb1"), "agent left:\n{ps}");
}
