//! Operating the agent in the lab: reload (SIGHUP and `lb-agent reload`)
//! while clients keep connecting, and an invalid reload that changes
//! nothing.

use std::{net::Ipv4Addr, time::Duration};

use integration_tests::e2e::*;
use lb_config::{BackendConfig, Config, MaxFlows, Priority, Weight};
use xtask::lab::{Lab, Node, FLOATING_SNAT};

const WEB2: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 22);
const WEB3: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 23);

/// The backend at `address` of `model`'s service www.
fn www_backend(model: &mut Config, address: Ipv4Addr) -> &mut BackendConfig {
    let www = model.service_mut("www").expect("www");
    www.backends
        .iter_mut()
        .find(|b| b.address == address)
        .unwrap_or_else(|| panic!("{address} is not a backend of www"))
}

/// Adds the backend `address` to `model`'s service www.
fn add_www_backend(model: &mut Config, address: Ipv4Addr) {
    let www = model.service_mut("www").expect("www");
    www.backends.push(BackendConfig::new(address));
}

/// Sets lb1's VRRP priority in `model`.
fn set_priority(model: &mut Config, priority: u8) {
    model.vrrp.as_mut().expect("[vrrp]").priority = Priority::new(priority).expect("priority");
}

/// `address state` of www's backends.
fn www_backends(lab: &Lab) -> Vec<String> {
    backends_json(lab, "www")
        .iter()
        .map(|b| {
            format!(
                "{} {}",
                b["address"].as_str().unwrap_or("?"),
                b["state"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[test]
fn reload_changes_backends_without_failing_a_request_or_a_flow() {
    let Some(lab) = lab("oprel") else { return };
    let download = download_on(&lab, "web2");
    let requests = ClientLoop::start(&lab, Duration::from_millis(50), 600);
    std::thread::sleep(Duration::from_millis(500));

    // web2 leaves the config, web3 joins: `lb-agent reload`.
    let mut model = lab.default_agent_model(Node::Lb1).expect("model");
    www_backend(&mut model, WEB2).address = WEB3;
    lab.write_agent_model(Node::Lb1, &model).expect("write");
    let said = agent(&lab, &["reload"]);
    assert!(said.contains("services changed: www"), "{said}");
    assert!(
        wait_for(Duration::from_secs(5), || www_backends(&lab)
            == [
                "10.200.0.21 active",
                "10.200.0.22 draining",
                "10.200.0.23 active"
            ]),
        "www now has web1 and web3, web2 drains its download: {:?}",
        www_backends(&lab)
    );
    // The health check of the new backend must pass before it gets traffic.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        download.progresses(),
        "the download from web2 goes on after web2 left the config"
    );

    // SIGHUP does the same: web2 comes back with weight 3.
    let back = www_backend(&mut model, WEB3);
    back.address = WEB2;
    back.weight = Weight::new(3).expect("weight");
    lab.write_agent_model(Node::Lb1, &model).expect("write");
    let pid = lab.agent_pid(Node::Lb1).expect("agent pid");
    xtask::lab::process::signal(pid, libc::SIGHUP).expect("SIGHUP");
    assert!(
        wait_for(Duration::from_secs(5), || www_backends(&lab)
            .contains(&"10.200.0.22 active".to_string())),
        "SIGHUP reloads: {:?}",
        www_backends(&lab)
    );
    std::thread::sleep(Duration::from_secs(3));
    let seen = requests.finish();
    let (answers, failed) = (seen.answers, seen.failed);
    assert!(
        failed.is_empty(),
        "requests failed during reloads: {failed:?}"
    );
    assert!(
        answers.get("web3").copied().unwrap_or(0) > 0,
        "web3 served after the first reload: {answers:?}"
    );
    assert_eq!(
        lab.agent_pid(Node::Lb1),
        Some(pid),
        "the agent was not restarted"
    );
    let round = http_round(&lab, 40);
    assert_eq!(round.get("web3"), None, "web3 left again: {round:?}");
    let (web1, web2) = (
        round.get("web1").copied().unwrap_or(0),
        round.get("web2").copied().unwrap_or(0),
    );
    assert!(
        web2 > web1 * 2,
        "weight 3 against 1 after SIGHUP: {round:?}"
    );
}

#[test]
fn invalid_reload_changes_nothing() {
    let Some(lab) = lab("opbad") else { return };
    let before = www_backends(&lab);
    let path = lab.agent_config_path(Node::Lb1);
    let good = std::fs::read_to_string(&path).expect("config");

    // A broken file: refused with the reason, nothing changes.
    std::fs::write(&path, good.replacen("port = 80", "port = 0", 1)).expect("write");
    let out = lab
        .agent_cli(Node::Lb1, &["reload"])
        .expect("lb-agent reload");
    assert!(!out.status.success(), "an invalid reload fails");
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("port") && message.contains("running config stays"),
        "{message}"
    );
    // A change only a restart can apply: refused whole, also the rest of it.
    let mut restart_only = lab.default_agent_model(Node::Lb1).expect("model");
    restart_only.conntrack.max_flows = MaxFlows::new(131_072).expect("max_flows");
    www_backend(&mut restart_only, WEB2).address = WEB3;
    lab.write_agent_model(Node::Lb1, &restart_only)
        .expect("write");
    let out = lab
        .agent_cli(Node::Lb1, &["reload"])
        .expect("lb-agent reload");
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("conntrack.max_flows") && message.contains("restart"),
        "{message}"
    );
    assert_eq!(www_backends(&lab), before, "the running backends stay");
    let round = http_round(&lab, 10);
    assert!(
        round.keys().all(|k| k == "web1" || k == "web2"),
        "still served as before: {round:?}"
    );
    std::fs::write(&path, good).expect("restore");
}

/// Scrapes `node`'s /metrics and parses it with a Prometheus text parser.
fn scrape(lab: &Lab, node: Node) -> prometheus_parse::Scrape {
    let text = lab
        .exec_ok(
            node,
            &[
                "curl",
                "-sS",
                "--max-time",
                "2",
                "http://127.0.0.1:9650/metrics",
            ],
        )
        .expect("GET /metrics");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

/// The value of the sample `name` whose labels include all of `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn metrics_are_prometheus_text_and_move_with_traffic() {
    let Some(lab) = lab_ha("opmet") else { return };
    let www = [("service", "www")];
    let before = scrape(&lab, Node::Lb1);
    let packets = value(&before, "lb_service_packets_total", &www).expect("www packets");
    let new_flows = value(&before, "lb_service_new_flows_total", &www).expect("www new flows");
    let round = http_round(&lab, 20);
    assert_eq!(round.values().sum::<usize>(), 20, "{round:?}");
    assert!(!round.contains_key("error"), "{round:?}");

    let after = scrape(&lab, Node::Lb1);
    let packets_after = value(&after, "lb_service_packets_total", &www).expect("www packets");
    let new_after = value(&after, "lb_service_new_flows_total", &www).expect("www new flows");
    assert!(
        packets_after >= packets + 20.0 * 5.0,
        "{packets} -> {packets_after}"
    );
    assert_eq!(new_after - new_flows, 20.0, "one new flow per request");
    for backend in ["10.200.0.21:80", "10.200.0.22:80"] {
        let labels = [("service", "www"), ("backend", backend)];
        assert_eq!(
            value(&after, "lb_backend_up", &labels),
            Some(1.0),
            "{backend}"
        );
        assert!(value(&after, "lb_backend_new_flows_total", &labels).unwrap_or(0.0) >= 1.0);
    }
    assert!(
        value(
            &after,
            "lb_xdp_packets_total",
            &[("reason", "forwarded_to_backend")]
        )
        .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(value(&after, "lb_conntrack_capacity", &[]), Some(65536.0));
    assert_eq!(
        value(&after, "lb_vrrp_state", &[("state", "MASTER")]),
        Some(1.0)
    );
    assert_eq!(value(&after, "lb_vrrp_priority", &[]), Some(200.0));
    assert!(value(&after, "lb_vrrp_adverts_sent_total", &[]).unwrap_or(0.0) > 0.0);
    let backup = scrape(&lab, Node::Lb2);
    assert_eq!(
        value(&backup, "lb_vrrp_state", &[("state", "BACKUP")]),
        Some(1.0)
    );
    // lb2's agent can start after lb1 became master (an agent takes about
    // 3 s to start, as long as lb1's master down interval): the lab is up
    // before lb2 has heard an advert, so allow it one interval and more.
    let heard = |lab: &Lab| {
        value(
            &scrape(lab, Node::Lb2),
            "lb_vrrp_adverts_received_total",
            &[],
        )
        .unwrap_or(0.0)
            > 0.0
    };
    assert!(
        wait_for(Duration::from_secs(3), || heard(&lab)),
        "lb2 counts lb1's adverts"
    );

    // A health transition shows up as a gauge and a counter.
    lab.stop_nginx(Node::Web1).expect("stop nginx on web1");
    let web1 = [("service", "www"), ("backend", "10.200.0.21:80")];
    assert!(
        wait_for(Duration::from_secs(10), || value(
            &scrape(&lab, Node::Lb1),
            "lb_backend_up",
            &web1
        ) == Some(0.0)),
        "web1 reported down"
    );
    let down = scrape(&lab, Node::Lb1);
    assert!(value(&down, "lb_backend_health_transitions_total", &web1).unwrap_or(0.0) >= 1.0);
    lab.start_nginx(Node::Web1).expect("start nginx on web1");
}

#[test]
fn status_json_follows_its_schema_and_stats_watch_refreshes() {
    let Some(lab) = lab("opstat") else { return };
    http_round(&lab, 4);
    let status: serde_json::Value =
        serde_json::from_str(&agent(&lab, &["status", "--json"])).expect("status JSON");
    assert_eq!(status["schema"], 1);
    assert_eq!(status["instance"], lab.instance(Node::Lb1));
    assert!(status["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(status["vrrp"].is_null(), "no [vrrp] in this lab");
    let backends = status["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 4, "www and dns, web1 and web2 each");
    for backend in backends {
        for field in [
            "service",
            "address",
            "port",
            "state",
            "health",
            "active_flows",
        ] {
            assert!(!backend[field].is_null(), "{field} in {backend}");
        }
    }
    assert!(status["services"][0]["new_flows"].as_u64().is_some());
    assert!(status["reasons"].as_array().is_some_and(|r| !r.is_empty()));
    assert_eq!(status["max_flows"], 65536);

    let human = agent(&lab, &["status"]);
    assert!(
        human.contains("vrrp: not configured") && human.contains("flow table:"),
        "{human}"
    );
    let watched = agent(
        &lab,
        &["stats", "--watch", "--interval", "100ms", "--count", "3"],
    );
    assert_eq!(watched.matches("flow table:").count(), 3, "{watched}");
}

#[test]
fn check_config_reports_file_line_and_exit_codes() {
    let Some(lab) = lab_ha("opchk") else { return };
    let config = lab.agent_config_path(Node::Lb1);
    let path = config.to_string_lossy().into_owned();
    let out = lab
        .agent_cli(Node::Lb1, &["check-config", "--config", &path])
        .expect("check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("valid (2 services, 4 backends, VRRP)"),
        "{said}"
    );

    let good = std::fs::read_to_string(&config).expect("config");
    let broken = lab.run_dir().join("broken.toml");
    let broken_path = broken.to_string_lossy().into_owned();
    let line = good
        .lines()
        .position(|l| l == "port = 80")
        .expect("www's port line")
        + 1;
    std::fs::write(&broken, good.replacen("port = 80", "port = 0", 1)).expect("write");
    let out = lab
        .agent_cli(Node::Lb1, &["check-config", "--config", &broken_path])
        .expect("check-config");
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.starts_with(&format!(
            "{broken_path}:{line}: service \"www\" port: 0 is not a service port"
        )),
        "{said}"
    );

    // An interface this node lacks: found on the node, skipped --offline.
    let model = lab.default_agent_model(Node::Lb1).expect("model");
    let mut elsewhere = model.clone();
    elsewhere.node.public_interface = "pub9".into();
    std::fs::write(&broken, elsewhere.to_toml().expect("toml")).expect("write");
    let out = lab
        .agent_cli(Node::Lb1, &["check-config", "--config", &broken_path])
        .expect("check-config");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such interface"));
    let out = lab
        .agent_cli(
            Node::Lb1,
            &["check-config", "--offline", "--config", &broken_path],
        )
        .expect("check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A SNAT address of the node's own that is not on the private
    // interface: backends could not reach it, so the node says so. The HA
    // lab shares a floating address instead, so an own pool is put back
    // for this.
    let mut elsewhere = model;
    let vrrp = elsewhere.vrrp.as_mut().expect("[vrrp] in the HA lab");
    assert_eq!(vrrp.snat_address, Some(FLOATING_SNAT));
    vrrp.snat_address = None;
    elsewhere.node.snat_addresses = vec![
        Ipv4Addr::new(10, 200, 0, 11),
        Ipv4Addr::new(10, 200, 0, 119),
    ];
    std::fs::write(&broken, elsewhere.to_toml().expect("toml")).expect("write");
    let out = lab
        .agent_cli(Node::Lb1, &["check-config", "--config", &broken_path])
        .expect("check-config");
    assert_eq!(out.status.code(), Some(78));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("10.200.0.119 is not on priv0"), "{said}");
    // The floating address is on the master only, and the agent adds it:
    // the backup's config is valid without it on priv0.
    let lb2 = lab
        .agent_config_path(Node::Lb2)
        .to_string_lossy()
        .into_owned();
    let out = lab
        .agent_cli(Node::Lb2, &["check-config", "--config", &lb2])
        .expect("check-config on lb2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = lab
        .agent_cli(Node::Lb1, &["check-config", "--confg", &path])
        .expect("check-config");
    assert_eq!(out.status.code(), Some(64), "EX_USAGE for a wrong flag");
}

#[test]
fn reload_applies_vrrp_changes_without_a_failover() {
    let Some(lab) = lab_ha("oprvrp") else { return };
    assert_eq!(lab.vip_holder(), Some(Node::Lb1));
    let mut model = lab.default_agent_model(Node::Lb1).expect("model");
    let mut write = |change: &dyn Fn(&mut Config)| {
        change(&mut model);
        lab.write_agent_model(Node::Lb1, &model).expect("write");
    };

    // A lower priority that still wins: the instance is replaced, the VIP
    // never moves and lb2 stays backup.
    write(&|m| set_priority(m, 150));
    let said = agent(&lab, &["reload"]);
    assert!(said.contains("VRRP settings changed"), "{said}");
    for _ in 0..20 {
        assert_eq!(lab.vip_holder(), Some(Node::Lb1), "the VIP stays on lb1");
        assert_eq!(vrrp_state(&lab, Node::Lb2), "BACKUP");
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(vrrp_field(&lab, Node::Lb1, "priority"), 150);
    assert_eq!(vrrp_state(&lab, Node::Lb1), "MASTER");

    // A reload that leaves [vrrp] alone does not touch the instance.
    let since = vrrp_field(&lab, Node::Lb1, "last_transition_unix");
    let sent = vrrp_field(&lab, Node::Lb1, "adverts_sent")
        .as_u64()
        .unwrap_or(0);
    write(&|m| www_backend(m, WEB2).weight = Weight::new(2).expect("weight"));
    let said = agent(&lab, &["reload"]);
    assert!(!said.contains("VRRP"), "{said}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(vrrp_field(&lab, Node::Lb1, "last_transition_unix"), since);
    assert!(
        vrrp_field(&lab, Node::Lb1, "adverts_sent")
            .as_u64()
            .unwrap_or(0)
            > sent,
        "the same instance keeps advertising"
    );

    // Below lb2's priority: lb2 preempts.
    write(&|m| set_priority(m, 50));
    agent(&lab, &["reload"]);
    assert!(
        wait_for(Duration::from_secs(6), || lab.vip_holder()
            == Some(Node::Lb2)),
        "lb2 (100) takes over from lb1 (now 50)"
    );
    assert_eq!(vrrp_state(&lab, Node::Lb1), "BACKUP");
}

/// Runs `command` with stdout a pipe whose reader is already gone, as in
/// `lb-agent stats | head -1` once head has exited; its status and stderr.
fn with_closed_stdout(command: &mut std::process::Command) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = command
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run lb-agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_output_to_a_closed_pipe_ends_quietly() {
    let Some(agent) = integration_tests::artifacts::agent_binary() else {
        return;
    };
    for args in [&["completions", "bash"][..], &["man"]] {
        let (status, stderr) = with_closed_stdout(std::process::Command::new(&agent).args(args));
        assert_eq!(status, Some(141), "lb-agent {args:?}: {stderr}");
        assert!(stderr.is_empty(), "lb-agent {args:?} said: {stderr}");
    }
}

/// The state file of lb1's agent.
fn state_path(lab: &Lab) -> std::path::PathBuf {
    lab.run_dir()
        .join("state")
        .join(format!("{}.json", lab.instance(Node::Lb1)))
}

/// Entries of the state file (0 when there is none).
fn state_entries(lab: &Lab) -> usize {
    let Ok(text) = std::fs::read_to_string(state_path(lab)) else {
        return 0;
    };
    let state: serde_json::Value = serde_json::from_str(&text).expect("state JSON");
    state["services"]
        .as_object()
        .expect("services")
        .values()
        .flat_map(|changes| ["added", "removed", "drained"].map(|k| changes[k].clone()))
        .map(|list| list.as_array().map_or(0, Vec::len))
        .sum()
}

#[test]
fn careless_operator_input_is_refused_everywhere_it_gets_in() {
    let Some(lab) = lab("hi") else { return };
    let before = www_backends(&lab);

    // The CLI follows the config's rules: nothing refused is persisted.
    for (address, why) in [
        ("10.100.0.100", "not a VIP"),
        ("10.200.0.11", "this node's own address"),
        ("10.200.0.113", "this node's own address"),
        ("0.0.0.0", "not a unicast address"),
        ("224.0.0.5", "not a unicast address"),
        ("255.255.255.255", "not a unicast address"),
        ("127.0.0.1", "not a unicast address"),
    ] {
        let out = lab
            .agent_cli(Node::Lb1, &["backends", "add", "--service", "www", address])
            .expect("backends add");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{address} was accepted");
        assert!(
            said.contains(why) && said.contains("nothing was changed"),
            "{address}: {said}"
        );
    }
    assert_eq!(www_backends(&lab), before);
    assert_eq!(state_entries(&lab), 0, "nothing refused was persisted");

    // A run-time backend added and removed again leaves no entry behind...
    for _ in 0..20 {
        agent(
            &lab,
            &["backends", "add", "--service", "www", "10.200.0.23"],
        );
        agent(
            &lab,
            &["backends", "remove", "--service", "www", "10.200.0.23"],
        );
    }
    assert_eq!(state_entries(&lab), 0, "add/remove cycles left entries");
    // ...so the config can bring it in later.
    let path = lab.agent_config_path(Node::Lb1);
    let good = std::fs::read_to_string(&path).expect("config");
    let mut with_web3 = lab.default_agent_model(Node::Lb1).expect("model");
    add_www_backend(&mut with_web3, WEB3);
    lab.write_agent_model(Node::Lb1, &with_web3).expect("write");
    agent(&lab, &["reload"]);
    assert!(
        wait_for(Duration::from_secs(5), || www_backends(&lab)
            .contains(&"10.200.0.23 active".to_string())),
        "web3 from the config appears: {:?}",
        www_backends(&lab)
    );

    // A refused reload says where, as check-config does: an invalid file
    // (a weight the model cannot hold, so written as text), and one that
    // only a restart could apply.
    let mut restart_only = lab.default_agent_model(Node::Lb1).expect("model");
    restart_only.conntrack.max_flows = MaxFlows::new(131_072).expect("max_flows");
    let restart_only = restart_only.to_toml().expect("toml");
    for (text, changed, says) in [
        (
            good.replacen(
                "address = \"10.200.0.22\"",
                "address = \"10.200.0.22\"\n  weight = 500",
                1,
            ),
            "  weight = 500",
            "service \"www\" backend 10.200.0.22:80 weight: 500 is out of range 1..=100",
        ),
        (
            restart_only,
            "max_flows = 131072",
            "changed conntrack.max_flows",
        ),
    ] {
        let line = text
            .lines()
            .position(|l| l == changed)
            .expect("the changed line")
            + 1;
        std::fs::write(&path, text).expect("write");
        let out = lab
            .agent_cli(Node::Lb1, &["reload"])
            .expect("lb-agent reload");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains(&format!("{}:{line}: {says}", path.display())),
            "{said}"
        );
    }
    std::fs::write(&path, &good).expect("restore");
    agent(&lab, &["reload"]);

    // Output into a pipe nobody reads any more: no panic, no message.
    let (status, stderr) = with_closed_stdout(lab.agent_command(Node::Lb1).arg("stats"));
    assert_eq!(status, Some(141), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    // A state file the agent did not write stops it, and stays as it was.
    lab.stop_agent(Node::Lb1).expect("stop the agent");
    let state = state_path(&lab);
    let config_path = path.to_string_lossy().into_owned();
    for text in [
        "[]".to_string(),
        "{\"servics\": {}}".to_string(),
        "{\"services\": {\"www\": {\"added\": [{\"address\": \"10.200.0.23\", \"port\": 80, \"weight\": 1000000}]}}}".to_string(),
        "{\"services\": {\"www\": {\"added\": [{\"address\": \"10.100.0.100\", \"port\": 80, \"weight\": 1}]}}}".to_string(),
    ] {
        std::fs::write(&state, &text).expect("write state file");
        let error = lab
            .start_agent(Node::Lb1)
            .map(|pid| format!("started as pid {pid}"))
            .expect_err("the agent starts with a broken state file");
        let error = format!("{error:#}");
        assert!(
            error.contains(&state.display().to_string()) && error.contains("away"),
            "{text}: {error}"
        );
        assert_eq!(
            std::fs::read_to_string(&state).expect("state file"),
            text,
            "left untouched"
        );
        // check-config on the node says so before a restart would.
        let out = lab
            .agent_cli(Node::Lb1, &["check-config", "--config", &config_path])
            .expect("check-config");
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}: {said}");
        assert!(said.contains(&state.display().to_string()), "{text}: {said}");
        let out = lab
            .agent_cli(
                Node::Lb1,
                &["check-config", "--offline", "--config", &config_path],
            )
            .expect("check-config --offline");
        assert!(out.status.success(), "--offline reads no state file");
    }
    std::fs::remove_file(&state).expect("remove the state file");
    lab.start_agent(Node::Lb1).expect("starts without it");
}

/// Removes a file when dropped (also when the test fails).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_cli_gives_up_on_an_agent_that_does_not_answer() {
    let Some(agent) = integration_tests::artifacts::agent_binary() else {
        return;
    };
    // A socket that takes connections (into its backlog) and never
    // answers, as a hung agent's does.
    let instance = format!("vt-mute-{}", std::process::id());
    let socket = lb_agent::control::socket_path(&instance);
    std::fs::create_dir_all(lb_agent::control::SOCKET_DIR).expect("socket dir");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let _remove = RemoveOnDrop(socket);
    let started = std::time::Instant::now();
    let out = std::process::Command::new(&agent)
        .args(["--instance", &instance, "--timeout", "1s", "stats"])
        .output()
        .expect("lb-agent stats");
    let took = started.elapsed();
    drop(listener);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("did not answer within 1 s") && said.contains("is it running"),
        "{said}"
    );
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
}
