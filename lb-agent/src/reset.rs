//! Ends client connections whose flows were cut (`backends remove --now`).
//!
//! Deleting a flow stops its packets, but a client that is only receiving
//! (a download) would wait for data until its own timeout. So the agent
//! sends each such client one out-of-window ACK from the VIP. The client's
//! TCP answers with an ACK carrying its exact sequence numbers (RFC 793 /
//! RFC 5961 challenge ACK); that ACK belongs to no flow, so the XDP program
//! answers it with a RST whose sequence number the client accepts.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{checksum, FlowKey, PROTO_TCP};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::warn;

/// Errors of sending the provoking segments.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The raw socket could not be opened (needs CAP_NET_RAW).
    #[error("opening a raw socket to reset cut connections: {0}")]
    Socket(std::io::Error),
}

/// The out-of-window ACK from the VIP side of `client` (a client-side key).
pub fn provoke_segment(client: &FlowKey) -> [u8; 40] {
    let mut packet = [0u8; 40];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&40u16.to_be_bytes());
    packet[6] = 0x40;
    packet[8] = 64;
    packet[9] = PROTO_TCP;
    packet[12..16].copy_from_slice(&client.dst_addr);
    packet[16..20].copy_from_slice(&client.src_addr);
    let ip_check = checksum::ipv4_header(&packet[..20]);
    packet[10..12].copy_from_slice(&ip_check.to_be_bytes());
    let tcp = &mut packet[20..];
    tcp[0..2].copy_from_slice(&client.dst_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&client.src_port.to_be_bytes());
    // seq/ack 0: almost surely outside the window, which is the point.
    tcp[12] = 0x50;
    tcp[13] = 0x10;
    let tcp_check = checksum::l4(client.dst_addr, client.src_addr, PROTO_TCP, &packet[20..]);
    packet[36..38].copy_from_slice(&tcp_check.to_be_bytes());
    packet
}

/// Sends the provoking ACK to every TCP client in `clients`.
pub fn provoke_clients(clients: &[FlowKey]) -> Result<usize, ResetError> {
    let tcp: Vec<&FlowKey> = clients.iter().filter(|k| k.proto == PROTO_TCP).collect();
    if tcp.is_empty() {
        return Ok(0);
    }
    // IPPROTO_RAW implies IP_HDRINCL: the segments carry their IP header.
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .map_err(ResetError::Socket)?;
    let mut sent = 0;
    for key in tcp {
        let client = Ipv4Addr::from(key.src_addr);
        let to: SockAddr = SocketAddrV4::new(client, 0).into();
        match socket.send_to(&provoke_segment(key), &to) {
            Ok(_) => sent += 1,
            Err(error) => {
                warn!(%client, %error, "could not reach a cut connection's client");
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_is_well_formed() {
        let key = FlowKey {
            src_addr: [10, 100, 0, 10],
            dst_addr: [10, 100, 0, 100],
            src_port: 40000,
            dst_port: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let packet = provoke_segment(&key);
        assert_eq!(
            checksum::fold(checksum::sum_words(&packet[..20], 0)),
            0xffff
        );
        let mut acc = checksum::sum_words(&packet[12..20], 0);
        acc += u32::from(PROTO_TCP) + 20;
        assert_eq!(
            checksum::fold(checksum::sum_words(&packet[20..], acc)),
            0xffff
        );
        assert_eq!(&packet[12..16], &[10, 100, 0, 100], "from the VIP");
        assert_eq!(
            u16::from_be_bytes([packet[22], packet[23]]),
            40000,
            "to the client port"
        );
        assert_eq!(packet[33], 0x10, "a bare ACK");
    }
}
