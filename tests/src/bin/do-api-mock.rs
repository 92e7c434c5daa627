//! The stand-in DigitalOcean API as a process, for the lab's
//! `--provider digitalocean`: it runs in the client namespace (the
//! "cloud"), answers the metadata service per caller, and when a reserved
//! IP is assigned routes it to that droplet's public address, as the cloud
//! delivers reserved-IP traffic to the droplet. Stops by itself after
//! `--lifetime`.

use std::{net::Ipv4Addr, path::PathBuf, process::Command, sync::Arc, time::Duration};

use integration_tests::do_api::{self, MockConfig};

struct Args {
    listen: std::net::SocketAddr,
    token_file: PathBuf,
    reserved: Ipv4Addr,
    droplets: Vec<(Ipv4Addr, u64)>,
    route_dev: Option<String>,
    action_time: Duration,
    lifetime: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: do-api-mock --listen ADDR:PORT --token-file FILE --reserved IP \
         --droplet ADDR=ID... [--route-dev DEV] [--action-time-ms N] [--lifetime-s N]"
    );
    std::process::exit(64);
}

fn parse() -> Args {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    let mut token_file = None;
    let mut reserved = None;
    let mut droplets = Vec::new();
    let mut route_dev = None;
    let mut action_time = Duration::from_millis(200);
    let mut lifetime = Duration::from_secs(24 * 3600);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else { usage() };
        match flag.as_str() {
            "--listen" => listen = value.parse().ok(),
            "--token-file" => token_file = Some(PathBuf::from(value)),
            "--reserved" => reserved = value.parse().ok(),
            "--droplet" => {
                let Some((addr, id)) = value.split_once('=') else {
                    usage()
                };
                match (addr.parse(), id.parse()) {
                    (Ok(addr), Ok(id)) => droplets.push((addr, id)),
                    _ => usage(),
                }
            }
            "--route-dev" => route_dev = Some(value),
            "--action-time-ms" => match value.parse() {
                Ok(ms) => action_time = Duration::from_millis(ms),
                Err(_) => usage(),
            },
            "--lifetime-s" => match value.parse() {
                Ok(s) => lifetime = Duration::from_secs(s),
                Err(_) => usage(),
            },
            _ => usage(),
        }
    }
    match (listen, token_file, reserved) {
        (Some(listen), Some(token_file), Some(reserved)) => Args {
            listen,
            token_file,
            reserved,
            droplets,
            route_dev,
            action_time,
            lifetime,
        },
        _ => usage(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse();
    let token = match std::fs::read_to_string(&args.token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!("do-api-mock: {}: {e}", args.token_file.display());
            std::process::exit(66);
        }
    };
    let droplets = args.droplets.clone();
    let on_assign: Option<do_api::AssignHook> = args.route_dev.clone().map(|dev| {
        Arc::new(move |ip: Ipv4Addr, droplet: u64| {
            let Some((via, _)) = droplets.iter().find(|(_, id)| *id == droplet) else {
                eprintln!("do-api-mock: {ip} assigned to unknown droplet {droplet}");
                return;
            };
            let status = Command::new("ip")
                .args([
                    "route",
                    "replace",
                    &format!("{ip}/32"),
                    "via",
                    &via.to_string(),
                    "dev",
                    &dev,
                ])
                .status();
            eprintln!("do-api-mock: {ip} -> droplet {droplet} (via {via}): {status:?}");
        }) as do_api::AssignHook
    });
    let config = MockConfig {
        token,
        reserved: vec![(args.reserved, None)],
        droplets: args.droplets,
        action_time: args.action_time,
        on_assign,
    };
    match do_api::start(args.listen, config).await {
        Ok(mock) => eprintln!("do-api-mock: serving on {}", mock.addr),
        Err(e) => {
            eprintln!("do-api-mock: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    }
    tokio::time::sleep(args.lifetime).await;
}
