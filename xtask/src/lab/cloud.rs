//! The lab's "cloud" for `--provider digitalocean`: the stand-in
//! DigitalOcean API and metadata service (`do-api-mock`, from the tests
//! crate) runs in the client namespace. lb1 and lb2 are droplets 1001 and
//! 1002 (the metadata service tells each its id by its address); assigning
//! the reserved IP 10.100.0.100 routes it, in the client namespace, via that
//! droplet's public address, as the cloud delivers a reserved IP's traffic
//! to the droplet it is assigned to. The LB nodes then do not put the VIP
//! on an interface: their XDP programs serve it as it arrives.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::{process, Lab, Node, VIP};
use crate::{build, cmd, workspace_root};

/// The stand-in API listens on the client's address, this port.
pub const DO_API_PORT: u16 = 8080;
/// Droplet ids of lb1 and lb2.
pub const DROPLETS: [(Node, u64); 2] = [(Node::Lb1, 1001), (Node::Lb2, 1002)];
/// Env var naming the `do-api-mock` binary.
pub const ENV_DO_MOCK_BIN: &str = "LB_DO_MOCK_BIN";

/// The `do-api-mock` binary: `$LB_DO_MOCK_BIN`, or built into the target
/// dir when missing.
pub fn do_mock_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ENV_DO_MOCK_BIN) {
        return Ok(PathBuf::from(path));
    }
    let path = build::target_dir().join("debug/do-api-mock");
    if !path.exists() {
        eprintln!("xtask: building the stand-in DigitalOcean API (do-api-mock)...");
        cmd::run(cmd::cargo().current_dir(workspace_root()).args([
            "build",
            "-q",
            "-p",
            "integration-tests",
            "--bin",
            "do-api-mock",
        ]))?;
    }
    Ok(path)
}

fn api_url() -> Result<String> {
    let client = Node::Client
        .public_address()
        .context("the client's address")?;
    Ok(format!("http://{client}:{DO_API_PORT}"))
}

/// The floating IP settings of an LB node in a digitalocean lab: the
/// stand-in API, the token in `token_file`.
pub fn floating_ip_model(token_file: &std::path::Path) -> Result<lb_config::FloatingIpConfig> {
    let url = api_url()?;
    Ok(lb_config::FloatingIpConfig {
        provider: lb_config::ProviderKind::Digitalocean,
        api_url: url.clone(),
        metadata_url: url,
        token_file: Some(token_file.to_path_buf()),
        tries: 10,
        // The stand-in API answers at once: retry and re-check often, so
        // failovers in the tests take a second, not the defaults' minutes.
        retry_interval: std::time::Duration::from_millis(500),
        request_timeout: std::time::Duration::from_secs(2),
        reconcile_interval: std::time::Duration::from_secs(1),
        ..lb_config::FloatingIpConfig::default()
    })
}

impl Lab {
    /// The API token file the agents and the stand-in API share.
    pub fn do_token_file(&self) -> PathBuf {
        self.run_dir().join("do-token")
    }

    /// Starts the stand-in API in the client namespace and waits until it
    /// answers.
    pub(super) fn start_cloud(&self, mock: Option<PathBuf>) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let token_file = self.do_token_file();
        let token = format!("dop_v1_lab_{:016x}", fastish_random());
        std::fs::write(&token_file, format!("{token}\n"))?;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
        let mock = match mock {
            Some(path) => path,
            None => do_mock_binary()?,
        };
        let listen = format!(
            "{}:{DO_API_PORT}",
            Node::Client.public_address().context("client address")?
        );
        let mut args = vec![
            "--listen".to_owned(),
            listen,
            "--token-file".to_owned(),
            token_file.to_string_lossy().into_owned(),
            "--reserved".to_owned(),
            VIP.to_string(),
            "--route-dev".to_owned(),
            "eth0".to_owned(),
        ];
        for (node, id) in DROPLETS {
            let addr = node.public_address().context("LB address")?;
            args.extend(["--droplet".to_owned(), format!("{addr}={id}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.run_dir().join("cloud.log");
        let pid = self.spawn_in(Node::Client, &mock, &args, &log)?;
        std::fs::write(self.run_dir().join("cloud.pid"), format!("{pid}\n"))?;
        let url = format!("{}/metadata/v1/id", api_url()?);
        let up = cmd::wait_until(Duration::from_secs(10), || {
            !process::alive(pid)
                || self
                    .exec_ok(
                        Node::Client,
                        &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
                    )
                    .is_ok_and(|code| code.trim() == "404")
        });
        if !up || !process::alive(pid) {
            bail!(
                "the stand-in DigitalOcean API did not start; {}:\n{}",
                log.display(),
                cmd::tail(&log, 20)
            );
        }
        Ok(())
    }

    /// The LB node the client's route for the VIP points at (the droplet
    /// the reserved IP is assigned to).
    pub fn vip_route_holder(&self) -> Option<Node> {
        let route = self
            .exec_ok(
                Node::Client,
                &["ip", "-4", "route", "show", &format!("{VIP}/32")],
            )
            .ok()?;
        let via: Ipv4Addr = route
            .split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)?
            .parse()
            .ok()?;
        Node::LBS
            .into_iter()
            .find(|n| n.public_address() == Some(via))
    }
}

/// A token that differs per lab (not a secret: the lab is local).
fn fastish_random() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}
