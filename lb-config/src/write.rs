//! The config as TOML for people: fields at their defaults are left out,
//! so a written config says what differs (and reads back to the same
//! model, as the round-trip tests check).

use std::net::Ipv4Addr;

use serde::Serialize;
use toml::{Table, Value};

use crate::{
    BackendConfig, Config, ConntrackConfig, FloatingIpConfig, HealthCheckConfig, NodeConfig,
    Priority, ServiceConfig, TrackScript, Vrid, VrrpConfig,
};

impl Config {
    /// Every field written out, defaults too.
    pub fn to_toml_full(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The config as TOML without the fields that are at their defaults.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let mut doc = Table::try_from(self)?;
        if let Some(node) = table_mut(&mut doc, "node") {
            let default = NodeConfig::new("", "", Ipv4Addr::UNSPECIFIED);
            prune(
                node,
                &defaults(&default)?,
                &["public_interface", "private_interface", "private_address"],
            );
        }
        prune_section(
            &mut doc,
            "conntrack",
            &defaults(&ConntrackConfig::default())?,
        );
        if let Some(Value::Array(services)) = doc.get_mut("service") {
            let default = ServiceConfig::new("", Ipv4Addr::UNSPECIFIED, 0, crate::Protocol::Tcp);
            let default = defaults(&default)?;
            let default_backend = defaults(&BackendConfig::new(Ipv4Addr::UNSPECIFIED))?;
            for service in services.iter_mut().filter_map(Value::as_table_mut) {
                prune(service, &default, &["name", "vip", "port", "protocol"]);
                prune_check(service)?;
                if let Some(Value::Array(backends)) = service.get_mut("backend") {
                    for backend in backends.iter_mut().filter_map(Value::as_table_mut) {
                        prune(backend, &default_backend, &["address"]);
                        prune_check(backend)?;
                    }
                }
            }
        }
        if let Some(vrrp) = table_mut(&mut doc, "vrrp") {
            prune_vrrp(vrrp)?;
        }
        toml::to_string(&doc)
    }
}

impl VrrpConfig {
    /// `[vrrp]` alone, without the fields at their defaults, for appending
    /// to a config that has none.
    pub fn to_toml_section(&self) -> Result<String, toml::ser::Error> {
        let mut vrrp = Table::try_from(self)?;
        prune_vrrp(&mut vrrp)?;
        let mut doc = Table::new();
        doc.insert("vrrp".into(), Value::Table(vrrp));
        toml::to_string(&doc)
    }
}

impl FloatingIpConfig {
    /// `[vrrp.floating_ip]` alone, without the fields at their defaults,
    /// for appending to a `[vrrp]` section that has none.
    pub fn to_toml_section(&self) -> Result<String, toml::ser::Error> {
        let mut floating_ip = Table::try_from(self)?;
        prune(
            &mut floating_ip,
            &defaults(&FloatingIpConfig::default())?,
            &[],
        );
        let mut vrrp = Table::new();
        vrrp.insert("floating_ip".into(), Value::Table(floating_ip));
        let mut doc = Table::new();
        doc.insert("vrrp".into(), Value::Table(vrrp));
        toml::to_string(&doc)
    }
}

fn prune_vrrp(vrrp: &mut Table) -> Result<(), toml::ser::Error> {
    let default = VrrpConfig::new(Vrid::default(), Priority::default());
    prune(
        vrrp,
        &defaults(&default)?,
        &["vrid", "priority", "floating_ip"],
    );
    prune_section(
        vrrp,
        "floating_ip",
        &defaults(&FloatingIpConfig::default())?,
    );
    if let Some(Value::Array(scripts)) = vrrp.get_mut("track_script") {
        let default = defaults(&TrackScript::new("", ""))?;
        for script in scripts.iter_mut().filter_map(Value::as_table_mut) {
            prune(script, &default, &["name", "command"]);
        }
    }
    Ok(())
}

fn defaults<T: Serialize>(value: &T) -> Result<Table, toml::ser::Error> {
    Table::try_from(value)
}

fn table_mut<'t>(table: &'t mut Table, key: &str) -> Option<&'t mut Table> {
    table.get_mut(key).and_then(Value::as_table_mut)
}

/// Drops the keys of `table` that equal `defaults`, except `keep`.
fn prune(table: &mut Table, defaults: &Table, keep: &[&str]) {
    table.retain(|key, value| keep.contains(&key) || defaults.get(key) != Some(value));
}

/// Prunes the sub-table `key` and drops it when nothing is left: a
/// section whose absence means its defaults.
fn prune_section(parent: &mut Table, key: &str, defaults: &Table) {
    if let Some(section) = table_mut(parent, key) {
        prune(section, defaults, &[]);
        if section.is_empty() {
            parent.remove(key);
        }
    }
}

/// A health check is pruned but kept even when empty: its presence
/// switches checks on.
fn prune_check(owner: &mut Table) -> Result<(), toml::ser::Error> {
    if let Some(check) = table_mut(owner, "health_check") {
        prune(check, &defaults(&HealthCheckConfig::default())?, &[]);
    }
    Ok(())
}
