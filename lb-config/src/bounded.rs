//! Values with bounds, checked once where they are made: by the parser
//! (with the offending field's line), by the CLI and by the state file, so
//! the rule exists in one place.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A value outside its bounds: what it was and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutOfBounds(String);

/// An integer newtype accepted in `MIN..=MAX`, read and written as a plain
/// integer.
macro_rules! bounded_integer {
    ($(#[$doc:meta])* $name:ident($inner:ty), $min:expr, $max:expr, $default:expr, $advice:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "i64", into = "i64")]
        pub struct $name($inner);

        impl $name {
            pub const MIN: $inner = $min;
            pub const MAX: $inner = $max;

            pub fn new(value: $inner) -> Result<Self, OutOfBounds> {
                Self::try_from(i64::from(value))
            }

            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = OutOfBounds;

            fn try_from(value: i64) -> Result<Self, OutOfBounds> {
                if (i64::from(Self::MIN)..=i64::from(Self::MAX)).contains(&value) {
                    // In range, so it fits.
                    Ok(Self(value as $inner))
                } else {
                    let advice: &str = $advice;
                    Err(OutOfBounds(format!(
                        "{value} is out of range {}..={}{}{advice}",
                        Self::MIN,
                        Self::MAX,
                        if advice.is_empty() { "" } else { "; " },
                    )))
                }
            }
        }

        impl From<$name> for i64 {
            fn from(value: $name) -> i64 {
                i64::from(value.0)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self($default)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = OutOfBounds;

            fn from_str(text: &str) -> Result<Self, OutOfBounds> {
                let value: i64 = text.trim().parse().map_err(|_| {
                    OutOfBounds(format!("{text:?} is not a whole number; use {}..={}", Self::MIN, Self::MAX))
                })?;
                Self::try_from(value)
            }
        }
    };
}

bounded_integer!(
    /// A backend's share of new connections, 1..=100 (default 1).
    Weight(u32), 1, 100, 1, ""
);
bounded_integer!(
    /// `rise` or `fall` of a health check or track script: 1..=100.
    RiseFall(u32), 1, 100, 1, ""
);
bounded_integer!(
    /// VRRP `virtual_router_id`: 1..=255, the same on both nodes.
    Vrid(u8), 1, 255, 1, "the same on both nodes"
);
bounded_integer!(
    /// VRRP priority: 1..=255 (255 = address owner; 0 is reserved for a
    /// master that resigns).
    Priority(u8), 1, 255, 100, "0 is reserved for resigning"
);
bounded_integer!(
    /// Gratuitous ARPs sent on becoming master; more only flood the
    /// segment (keepalived sends 5).
    GarpCount(u32), 0, 100, 5, "keepalived sends 5"
);
bounded_integer!(
    /// Entries of each connection-tracking map (one per direction).
    MaxFlows(u32), 1024, 16_777_216, lb_common::DEFAULT_MAX_FLOWS, ""
);
bounded_integer!(
    /// A track script's weight: 0 = FAULT while failing, positive = added
    /// to the priority while it succeeds, negative = added while it fails.
    TrackWeight(i32), -253, 253, 0, ""
);

/// VRRP version: 2 (RFC 3768) or 3 (RFC 5798), written as the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub enum VrrpVersion {
    #[default]
    V2,
    V3,
}

impl TryFrom<i64> for VrrpVersion {
    type Error = OutOfBounds;

    fn try_from(value: i64) -> Result<Self, OutOfBounds> {
        match value {
            2 => Ok(Self::V2),
            3 => Ok(Self::V3),
            other => Err(OutOfBounds(format!("{other}: use 2 or 3"))),
        }
    }
}

impl From<VrrpVersion> for i64 {
    fn from(version: VrrpVersion) -> i64 {
        match version {
            VrrpVersion::V2 => 2,
            VrrpVersion::V3 => 3,
        }
    }
}

impl VrrpVersion {
    pub fn number(self) -> u8 {
        match self {
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }
}

/// An inclusive `[first, last]` pair, written as a two-item array: a third
/// item is a mistake (a list of ranges meant?), not something to drop.
fn two_items(items: &[i64]) -> Result<(i64, i64), OutOfBounds> {
    match items {
        [first, last] => Ok((*first, *last)),
        _ => Err(OutOfBounds(format!(
            "has {} items; write exactly two, [first, last]",
            items.len()
        ))),
    }
}

/// The NAT source ports towards backends, `[first, last]`, at least 1,024
/// of them (each backend can have one flow per port and source address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<i64>", into = "[u16; 2]")]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub const MIN_PORTS: u32 = 1024;
    /// All of 1024-65535 (the node's ephemeral range is left out later).
    pub const ALL: Self = Self {
        first: 1024,
        last: 65535,
    };

    pub fn new(first: u16, last: u16) -> Result<Self, OutOfBounds> {
        Self::try_from(vec![i64::from(first), i64::from(last)])
    }

    pub fn first(self) -> u16 {
        self.first
    }

    pub fn last(self) -> u16 {
        self.last
    }

    pub fn ports(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::ALL
    }
}

impl TryFrom<Vec<i64>> for PortRange {
    type Error = OutOfBounds;

    fn try_from(items: Vec<i64>) -> Result<Self, OutOfBounds> {
        let (first, last) = two_items(&items)?;
        if !(1..=65535).contains(&first) || !(1..=65535).contains(&last) || first > last {
            return Err(OutOfBounds(format!(
                "[{first}, {last}]: write [first, last] with 0 < first <= last <= 65535"
            )));
        }
        let range = Self {
            first: first as u16,
            last: last as u16,
        };
        if range.ports() < Self::MIN_PORTS {
            return Err(OutOfBounds(format!(
                "[{first}, {last}] has {} ports; give it at least {} (each backend can have one flow per port)",
                range.ports(),
                Self::MIN_PORTS
            )));
        }
        Ok(range)
    }
}

impl From<PortRange> for [u16; 2] {
    fn from(range: PortRange) -> [u16; 2] {
        [range.first, range.last]
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.first, self.last)
    }
}

