//! `cargo xtask`: the command line over the xtask library.

use std::{net::SocketAddr, os::unix::process::CommandExt as _, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use xtask::{
    build::{self, BuildOptions},
    cmd, hold,
    lab::{self, Lab, LabOptions, LbSetup, Node},
    probe, udp,
};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, lab, demo, test and bench tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Bootstrap the eBPF toolchain, build the eBPF programs and the agent.
    Build {
        /// Build the agent with the dev profile (eBPF stays optimized).
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run the agent (`lb-agent [--instance N] run --config FILE`).
    Run {
        #[arg(long, default_value = "/etc/lb-agent/lb-agent.toml")]
        config: PathBuf,
        #[arg(long)]
        instance: Option<String>,
        /// Passed to lb-agent verbatim instead of `run --config FILE`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The namespace lab (see docs/lab.md).
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Build, bring up the lab `demo`, show the balancer at work, tear down.
    Demo,
    /// The full check (the README's test command; .ci/run runs it).
    Test,
    /// Build and install the agent, its systemd unit, an example config
    /// (kept if one exists), completions and man page.
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Stage under this root instead of / (packaging).
        #[arg(long, default_value = "/")]
        destdir: PathBuf,
        /// Install this agent binary instead of building one.
        #[arg(long)]
        agent_bin: Option<PathBuf>,
    },
    /// Benchmarks: XDP ns/packet vs a trivial program, health-check
    /// figures and wrk via the LB vs direct, connection rate vs HAProxy,
    /// failover outage vs keepalived.
    Bench {
        /// Run one section only: packet, table, scale, lab, connrate,
        /// failover, or soak (the ten-minute soak of a saturated pair at 20 ms
        /// adverts, also the last part of failover).
        #[arg(long, value_parser = xtask::bench::SECTIONS)]
        only: Option<String>,
        /// XDP modes of the lab and connrate sections (comma-separated);
        /// default both, generic first.
        #[arg(long, value_enum, value_delimiter = ',')]
        xdp: Vec<lab::XdpMode>,
        /// Lab prefix of the lab and connrate sections.
        #[arg(long, default_value = xtask::bench::DEFAULT_PREFIX)]
        prefix: String,
        /// Run the per-packet section under perf and show where the
        /// program's time goes (its hottest instructions in the JIT image).
        #[arg(long)]
        profile: bool,
    },
    /// Print the agent config of a Vagrant LB node (vagrant/provision/lb.sh).
    #[command(hide = true)]
    VagrantConfig {
        #[command(flatten)]
        node: xtask::vagrant::VagrantNode,
    },
    /// The lab's UDP responder: answers every datagram with `<name>\n`.
    #[command(hide = true)]
    UdpResponder {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Stops by itself after this long.
        #[arg(long, default_value = "24h", value_parser = udp::parse_duration)]
        lifetime: std::time::Duration,
    },
    /// Sends UDP queries (fresh source port each, or all from
    /// `--source-port`: one flow) and prints the replies.
    #[command(hide = true)]
    UdpQuery {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "1s", value_parser = udp::parse_duration)]
        timeout: std::time::Duration,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 0)]
        source_port: u16,
    },
    /// New HTTP connections to `--target` every `--every`; prints
    /// `<start ms> ok|fail` per probe (the failover benchmark's client).
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value = "10ms", value_parser = udp::parse_duration)]
        every: std::time::Duration,
        #[arg(long, default_value = "10s", value_parser = udp::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, default_value = "300ms", value_parser = udp::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Keep-alive connections to `--target`, a request on each every
    /// `--every`; prints `ok|fail <answered> [why]` per connection (the
    /// failover benchmark's established connections).
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 200)]
        connections: usize,
        #[arg(long, default_value = "500ms", value_parser = udp::parse_duration)]
        every: std::time::Duration,
        #[arg(long, default_value = "20s", value_parser = udp::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, default_value = "15s", value_parser = udp::parse_duration)]
        timeout: std::time::Duration,
    },
    /// New UDP flows to `--to` at `--rate` per second for `--duration`, one
    /// datagram per flow from a fresh source port (a raw socket).
    #[command(hide = true)]
    UdpFlood {
        #[arg(long)]
        to: std::net::SocketAddrV4,
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
        #[arg(long, default_value = "2s", value_parser = udp::parse_duration)]
        duration: std::time::Duration,
    },
    /// Waits for a VRRP advertisement from `--from` (run in a node's namespace).
    #[command(hide = true)]
    WaitAdvert {
        #[arg(long)]
        from: std::net::Ipv4Addr,
        #[arg(long, default_value = "5s", value_parser = udp::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Build the lab (tearing down an existing one with the prefix first).
    Up {
        #[arg(long, default_value = lab::DEFAULT_PREFIX)]
        prefix: String,
        /// Leave the LB nodes without agents.
        #[arg(long)]
        no_agent: bool,
        /// One LB: lb1 holds the VIP statically, no VRRP, no agent on lb2.
        #[arg(long)]
        no_ha: bool,
        /// VRRP version: v2 (with PASS authentication) or v3.
        #[arg(long, value_enum, default_value_t = lab::VrrpVersion::V2)]
        vrrp: lab::VrrpVersion,
        /// VRRP advertisement interval, e.g. "1s", or "100ms" with v3.
        #[arg(long, default_value = "1s", value_parser = udp::parse_duration)]
        advert_int: std::time::Duration,
        /// LB nodes (lb1, lb2; comma-separated) that run the classic
        /// keepalived + HAProxy instead of the agent: a mixed pair.
        #[arg(long, value_delimiter = ',')]
        classic: Vec<Node>,
        /// Floating IP provider: local (VIP on pub0 + GARP) or digitalocean
        /// (a stand-in DigitalOcean API in the client namespace).
        #[arg(long, value_enum, default_value_t = lab::Provider::Local)]
        provider: lab::Provider,
        /// How the agents attach XDP on the veths.
        #[arg(long, value_enum, default_value_t = lab::XdpMode::Generic)]
        xdp: lab::XdpMode,
    },
    /// Remove everything of the lab (works on half-built labs too).
    Down {
        #[arg(long, default_value = lab::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Namespaces, processes and the agent's services.
    Status {
        #[arg(long, default_value = lab::DEFAULT_PREFIX)]
        prefix: String,
    },
}

fn main() {
    if let Err(err) = run(Cli::parse().command) {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Build { debug } => {
            let a = build::build_all(BuildOptions { debug })?;
            println!("eBPF programs: {}", a.lb_object.display());
            println!("               {}", a.trivial_object.display());
            println!("               {}", a.pass_object.display());
            println!("agent:         {}", a.agent.display());
            Ok(())
        }
        Task::Run {
            config,
            instance,
            args,
        } => {
            let a = build::build_all(BuildOptions::default())?;
            let mut agent = std::process::Command::new(&a.agent);
            if let Some(instance) = instance {
                agent.arg("--instance").arg(instance);
            }
            if args.is_empty() {
                agent.arg("run").arg("--config").arg(config);
            } else {
                agent.args(args);
            }
            Err(agent.exec()).with_context(|| format!("cannot exec {}", a.agent.display()))
        }
        Task::Lab { action } => lab_task(action),
        Task::Demo => xtask::demo::run(),
        Task::VagrantConfig { node } => {
            print!(
                "{}",
                xtask::vagrant::config(&node, "vagrant/provision/lb.sh")?
            );
            Ok(())
        }
        Task::Test => xtask::ci::run(),
        Task::Install {
            prefix,
            destdir,
            agent_bin,
        } => {
            let installed = xtask::install::install(&xtask::install::InstallOptions {
                prefix,
                destdir,
                agent: agent_bin,
            })?;
            println!("installed {}", installed.binary.display());
            Ok(())
        }
        Task::Bench {
            only,
            xdp,
            prefix,
            profile,
        } => xtask::bench::run(&xtask::bench::BenchOptions {
            only,
            xdp,
            prefix,
            profile,
        }),
        Task::UdpResponder {
            bind,
            name,
            pid_file,
            lifetime,
        } => udp::respond(bind, &name, pid_file.as_deref(), lifetime),
        Task::UdpQuery {
            to,
            timeout,
            count,
            source_port,
        } => udp::query_many(to, count, timeout, source_port),
        Task::WaitAdvert { from, timeout } => probe::wait_advert(from, timeout),
        Task::Hold {
            target,
            connections,
            every,
            duration,
            timeout,
        } => {
            for held in hold::run(target, connections, every, duration, timeout)? {
                println!("{}", held.line());
            }
            Ok(())
        }
        Task::UdpFlood { to, rate, duration } => {
            let sent = udp::flood(to, rate, duration)?;
            println!(
                "sent {} in {:.2} s",
                sent.datagrams,
                sent.took.as_secs_f64()
            );
            Ok(())
        }
        Task::Probe {
            target,
            every,
            duration,
            timeout,
        } => {
            for sample in probe::run(target, every, duration, timeout)? {
                println!("{}", sample.line());
            }
            Ok(())
        }
    }
}

fn lab_task(action: LabAction) -> Result<()> {
    match action {
        LabAction::Up {
            prefix,
            no_agent,
            no_ha,
            vrrp,
            advert_int,
            classic,
            provider,
            xdp,
        } => {
            cmd::catch_interrupts();
            let mut options = LabOptions {
                lbs: LbSetup::from_flags(no_agent, no_ha),
                vrrp,
                advert_int,
                classic,
                provider,
                xdp,
                ..LabOptions::with_prefix(&prefix)
            };
            // Before the build, which can take minutes.
            options.validate()?;
            if options.lbs.runs_agent() {
                options.agent_bin = Some(build::build_all(BuildOptions::default())?.agent);
            }
            let lab = Lab::up(&options)?;
            print!("{}", lab.status());
            Ok(())
        }
        LabAction::Down { prefix } => {
            Lab::down(&prefix)?;
            eprintln!("xtask: lab {prefix} is down");
            Ok(())
        }
        LabAction::Status { prefix } => {
            print!("{}", Lab::attach(&prefix)?.status());
            Ok(())
        }
    }
}
