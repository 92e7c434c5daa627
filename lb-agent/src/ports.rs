//! The NAT source port range versus the kernel: it must not overlap the
//! ephemeral range the node's own sockets draw from, and it is added to
//! `ip_local_reserved_ports` so no local socket ever auto-binds into it
//! (replies to those ports are taken by the XDP program before the stack).

use std::{net::Ipv4Addr, path::Path};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Errors of checking and reserving the NAT port range.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    /// A sysctl file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A sysctl file held something unexpected.
    #[error("cannot parse {path}: {content:?}")]
    Parse { path: String, content: String },
    /// Outside the kernel's ephemeral port range, too few NAT ports remain.
    #[error(
        "node.port_range {min}-{max} leaves only {usable} ports outside the kernel's ephemeral port range {eph_min}-{eph_max} \
         (its own sockets' source ports); give it at least {MIN_NAT_PORTS} others, or narrow the ephemeral range with \
         `sysctl net.ipv4.ip_local_port_range=\"{suggest_min} {eph_max}\"`"
    )]
    Overlap {
        min: u16,
        max: u16,
        usable: u32,
        eph_min: u16,
        eph_max: u16,
        suggest_min: u32,
    },
}

/// The kernel's default `ip_local_port_range`, for checks made off the node.
pub const LINUX_EPHEMERAL_RANGE: (u16, u16) = (32768, 60999);

/// Fewest NAT ports the agent runs with.
pub const MIN_NAT_PORTS: u32 = 1024;

/// The parts of `range` outside `ephemeral` (both inclusive): the NAT
/// ports. The node's own sockets draw their source ports from the
/// ephemeral range, and a backend's answer to one of them must reach the
/// stack, not the NAT.
pub fn usable_ranges(range: (u16, u16), ephemeral: (u16, u16)) -> Vec<(u16, u16)> {
    let (low, high) = range;
    let (eph_low, eph_high) = ephemeral;
    if high < eph_low || eph_high < low {
        return vec![range];
    }
    let mut parts = Vec::new();
    if low < eph_low {
        parts.push((low, eph_low - 1));
    }
    if eph_high < high {
        parts.push((eph_high + 1, high));
    }
    parts
}

/// Number of ports in inclusive ranges.
pub fn port_count(ranges: &[(u16, u16)]) -> u32 {
    ranges
        .iter()
        .map(|(low, high)| u32::from(*high) - u32::from(*low) + 1)
        .sum()
}

/// The NAT ports of `min..=max` outside the `ephemeral` range, or the
/// refusal when fewer than `MIN_NAT_PORTS` remain: the rule the agent
/// starts by and check-config reports on the node.
pub fn nat_ports(min: u16, max: u16, ephemeral: (u16, u16)) -> Result<Vec<(u16, u16)>, PortsError> {
    let usable = usable_ranges((min, max), ephemeral);
    let count = port_count(&usable);
    if count < MIN_NAT_PORTS {
        return Err(PortsError::Overlap {
            min,
            max,
            usable: count,
            eph_min: ephemeral.0,
            eph_max: ephemeral.1,
            suggest_min: u32::from(max) + 1,
        });
    }
    Ok(usable)
}

/// The share of the NAT ports this node hands out. A pair with a floating
/// SNAT address sends from the same addresses on both nodes, and a flow
/// synced to the peer keeps its (address, port) towards its backend: were
/// both to hand out the same source to the same backend, the backend would
/// take the second connection for the first. So each takes its own half:
/// the node whose private address is numerically lower than its peer's
/// the lower half, the other the upper half. The program still knows the
/// whole range, so it recognises replies to flows of the peer's slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortSlice {
    /// Every NAT port (this node's own SNAT addresses).
    Whole,
    Lower,
    Upper,
}

impl PortSlice {
    /// The slice of the node at `own` whose peer is at `peer`.
    pub fn between(own: Ipv4Addr, peer: Ipv4Addr) -> Self {
        if u32::from(own) < u32::from(peer) {
            Self::Lower
        } else {
            Self::Upper
        }
    }

    /// This node's slice under `config`: a half with a floating SNAT
    /// address (decided against the first unicast peer), else the whole.
    pub fn of(config: &Config) -> Self {
        let peer = config
            .vrrp
            .as_ref()
            .filter(|vrrp| vrrp.snat_address.is_some())
            .and_then(|vrrp| vrrp.unicast_peers.first());
        match peer {
            Some(peer) => Self::between(config.node.private_address, *peer),
            None => Self::Whole,
        }
    }

