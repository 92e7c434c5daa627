//! How to bring a lab up: `LabOptions` and the typed choices in it. The
//! choices a lab was brought up with are also its state (`state.rs`), so
//! every enum here serializes under the same name the command line uses.

use std::{fmt, path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{Node, DEFAULT_PREFIX};

/// What runs on the LB nodes. One enum instead of the two flags
/// `--no-agent` and `--no-ha`: "HA without agents" is no lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbSetup {
    /// Agents (or the classic pair) on lb1 and lb2 elect a master with
    /// VRRP, which holds the VIP.
    #[default]
    HaPair,
    /// lb1 holds the VIP statically and only lb1 runs an agent.
    SingleAgent,
    /// lb1 holds the VIP statically and no LB node runs anything: the
    /// topology and web servers only (e.g. for HAProxy started by hand).
    NoAgent,
}

impl LbSetup {
    /// The setup the command line's `--no-agent` / `--no-ha` flags ask for.
    pub fn from_flags(no_agent: bool, no_ha: bool) -> Self {
        match (no_agent, no_ha) {
            (true, _) => LbSetup::NoAgent,
            (false, true) => LbSetup::SingleAgent,
            (false, false) => LbSetup::HaPair,
        }
    }

    pub fn is_ha(self) -> bool {
        self == LbSetup::HaPair
    }

    pub fn runs_agent(self) -> bool {
        self != LbSetup::NoAgent
    }

    /// The LB nodes that run an agent or the classic pair.
    pub fn active_lbs(self) -> &'static [Node] {
        match self {
            LbSetup::HaPair => &Node::LBS,
            LbSetup::SingleAgent => &[Node::Lb1],
            LbSetup::NoAgent => &[],
        }
    }
}

impl fmt::Display for LbSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LbSetup::HaPair => "HA pair (VRRP on lb1 and lb2)",
            LbSetup::SingleAgent => "one LB (agent on lb1, static VIP)",
            LbSetup::NoAgent => "no agent (static VIP on lb1)",
        })
    }
}

/// The VRRP version of the HA pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VrrpVersion {
    /// VRRPv2 with PASS authentication `labpass`.
    #[default]
    V2,
    /// VRRPv3 (no authentication; sub-second advert intervals).
    V3,
}

impl VrrpVersion {
    /// The number the agent's `vrrp.version` and keepalived's
    /// `vrrp_version` take.
    pub fn number(self) -> u8 {
        match self {
            VrrpVersion::V2 => 2,
            VrrpVersion::V3 => 3,
        }
    }
}

impl fmt::Display for VrrpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.number())
    }
}

/// How the agents attach their XDP program to the veths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Generic (skb) XDP: works on any veth as it is.
    #[default]
    Generic,
    /// Native (driver) XDP; the lab also puts the XDP_PASS program
    /// `lb-pass` on the switch-side ends of the LB nodes' veths, which
    /// veth needs to deliver natively transmitted and redirected frames.
    Native,
}

impl XdpMode {
    /// The agent's `node.xdp_mode` value.
    pub fn config_value(self) -> &'static str {
        match self {
            XdpMode::Generic => "generic",
            XdpMode::Native => "native",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_value())
    }
}

/// The floating IP provider of the HA pair's agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The VIP on the master's `pub0`, announced with gratuitous ARP.
    #[default]
    Local,
    /// The stand-in DigitalOcean API in the client namespace routes the
    /// reserved IP to the droplet it is assigned to.
    Digitalocean,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Local => "local",
            Provider::Digitalocean => "digitalocean",
        })
    }
}

/// How to bring a lab up.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Short name every namespace and path derives from (≤ 12 chars,
    /// `[a-z0-9-]`), e.g. `lab`, `demo`, `t1`.
    pub prefix: String,
    /// What runs on the LB nodes; only `SingleAgent` and `HaPair` need the
    /// built agent.
    pub lbs: LbSetup,
    /// VRRP version and advertisement interval of the HA pair.
    pub vrrp: VrrpVersion,
    pub advert_int: Duration,
    /// LB nodes of the HA pair that run the classic keepalived + HAProxy
    /// instead of the agent (a mixed pair, or the benchmark's reference
    /// pair).
    pub classic: Vec<Node>,
    /// Floating IP provider of the HA pair's agents.
    pub provider: Provider,
    /// How the agents attach XDP (and whether the veth peers get `lb-pass`).
    pub xdp: XdpMode,
    /// The XDP_PASS program for native mode; default `$LB_PASS_OBJECT` or
    /// where `cargo xtask build` puts it.
    pub pass_object: Option<PathBuf>,
    /// The stand-in DigitalOcean API (`do-api-mock`); default
    /// `$LB_DO_MOCK_BIN`, or built into the target dir.
    pub do_mock_bin: Option<PathBuf>,
    /// The agent binary; default `$LB_AGENT_BIN` or `target/release/lb-agent`.
    pub agent_bin: Option<PathBuf>,
    /// The xtask binary (UDP responder/client); default `$LB_XTASK_BIN`,
    /// this process if it is xtask, or `target/debug/xtask`.
    pub xtask_bin: Option<PathBuf>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            lbs: LbSetup::default(),
            vrrp: VrrpVersion::default(),
            advert_int: Duration::from_secs(1),
            classic: Vec::new(),
            provider: Provider::default(),
            xdp: XdpMode::default(),
            pass_object: None,
            do_mock_bin: None,
            agent_bin: None,
            xtask_bin: None,
        }
    }
}

