//! VRRP advertisements on the wire: IPv4 protocol 112, VRRPv2 (RFC 3768,
//! interval in seconds, optional simple-text authentication, checksum over
//! the VRRP message) and VRRPv3 (RFC 5798, interval in centiseconds,
//! checksum with the IPv4 pseudo-header). Decoding checks everything a
//! receiver must check before an advertisement may touch the state machine.

use std::net::Ipv4Addr;

use lb_common::checksum;

/// IP protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// The VRRP multicast group.
pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// TTL every advertisement is sent with and must arrive with.
pub const TTL: u8 = 255;
/// Type of an advertisement (the only VRRP message type).
const TYPE_ADVERTISEMENT: u8 = 1;
/// v2 authentication types.
const AUTH_NONE: u8 = 0;
const AUTH_SIMPLE: u8 = 1;
const AUTH_DATA_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V2,
    V3,
}

/// v2 authentication (v3 has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    /// keepalived's `auth_type PASS`: up to 8 bytes, zero-padded.
    Simple([u8; AUTH_DATA_LEN]),
}

impl Auth {
    /// `auth_pass` as keepalived pads it.
    pub fn simple(password: &str) -> Self {
        let mut data = [0u8; AUTH_DATA_LEN];
        for (slot, byte) in data.iter_mut().zip(password.bytes()) {
            *slot = byte;
        }
        Auth::Simple(data)
    }
}

/// One advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    /// 1-254; 255 = address owner; 0 = the master resigns.
    pub priority: u8,
    /// Advertisement interval in centiseconds (v2 carries whole seconds).
    pub interval_cs: u16,
    pub addresses: Vec<Ipv4Addr>,
    pub auth: Auth,
}

/// Why an advertisement is ignored (each is counted by the receiver).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet too short ({len} bytes)")]
    Truncated { len: usize },
    #[error("not an IPv4 packet of protocol 112")]
    NotVrrp,
    #[error("IP TTL {ttl}, VRRP requires 255")]
    BadTtl { ttl: u8 },
    #[error("VRRP version {version}, expected {expected:?}")]
    BadVersion { version: u8, expected: Version },
    #[error("VRRP message type {kind} is not an advertisement")]
    BadType { kind: u8 },
    #[error("address count {count} does not match the length")]
    BadLength { count: u8 },
    #[error("bad VRRP checksum")]
    BadChecksum,
    #[error("authentication mismatch")]
    BadAuth,
}

fn vrrp_checksum(version: Version, src: Ipv4Addr, dst: Ipv4Addr, message: &[u8]) -> u16 {
    match version {
        Version::V2 => !checksum::fold(checksum::sum_words(message, 0)),
        Version::V3 => checksum::l4(src.octets(), dst.octets(), PROTO_VRRP, message),
    }
}

