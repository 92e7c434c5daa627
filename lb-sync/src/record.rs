//! One flow on the wire.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An address and port of either family.
pub type Endpoint = SocketAddr;

/// What a record asks of the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Install the flow, or update it.
    Upsert = 1,
    /// The flow ended.
    Delete = 2,
}

/// One flow as the sender's data path tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub kind: RecordKind,
    /// IP protocol (6 TCP, 17 UDP).
    pub proto: u8,
    /// The data path's flow state code (opaque here).
    pub state: u8,
    /// The client as it sends.
    pub client: Endpoint,
    /// The service address the client sends to.
    pub vip: Endpoint,
    /// The chosen backend.
    pub backend: Endpoint,
    /// The NAT source the balancer uses towards the backend.
    pub snat: Endpoint,
    /// Time since the flow's last packet when the record was made: the
    /// nodes' clocks differ, so ages cross, not timestamps.
    pub age_ms: u32,
    /// The flow's TCP timestamp offset (opaque here).
    pub ts_delta: u32,
}

const ENDPOINT_LEN: usize = 1 + 16 + 2;
pub(crate) const RECORD_LEN: usize = 4 + 4 * ENDPOINT_LEN + 4 + 4;

fn put_endpoint(out: &mut Vec<u8>, endpoint: &Endpoint) {
    let (family, octets) = match endpoint.ip() {
        IpAddr::V4(addr) => {
            let mut octets = [0u8; 16];
            octets[..4].copy_from_slice(&addr.octets());
            (4u8, octets)
        }
        IpAddr::V6(addr) => (6u8, addr.octets()),
    };
    out.push(family);
    out.extend_from_slice(&octets);
    out.extend_from_slice(&endpoint.port().to_be_bytes());
}

fn endpoint_at(bytes: &[u8]) -> Option<Endpoint> {
    let (family, rest) = bytes.split_first()?;
    let octets: [u8; 16] = rest.get(..16)?.try_into().ok()?;
    let port = u16::from_be_bytes(rest.get(16..18)?.try_into().ok()?);
    let ip = match family {
        4 if octets[4..].iter().all(|b| *b == 0) => {
            IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
        }
        6 => IpAddr::V6(Ipv6Addr::from(octets)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

impl FlowRecord {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.kind as u8, self.proto, self.state, 0]);
        for endpoint in [&self.client, &self.vip, &self.backend, &self.snat] {
            put_endpoint(out, endpoint);
        }
        out.extend_from_slice(&self.age_ms.to_be_bytes());
        out.extend_from_slice(&self.ts_delta.to_be_bytes());
    }

    /// The record in exactly `RECORD_LEN` bytes, if they make one.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != RECORD_LEN || bytes[3] != 0 {
            return None;
        }
        let kind = match bytes[0] {
            1 => RecordKind::Upsert,
            2 => RecordKind::Delete,
            _ => return None,
        };
        let endpoint = |n: usize| endpoint_at(&bytes[4 + n * ENDPOINT_LEN..]);
        let tail = 4 + 4 * ENDPOINT_LEN;
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|w| w.try_into().ok())
                .map(u32::from_be_bytes)
        };
        Some(Self {
            kind,
            proto: bytes[1],
            state: bytes[2],
            client: endpoint(0)?,
            vip: endpoint(1)?,
            backend: endpoint(2)?,
            snat: endpoint(3)?,
            age_ms: word(tail)?,
            ts_delta: word(tail + 4)?,
        })
    }
}
