//! The failover benchmark, in the same lab and run for the agent pair and
//! the classic keepalived + HAProxy pair:
//!
//! - `outage`: how long new connections fail when the master fails;
//! - `survival`: the share of established connections (keep-alive HTTP
//!   and long downloads) that live through the master's failure;
//! - `lag`: the flow sync's replication lag under a bounded new-flow load;
//! - `soak`: VRRP transitions of a saturated pair at 20 ms adverts.
//!
//! (The new-flow cost with sync on and off is `xdp-bench sync`.)

mod lag;
mod outage;
pub mod soak;
mod survival;

use std::{path::Path, time::Duration};

use anyhow::{bail, Result};

use crate::{
    cmd,
    lab::{ClientTool, Lab, LabOptions, LbSetup, Node},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pair {
    Agent,
    Classic,
}

impl Pair {
    fn label(self) -> &'static str {
        match self {
            Pair::Agent => "lb-agent (XDP)",
            Pair::Classic => "keepalived + HAProxy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// kill -9 of the master's processes.
    Kill,
    /// kill -9, and the node's links go down, as when a machine dies.
    Node,
    /// The master stops as its service manager stops it (SIGTERM): VRRP
    /// priority 0 hands over at once.
    Graceful,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Kill => "processes kill -9",
            Failure::Node => "node lost",
            Failure::Graceful => "graceful stop",
        }
    }
}

/// The HA pair's lab for `pair`, with lab prefix `prefix`.
fn pair_options(agent_bin: &Path, pair: Pair, prefix: &str) -> LabOptions {
    LabOptions {
        agent_bin: Some(agent_bin.to_path_buf()),
        lbs: LbSetup::HaPair,
        classic: if pair == Pair::Classic {
            Node::LBS.to_vec()
        } else {
            Vec::new()
        },
        ..LabOptions::with_prefix(prefix)
    }
}

/// How long a node's sync may take to reach `in-sync`, and lb2 to install
/// what lb1 sends it.
const SYNC_WAIT: Duration = Duration::from_secs(15);

/// A field of `node`'s sync status (`Null` when absent).
fn sync_field(lab: &Lab, node: Node, field: &str) -> serde_json::Value {
    lab.status_json(node)["sync"][field].clone()
}

/// A count of `node`'s sync status (0 when absent).
fn sync_count(lab: &Lab, node: Node, field: &str) -> u64 {
    sync_field(lab, node, field).as_u64().unwrap_or(0)
}

/// Waits until lb2 holds lb1's flow table.
fn wait_lb2_in_sync(lab: &Lab) -> Result<()> {
    if !cmd::wait_until(SYNC_WAIT, || {
        sync_field(lab, Node::Lb2, "state") == "in-sync"
    }) {
        bail!(
            "lb2 did not get lb1's flow table: {}",
            lab.status_json(Node::Lb2)["sync"]
        );
    }
    Ok(())
}

/// Fails the master (lb1) as `failure` says.
fn fail_master(lab: &Lab, pair: Pair, failure: Failure) -> Result<()> {
    match (pair, failure) {
        (Pair::Agent, Failure::Graceful) => lab.stop_agent(Node::Lb1)?,
        (Pair::Agent, _) => lab.kill_agent(Node::Lb1, libc::SIGKILL)?,
        // HAProxy keeps running, as it may when only keepalived is
        // stopped: the most its connections can hope for.
        (Pair::Classic, Failure::Graceful) => lab.stop_keepalived(Node::Lb1, libc::SIGTERM)?,
        (Pair::Classic, _) => {
            lab.stop_keepalived(Node::Lb1, libc::SIGKILL)?;
            lab.kill_haproxy(Node::Lb1)?;
        }
    }
    if failure == Failure::Node {
        lab.set_links(Node::Lb1, false)?;
    }
    Ok(())
}

/// Runs the three parts and prints their tables.
pub fn run(agent_bin: &Path) -> Result<()> {
    println!("\n--- Established connections through the master when it fails");
    survival::run(agent_bin)?;
    println!("\n--- Flow sync replication lag under a bounded new-flow load");
    lag::run(agent_bin)?;
    println!("\n--- Outage for new connections");
    outage::run(agent_bin)?;
    println!("\n--- A saturated pair at 20 ms adverts");
    soak::run(agent_bin)
}
