//! Every config this project ships passes `check-config`: the README's
//! complete examples and the lab's agent configs (with and without VRRP),
//! and the classic keepalived/HAProxy node configs render. No root needed.

use std::path::Path;

use lb_agent::check::check_text;
use xtask::lab::{agent_config, vrrp_section, Node};

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

#[test]
fn lab_configs_pass_check_config() {
    let xtask = Path::new("/usr/local/bin/xtask");
    for node in Node::LBS {
        let plain = agent_config("lab", node, xtask).expect("lab config");
        let report = check_text(&plain, &format!("lab {node}"), true);
        assert!(report.is_valid(), "{report}");
        for (version, interval) in [(2, "1s"), (3, "100ms")] {
            let mut ha = plain.clone();
            ha.push_str(
                &vrrp_section(node, version, interval, Path::new("/run/flag")).expect("vrrp"),
            );
            let report = check_text(&ha, &format!("lab {node} VRRPv{version}"), true);
            assert!(report.is_valid(), "{report}");
            let vrrp = report.config.and_then(|c| c.vrrp).expect("[vrrp]");
            assert_eq!((vrrp.vrid, vrrp.version), (33, version));
        }
    }
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
    let source = include_str!("../../lb-agent/src/config.rs");
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
    assert!(fields > 60, "found {fields} fields in config.rs");
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
