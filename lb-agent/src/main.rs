//! `lb-agent`: parse arguments, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use lb_agent::{
    check,
    cli::{BackendsAction, Cli, Command, ServicesAction},
    control::{client, protocol::Request, protocol::Response, socket_path},
    daemon::{self, RunOptions},
    output,
};

// Every write to stdout/stderr goes through `output`, which ends the
// command quietly when the reader is gone instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { output::stdout(&format!($($arg)*)) };
}
macro_rules! outln {
    ($($arg:tt)*) => { output::stdout(&format!("{}\n", format_args!($($arg)*))) };
}
macro_rules! err {
    ($($arg:tt)*) => { output::stderr(&format!($($arg)*)) };
}
macro_rules! errln {
    ($($arg:tt)*) => { output::stderr(&format!("{}\n", format_args!($($arg)*))) };
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let usage = error.use_stderr();
            let _ = error.print();
            // Help and --version go to stdout and succeed; mistakes on the
            // command line are EX_USAGE, as sysexits.h has it.
            return if usage {
                ExitCode::from(check::EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            errln!("lb-agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    let (request, json) = match cli.command {
        Command::Run {
            config,
            keep_forwarding,
        } => {
            let options = RunOptions {
                instance: cli.instance,
                config_path: config,
                keep_forwarding,
                bpffs: lb_agent::dataplane::pins::BPFFS.into(),
            };
            return match daemon::run(options).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    errln!("lb-agent: {error:#}");
                    if error
                        .downcast_ref::<lb_agent::config::ConfigError>()
                        .is_some()
                    {
                        ExitCode::from(check::EX_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            };
        }
        Command::CheckConfig { config, offline } => {
            let mut report = check::check_file(&config, offline);
            if !offline {
                report.check_state_file(&cli.instance);
            }
            return match &report.config {
                Some(c) if report.is_valid() => {
                    err!("{report}");
                    let backends: usize = c.services.iter().map(|s| s.backends.len()).sum();
                    outln!(
                        "{}: valid ({} services, {} backends{})",
                        config.display(),
                        c.services.len(),
                        backends,
                        if c.vrrp.is_some() { ", VRRP" } else { "" }
                    );
                    ExitCode::SUCCESS
                }
                _ => {
                    err!("{report}");
                    ExitCode::from(check::EX_CONFIG)
                }
            };
        }
        Command::Backends { action } => match action {
            BackendsAction::Add { target, weight } => (
                Request::BackendsAdd {
                    service: target.service,
                    address: target.backend.0,
                    port: target.backend.1,
                    weight,
                },
                false,
            ),
            BackendsAction::Remove { target, now } => (
                Request::BackendsRemove {
                    service: target.service,
                    address: target.backend.0,
                    port: target.backend.1,
                    now,
                },
                false,
            ),
            BackendsAction::Drain { target } => (
                Request::BackendsDrain {
                    service: target.service,
                    address: target.backend.0,
                    port: target.backend.1,
                },
                false,
            ),
            BackendsAction::List { service, json } => (Request::BackendsList { service }, json),
        },
        Command::Services {
            action: ServicesAction::List { json },
        } => (Request::ServicesList, json),
        Command::Stats {
            json,
            watch: true,
            interval,
            count,
        } => return watch_stats(&cli.instance, cli.timeout, json, interval, count).await,
        Command::Stats { json, .. } => (Request::Stats, json),
        Command::Status { json } => (Request::Status, json),
        Command::Reload => (Request::Reload, false),
        Command::Import {
            haproxy,
            keepalived,
            public_interface,
            private_interface,
            private_address,
            output,
        } => {
            return import_classic(
                &haproxy,
                keepalived.as_deref(),
                lb_agent::import::NodeFacts {
                    public_interface,
                    private_interface,
                    private_address,
                },
                output.as_deref(),
            )
        }
        Command::Completions { shell } => {
            // Rendered first: clap_complete panics when stdout fails.
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "lb-agent", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let page = clap_mangen::Man::new(command).section("8");
            let mut roff = Vec::new();
            return match page.render(&mut roff) {
                Ok(()) => {
                    out!("{}", String::from_utf8_lossy(&roff));
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    errln!("lb-agent: writing the man page: {error}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let path = socket_path(&cli.instance);
    match client::call(&path, &cli.instance, &request, cli.timeout).await {
        Ok(Response::Ok(reply)) => {
            if json {
                out!("{}", output::render_json(&reply));
            } else {
                out!("{}", output::render(&reply));
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Error { message }) => {
            errln!("lb-agent: {message}");
            ExitCode::FAILURE
        }
        Err(error) => {
            errln!("lb-agent: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `stats --watch`: clears the terminal and shows the counters again every
/// `interval`, until interrupted or `count` refreshes.
async fn watch_stats(
    instance: &str,
    timeout: std::time::Duration,
    json: bool,
    interval: std::time::Duration,
    count: Option<u64>,
) -> ExitCode {
    let path = socket_path(instance);
    let clear = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !json;
    let mut shown = 0u64;
    loop {
        match client::call(&path, instance, &Request::Stats, timeout).await {
            Ok(Response::Ok(reply)) => {
                if clear {
                    out!("\x1b[2J\x1b[H");
                }
                if json {
                    out!("{}", output::render_json(&reply));
                } else {
                    out!("{}", output::render(&reply));
                }
            }
            Ok(Response::Error { message }) => {
                errln!("lb-agent: {message}");
                return ExitCode::FAILURE;
            }
            Err(error) => {
                errln!("lb-agent: {error}");
                return ExitCode::FAILURE;
            }
        }
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return ExitCode::SUCCESS;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

/// sysexits.h: an input file could not be read.
const EX_NOINPUT: u8 = 66;

/// `lb-agent import`: reads the classic files, writes the config, reports
/// every line not carried over.
fn import_classic(
    haproxy: &std::path::Path,
    keepalived: Option<&std::path::Path>,
    facts: lb_agent::import::NodeFacts,
    output: Option<&std::path::Path>,
) -> ExitCode {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|error| {
            errln!("lb-agent: cannot read {}: {error}", path.display());
        })
    };
    let Ok(haproxy_text) = read(haproxy) else {
        return ExitCode::from(EX_NOINPUT);
    };
    let keepalived_text = match keepalived.map(read).transpose() {
        Ok(text) => text,
        Err(()) => return ExitCode::from(EX_NOINPUT),
    };
    let haproxy_name = haproxy.display().to_string();
    let keepalived_name = keepalived.map(|p| p.display().to_string());
    let result = lb_agent::import::import(
        (&haproxy_name, &haproxy_text),
        keepalived_name.as_deref().zip(keepalived_text.as_deref()),
        &facts,
    );
    match result {
        Ok(imported) => {
            for note in &imported.notes {
                errln!("{note}");
            }
            errln!(
                "lb-agent: imported; {} line(s) not carried over (listed above)",
                imported.notes.len()
            );
            match output {
                Some(path) => {
                    if let Err(error) = std::fs::write(path, &imported.toml) {
                        errln!("lb-agent: cannot write {}: {error}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
                None => out!("{}", imported.toml),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            errln!("lb-agent: import: {error}");
            ExitCode::from(check::EX_CONFIG)
        }
    }
}
