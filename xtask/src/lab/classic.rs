//! The classic pair on an LB node: keepalived 2.2 (VRRP, the VIP on `pub0`)
//! and HAProxy in TCP mode, set up as the DigitalOcean HA guide does it.
//! A lab node runs either this or the agent: a mixed pair shows that the
//! agent interoperates with keepalived, and an all-classic pair is the
//! failover benchmark's reference.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{process, Lab, Node, VrrpVersion, HTTP_PORT, STOP_GRACE, VIP};
use crate::{apt, cmd};

/// keepalived's view of VRRP as its notify script last wrote it.
const STATE_UNKNOWN: &str = "UNKNOWN";

/// Installs keepalived and HAProxy (Debian packages) when missing.
pub fn ensure_classic_programs() -> Result<()> {
    apt::ensure_programs(
        &[("keepalived", "keepalived"), ("haproxy", "haproxy")],
        "for the classic keepalived + HAProxy node of the lab",
    )
}

/// keepalived's advert_int (seconds, a fraction only if needed).
fn keepalived_interval(interval: Duration) -> String {
    if interval.subsec_millis() == 0 {
        format!("{}", interval.as_secs())
    } else {
        format!("{:.2}", interval.as_secs_f64())
    }
}

/// The classic `keepalived.conf` of `node`: the lab's VRRP contract (VRID
/// 33, unicast over the private net, priorities 200/100, PASS `labpass`
/// with v2) plus the guide's HAProxy process check and a notify script.
pub fn keepalived_config(
    node: Node,
    version: VrrpVersion,
    advert_int: Duration,
    check_script: &Path,
    notify_script: &Path,
) -> Result<String> {
    let (priority, state, peer) = match node {
        Node::Lb1 => (200, "MASTER", Node::Lb2),
        Node::Lb2 => (100, "BACKUP", Node::Lb1),
        other => bail!("{other} is not an LB node"),
    };
    let src = node.private_address().context("LB private address")?;
    let peer = peer.private_address().context("LB private address")?;
    let auth = if version == VrrpVersion::V2 {
        "    authentication {\n        auth_type PASS\n        auth_pass labpass\n    }\n"
    } else {
        ""
    };
    Ok(format!(
        r#"# Classic keepalived of lab node {node}, written by the xtask lab.
global_defs {{
    router_id {node}
    script_user root
    vrrp_version {version}
    vrrp_garp_master_delay 1
}}

vrrp_script chk_haproxy {{
    script "{check}"
    interval 1
    fall 2
    rise 2
}}

vrrp_instance VI_1 {{
    interface priv0
    state {state}
    priority {priority}
    virtual_router_id 33
    advert_int {interval}
    unicast_src_ip {src}
    unicast_peer {{
        {peer}
    }}
{auth}    virtual_ipaddress {{
        {VIP}/32 dev pub0
    }}
    track_script {{
        chk_haproxy
    }}
    notify "{notify}"
}}
"#,
        version = version.number(),
        interval = keepalived_interval(advert_int),
        check = check_script.display(),
        notify = notify_script.display(),
    ))
}

/// The classic `haproxy.cfg`: TCP mode, round robin over web1 and web2
/// with health checks, bound to the VIP (non-local bind on the backup).
pub fn haproxy_config() -> String {
    let servers: String = [Node::Web1, Node::Web2]
        .iter()
        .filter_map(|n| n.private_address().map(|a| (n, a)))
        .map(|(n, a)| format!("    server {n} {a}:{HTTP_PORT} check inter 1s rise 2 fall 2\n"))
        .collect();
    format!(
        r#"# Classic HAProxy of the lab, written by the xtask lab.
global
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend www
    bind {VIP}:{HTTP_PORT}
    default_backend nginx_pool

backend nginx_pool
    balance roundrobin
{servers}"#
    )
}

impl Lab {
    fn classic_path(&self, node: Node, what: &str) -> PathBuf {
        self.run_dir().join(format!("{node}-{what}"))
    }

