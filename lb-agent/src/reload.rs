//! What a reload (SIGHUP, `lb-agent reload`) may change in place and what
//! it changed. Services, backends, health checks and conntrack timeouts are
//! applied to the running data path; what is fixed when the program is
//! loaded and attached (interfaces, addresses, table sizes, the NAT port
//! range) needs a restart, and a reload that touches it is refused whole;
//! the config's sections declare those fields themselves.

use std::fmt;

use crate::config::{Config, ServiceConfig};

pub use crate::config::restart_only_changes;

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub services_changed: Vec<String>,
    pub timeouts_changed: bool,
    pub vrrp_changed: bool,
}

impl ReloadSummary {
    pub fn between(old: &Config, new: &Config) -> Self {
        let find = |config: &Config, name: &str| -> Option<ServiceConfig> {
            config.services.iter().find(|s| s.name == name).cloned()
        };
        let mut summary = Self::default();
        for service in &new.services {
            match find(old, &service.name) {
                None => summary.services_added.push(service.name.clone()),
                Some(before) if before != *service => {
                    summary.services_changed.push(service.name.clone())
                }
                Some(_) => {}
            }
        }
        for service in &old.services {
            if find(new, &service.name).is_none() {
                summary.services_removed.push(service.name.clone());
            }
        }
        let (a, b) = (&old.conntrack, &new.conntrack);
        summary.timeouts_changed = a.tcp_handshake_timeout != b.tcp_handshake_timeout
            || a.tcp_established_timeout != b.tcp_established_timeout
            || a.tcp_closing_timeout != b.tcp_closing_timeout
            || a.udp_timeout != b.udp_timeout;
        summary.vrrp_changed = old.vrrp != new.vrrp;
        summary
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing changed");
        }
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.services_added),
            ("removed", &self.services_removed),
            ("changed", &self.services_changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("services {what}: {}", names.join(", ")));
            }
        }
        if self.timeouts_changed {
            parts.push("conntrack timeouts changed".into());
        }
        if self.vrrp_changed {
            parts.push("VRRP settings changed".into());
        }
        write!(f, "{}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::TEST_CONFIG as BASE;

    fn config(text: &str) -> Config {
        Config::parse(text, "test").expect("valid test config")
    }

    #[test]
    fn services_added_removed_and_changed_are_told_apart() {
        let old = config(BASE);
        let mut new = old.clone();
        new.services[1].name = "dns2".into();
        new.services[0].backends[0].address = std::net::Ipv4Addr::new(10, 200, 0, 23);
        let summary = ReloadSummary::between(&old, &new);
        assert_eq!(summary.services_added, ["dns2"]);
        assert_eq!(summary.services_removed, ["dns"]);
        assert_eq!(summary.services_changed, ["www"]);
        assert!(!summary.vrrp_changed && !summary.timeouts_changed);
        assert!(restart_only_changes(&old, &new).is_empty());
        assert!(ReloadSummary::between(&old, &old).is_empty());
        assert_eq!(
            ReloadSummary::between(&old, &old).to_string(),
            "nothing changed"
        );
    }

    #[test]
    fn node_changes_need_a_restart() {
        let old = config(BASE);
        let mut new = old.clone();
        new.node.private_interface = "eth1".into();
        new.conntrack.max_flows = crate::config::MaxFlows::new(4096).expect("in range");
        let changes = restart_only_changes(&old, &new);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[0].path.to_string(), "node.private_interface");
        assert_eq!(changes[1].path.to_string(), "conntrack.max_flows");
    }

    #[test]
    fn timeouts_apply_in_place() {
        let old = config(BASE);
        let mut new = old.clone();
        new.conntrack.tcp_established_timeout = std::time::Duration::from_secs(300);
        let summary = ReloadSummary::between(&old, &new);
        assert!(summary.timeouts_changed);
        assert!(restart_only_changes(&old, &new).is_empty());
        assert_eq!(summary.to_string(), "conntrack timeouts changed");
    }
}
