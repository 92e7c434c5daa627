//! What `lb-agent status` and the metrics show of flow sync.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// Where this node stands with its peer's table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    /// Nothing valid heard from the peer lately.
    #[default]
    Connecting,
    /// The peer answers; its full table is on the way (or asked for).
    Resyncing,
    /// This node holds a complete copy of the peer's flows and follows
    /// its changes.
    InSync,
}

impl SyncState {
    pub const ALL: [SyncState; 3] = [
        SyncState::Connecting,
        SyncState::Resyncing,
        SyncState::InSync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Connecting => "connecting",
            SyncState::Resyncing => "resyncing",
            SyncState::InSync => "in-sync",
        }
    }
}

/// Flow sync as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub peer: Option<SocketAddr>,
    pub state: SyncState,
    /// Whether the peer says it holds a complete copy of this node's flows.
    pub peer_in_sync: bool,
    /// Seconds since the last valid message from the peer.
    pub peer_heard_secs: Option<u64>,
    /// Time from a flow's change here to the peer's acknowledgement of it,
    /// over the recent changes (microseconds).
    pub lag_p50_us: Option<u64>,
    pub lag_p99_us: Option<u64>,
    /// Flow records sent and received (live and in full transfers).
    pub records_sent: u64,
    pub records_received: u64,
    /// Peer's flows installed here, removed here, and refused by reason.
    pub installed: u64,
    pub removed: u64,
    pub refused: BTreeMap<String, u64>,
    /// Datagrams rejected by reason (forged, replayed, wrong key, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Messages of the peer that never arrived.
    pub lost_messages: u64,
    /// Records dropped because the send queue was full (a slow or dead
    /// peer), and events the program lost to a full ring.
    pub queue_dropped: u64,
    pub events_lost: u64,
    /// Full transfers sent to the peer and received from it.
    pub transfers_sent: u64,
    pub transfers_received: u64,
    /// The last full transfer received: when (unix time) and its size.
    pub last_transfer_unix: Option<u64>,
    pub last_transfer_records: Option<u64>,
}