/// HTTP status codes a health check accepts, `[lowest, highest]` within
/// 100..=599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<i64>", into = "[u16; 2]")]
pub struct StatusRange {
    lowest: u16,
    highest: u16,
}

impl StatusRange {
    pub fn new(lowest: u16, highest: u16) -> Result<Self, OutOfBounds> {
        Self::try_from(vec![i64::from(lowest), i64::from(highest)])
    }

    pub fn contains(self, status: u16) -> bool {
        (self.lowest..=self.highest).contains(&status)
    }

    pub fn lowest(self) -> u16 {
        self.lowest
    }

    pub fn highest(self) -> u16 {
        self.highest
    }
}

impl Default for StatusRange {
    fn default() -> Self {
        Self {
            lowest: 200,
            highest: 399,
        }
    }
}

impl TryFrom<Vec<i64>> for StatusRange {
    type Error = OutOfBounds;

    fn try_from(items: Vec<i64>) -> Result<Self, OutOfBounds> {
        let (lowest, highest) = two_items(&items)?;
        if !(100..=599).contains(&lowest) || !(100..=599).contains(&highest) || lowest > highest {
            return Err(OutOfBounds(format!(
                "[{lowest}, {highest}]: write [lowest, highest] within 100..=599"
            )));
        }
        Ok(Self {
            lowest: lowest as u16,
            highest: highest as u16,
        })
    }
}

impl From<StatusRange> for [u16; 2] {
    fn from(range: StatusRange) -> [u16; 2] {
        [range.lowest, range.highest]
    }
}

/// The fraction by which each health-check interval is randomly stretched
/// or shrunk, 0.0..=0.5, so many backends are not probed in lock step.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Jitter(f64);

impl Jitter {
    pub fn new(fraction: f64) -> Result<Self, OutOfBounds> {
        Self::try_from(fraction)
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self(0.1)
    }
}

impl TryFrom<f64> for Jitter {
    type Error = OutOfBounds;

    fn try_from(fraction: f64) -> Result<Self, OutOfBounds> {
        if (0.0..=0.5).contains(&fraction) {
            Ok(Self(fraction))
        } else {
            Err(OutOfBounds(format!("{fraction} is out of range 0.0..=0.5")))
        }
    }
}

impl From<Jitter> for f64 {
    fn from(jitter: Jitter) -> f64 {
        jitter.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_everywhere_a_value_is_made() {
        assert_eq!(Weight::new(1).map(Weight::get), Ok(1));
        assert_eq!(Weight::new(100).map(Weight::get), Ok(100));
        assert_eq!(
            Weight::new(0).unwrap_err().to_string(),
            "0 is out of range 1..=100"
        );
        assert!("101".parse::<Weight>().is_err());
        assert!("x"
            .parse::<Weight>()
            .unwrap_err()
            .to_string()
            .contains("not a whole number"));
        assert!(Priority::new(0)
            .unwrap_err()
            .to_string()
            .contains("reserved for resigning"));
        assert!(Vrid::try_from(256).is_err());
        assert!(GarpCount::new(101).is_err());
        assert!(MaxFlows::new(10).is_err());
        assert!(TrackWeight::new(-254).is_err());
        assert_eq!(TrackWeight::new(-253).map(TrackWeight::get), Ok(-253));
        assert!(VrrpVersion::try_from(4).is_err());
        assert!(Jitter::new(0.9).is_err());
    }

    #[test]
    fn ranges_take_two_items_in_order() {
        assert_eq!(
            PortRange::new(20000, 29999).map(PortRange::ports),
            Ok(10_000)
        );
        assert!(PortRange::new(30000, 20000)
            .unwrap_err()
            .to_string()
            .contains("0 < first <= last"));
        assert!(PortRange::new(20000, 20010)
            .unwrap_err()
            .to_string()
            .contains("at least 1024"));
        assert!(PortRange::try_from(vec![1, 2, 3])
            .unwrap_err()
            .to_string()
            .contains("has 3 items"));
        assert!(PortRange::try_from(vec![0, 5000]).is_err());
        assert!(StatusRange::new(500, 200).is_err());
        assert!(StatusRange::new(200, 299).is_ok_and(|r| r.contains(204) && !r.contains(300)));
    }
}
