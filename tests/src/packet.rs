//! Crafts Ethernet/IPv4/TCP/UDP frames with correct checksums (computed in
//! full, independently of the XDP program's incremental updates) and checks
//! the checksums of frames the program produced.

use lb_common::checksum;

pub type Mac = [u8; 6];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// A frame to build.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub l4: L4,
    /// TCP option bytes (padded with zeros to a multiple of 4).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
    },
    /// `zero_checksum` sends the datagram without a checksum.
    Udp {
        sport: u16,
        dport: u16,
        zero_checksum: bool,
    },
}

impl Frame {
    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            ttl: 64,
            l4: L4::Tcp {
                sport,
                dport,
                seq: 1000,
                ack: if flags & TCP_ACK != 0 { 5000 } else { 0 },
                flags,
            },
            tcp_options: Vec::new(),
            payload: Vec::new(),
        }
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            ttl: 64,
            l4: L4::Udp {
                sport,
                dport,
                zero_checksum: false,
            },
            tcp_options: Vec::new(),
            payload: b"query".to_vec(),
        }
    }

    pub fn macs(mut self, src: Mac, dst: Mac) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// A TCP timestamp option (kind 8) after `before` other option bytes.
    pub fn timestamps(self, before: &[u8], tsval: u32, tsecr: u32) -> Self {
        let mut options = before.to_vec();
        options.extend_from_slice(&[8, 10]);
        options.extend_from_slice(&tsval.to_be_bytes());
        options.extend_from_slice(&tsecr.to_be_bytes());
        self.tcp_options(&options)
    }

    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_options = options.to_vec();
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The same frame with its 4-tuple replaced.
    pub fn rewritten(mut self, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        self.src = src;
        self.dst = dst;
        match &mut self.l4 {
            L4::Tcp {
                sport: s, dport: d, ..
            }
            | L4::Udp {
                sport: s, dport: d, ..
            } => {
                *s = sport;
                *d = dport;
            }
        }
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut segment = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&seq.to_be_bytes());
                h[8..12].copy_from_slice(&ack.to_be_bytes());
                h.extend_from_slice(&self.tcp_options);
                while !h.len().is_multiple_of(4) {
                    h.push(0);
                }
                h[12] = ((h.len() / 4) as u8) << 4;
                h[13] = flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            L4::Udp { sport, dport, .. } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
        };
        segment.extend_from_slice(&self.payload);
        let proto = match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
        };
        match self.l4 {
            L4::Tcp { .. } => {
                let check = checksum::l4(self.src, self.dst, proto, &segment);
                segment[16..18].copy_from_slice(&check.to_be_bytes());
            }
            L4::Udp { zero_checksum, .. } => {
                if !zero_checksum {
                    let check =
                        checksum::udp_nonzero(checksum::l4(self.src, self.dst, proto, &segment));
                    segment[6..8].copy_from_slice(&check.to_be_bytes());
                }
            }
        }
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + segment.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = self.ttl;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&self.src);
        ip[16..20].copy_from_slice(&self.dst);
        let check = checksum::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());

        let mut frame = Vec::with_capacity(14 + 20 + segment.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&segment);
        frame
    }
}

/// Verifies the IPv4 header checksum and the TCP/UDP checksum of `frame`
/// (a UDP checksum of zero means "none" and is accepted).
pub fn assert_checksums_valid(frame: &[u8]) {
    assert!(frame.len() >= 34, "frame too short: {}", frame.len());
    let ip = &frame[14..34];
    assert_eq!(
        checksum::fold(checksum::sum_words(ip, 0)),
        0xffff,
        "bad IPv4 header checksum in {frame:02x?}"
    );
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let segment = &frame[34..14 + tot_len];
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let proto = ip[9];
    if proto == 17 && segment[6..8] == [0, 0] {
        return;
    }
    let mut acc = checksum::sum_words(&src, 0);
    acc = checksum::sum_words(&dst, acc);
    acc += proto as u32 + segment.len() as u32;
    assert_eq!(
        checksum::fold(checksum::sum_words(segment, acc)),
        0xffff,
        "bad L4 checksum in {frame:02x?}"
    );
}

/// ARP request frame (who-has `target` tell `sender`).
pub fn arp_request(sender_mac: Mac, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// A minimal IPv6 UDP frame (the program must pass it untouched).
pub fn ipv6_frame(src_mac: Mac, dst_mac: Mac) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    let mut ip6 = vec![0u8; 40];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&8u16.to_be_bytes());
    ip6[6] = 17;
    ip6[7] = 64;
    ip6[23] = 1;
    ip6[39] = 2;
    f.extend_from_slice(&ip6);
    f.extend_from_slice(&[0x13, 0x88, 0x00, 0x50, 0, 8, 0, 0]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        let tcp = Frame::tcp([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80, TCP_SYN)
            .payload(b"abc")
            .build();
        assert_checksums_valid(&tcp);
        let udp = Frame::udp([10, 0, 0, 1], 1234, [10, 0, 0, 2], 53).build();
        assert_checksums_valid(&udp);
    }

    #[test]
    #[should_panic(expected = "bad L4 checksum")]
    fn corrupted_frame_is_caught() {
        let mut tcp = Frame::tcp([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80, TCP_SYN).build();
        tcp[40] ^= 0xff;
        assert_checksums_valid(&tcp);
    }
}