    /// Where keepalived's notify script writes the VRRP state of `node`.
    fn classic_state_path(&self, node: Node) -> PathBuf {
        self.classic_path(node, "keepalived.state")
    }

    /// keepalived's state on `node` (`MASTER`, `BACKUP`, `FAULT`, `STOP`)
    /// as its notify script last reported it.
    pub fn classic_state(&self, node: Node) -> String {
        std::fs::read_to_string(self.classic_state_path(node))
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| STATE_UNKNOWN.to_owned())
    }

    /// Starts HAProxy and keepalived on `node` with the classic configs.
    pub fn start_classic(&self, node: Node) -> Result<()> {
        if !node.is_lb() {
            bail!("{node} is not an LB node");
        }
        ensure_classic_programs()?;
        let (version, advert_int) = (self.state().vrrp, self.state().advert_int);
        let pid = self.start_haproxy(node)?;

        let check = self.classic_path(node, "check-haproxy.sh");
        std::fs::write(&check, format!("#!/bin/sh\nexec kill -0 {pid}\n"))?;
        let notify = self.classic_path(node, "notify.sh");
        // keepalived's convention: TYPE NAME STATE PRIORITY.
        std::fs::write(
            &notify,
            format!(
                "#!/bin/sh\necho \"$3\" > {}.tmp && mv {0}.tmp {0}\n",
                self.classic_state_path(node).display()
            ),
        )?;
        for script in [&check, &notify] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755))?;
        }
        let conf = self.classic_path(node, "keepalived.conf");
        std::fs::write(
            &conf,
            keepalived_config(node, version, advert_int, &check, &notify)?,
        )?;
        self.launch_keepalived(node)
    }

    /// Starts HAProxy alone on `node` with the classic config (no
    /// keepalived: the VIP must be on the node already for clients to reach
    /// it, as in a lab without HA). Returns its pid.
    pub fn start_haproxy(&self, node: Node) -> Result<u32> {
        if !node.is_lb() {
            bail!("{node} is not an LB node");
        }
        ensure_classic_programs()?;
        // The classic backup binds the VIP before keepalived puts it on pub0.
        self.exec_ok(node, &["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"])?;
        let haproxy_cfg = self.classic_path(node, "haproxy.cfg");
        std::fs::write(&haproxy_cfg, haproxy_config())?;
        let haproxy = cmd::which("haproxy").context("haproxy not installed")?;
        let cfg = haproxy_cfg.to_string_lossy().into_owned();
        let log = self.classic_path(node, "haproxy.log");
        let pid = self.spawn_in(node, &haproxy, &["-db", "-f", &cfg], &log)?;
        std::fs::write(self.classic_path(node, "haproxy.pid"), format!("{pid}\n"))?;
        Ok(pid)
    }

    fn launch_keepalived(&self, node: Node) -> Result<()> {
        let keepalived = cmd::which("keepalived").context("keepalived not installed")?;
        let conf = self.classic_path(node, "keepalived.conf");
        let arg = |what: &str| self.classic_path(node, what).to_string_lossy().into_owned();
        let args = [
            "--dont-fork".to_owned(),
            "--log-console".to_owned(),
            "--log-detail".to_owned(),
            "--vrrp".to_owned(),
            format!("--use-file={}", conf.display()),
            format!("--pid={}", arg("keepalived-main.pid")),
            format!("--vrrp_pid={}", arg("keepalived-vrrp.pid")),
            format!("--checkers_pid={}", arg("keepalived-checkers.pid")),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.classic_path(node, "keepalived.log");
        let pid = self.spawn_in(node, &keepalived, &args, &log)?;
        std::fs::write(
            self.classic_path(node, "keepalived.pid"),
            format!("{pid}\n"),
        )?;
        let started = cmd::wait_until(Duration::from_secs(5), || {
            self.classic_state(node) != STATE_UNKNOWN || !process::alive(pid)
        });
        if !started || !process::alive(pid) {
            bail!(
                "keepalived on {} did not start; {}:\n{}",
                self.ns(node),
                log.display(),
                cmd::tail(&log, 20)
            );
        }
        Ok(())
    }

    /// The pids of keepalived (parent and VRRP child) on `node`.
    fn keepalived_pids(&self, node: Node) -> Vec<u32> {
        ["keepalived.pid", "keepalived-vrrp.pid"]
            .iter()
            .filter_map(|f| process::read_pid(&self.classic_path(node, f)))
            .filter(|&pid| process::alive(pid))
            .collect()
    }

    /// Stops keepalived on `node`: SIGTERM lets it send priority 0 and
    /// remove the VIP; SIGKILL (of the parent and its VRRP child) leaves
    /// everything as it is, as a crash would.
    pub fn stop_keepalived(&self, node: Node, signal: i32) -> Result<()> {
        let pids = self.keepalived_pids(node);
        if pids.is_empty() {
            bail!("keepalived is not running on {}", self.ns(node));
        }
        if signal == libc::SIGKILL {
            // The VRRP child gets SIGTERM when its parent dies (and then
            // sends priority 0, a graceful handover), and the parent
            // restarts a child that dies: freeze the parent, kill the
            // child, then the parent, so nothing is sent, as in a crash.
            if let Some(&parent) = pids.first() {
                process::signal(parent, libc::SIGSTOP)?;
            }
            for &pid in pids.iter().rev() {
                process::signal(pid, libc::SIGKILL)?;
            }
        } else if let Some(&parent) = pids.first() {
            process::signal(parent, signal)?;
        }
        for pid in pids {
            if !process::wait_exit(pid, STOP_GRACE + Duration::from_secs(2)) {
                bail!("keepalived (pid {pid}) on {} did not exit", self.ns(node));
            }
        }
        self.reap();
        Ok(())
    }

    /// Starts keepalived on `node` again with its existing config.
    pub fn restart_keepalived(&self, node: Node) -> Result<()> {
        let _ = std::fs::remove_file(self.classic_state_path(node));
        self.launch_keepalived(node)
    }

    /// kill -9 of HAProxy on `node` (the classic data path).
    pub fn kill_haproxy(&self, node: Node) -> Result<()> {
        let Some(pid) = process::read_pid(&self.classic_path(node, "haproxy.pid"))
            .filter(|&pid| process::alive(pid))
        else {
            bail!("HAProxy is not running on {}", self.ns(node));
        };
        process::signal(pid, libc::SIGKILL)?;
        process::wait_exit(pid, Duration::from_secs(5));
        self.reap();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalived_config_follows_the_lab_contract() {
        let text = keepalived_config(
            Node::Lb2,
            VrrpVersion::V2,
            Duration::from_secs(1),
            Path::new("/r/check.sh"),
            Path::new("/r/notify.sh"),
        )
        .unwrap();
        for needle in [
            "virtual_router_id 33",
            "priority 100",
            "advert_int 1\n",
            "unicast_src_ip 10.200.0.12",
            "        10.200.0.11\n",
            "auth_pass labpass",
            "10.100.0.100/32 dev pub0",
            "vrrp_version 2",
            "notify \"/r/notify.sh\"",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in\n{text}");
        }
        let v3 = keepalived_config(
            Node::Lb1,
            VrrpVersion::V3,
            Duration::from_millis(100),
            Path::new("/c"),
            Path::new("/n"),
        )
        .unwrap();
        assert!(v3.contains("advert_int 0.10") && !v3.contains("auth_pass"));
        assert!(v3.contains("priority 200"));
        let web = keepalived_config(
            Node::Web1,
            VrrpVersion::V2,
            Duration::from_secs(1),
            Path::new("/c"),
            Path::new("/n"),
        );
        assert!(web.is_err());
    }

    #[test]
    fn haproxy_config_balances_both_web_servers_in_tcp_mode() {
        let text = haproxy_config();
        assert!(text.contains("mode tcp"));
        assert!(text.contains("bind 10.100.0.100:80"));
        assert!(text.contains("balance roundrobin"));
        assert!(text.contains("server web1 10.200.0.21:80 check"));
        assert!(text.contains("server web2 10.200.0.22:80 check"));
    }
}
