//! `cargo xtask install` into a staging root: every file lands where the
//! unit and the README say, an existing config is kept, and the unit passes
//! `systemd-analyze verify` where that tool exists.

use std::path::{Path, PathBuf};

use xtask::install::{install, InstallOptions};

/// The agent binary the build made, or `None` (skip) when not built.
fn agent() -> Option<PathBuf> {
    let path = std::env::var_os("LB_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| xtask::workspace_root().join("target/release/lb-agent"));
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIP: no agent binary at {} (run `cargo xtask build`)",
            path.display()
        );
        None
    }
}

fn staging(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-install-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn install_stages_binary_unit_config_completions_and_man_page() {
    let Some(agent) = agent() else { return };
    let root = staging("all");
    let options = InstallOptions {
        prefix: "/usr/local".into(),
        destdir: root.clone(),
        agent: Some(agent),
    };
    let installed = install(&options).expect("install");
    assert_eq!(installed.binary, root.join("usr/local/bin/lb-agent"));
    for file in [
        &installed.binary,
        &installed.unit,
        &installed.config,
        &installed.man_page,
    ]
    .into_iter()
    .chain(&installed.completions)
    {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{} is missing or empty", file.display());
    }
    assert!(!installed.kept_config);
    let man = std::fs::read_to_string(&installed.man_page).expect("man page");
    assert!(
        man.contains(".TH lb-agent 8") && man.contains("check\\-config"),
        "{man}"
    );
    let bash = std::fs::read_to_string(&installed.completions[0]).expect("bash");
    assert!(bash.contains("backends") && bash.contains("reload"));
    let out = std::process::Command::new(&installed.binary)
        .args(["check-config", "--offline", "--config"])
        .arg(&installed.config)
        .output()
        .expect("check-config");
    assert!(
        out.status.success(),
        "the example config is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second install keeps the operator's config.
    std::fs::write(&installed.config, "# mine\n").expect("edit");
    let again = install(&options).expect("install again");
    assert!(again.kept_config);
    assert_eq!(
        std::fs::read_to_string(&installed.config).expect("config"),
        "# mine\n"
    );

    verify_unit(&installed.unit);
    let _ = std::fs::remove_dir_all(&root);
}

fn verify_unit(unit: &Path) {
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        eprintln!("SKIP: systemd-analyze not installed; unit not verified");
        return;
    }
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("systemd-analyze");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // It parses the unit and reports problems in it even without systemd
    // as PID 1; the binary itself is only staged, not at its final path.
    let binary = "/usr/local/bin/lb-agent is not executable";
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("lb-agent.service") && !l.contains(binary))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{said}");
}
