//! The agent's configuration model: one typed struct per TOML section,
//! defaults, bounded values that validate once ([`bounded`]), rules that
//! report [`Problem`]s with the field path they are about (lines come from
//! the TOML parser's spans, [`locate`]), and serialization for everything
//! that writes configs (the importer, the lab, Vagrant provisioning).
//!
//! The doc comment on every field is the configuration reference; the
//! packaged example shows every field.

pub mod bounded;
mod duration;
mod error;
mod floating_ip;
mod health;
mod kernel;
pub mod locate;
mod node;
mod problem;
mod restart;
mod service;
mod sync;
mod validate;
mod vrrp;
mod write;

#[cfg(test)]
mod tests;

use std::{net::Ipv4Addr, path::Path};

use serde::{Deserialize, Serialize};

pub use bounded::{
    GarpCount, Jitter, MaxFlows, OutOfBounds, PortRange, Priority, RiseFall, StatusRange,
    TrackWeight, Vrid, VrrpVersion, Weight,
};
pub use duration::{format_duration, parse_duration};
pub use error::{not_utf8, read_text, ConfigError, Located};
pub use floating_ip::{FloatingIpConfig, ProviderKind, MAX_PROVIDER_TRIES};
pub use health::{CheckKind, HealthCheckConfig, StartAs, CHECK_METHODS};
pub use kernel::BACKEND_TIME_WAIT;
pub use node::{ConntrackConfig, MetricsConfig, NodeConfig, XdpMode};
pub use problem::{FieldPath, Problem, Segment};
pub use restart::{restart_only_changes, RestartChange, RestartOnly};
pub use service::{BackendConfig, OnDown, Protocol, ServiceConfig, MAX_SERVICE_NAME};
pub use sync::{SyncConfig, DEFAULT_SYNC_PORT, DEFAULT_SYNC_QUEUE};
pub use vrrp::{TrackScript, VrrpConfig, MAX_PREEMPT_DELAY, MAX_TRACK_SCRIPT_TIMEOUT};

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node: interfaces, addresses, attach mode.
    pub node: NodeConfig,
    /// Connection tracking size and idle timeouts.
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    /// Prometheus metrics (`[metrics]`); off without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// The balanced services (`[[service]]` tables).
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceConfig>,
    /// High availability: VRRP election and the floating IP (`[vrrp]`);
    /// without it this node always holds the VIPs it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp: Option<VrrpConfig>,
    /// Flow sync with the VRRP peer (`[sync]`); without it connections end
    /// when the other node takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncConfig>,
}

impl Config {
    /// A config for `node` with default tables and nothing to balance yet.
    pub fn new(node: NodeConfig) -> Self {
        Self {
            node,
            conntrack: ConntrackConfig::default(),
            metrics: None,
            services: Vec::new(),
            vrrp: None,
            sync: None,
        }
    }

    /// The service called `name`, to change.
    pub fn service_mut(&mut self, name: &str) -> Option<&mut ServiceConfig> {
        self.services.iter_mut().find(|s| s.name == name)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in messages, and
    /// every problem carries its field path and line, as check-config shows
    /// them (so a refused start or reload points at the line too).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let document = locate::Document::parse(text);
        let config: Config = toml::from_str(text).map_err(|error| {
            let line = error.span().map(|span| locate::line_of(text, span.start));
            let message = error.message().trim().to_string();
            if !document.is_toml() {
                return ConfigError::Syntax {
                    path: origin.to_string(),
                    line,
                    message,
                };
            }
            let path = error
                .span()
                .map(|span| document.path_at(span.start))
                .unwrap_or_default();
            ConfigError::Invalid {
                path: origin.to_string(),
                problems: vec![Located {
                    line,
                    problem: Problem::new(path, message),
                }],
            }
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems: problems
                    .into_iter()
                    .map(|problem| document.locate(problem))
                    .collect(),
            })
        }
    }
}

/// Addresses no service, node or backend can have: 0.0.0.0/8 ("this
/// network"), loopback, multicast, the reserved 240.0.0.0/4 and broadcast.
pub fn is_unusable(addr: Ipv4Addr) -> bool {
    addr.octets()[0] == 0 || addr.is_multicast() || addr.octets()[0] >= 240 || addr.is_loopback()
}