impl Advert {
    /// The VRRP message (IP payload) from `src` to `dst`.
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut m = Vec::with_capacity(16 + 4 * self.addresses.len());
        let version = match self.version {
            Version::V2 => 2u8,
            Version::V3 => 3,
        };
        m.push(version << 4 | TYPE_ADVERTISEMENT);
        m.push(self.vrid);
        m.push(self.priority);
        m.push(self.addresses.len() as u8);
        match self.version {
            Version::V2 => {
                m.push(match self.auth {
                    Auth::None => AUTH_NONE,
                    Auth::Simple(_) => AUTH_SIMPLE,
                });
                m.push((self.interval_cs / 100).clamp(1, 255) as u8);
            }
            Version::V3 => m.extend_from_slice(&(self.interval_cs & 0x0fff).to_be_bytes()),
        }
        m.extend_from_slice(&[0, 0]);
        for addr in &self.addresses {
            m.extend_from_slice(&addr.octets());
        }
        if self.version == Version::V2 {
            match self.auth {
                Auth::Simple(data) => m.extend_from_slice(&data),
                Auth::None => m.extend_from_slice(&[0; AUTH_DATA_LEN]),
            }
        }
        let check = vrrp_checksum(self.version, src, dst, &m);
        m[6..8].copy_from_slice(&check.to_be_bytes());
        m
    }

    /// Decodes and validates the VRRP message `m` that arrived in an IP
    /// packet from `src` to `dst` with `ttl`. `expect` is the configured
    /// version and authentication.
    pub fn decode(
        m: &[u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        expect: (Version, Auth),
    ) -> Result<Self, DecodeError> {
        if ttl != TTL {
            return Err(DecodeError::BadTtl { ttl });
        }
        if m.len() < 8 {
            return Err(DecodeError::Truncated { len: m.len() });
        }
        let (expected_version, expected_auth) = expect;
        let version = match (m[0] >> 4, expected_version) {
            (2, Version::V2) => Version::V2,
            (3, Version::V3) => Version::V3,
            (other, expected) => {
                return Err(DecodeError::BadVersion {
                    version: other,
                    expected,
                })
            }
        };
        if m[0] & 0x0f != TYPE_ADVERTISEMENT {
            return Err(DecodeError::BadType { kind: m[0] & 0x0f });
        }
        let count = m[3];
        let auth_len = if version == Version::V2 {
            AUTH_DATA_LEN
        } else {
            0
        };
        let expected_len = 8 + 4 * count as usize + auth_len;
        if m.len() != expected_len {
            return Err(DecodeError::BadLength { count });
        }
        if vrrp_checksum(version, src, dst, m) != 0 {
            // A correct checksum makes the whole sum come out as zero.
            return Err(DecodeError::BadChecksum);
        }
        let addresses = (0..count as usize)
            .map(|i| {
                let at = 8 + 4 * i;
                Ipv4Addr::new(m[at], m[at + 1], m[at + 2], m[at + 3])
            })
            .collect();
        let (interval_cs, auth) = match version {
            Version::V2 => {
                let auth = match m[4] {
                    AUTH_NONE => Auth::None,
                    AUTH_SIMPLE => {
                        let mut data = [0u8; AUTH_DATA_LEN];
                        data.copy_from_slice(&m[expected_len - AUTH_DATA_LEN..]);
                        Auth::Simple(data)
                    }
                    _ => return Err(DecodeError::BadAuth),
                };
                if auth != expected_auth {
                    return Err(DecodeError::BadAuth);
                }
                (u16::from(m[5]) * 100, auth)
            }
            Version::V3 => (u16::from_be_bytes([m[4], m[5]]) & 0x0fff, Auth::None),
        };
        Ok(Self {
            version,
            vrid: m[1],
            priority: m[2],
            interval_cs,
            addresses,
            auth,
        })
    }
}

/// The parts of an IPv4 header a VRRP receiver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpInfo {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
}