    /// The part of `ranges` (inclusive, sorted, disjoint) in this slice:
    /// the lower half is the first half of the ports counted across the
    /// ranges (rounded down), the upper half the rest.
    pub fn apply(self, ranges: &[(u16, u16)]) -> Vec<(u16, u16)> {
        let lower = port_count(ranges) / 2;
        match self {
            Self::Whole => ranges.to_vec(),
            Self::Lower => take_ports(ranges, lower).0,
            Self::Upper => take_ports(ranges, lower).1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Whole => "whole",
            Self::Lower => "lower",
            Self::Upper => "upper",
        }
    }
}

/// Inclusive port ranges.
type Ranges = Vec<(u16, u16)>;

/// `ranges` split after their first `count` ports.
fn take_ports(ranges: &[(u16, u16)], mut count: u32) -> (Ranges, Ranges) {
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for &(low, high) in ranges {
        let len = u32::from(high) - u32::from(low) + 1;
        if count >= len {
            first.push((low, high));
            count -= len;
        } else if count == 0 {
            rest.push((low, high));
        } else {
            // count < len <= 65536, so the sum stays below `high`.
            let split = low + count as u16;
            first.push((low, split - 1));
            rest.push((split, high));
            count = 0;
        }
    }
    (first, rest)
}

/// Parses `ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), None) => Some((a, b)),
        _ => None,
    }
}

/// Parses `ip_local_reserved_ports` ("8080,20000-29999" or empty).
pub fn parse_reserved(text: &str) -> Option<Vec<(u16, u16)>> {
    text.trim()
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => part.parse().ok().map(|p| (p, p)),
            }
        })
        .collect()
}