impl LabOptions {
    /// Defaults with another prefix.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            ..Self::default()
        }
    }

    /// Refuses combinations the lab cannot build, instead of quietly
    /// leaving a part out.
    pub fn validate(&self) -> Result<()> {
        super::validate_prefix(&self.prefix)?;
        if let Some(node) = self.classic.iter().find(|n| !n.is_lb()) {
            bail!("--classic {node}: only lb1 and lb2 can run keepalived + HAProxy");
        }
        if !self.lbs.is_ha() && !self.classic.is_empty() {
            bail!("--classic needs the HA pair (drop --no-ha / --no-agent)");
        }
        if !self.lbs.is_ha() && self.provider != Provider::Local {
            bail!(
                "--provider {} needs the HA pair (drop --no-ha / --no-agent)",
                self.provider
            );
        }
        // Without the pair nothing runs VRRP: a version or interval asked
        // for would quietly do nothing.
        let defaults = Self::default();
        if !self.lbs.is_ha() && self.vrrp != defaults.vrrp {
            bail!(
                "--vrrp {} needs the HA pair (drop --no-ha / --no-agent)",
                self.vrrp
            );
        }
        if !self.lbs.is_ha() && self.advert_int != defaults.advert_int {
            bail!(
                "--advert-int {:?} needs the HA pair (drop --no-ha / --no-agent)",
                self.advert_int
            );
        }
        if self.advert_int.is_zero() {
            bail!("--advert-int must be longer than 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_one_setup() {
        assert_eq!(LbSetup::from_flags(false, false), LbSetup::HaPair);
        assert_eq!(LbSetup::from_flags(false, true), LbSetup::SingleAgent);
        assert_eq!(LbSetup::from_flags(true, false), LbSetup::NoAgent);
        assert_eq!(LbSetup::from_flags(true, true), LbSetup::NoAgent);
        assert_eq!(LbSetup::SingleAgent.active_lbs(), [Node::Lb1]);
    }

    #[test]
    fn command_line_names_parse() {
        use clap::ValueEnum as _;
        assert_eq!(VrrpVersion::from_str("v3", false), Ok(VrrpVersion::V3));
        assert!(VrrpVersion::from_str("3", false).is_err());
        assert_eq!(
            Provider::from_str("digitalocean", false),
            Ok(Provider::Digitalocean)
        );
        assert_eq!(XdpMode::from_str("native", false), Ok(XdpMode::Native));
        assert_eq!(VrrpVersion::V3.number(), 3);
    }

    #[test]
    fn impossible_combinations_are_refused() {
        assert!(LabOptions::default().validate().is_ok());
        let mixed = LabOptions {
            classic: vec![Node::Lb2],
            ..LabOptions::default()
        };
        assert!(mixed.validate().is_ok());
        for bad in [
            LabOptions {
                lbs: LbSetup::SingleAgent,
                ..mixed.clone()
            },
            LabOptions {
                classic: vec![Node::Web1],
                ..LabOptions::default()
            },
            LabOptions {
                lbs: LbSetup::NoAgent,
                provider: Provider::Digitalocean,
                ..LabOptions::default()
            },
            LabOptions {
                advert_int: Duration::ZERO,
                ..LabOptions::default()
            },
            LabOptions {
                lbs: LbSetup::SingleAgent,
                vrrp: VrrpVersion::V3,
                ..LabOptions::default()
            },
            LabOptions {
                lbs: LbSetup::NoAgent,
                advert_int: Duration::from_millis(100),
                ..LabOptions::default()
            },
            LabOptions::with_prefix("Bad"),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let single = LabOptions {
            lbs: LbSetup::SingleAgent,
            vrrp: VrrpVersion::V3,
            ..LabOptions::default()
        };
        let said = format!("{:#}", single.validate().expect_err("refused"));
        assert_eq!(
            said,
            "--vrrp v3 needs the HA pair (drop --no-ha / --no-agent)"
        );
        let single = LabOptions {
            lbs: LbSetup::SingleAgent,
            ..LabOptions::default()
        };
        assert!(single.validate().is_ok(), "the defaults need no pair");
    }
}
