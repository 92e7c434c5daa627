//! The wire protocol of flow sync between the two nodes of an HA pair:
//! what one agent sends the other over UDP so that the peer can carry its
//! connections on after a failover. Pure encoding, authentication and
//! replay protection; the agent owns sockets and maps.
//!
//! # Datagram
//!
//! All integers are big-endian.
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `LBSY` |
//! | 1 | version, 1 |
//! | 1 | message type: 1 Hello, 2 Flows, 3 BulkDone, 4 Ack |
//! | 2 | flags, 0 |
//! | 8 | session: the sender's id for one run of its agent (wall-clock nanoseconds at its start, so a later run has a larger one) |
//! | 8 | sequence number of this message within the session, from 1 |
//! | 2 | payload length |
//! | n | payload |
//! | 32 | HMAC-SHA256 with the pair's key over everything before it |
//!
//! # Payloads
//!
//! - Hello: 1 byte of flags: bit 0 the sender wants a full transfer of
//!   the receiver's flows, bit 1 the sender holds a complete copy.
//! - Flows: 1 byte (1: part of a full transfer), the transfer id (u32, 0
//!   when live), a record count (u16), then the records.
//! - BulkDone: transfer id (u32), records in the transfer (u64).
//! - Ack: the sequence number acknowledged (u64).
//!
//! A record is 88 bytes: kind (1 upsert, 2 delete), IP protocol, the data
//! path's state code, one zero byte; four endpoints (client, VIP,
//! backend, NAT source), each a family byte (4 or 6), 16 address bytes
//! (an IPv4 address in the first 4, the rest zero) and the port; then the
//! flow's age in milliseconds (u32) and its TCP timestamp offset (u32).
//! IPv6 flows fit the same record.

mod key;
mod message;
mod record;
mod seal;

pub use key::{KeyError, SyncKey};
pub use message::Message;
pub use record::{Endpoint, FlowRecord, RecordKind};
pub use seal::{Opened, Opener, OpenerStats, Reject, Sealer};

/// The largest datagram `Sealer::seal` makes: it fits a 1500-byte MTU
/// with IPv6 and UDP headers.
pub const MAX_DATAGRAM: usize = 1400;

/// Records that fit one `Flows` message; a sender splits longer lists
/// into messages of at most this many.
pub const MAX_RECORDS_PER_MESSAGE: usize =
    (MAX_DATAGRAM - seal::OVERHEAD - message::FLOWS_HEADER) / record::RECORD_LEN;

#[cfg(test)]
mod tests;
