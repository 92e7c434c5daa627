//! The web servers: one nginx per web namespace (own config, logs, pid file
//! and temp dirs under `/run/lb-lab/<P>/webN/`) and the UDP responder.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{create_dir, process, Lab, Node, FLOATING_SNAT, HTTP_PORT, STOP_GRACE, UDP_PORT};
use crate::cmd;

/// Size of `/slow`: served at 50 KiB/s it lasts about 40 s.
pub const SLOW_BYTES: usize = 2 * 1024 * 1024;
/// The rate limit of `/slow`, bytes per second.
pub const SLOW_RATE: usize = 50 * 1024;

/// `/run/lb-lab/<P>/webN`.
pub fn web_dir(lab: &Lab, node: Node) -> PathBuf {
    lab.run_dir().join(node.name())
}

pub fn nginx_pid_path(lab: &Lab, node: Node) -> PathBuf {
    web_dir(lab, node).join("nginx.pid")
}

pub fn responder_pid_path(lab: &Lab, node: Node) -> PathBuf {
    web_dir(lab, node).join("udp-responder.pid")
}

fn address(node: Node) -> Result<std::net::Ipv4Addr> {
    node.private_address()
        .filter(|_| node.is_web())
        .with_context(|| format!("{node} is not a web server"))
}

/// nginx modules whose temp path directive exists in this build (a module
/// built `--without` rejects its directive).
fn temp_path_directives() -> Vec<&'static str> {
    let info = Command::new("nginx")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    let mut directives = vec!["client_body_temp_path"];
    for module in ["proxy", "fastcgi", "uwsgi", "scgi"] {
        if !info.contains(&format!("--without-http_{module}_module")) {
            directives.push(match module {
                "proxy" => "proxy_temp_path",
                "fastcgi" => "fastcgi_temp_path",
                "uwsgi" => "uwsgi_temp_path",
                _ => "scgi_temp_path",
            });
        }
    }
    directives
}

/// The nginx.conf of one web server.
fn nginx_conf(dir: &Path, name: &str, address: std::net::Ipv4Addr, temp: &[&str]) -> String {
    let d = dir.display();
    let lb_allow: String = Node::LBS
        .iter()
        .flat_map(|n| n.snat_pool())
        .chain([FLOATING_SNAT])
        .map(|a| format!("        allow {a};\n"))
        .collect();
    let temp_paths: String = temp
        .iter()
        .map(|directive| {
            let sub = directive.trim_end_matches("_temp_path");
            format!("    {directive} {d}/tmp/{sub};\n")
        })
        .collect();
    format!(
        "# nginx of lab web server {name}, written by `cargo xtask lab up`.
# One worker per CPU, as Debian's nginx.conf has it: with a single worker
# per web server the lab's CPUs sat idle under load whenever both workers
# waited on one CPU (wake-ups pile up there), which capped whatever
# balancer was being measured.
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log;

events {{
    worker_connections 1024;
}}

http {{
    default_type text/plain;
    server_tokens off;
    keepalive_timeout 65;
    log_format lab '$remote_addr $remote_port [$time_local] \"$request\" $status $body_bytes_sent $request_time';
    access_log {d}/access.log lab;
{temp_paths}
    server {{
        listen {address}:{HTTP_PORT};
        server_name _;
        root {d}/www;
        # Only the load balancers' private addresses, SNAT pools and
        # the HA pair's floating SNAT address.
{lb_allow}        deny all;
        add_header X-Backend {name} always;

        location / {{
            index index.html;
        }}
        # Health page for the agent's http check; `touch {d}/www/unhealthy`
        # turns it into a 500 while the server itself keeps answering.
        location = /health {{
            if (-f {d}/www/unhealthy) {{
                return 500 \"unhealthy\\n\";
            }}
            return 200 \"ok\\n\";
        }}
        # A long download ({SLOW_BYTES} bytes at {SLOW_RATE} bytes/s) for drain tests.
        location = /slow {{
            limit_rate {SLOW_RATE};
        }}
    }}
}}
"
    )
}

impl Lab {
    /// Stops `node`'s nginx (SIGTERM, SIGKILL after the grace time).
    pub fn stop_nginx(&self, node: Node) -> Result<()> {
        let pid_file = nginx_pid_path(self, node);
        if let Some(pid) = process::read_pid(&pid_file) {
            let left = process::stop_all(&[pid], STOP_GRACE);
            if !left.is_empty() {
                bail!("nginx of {} (pid {pid}) survived SIGKILL", self.ns(node));
            }
        }
        let _ = std::fs::remove_file(pid_file);
        Ok(())
    }

    /// Starts `node`'s nginx again (after `stop_nginx`).
    pub fn start_nginx(&self, node: Node) -> Result<()> {
        start_nginx(self, node)
    }