/// The reserved list with `range` merged in (overlapping/adjacent ranges joined).
pub fn merge_reserved(existing: &[(u16, u16)], range: (u16, u16)) -> String {
    let mut all: Vec<(u16, u16)> = existing.to_vec();
    all.push(range);
    all.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (a, b) in all {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn read(path: &Path) -> Result<String, PortsError> {
    std::fs::read_to_string(path).map_err(|source| PortsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Finds the NAT ports in `min..=max` (outside the ephemeral range) and
/// reserves them, using the sysctl files under `ipv4_dir` (normally
/// `/proc/sys/net/ipv4`). Returns the usable ranges.
pub fn reserve_nat_range_at(
    ipv4_dir: &Path,
    min: u16,
    max: u16,
) -> Result<Vec<(u16, u16)>, PortsError> {
    let range_path = ipv4_dir.join("ip_local_port_range");
    let text = read(&range_path)?;
    let (eph_min, eph_max) = parse_port_range(&text).ok_or_else(|| PortsError::Parse {
        path: range_path.display().to_string(),
        content: text.clone(),
    })?;
    let usable = nat_ports(min, max, (eph_min, eph_max))?;
    let reserved_path = ipv4_dir.join("ip_local_reserved_ports");
    let text = read(&reserved_path)?;
    let mut reserved = parse_reserved(&text).ok_or_else(|| PortsError::Parse {
        path: reserved_path.display().to_string(),
        content: text.clone(),
    })?;
    let missing: Vec<(u16, u16)> = usable
        .iter()
        .copied()
        .filter(|(a, b)| !reserved.iter().any(|(r_a, r_b)| r_a <= a && b <= r_b))
        .collect();
    if missing.is_empty() {
        return Ok(usable);
    }
    let mut merged = String::new();
    for part in missing {
        merged = merge_reserved(&reserved, part);
        reserved = parse_reserved(&merged).unwrap_or_default();
    }
    std::fs::write(&reserved_path, merged).map_err(|source| PortsError::Io {
        path: reserved_path.display().to_string(),
        source,
    })?;
    Ok(usable)
}

/// Finds and reserves the NAT ports in this network namespace.
pub fn reserve_nat_range(min: u16, max: u16) -> Result<Vec<(u16, u16)>, PortsError> {
    reserve_nat_range_at(Path::new("/proc/sys/net/ipv4"), min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_address_takes_the_lower_half() {
        let (lb1, lb2) = (Ipv4Addr::new(10, 200, 0, 11), Ipv4Addr::new(10, 200, 0, 12));
        assert_eq!(PortSlice::between(lb1, lb2), PortSlice::Lower);
        assert_eq!(PortSlice::between(lb2, lb1), PortSlice::Upper);
        // Numerically, not by text: 10.200.0.9 < 10.200.0.10.
        let (nine, ten) = (Ipv4Addr::new(10, 200, 0, 9), Ipv4Addr::new(10, 200, 0, 10));
        assert_eq!(PortSlice::between(nine, ten), PortSlice::Lower);
    }

    #[test]
    fn halves_are_disjoint_and_cover_the_ranges() {
        let usable = usable_ranges((1024, 65535), (32768, 60999));
        let lower = PortSlice::Lower.apply(&usable);
        let upper = PortSlice::Upper.apply(&usable);
        assert_eq!(lower, vec![(1024, 19163)]);
        assert_eq!(upper, vec![(19164, 32767), (61000, 65535)]);
        assert_eq!(port_count(&lower) + port_count(&upper), port_count(&usable));
        assert_eq!(PortSlice::Whole.apply(&usable), usable);
        // An odd count: the upper half has the one more.
        let odd = [(20000, 20002)];
        assert_eq!(PortSlice::Lower.apply(&odd), vec![(20000, 20000)]);
        assert_eq!(PortSlice::Upper.apply(&odd), vec![(20001, 20002)]);
        // A split on a range's edge leaves no empty range.
        let two = [(1000, 1001), (2000, 2001)];
        assert_eq!(PortSlice::Lower.apply(&two), vec![(1000, 1001)]);
        assert_eq!(PortSlice::Upper.apply(&two), vec![(2000, 2001)]);
    }

    #[test]
    fn only_a_floating_snat_address_slices_the_ports() {
        let own = Config::parse(crate::config::TEST_CONFIG, "lb.toml").expect("config");
        assert_eq!(PortSlice::of(&own), PortSlice::Whole);
        let mut floating = own.clone();
        let mut vrrp = crate::config::VrrpConfig::new(Default::default(), Default::default());
        vrrp.unicast_peers = vec![Ipv4Addr::new(10, 200, 0, 12)];
        floating.vrrp = Some(vrrp.clone());
        assert_eq!(PortSlice::of(&floating), PortSlice::Whole);
        vrrp.snat_address = Some(Ipv4Addr::new(10, 200, 0, 10));
        floating.vrrp = Some(vrrp);
        // 10.200.0.11 against its peer 10.200.0.12.
        assert_eq!(PortSlice::of(&floating), PortSlice::Lower);
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("x"), None);
        assert_eq!(parse_reserved("\n"), Some(vec![]));
        assert_eq!(
            parse_reserved("8080,20000-29999\n"),
            Some(vec![(8080, 8080), (20000, 29999)])
        );
        assert_eq!(parse_reserved("a-b"), None);
    }

    #[test]
    fn merging() {
        assert_eq!(merge_reserved(&[], (20000, 29999)), "20000-29999");
        assert_eq!(
            merge_reserved(&[(8080, 8080)], (20000, 29999)),
            "8080,20000-29999"
        );
        assert_eq!(
            merge_reserved(&[(19000, 20500), (29999, 30000)], (20000, 29999)),
            "19000-30000"
        );
    }

    fn fake_proc(range: &str, reserved: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lb-ports-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("ip_local_port_range"), range).expect("write");
        std::fs::write(dir.join("ip_local_reserved_ports"), reserved).expect("write");
        dir
    }

    #[test]
    fn ephemeral_ports_are_left_out() {
        let eph = (32768, 60999);
        assert_eq!(
            usable_ranges((1024, 65535), eph),
            vec![(1024, 32767), (61000, 65535)]
        );
        assert_eq!(usable_ranges((10000, 32767), eph), vec![(10000, 32767)]);
        assert_eq!(usable_ranges((40000, 50000), eph), vec![]);
        assert_eq!(usable_ranges((30000, 40000), eph), vec![(30000, 32767)]);
        assert_eq!(port_count(&usable_ranges((1024, 65535), eph)), 36_280);
    }

    #[test]
    fn too_few_ports_outside_the_ephemeral_range_is_refused_with_a_fix() {
        let dir = fake_proc("10000\t60999\n", "\n");
        let message = reserve_nat_range_at(&dir, 20000, 29999)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("leaves only 0 ports") && message.contains("30000 60999"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_whole_range_reserves_both_sides_of_the_ephemeral_range() {
        let dir = fake_proc("32768\t60999\n", "22\n");
        let usable = reserve_nat_range_at(&dir, 1024, 65535).expect("reserve");
        assert_eq!(usable, vec![(1024, 32767), (61000, 65535)]);
        let text = std::fs::read_to_string(dir.join("ip_local_reserved_ports")).expect("read");
        assert_eq!(text, "22,1024-32767,61000-65535");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn reservation_is_merged_once() {
        let dir = fake_proc("32768\t60999\n", "8080\n");
        reserve_nat_range_at(&dir, 20000, 29999).expect("reserve");
        reserve_nat_range_at(&dir, 20000, 29999).expect("again");
        let text = std::fs::read_to_string(dir.join("ip_local_reserved_ports")).expect("read");
        assert_eq!(text, "8080,20000-29999");
        let _ = std::fs::remove_dir_all(dir);
    }
}
