//! `[sync]`: flow sync with the HA peer, so that established connections
//! survive a failover (see the README's "Flow sync").

use std::{net::Ipv4Addr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::problem::{FieldPath, Problems};

/// The UDP port flow sync uses when `[sync] port` is not set.
pub const DEFAULT_SYNC_PORT: u16 = 7411;

/// Most flow records waiting to be sent to the peer by default.
pub const DEFAULT_SYNC_QUEUE: u32 = 262_144;

/// `[sync]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// File with the key both nodes share (at least 16 bytes; readable by
    /// its owner only). Messages are authenticated with it; it never
    /// appears in arguments or logs.
    pub key_file: PathBuf,
    /// UDP port both nodes receive sync messages on, on the private
    /// network.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The peer's private address; default: the first of
    /// `vrrp.unicast_peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Ipv4Addr>,
    /// Most flow records waiting to be sent; beyond it new ones are
    /// dropped and counted, so that a slow or dead peer never makes the
    /// agent grow without limit.
    #[serde(default = "default_queue")]
    pub queue_limit: u32,
}

fn default_port() -> u16 {
    DEFAULT_SYNC_PORT
}

fn default_queue() -> u32 {
    DEFAULT_SYNC_QUEUE
}

impl SyncConfig {
    pub fn new(key_file: impl Into<PathBuf>) -> Self {
        Self {
            key_file: key_file.into(),
            port: DEFAULT_SYNC_PORT,
            peer: None,
            queue_limit: DEFAULT_SYNC_QUEUE,
        }
    }

    /// Where sync messages go: `peer`, or the first VRRP unicast peer.
    pub fn peer_address(&self, unicast_peers: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        self.peer.or_else(|| unicast_peers.first().copied())
    }

    pub(crate) fn check(
        &self,
        at: &FieldPath,
        private_address: Ipv4Addr,
        unicast_peers: Option<&[Ipv4Addr]>,
        problems: &mut Problems,
    ) {
        let Some(unicast_peers) = unicast_peers else {
            problems.push_with_hint(
                at.clone(),
                "flow sync needs a [vrrp] section",
                "sync copies flows to the other node of a VRRP pair: add [vrrp] or remove [sync]",
            );
            return;
        };
        if self.port == 0 {
            problems.push(at.key("port"), "must be a port number from 1 to 65535");
        }
        if self.queue_limit < 1024 {
            problems.push(
                at.key("queue_limit"),
                format!("{} is too small; at least 1024", self.queue_limit),
            );
        }
        match self.peer_address(unicast_peers) {
            None => problems.push_with_hint(
                at.key("peer"),
                "no peer to sync with",
                "set [sync] peer or [vrrp] unicast_peers to the other node's private address",
            ),
            Some(peer) if peer == private_address => problems.push_with_hint(
                at.key("peer"),
                format!("{peer} is this node's own private address"),
                "name the other node of the pair",
            ),
            Some(_) => {}
        }
    }
}