    /// Makes `node`'s `/health` page answer 500 (`true`) or 200 (`false`)
    /// while nginx keeps serving everything else.
    pub fn set_health_page_failing(&self, node: Node, failing: bool) -> Result<()> {
        let flag = web_dir(self, node).join("www/unhealthy");
        super::process::set_flag_file(&flag, failing)
    }

    /// Path of a web server's nginx access log.
    pub fn access_log_path(&self, node: Node) -> PathBuf {
        web_dir(self, node).join("access.log")
    }
}

/// Writes the config and pages of `node` and starts its nginx (daemonized;
/// listening sockets are bound before the launcher exits, so errors show).
pub fn start_nginx(lab: &Lab, node: Node) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let address = address(node)?;
    let dir = web_dir(lab, node);
    let www = dir.join("www");
    create_dir(&dir)?;
    create_dir(&www)?;
    create_dir(&dir.join("tmp"))?;
    let name = node.name();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(&dir, name, address, &temp_path_directives()),
    )?;
    std::fs::write(www.join("index.html"), format!("{name}\n"))?;
    let line = format!("{name} /slow: a long download for drain tests.\n");
    std::fs::write(
        www.join("slow"),
        &line.repeat(SLOW_BYTES / line.len() + 1).as_bytes()[..SLOW_BYTES],
    )?;
    for file in ["index.html", "slow"] {
        std::fs::set_permissions(www.join(file), std::fs::Permissions::from_mode(0o644))?;
    }

    let log = dir.join("nginx-start.log");
    let log_file = std::fs::File::create(&log)?;
    let mut command = lab.nsenter(node);
    command
        .arg("nginx")
        .arg("-p")
        .arg(format!("{}/", dir.display()))
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let status = command
        .status()
        .with_context(|| format!("cannot start `{}`", cmd::describe(&command)))?;
    if !status.success() {
        bail!(
            "nginx in {} failed ({status}):\n{}\n{}",
            lab.ns(node),
            cmd::tail(&log, 10),
            cmd::tail(&dir.join("error.log"), 10)
        );
    }
    let pid_file = nginx_pid_path(lab, node);
    if !cmd::wait_until(Duration::from_secs(5), || {
        process::read_pid(&pid_file).is_some_and(process::alive)
    }) {
        bail!(
            "nginx in {} wrote no pid file {}",
            lab.ns(node),
            pid_file.display()
        );
    }
    Ok(())
}

/// Starts `xtask udp-responder` on `node`'s private address :5353 and waits
/// for its pid file (written once the socket is bound).
pub fn start_responder(lab: &Lab, node: Node) -> Result<()> {
    let address = address(node)?;
    let dir = web_dir(lab, node);
    let pid_file = responder_pid_path(lab, node);
    let log = dir.join("udp-responder.log");
    let bind = format!("{address}:{UDP_PORT}");
    let pid_arg = pid_file.to_string_lossy().into_owned();
    lab.spawn_in(
        node,
        lab.xtask_bin(),
        &[
            "udp-responder",
            "--bind",
            &bind,
            "--name",
            node.name(),
            "--pid-file",
            &pid_arg,
        ],
        &log,
    )?;
    if !cmd::wait_until(Duration::from_secs(5), || {
        process::read_pid(&pid_file).is_some_and(process::alive)
    }) {
        bail!(
            "UDP responder in {} did not start:\n{}",
            lab.ns(node),
            cmd::tail(&log, 10)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_has_the_contract() {
        let conf = nginx_conf(
            Path::new("/run/lb-lab/t1/web2"),
            "web2",
            std::net::Ipv4Addr::new(10, 200, 0, 22),
            &["client_body_temp_path", "proxy_temp_path"],
        );
        assert!(conf.contains("listen 10.200.0.22:80;"));
        let allowed: Vec<&str> = conf
            .lines()
            .filter_map(|l| l.trim().strip_prefix("allow "))
            .collect();
        assert_eq!(
            allowed,
            [
                "10.200.0.11;",
                "10.200.0.111;",
                "10.200.0.112;",
                "10.200.0.113;",
                "10.200.0.114;",
                "10.200.0.12;",
                "10.200.0.121;",
                "10.200.0.122;",
                "10.200.0.123;",
                "10.200.0.124;",
                "10.200.0.10;",
            ]
        );
        assert!(conf.contains("allow 10.200.0.10;\n        deny all;"));
        assert!(conf.contains("log_format lab '$remote_addr "));
        assert!(conf.contains("keepalive_timeout 65;"));
        assert!(conf.contains("proxy_temp_path /run/lb-lab/t1/web2/tmp/proxy;"));
        assert!(conf.contains("client_body_temp_path /run/lb-lab/t1/web2/tmp/client_body;"));
        assert!(!conf.contains("/etc/nginx") && !conf.contains("/var/log"));
    }
}
