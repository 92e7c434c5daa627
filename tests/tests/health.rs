//! End-to-end health checks in the lab: the agent takes failing backends
//! out of rotation and brings them back, detects a black hole by timeout,
//! tells an HTTP 500 from a dead server, answers with RST when nothing is
//! up, cuts flows with `on_down = "shutdown-flows"`, and does not flap.
//! The lab checks `www` over HTTP every 1 s with rise 2 / fall 2.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use integration_tests::e2e::*;
use lb_config::{
    BackendConfig, CheckKind, HealthCheckConfig, OnDown, Protocol, RiseFall, ServiceConfig,
};
use xtask::lab::{self, Node, VIP};

const WEB1: &str = "10.200.0.21:80";
const WEB2: &str = "10.200.0.22:80";
/// fall × interval + timeout, with room for jitter and scheduling.
const DETECTION: Duration = Duration::from_secs(6);

#[test]
fn stopped_nginx_leaves_rotation_and_comes_back() {
    let Some(lab) = lab("hstop") else { return };
    lab.stop_nginx(Node::Web1).expect("stop nginx on web1");
    assert!(
        wait_for(DETECTION, || health_of(&lab, "www", WEB1) == "down"),
        "web1 marked down"
    );
    let counts = http_round(&lab, 20);
    assert_eq!(
        counts.get("web2"),
        Some(&20),
        "all new connections go to web2: {counts:?}"
    );
    let list = agent(&lab, &["backends", "list", "--service", "www"]);
    assert!(
        list.contains("Connection refused"),
        "last check says why: {list}"
    );

    lab.start_nginx(Node::Web1).expect("start nginx on web1");
    assert!(
        wait_for(DETECTION, || health_of(&lab, "www", WEB1) == "up"),
        "web1 back up"
    );
    let counts = http_round(&lab, 20);
    assert!(
        counts.get("web1").copied().unwrap_or(0) >= 8,
        "web1 gets traffic again: {counts:?}"
    );
    let log = std::fs::read_to_string(lab.agent_log_path(Node::Lb1)).expect("agent log");
    assert!(
        log.contains("backend health changed")
            && log.contains("state=\"down\"")
            && log.contains("state=\"up\""),
        "transitions are logged:\n{log}"
    );
}

#[test]
fn black_hole_is_detected_by_timeout() {
    let Some(lab) = lab("hhole") else { return };
    // web2 silently drops everything it would send back to lb1.
    lab.exec_ok(
        Node::Web2,
        &["ip", "route", "add", "blackhole", "10.200.0.11/32"],
    )
    .expect("blackhole route");
    assert!(
        wait_for(DETECTION, || health_of(&lab, "www", WEB2) == "down"),
        "web2 marked down"
    );
    let list = agent(&lab, &["backends", "list", "--service", "www"]);
    let web2 = list
        .lines()
        .find(|l| l.starts_with(WEB2))
        .expect("web2 listed");
    assert!(web2.contains("timed out"), "detected by timeout: {web2}");
    let counts = http_round(&lab, 10);
    assert_eq!(counts.get("web1"), Some(&10), "{counts:?}");
}

#[test]
fn http_500_is_down_for_http_but_up_for_tcp_checks() {
    let Some(lab) = lab("h500") else { return };
    // A second service on the same backends, checked by TCP connect only.
    let mut model = lab.default_agent_model(Node::Lb1).expect("model");
    model.services.push(ServiceConfig {
        health_check: Some(HealthCheckConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: RiseFall::new(2).expect("rise"),
            fall: RiseFall::new(2).expect("fall"),
            ..HealthCheckConfig::of_kind(CheckKind::Tcp)
        }),
        backends: vec![BackendConfig {
            port: Some(80),
            ..BackendConfig::new(Ipv4Addr::new(10, 200, 0, 22))
        }],
        ..ServiceConfig::new("www-tcp", VIP, 8080, Protocol::Tcp)
    });
    lab.stop_agent(Node::Lb1).expect("stop agent");
    lab.start_agent_with_model(Node::Lb1, &model)
        .expect("agent with www-tcp");
    lab.set_health_page_failing(Node::Web2, true)
        .expect("fail /health");
    assert!(
        wait_for(DETECTION, || health_of(&lab, "www", WEB2) == "down"),
        "http check sees the 500"
    );
    let list = agent(&lab, &["backends", "list", "--service", "www"]);
    assert!(list.contains("HTTP 500"), "{list}");
    assert_eq!(
        health_of(&lab, "www-tcp", WEB2),
        "up",
        "tcp check still connects"
    );
    let body = lab
        .http_get(Node::Client, "http://10.100.0.100:8080/")
        .expect("www-tcp still serves through web2");
    assert_eq!(body.trim(), "web2");
}