/// Splits an IPv4 packet carrying VRRP into its header facts and payload.
pub fn split_ipv4(packet: &[u8]) -> Result<(IpInfo, &[u8]), DecodeError> {
    if packet.len() < 20 {
        return Err(DecodeError::Truncated { len: packet.len() });
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if packet[0] >> 4 != 4 || packet[9] != PROTO_VRRP || header_len < 20 {
        return Err(DecodeError::NotVrrp);
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if packet.len() < total || total < header_len {
        return Err(DecodeError::Truncated { len: packet.len() });
    }
    let info = IpInfo {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        ttl: packet[8],
    };
    Ok((info, &packet[header_len..total]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB1: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
    const LB2: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 12);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 100);

    fn fixture(name: &str) -> Vec<(f64, Vec<u8>)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/vrrp")
            .join(name);
        let file = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
        let mut reader = pcap_file::pcap::PcapReader::new(file).expect("pcap header");
        let mut packets = Vec::new();
        while let Some(packet) = reader.next_packet() {
            let packet = packet.expect("pcap record");
            // Ethernet: skip the 14-byte header.
            packets.push((packet.timestamp.as_secs_f64(), packet.data[14..].to_vec()));
        }
        packets
    }

    fn decode_all(name: &str, expect: (Version, Auth)) -> Vec<(f64, IpInfo, Advert)> {
        fixture(name)
            .into_iter()
            .map(|(t, ip)| {
                let (info, payload) = split_ipv4(&ip).expect("IPv4 VRRP");
                let advert = Advert::decode(payload, info.src, info.dst, info.ttl, expect)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                // Our encoder produces keepalived's exact bytes.
                assert_eq!(
                    advert.encode(info.src, info.dst),
                    payload,
                    "{name}: re-encoded"
                );
                (t, info, advert)
            })
            .collect()
    }

    #[test]
    fn keepalived_v2_pass_capture() {
        let adverts = decode_all(
            "keepalived-unicast-vrrpv2-pass.pcap",
            (Version::V2, Auth::simple("labpass")),
        );
        assert_eq!(adverts.len(), 14);
        let (_, info, first) = &adverts[0];
        assert_eq!((info.src, info.dst, info.ttl), (LB1, LB2, 255));
        assert_eq!(first.vrid, 33);
        assert_eq!(first.priority, 200);
        assert_eq!(first.interval_cs, 100);
        assert_eq!(first.addresses, vec![VIP]);
        let resign = adverts
            .iter()
            .find(|(_, _, a)| a.priority == 0)
            .expect("priority 0");
        assert_eq!(resign.1.src, LB1, "the master resigns on SIGTERM");
        assert!(adverts
            .iter()
            .any(|(_, i, a)| i.src == LB2 && a.priority == 100));
    }

    #[test]
    fn keepalived_v3_captures() {
        for (name, interval) in [
            ("keepalived-unicast-vrrpv3.pcap", 100),
            ("keepalived-unicast-vrrpv3-100ms.pcap", 10),
        ] {
            let adverts = decode_all(name, (Version::V3, Auth::None));
            assert!(adverts.len() >= 14, "{name}");
            assert!(adverts
                .iter()
                .all(|(_, _, a)| a.vrid == 33 && a.interval_cs == interval));
            assert!(adverts.iter().any(|(_, _, a)| a.priority == 0));
        }
    }

    #[test]
    fn wrong_inputs_are_refused() {
        let adverts = fixture("keepalived-unicast-vrrpv2-pass.pcap");
        let (info, payload) = split_ipv4(&adverts[0].1)
            .map(|(i, p)| (i, p.to_vec()))
            .expect("ip");
        let pass = (Version::V2, Auth::simple("labpass"));
        let decode = |m: &[u8], ttl: u8, expect| Advert::decode(m, info.src, info.dst, ttl, expect);
        assert_eq!(
            decode(&payload, 64, pass),
            Err(DecodeError::BadTtl { ttl: 64 })
        );
        assert_eq!(
            decode(&payload, 255, (Version::V2, Auth::simple("wrong"))),
            Err(DecodeError::BadAuth)
        );
        assert!(matches!(
            decode(&payload, 255, (Version::V3, Auth::None)),
            Err(DecodeError::BadVersion { version: 2, .. })
        ));
        let mut corrupt = payload.clone();
        corrupt[2] ^= 1;
        assert_eq!(decode(&corrupt, 255, pass), Err(DecodeError::BadChecksum));
        assert!(matches!(
            decode(&payload[..payload.len() - 1], 255, pass),
            Err(DecodeError::BadLength { .. })
        ));
        assert!(matches!(
            decode(&payload[..5], 255, pass),
            Err(DecodeError::Truncated { .. })
        ));
        // A v3 checksum covers the pseudo-header: another source breaks it.
        let v3 = fixture("keepalived-unicast-vrrpv3.pcap");
        let (info3, payload3) = split_ipv4(&v3[0].1).expect("ip");
        assert_eq!(
            Advert::decode(
                payload3,
                Ipv4Addr::new(10, 200, 0, 99),
                info3.dst,
                255,
                (Version::V3, Auth::None)
            ),
            Err(DecodeError::BadChecksum)
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        for version in [Version::V2, Version::V3] {
            let advert = Advert {
                version,
                vrid: 7,
                priority: 150,
                interval_cs: if version == Version::V2 { 300 } else { 25 },
                addresses: vec![VIP, Ipv4Addr::new(10, 100, 0, 101)],
                auth: if version == Version::V2 {
                    Auth::simple("pw")
                } else {
                    Auth::None
                },
            };
            let bytes = advert.encode(LB1, MULTICAST_GROUP);
            let back = Advert::decode(&bytes, LB1, MULTICAST_GROUP, 255, (version, advert.auth))
                .expect("round trip");
            assert_eq!(back, advert);
        }
    }
}
