//! The agent config of a Vagrant LB node (`vagrant/provision/lb.sh` runs
//! `cargo xtask vagrant-config`): the namespace lab's `www` service and
//! VRRP settings with the VM's interfaces, address, peer and priority,
//! built from the configuration model like the lab's own configs.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use lb_config::{
    BackendConfig, Config, MetricsConfig, NodeConfig, Priority, Protocol, ServiceConfig, Vrid,
    VrrpConfig, XdpMode,
};

use crate::lab::{www_check, HTTP_PORT, METRICS_PORT};

/// What differs between the Vagrant LB nodes.
#[derive(Debug, Clone, clap::Args)]
pub struct VagrantNode {
    #[arg(long)]
    pub public_interface: String,
    #[arg(long)]
    pub private_interface: String,
    #[arg(long)]
    pub private_address: Ipv4Addr,
    /// VRRP priority of this node (lb1 200, lb2 100).
    #[arg(long)]
    pub priority: u8,
    /// The other LB node's private address.
    #[arg(long)]
    pub peer: Ipv4Addr,
    #[arg(long, default_value = "10.100.0.100")]
    pub vip: Ipv4Addr,
    /// Backend addresses (repeat the flag).
    #[arg(long = "backend", required = true)]
    pub backends: Vec<Ipv4Addr>,
    /// "auto", "native" or "generic".
    #[arg(long, default_value = "auto", value_parser = parse_xdp_mode)]
    pub xdp_mode: XdpMode,
    #[arg(long, default_value = "/var/lib/lb-agent")]
    pub state_dir: PathBuf,
}

fn parse_xdp_mode(text: &str) -> Result<XdpMode, String> {
    match text {
        "auto" => Ok(XdpMode::Auto),
        "native" => Ok(XdpMode::Native),
        "generic" => Ok(XdpMode::Generic),
        other => Err(format!("{other:?}: use auto, native or generic")),
    }
}

/// The node's config as TOML, headed by where it came from.
pub fn config(node: &VagrantNode, written_by: &str) -> Result<String> {
    let body = model(node)?
        .to_toml()
        .context("writing the Vagrant config")?;
    Ok(format!(
        "# lb-agent on a Vagrant LB node, written by {written_by}.\n{body}"
    ))
}

/// See the module doc.
pub fn model(node: &VagrantNode) -> Result<Config> {
    let mut config = Config::new(NodeConfig {
        xdp_mode: node.xdp_mode,
        state_dir: node.state_dir.clone(),
        ..NodeConfig::new(
            &node.public_interface,
            &node.private_interface,
            node.private_address,
        )
    });
    config.metrics = Some(MetricsConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT)),
    });
    config.services.push(ServiceConfig {
        health_check: Some(www_check()?),
        backends: node
            .backends
            .iter()
            .copied()
            .map(BackendConfig::new)
            .collect(),
        ..ServiceConfig::new("www", node.vip, HTTP_PORT, Protocol::Tcp)
    });
    let mut vrrp = VrrpConfig::new(Vrid::new(33)?, Priority::new(node.priority)?);
    vrrp.unicast_peers = vec![node.peer];
    vrrp.auth_pass = Some("labpass".into());
    vrrp.track_services = vec!["www".into()];
    config.vrrp = Some(vrrp);
    let problems = config.problems();
    if let Some(problem) = problems.first() {
        anyhow::bail!("the Vagrant node's config would be invalid: {problem}");
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vagrant_config_reads_back_as_the_labs_pair() {
        let node = VagrantNode {
            public_interface: "eth1".into(),
            private_interface: "eth2".into(),
            private_address: Ipv4Addr::new(10, 200, 0, 11),
            priority: 200,
            peer: Ipv4Addr::new(10, 200, 0, 12),
            vip: Ipv4Addr::new(10, 100, 0, 100),
            backends: vec![Ipv4Addr::new(10, 200, 0, 21), Ipv4Addr::new(10, 200, 0, 22)],
            xdp_mode: XdpMode::Auto,
            state_dir: PathBuf::from("/var/lib/lb-agent"),
        };
        let text = config(&node, "a test").expect("config");
        let parsed = Config::parse(&text, "vagrant.toml").expect("valid");
        assert_eq!(parsed, model(&node).expect("model"));
        let vrrp = parsed.vrrp.expect("[vrrp]");
        assert_eq!((vrrp.vrid.get(), vrrp.priority.get()), (33, 200));
        assert_eq!(parsed.services[0].backends.len(), 2);
        assert!(text.contains("priority = 200") && text.contains("\"10.200.0.12\""));
    }
}