#[test]
fn no_backend_up_answers_with_rst() {
    let Some(lab) = lab("hnone") else { return };
    lab.stop_nginx(Node::Web1).expect("stop web1");
    lab.stop_nginx(Node::Web2).expect("stop web2");
    assert!(
        wait_for(DETECTION, || health_of(&lab, "www", WEB1) == "down"
            && health_of(&lab, "www", WEB2) == "down"),
        "both down"
    );
    let out = lab
        .exec(
            Node::Client,
            &["curl", "-sS", "--max-time", "3", "http://10.100.0.100/"],
        )
        .expect("curl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Couldn't connect") || stderr.contains("Connection refused"),
        "connect refused by a RST, not a timeout: {stderr}"
    );
    let services = agent(&lab, &["services", "list", "--json"]);
    assert!(
        services.contains("\"rejected\": 1"),
        "counted per service: {services}"
    );
    let stats = agent(&lab, &["stats"]);
    assert!(stats.contains("rst_no_backend"), "{stats}");
}

#[test]
fn shutdown_flows_cuts_a_long_lived_connection() {
    let Some(lab) = lab("hcut") else { return };
    let mut model = lab.default_agent_model(Node::Lb1).expect("model");
    model.service_mut("www").expect("www").on_down = OnDown::ShutdownFlows;
    lab.stop_agent(Node::Lb1).expect("stop agent");
    lab.start_agent_with_model(Node::Lb1, &model)
        .expect("agent with shutdown-flows");
    let mut download = download_on(&lab, "web1");
    assert!(download.progresses());
    lab.set_health_page_failing(Node::Web1, true)
        .expect("fail /health");
    assert!(
        wait_for(DETECTION, || health_of(&lab, "www", WEB1) == "down"),
        "web1 down"
    );
    assert!(
        wait_for(Duration::from_secs(5), || !download.running()),
        "the download was cut when web1 went down"
    );
}

/// Each check sees the opposite of the one before: the test flips the page
/// as soon as nginx has logged a check. With rise 2 / fall 2 no two equal
/// results ever follow each other, so the backend must never change state.
/// (Flipping on a timer instead aliases with the check interval and makes
/// runs of equal results by chance.)
#[test]
fn flapping_backend_does_not_storm_the_maps() {
    const FLIPS: usize = 10;
    let Some(lab) = lab("hflap") else { return };
    let mut failing = false;
    let mut checks_seen = health_checks_logged(&lab, Node::Web1);
    let mut flips = 0;
    let deadline = Instant::now() + Duration::from_secs(3 * FLIPS as u64);
    while flips < FLIPS && Instant::now() < deadline {
        let checks = health_checks_logged(&lab, Node::Web1);
        if checks == checks_seen {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        assert_eq!(
            checks,
            checks_seen + 1,
            "one check at a time, so that each sees a flipped page"
        );
        checks_seen = checks;
        failing = !failing;
        lab.set_health_page_failing(Node::Web1, failing)
            .expect("flip");
        flips += 1;
    }
    assert_eq!(flips, FLIPS, "web1 was checked about once a second");
    lab.set_health_page_failing(Node::Web1, false)
        .expect("settle");
    let transitions = backend_field(&lab, "www", WEB1, "transitions");
    assert_eq!(
        transitions,
        serde_json::json!(0),
        "alternating results never reach rise or fall: {:#?}",
        backends_json(&lab, "www")
    );
    assert_eq!(health_of(&lab, "www", WEB1), "up");
}

/// How many health checks `web`'s nginx has answered so far.
fn health_checks_logged(lab: &lab::Lab, web: Node) -> usize {
    let path = lab.access_log_path(web);
    let log = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("access log {}: {e}", path.display()));
    log.lines().filter(|l| l.contains("\"GET /health ")).count()
}
