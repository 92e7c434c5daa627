//! Command line: the daemon (`run`), config checking, and the client verbs
//! that talk to a running agent over its control socket.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "XDP L4 load balancer agent",
    long_about = "lb-agent loads an XDP program that balances TCP and UDP connections inside the kernel (full NAT, per-connection weighted round robin), keeps its maps in step with the configuration, health-checks the backends, elects the active node with VRRP (wire compatible with keepalived) and moves the floating IP on failover. `run` starts the daemon; the other commands talk to a running agent over /run/lb-agent/<instance>.sock. The configuration is described in /etc/lb-agent/lb-agent.toml (an example with every field is installed there) and checked with `check-config`; SIGHUP or `reload` applies changes without dropping connections."
)]
pub struct Cli {
    /// Instance name: selects pins (/sys/fs/bpf/NAME), socket and state file.
    #[arg(long, global = true, default_value = "default", env = "LB_AGENT_INSTANCE", value_parser = parse_instance)]
    pub instance: String,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "lb_agent=debug".
    #[arg(long, global = true, default_value = "info", env = "LB_AGENT_LOG")]
    pub log_level: String,
    /// How long a command that talks to the agent waits for its answer
    /// (connecting included) before giving up, e.g. "10s" or "500ms".
    #[arg(long, global = true, default_value = "10s", env = "LB_AGENT_TIMEOUT", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the XDP program, apply the config and serve the control API.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// On exit leave the program attached and the maps pinned.
        #[arg(long)]
        keep_forwarding: bool,
    },
    /// Validate a config file like `haproxy -c`: every problem as
    /// FILE:LINE: message; exit 0 when valid, 78 (EX_CONFIG) when not.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
        /// Skip what only the LB node can tell (its interfaces exist), to
        /// check a file on another machine.
        #[arg(long)]
        offline: bool,
    },
    /// Change or list a service's backends at run time.
    Backends {
        #[command(subcommand)]
        action: BackendsAction,
    },
    /// Show services.
    Services {
        #[command(subcommand)]
        action: ServicesAction,
    },
    /// Counters: services, backends, drop/pass reasons, flow table.
    Stats {
        #[arg(long)]
        json: bool,
        /// Refresh every --interval until interrupted (or --count times).
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value = "2s", value_parser = crate::config::parse_duration)]
        interval: std::time::Duration,
        /// With --watch: stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Role (VRRP state, master, floating IP) and services.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Re-read the running agent's config file and apply it without
    /// dropping flows (as SIGHUP does); an invalid file changes nothing.
    Reload,
    /// Turn the classic pair's haproxy.cfg (TCP mode) and keepalived.conf
    /// into this agent's config; every line not carried over is reported
    /// as FILE:LINE on stderr.
    Import {
        #[arg(long)]
        haproxy: PathBuf,
        #[arg(long)]
        keepalived: Option<PathBuf>,
        /// The node's client-facing interface (not in the classic files).
        #[arg(long)]
        public_interface: Option<String>,
        /// Default: keepalived's `interface`.
        #[arg(long)]
        private_interface: Option<String>,
        /// Default: keepalived's `unicast_src_ip`.
        #[arg(long)]
        private_address: Option<Ipv4Addr>,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, ...).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Subcommand)]
pub enum BackendsAction {
    /// Add a backend (or change its weight); persisted across restarts.
    Add {
        #[command(flatten)]
        target: BackendTarget,
        /// Relative share of new connections, 1..=100.
        #[arg(long, value_parser = clap::value_parser!(u32).range(
            i64::from(crate::config::Weight::MIN)..=i64::from(crate::config::Weight::MAX)
        ))]
        weight: Option<u32>,
    },
    /// Remove a backend: drains (existing connections finish) unless --now.
    Remove {
        #[command(flatten)]
        target: BackendTarget,
        /// Also cut the backend's existing connections at once.
        #[arg(long)]
        now: bool,
    },
    /// Drain a backend: no new connections, existing ones finish; it stays
    /// listed (state "drained") until `backends add` enables it again.
    Drain {
        #[command(flatten)]
        target: BackendTarget,
    },
    /// List the backends with state, health and flow counts.
    List {
        #[arg(long)]
        service: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BackendTarget {
    #[arg(long)]
    pub service: String,
    /// ADDR or ADDR:PORT (port defaults to the service port).
    #[arg(value_parser = parse_backend)]
    pub backend: (Ipv4Addr, Option<u16>),
}

#[derive(Debug, Subcommand)]
pub enum ServicesAction {
    /// List services with counters.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Parses `10.200.0.23` or `10.200.0.23:8080`.
pub fn parse_backend(text: &str) -> Result<(Ipv4Addr, Option<u16>), String> {
    let (addr, port) = match text.split_once(':') {
        Some((addr, port)) => (addr, Some(port)),
        None => (text, None),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| {
        format!("{addr:?} is not an IPv4 address; write ADDR or ADDR:PORT, e.g. 10.200.0.23:80")
    })?;
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("{p:?} is not a port (1-65535)")),
            Ok(p) => Some(p),
        },
    };
    Ok((addr, port))
}

/// A duration longer than zero: a zero timeout would fail every call.
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    match crate::config::parse_duration(text)? {
        d if d.is_zero() => Err("the timeout must be longer than zero".into()),
        d => Ok(d),
    }
}

fn parse_instance(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && text != "."
        && text != "..";
    if ok {
        Ok(text.to_string())
    } else {
        Err("instance names are 1-64 characters of A-Z a-z 0-9 _ . -".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_verbs_parse() {
        let cli = Cli::try_parse_from([
            "lb-agent",
            "--instance",
            "lab-lb1",
            "backends",
            "add",
            "--service",
            "www",
            "10.200.0.23:8080",
            "--weight",
            "3",
        ])
        .expect("parses");
        assert_eq!(cli.instance, "lab-lb1");
        match cli.command {
            Command::Backends {
                action: BackendsAction::Add { target, weight },
            } => {
                assert_eq!(target.service, "www");
                assert_eq!(target.backend, (Ipv4Addr::new(10, 200, 0, 23), Some(8080)));
                assert_eq!(weight, Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "lb-agent",
            "backends",
            "remove",
            "--service",
            "www",
            "10.200.0.23",
            "--now",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Backends {
                action: BackendsAction::Remove { now: true, .. }
            }
        ));
    }

    #[test]
    fn bad_input_is_refused_with_a_hint() {
        for (args, hint) in [
            (
                vec!["lb-agent", "backends", "add", "--service", "www", "web3"],
                "not an IPv4 address",
            ),
            (
                vec![
                    "lb-agent",
                    "backends",
                    "add",
                    "--service",
                    "www",
                    "10.0.0.1:0",
                ],
                "not a port",
            ),
            (
                vec![
                    "lb-agent",
                    "backends",
                    "add",
                    "--service",
                    "www",
                    "10.0.0.1",
                    "--weight",
                    "0",
                ],
                "0",
            ),
            (
                vec!["lb-agent", "--instance", "../x", "stats"],
                "instance names",
            ),
        ] {
            let error = Cli::try_parse_from(&args).unwrap_err().to_string();
            assert!(error.contains(hint), "{args:?}: {error}");
        }
    }
}
