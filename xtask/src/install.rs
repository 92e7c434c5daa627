//! `cargo xtask install`: builds the agent and puts it in place on a node:
//! the binary, the systemd unit, an example config (never over an existing
//! one), shell completions and the man page. `--destdir` stages everything
//! under another root (packaging, tests); `--prefix` moves the binary,
//! completions and man page (default /usr/local).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{build, cmd, workspace_root};

/// Where things go, relative to the destination root.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub prefix: PathBuf,
    pub destdir: PathBuf,
    /// Use this agent binary instead of building one.
    pub agent: Option<PathBuf>,
}

/// The files an install writes (under `destdir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub binary: PathBuf,
    pub unit: PathBuf,
    pub config: PathBuf,
    pub completions: Vec<PathBuf>,
    pub man_page: PathBuf,
    /// Whether an existing config was left alone.
    pub kept_config: bool,
}

/// `path` (absolute) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Runs the agent's own generator (`lb-agent completions SHELL`, `lb-agent man`).
fn generated(agent: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(agent)
        .args(args)
        .output()
        .with_context(|| format!("running {} {args:?}", agent.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            agent.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Installs as `options` say; prints what it does.
pub fn install(options: &InstallOptions) -> Result<Installed> {
    let agent = match &options.agent {
        Some(path) => path.clone(),
        None => build::build_all(build::BuildOptions::default())?.agent,
    };
    let root = &options.destdir;
    let prefix = &options.prefix;
    let packaging = workspace_root().join("packaging");

    let binary = under(root, &prefix.join("bin/lb-agent"));
    eprintln!("xtask: installing {}", binary.display());
    let bytes = std::fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
    write(&binary, &bytes, 0o755)?;

    let unit = under(root, Path::new("/etc/systemd/system/lb-agent.service"));
    eprintln!("xtask: installing {}", unit.display());
    let text = std::fs::read_to_string(packaging.join("lb-agent.service"))?;
    let text = text.replace(
        "/usr/local/bin/lb-agent",
        &prefix.join("bin/lb-agent").to_string_lossy(),
    );
    write(&unit, text.as_bytes(), 0o644)?;

    let config = under(root, Path::new("/etc/lb-agent/lb-agent.toml"));
    let kept_config = config.exists();
    if kept_config {
        eprintln!(
            "xtask: keeping the existing {} (the example is in packaging/)",
            config.display()
        );
    } else {
        eprintln!(
            "xtask: installing the example config as {}",
            config.display()
        );
        let example = std::fs::read(packaging.join("lb-agent.example.toml"))?;
        write(&config, &example, 0o600)?;
    }
    let state = under(root, Path::new("/var/lib/lb-agent"));
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;

    let mut completions = Vec::new();
    for (shell, path) in [
        ("bash", "share/bash-completion/completions/lb-agent"),
        ("zsh", "share/zsh/site-functions/_lb-agent"),
        ("fish", "share/fish/vendor_completions.d/lb-agent.fish"),
    ] {
        let file = under(root, &prefix.join(path));
        write(&file, &generated(&agent, &["completions", shell])?, 0o644)?;
        completions.push(file);
    }
    let man_page = under(root, &prefix.join("share/man/man8/lb-agent.8"));
    write(&man_page, &generated(&agent, &["man"])?, 0o644)?;
    eprintln!(
        "xtask: installed completions ({}) and the man page ({})",
        completions.len(),
        man_page.display()
    );
    if root == Path::new("/") {
        if cmd::which("systemctl").is_some() {
            let _ = Command::new("systemctl").arg("daemon-reload").status();
        }
        eprintln!(
            "xtask: next: edit {}, check it with `lb-agent check-config --config {0}`, then `systemctl enable --now lb-agent`",
            config.display()
        );
    }
    Ok(Installed {
        binary,
        unit,
        config,
        completions,
        man_page,
        kept_config,
    })
}
