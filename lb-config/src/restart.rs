//! Fields a reload cannot apply: each section declares its own, next to
//! its fields, with why.

use std::fmt;

use serde::Serialize;

use crate::{Config, FieldPath};

/// A section with fields that are fixed while the program is loaded.
pub trait RestartOnly {
    /// `(field, why a restart is needed)`.
    const RESTART_ONLY: &'static [(&'static str, &'static str)];
}

/// A restart-only field a new config changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartChange {
    pub path: FieldPath,
    pub why: &'static str,
}

/// `section.field (why)`.
impl fmt::Display for RestartChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path, self.why)
    }
}

/// The restart-only fields that differ between `old` and `new`, in
/// declaration order.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<RestartChange> {
    let mut changed = Vec::new();
    changed_fields("node", Some(&old.node), Some(&new.node), &mut changed);
    changed_fields(
        "conntrack",
        Some(&old.conntrack),
        Some(&new.conntrack),
        &mut changed,
    );
    changed_fields("vrrp", old.vrrp.as_ref(), new.vrrp.as_ref(), &mut changed);
    if old.sync != new.sync {
        changed.push(RestartChange {
            path: FieldPath::root().key("sync"),
            why: "flow sync's socket, key and peer are set up at start",
        });
    }
    changed
}

/// A missing section (`None`, e.g. no `[vrrp]`) leaves its fields unset.
fn changed_fields<T: Serialize + RestartOnly>(
    section: &str,
    old: Option<&T>,
    new: Option<&T>,
    changed: &mut Vec<RestartChange>,
) {
    let table = |s: Option<&T>| s.and_then(|f| toml::Table::try_from(f).ok());
    let (old, new) = (table(old), table(new));
    for (field, why) in T::RESTART_ONLY {
        let value =
            |table: &Option<toml::Table>| table.as_ref().and_then(|t| t.get(*field)).cloned();
        if value(&old) != value(&new) {
            changed.push(RestartChange {
                path: FieldPath::root().key(section).key(field),
                why,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{ConntrackConfig, NodeConfig, PortRange, Priority, Vrid, VrrpConfig};

    #[test]
    fn every_declared_field_exists_and_is_compared() {
        let node = NodeConfig::new("a", "b", Ipv4Addr::new(10, 0, 0, 1));
        let fields = toml::Table::try_from(&node).expect("node serializes");
        for (field, _) in NodeConfig::RESTART_ONLY {
            assert!(fields.contains_key(*field), "node.{field}");
        }
        let fields = toml::Table::try_from(ConntrackConfig::default()).expect("serializes");
        for (field, _) in ConntrackConfig::RESTART_ONLY {
            assert!(fields.contains_key(*field), "conntrack.{field}");
        }
        let mut vrrp = VrrpConfig::new(Vrid::default(), Priority::default());
        vrrp.snat_address = Some(Ipv4Addr::new(10, 0, 0, 10));
        vrrp.snat_pool = vec![Ipv4Addr::new(10, 0, 0, 11)];
        let fields = toml::Table::try_from(&vrrp).expect("serializes");
        for (field, _) in VrrpConfig::RESTART_ONLY {
            assert!(fields.contains_key(*field), "vrrp.{field}");
        }
        let old = Config::new(node.clone());
        let mut new = old.clone();
        new.node.port_range = PortRange::new(20000, 29999).expect("range");
        new.node.keep_forwarding_on_exit = true;
        let changes: Vec<String> = restart_only_changes(&old, &new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(changes, ["node.port_range (live flows hold ports of it)"]);
        // Taking on a floating SNAT address moves every new flow's source.
        let mut floating = old.clone();
        floating.vrrp = Some(vrrp);
        let changes = restart_only_changes(&old, &floating);
        let paths: Vec<String> = changes.iter().map(|c| c.path.to_string()).collect();
        assert_eq!(paths, ["vrrp.snat_address", "vrrp.snat_pool"]);
    }
}
