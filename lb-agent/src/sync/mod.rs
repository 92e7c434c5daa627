//! Flow sync with the HA peer: every flow this node opens, and each change
//! of its state, goes to the peer, which installs it in its own maps with
//! the same backend, NAT source and state; so when the peer takes the
//! floating addresses over, it forwards the connection on as this node
//! did. A node that starts asks for the peer's whole table and holds back
//! from taking mastership until it has it.
//!
//! `records` converts between map layouts and wire records, `maps` is
//! sync's own access to the pinned maps, `link` the task that talks to
//! the peer, `status` what it reports. The wire format, authentication and
//! replay protection are the `lb-sync` crate's.

mod link;
mod maps;
mod records;
mod status;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::Instant,
};

use lb_sync::{Opener, Sealer, SyncKey};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::warn;

pub use status::{SyncState, SyncStatus};

use crate::{
    config::SyncConfig,
    dataplane::port_pools::{PoolNote, SlotLayout},
};

/// Removals waiting for the link: `remove --now` of a backend with many
/// flows, or an expiry sweep's slice, comes in one burst.
const REMOVALS_QUEUE: usize = 65_536;

/// News of NAT sources waiting for the agent's next upkeep: a deletion
/// burst gives back one source per flow, and a pass one note per pool.
const POOL_NOTES_QUEUE: usize = 262_144;

/// Errors setting up flow sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("flow sync key: {0}")]
    Key(#[from] lb_sync::KeyError),
    #[error("flow sync: binding UDP {address}: {source}; is another agent using [sync] port?")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("flow sync: no peer address; set [sync] peer or [vrrp] unicast_peers")]
    NoPeer,
    #[error("flow sync: opening the pinned maps: {0}")]
    Maps(#[from] crate::dataplane::DataplaneError),
}

/// What the rest of the agent sees of a running sync.
pub(crate) struct SyncHandle {
    pub status: watch::Receiver<SyncStatus>,
    /// Where the agent reports the flows it ends itself (`Tables::feed_removals`).
    pub removals: mpsc::Sender<lb_common::FlowEvent>,
    /// Whether this node may take mastership (see `link::RESYNC_LIMIT`).
    pub may_lead: watch::Receiver<bool>,
    /// What sync did to this node's NAT sources, for the port pools.
    pub pool_notes: mpsc::Receiver<PoolNote>,
    pub task: JoinHandle<()>,
}

/// Where a node's sync runs.
pub(crate) struct SyncPlace<'a> {
    pub private_address: Ipv4Addr,
    pub unicast_peers: &'a [Ipv4Addr],
    pub pin_dir: &'a Path,
    /// This node's own NAT sources (its port slice).
    pub layout: SlotLayout,
}

/// Starts flow sync as `config` says; it runs until `stop` turns true.
pub(crate) async fn start(
    config: &SyncConfig,
    place: SyncPlace<'_>,
    stop: watch::Receiver<bool>,
) -> Result<SyncHandle, SyncError> {
    let peer_address = config
        .peer_address(place.unicast_peers)
        .ok_or(SyncError::NoPeer)?;
    let peer = SocketAddr::V4(SocketAddrV4::new(peer_address, config.port));
    let listen = SocketAddr::V4(SocketAddrV4::new(place.private_address, config.port));
    // Read once: both directions use the one key the file held at start.
    let key = SyncKey::from_file(&config.key_file)?;
    let sealer = Sealer::new(key.clone(), Sealer::new_session_id());
    let opener = Opener::new(key);
    let socket = UdpSocket::bind(listen)
        .await
        .map_err(|source| SyncError::Bind {
            address: listen,
            source,
        })?;
    let ring = maps::event_ring(place.pin_dir)?;
    let (pool_notes_tx, pool_notes) = mpsc::channel(POOL_NOTES_QUEUE);
    let maps = maps::SyncMaps::open(place.pin_dir, place.layout, pool_notes_tx)?;
    let (status, status_seen) = watch::channel(SyncStatus {
        peer: Some(peer),
        ..SyncStatus::default()
    });
    let (may_lead, may_lead_seen) = watch::channel(false);
    let link = link::Link {
        socket,
        peer,
        sealer,
        opener,
        maps,
        queue_limit: config.queue_limit as usize,
        status,
        may_lead,
        started: Instant::now(),
    };
    let (removals, removed) = mpsc::channel(REMOVALS_QUEUE);
    let task = tokio::spawn(async move {
        if let Err(error) = link.run(ring, removed, stop).await {
            warn!(%error, "flow sync stopped");
        }
    });
    Ok(SyncHandle {
        status: status_seen,
        removals,
        may_lead: may_lead_seen,
        pool_notes,
        task,
    })
}
