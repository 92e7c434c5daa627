//! `[[service]]` and its `[[service.backend]]` tables.

use std::{fmt, net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    bounded::Weight,
    health::{CheckKind, HealthCheckConfig},
    problem::{Element, FieldPath, Problems},
};

/// TCP or UDP.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// What happens to a backend's existing flows when it goes down.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnDown {
    #[default]
    KeepFlows,
    ShutdownFlows,
}

/// Longest service name: it is shown in every status line and label.
pub const MAX_SERVICE_NAME: usize = 32;

/// `[[service]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name used by the CLI (`--service NAME`): [a-z0-9_-], at most 32 characters.
    pub name: String,
    /// The virtual IP clients connect to.
    pub vip: Ipv4Addr,
    /// The service port on the VIP.
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: Protocol,
    /// What happens to a backend's existing flows when it goes down:
    /// "keep-flows" (default: they may still finish) or "shutdown-flows".
    #[serde(default)]
    pub on_down: OnDown,
    /// A backend that comes back up ramps its weight from 1 to full over
    /// this time ("0s" = at once).
    #[serde(default, with = "crate::duration")]
    pub slow_start: Duration,
    /// Command run (by /bin/sh -c, not waited for, killed after 10 s) on
    /// every health transition of a backend, as `CMD SERVICE ADDR:PORT STATE`
    /// with STATE "up" or "down"; also in LB_SERVICE, LB_BACKEND, LB_STATE,
    /// LB_REASON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_change: Option<String>,
    /// New connections per second the service must carry at its busiest
    /// (optional): `check-config` warns when the SNAT pool cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_rate: Option<u32>,
    /// How backends are checked (`[service.health_check]`); default: no checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// The backends (`[[service.backend]]` tables).
    #[serde(default, rename = "backend", skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendConfig>,
}

impl ServiceConfig {
    /// A service without backends, checks or options.
    pub fn new(name: &str, vip: Ipv4Addr, port: u16, protocol: Protocol) -> Self {
        Self {
            name: name.to_string(),
            vip,
            port,
            protocol,
            on_down: OnDown::default(),
            slow_start: Duration::ZERO,
            on_change: None,
            expected_rate: None,
            health_check: None,
            backends: Vec::new(),
        }
    }

    /// The health check of the backend at `address:port` (its own, else the
    /// service's), or `None` when it is not checked.
    pub fn check_for(&self, address: Ipv4Addr, port: u16) -> Option<&HealthCheckConfig> {
        self.backends
            .iter()
            .find(|b| b.address == address && b.port_or(self.port) == port)
            .and_then(|b| b.health_check.as_ref())
            .or(self.health_check.as_ref())
            .filter(|c| c.kind != CheckKind::None)
    }

    /// How problems name this service: by its name, else by its index.
    pub fn path(&self, index: usize) -> FieldPath {
        FieldPath::root()
            .key("service")
            .element(index, Element::Named(&self.name))
    }

    pub(crate) fn check_own_fields(&self, at: &FieldPath, problems: &mut Problems) {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= MAX_SERVICE_NAME
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_name {
            problems.push(
                at.key("name"),
                format!("must be 1-{MAX_SERVICE_NAME} characters of a-z, 0-9, '-' or '_'"),
            );
        }
        if crate::is_unusable(self.vip) {
            problems.push(
                at.key("vip"),
                format!("{} is not a usable unicast address", self.vip),
            );
        }
        if self.port == 0 {
            problems.push(at.key("port"), "0 is not a service port");
        }
        if let Some(check) = &self.health_check {
            check.check(&at.key("health_check"), problems);
        }
    }
}

/// `[[service.backend]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The backend's private address.
    pub address: Ipv4Addr,
    /// Backend port; defaults to the service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Relative share of new connections, 1..=100.
    #[serde(default)]
    pub weight: Weight,
    /// Replaces the service's health check for this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
}

impl BackendConfig {
    /// A backend at the service's port, weight 1, checked as the service.
    pub fn new(address: Ipv4Addr) -> Self {
        Self {
            address,
            port: None,
            weight: Weight::default(),
            health_check: None,
        }
    }

    pub fn port_or(&self, service_port: u16) -> u16 {
        self.port.unwrap_or(service_port)
    }
}
