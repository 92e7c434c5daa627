//! The config as TOML for people: fields at their defaults are left out,
//! so a written config says what differs (and reads back to the same
//! model, as the round-trip tests check).

use std::net::Ipv4Addr;

use serde::{de::DeserializeOwned, Serialize};
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
            Defaults::of(&NodeConfig::new("", "", Ipv4Addr::UNSPECIFIED))?.prune(node);
        }
        prune_section(
            &mut doc,
            "conntrack",
            &Defaults::of(&ConntrackConfig::default())?,
        );
        if let Some(Value::Array(services)) = doc.get_mut("service") {
            let default = ServiceConfig::new("", Ipv4Addr::UNSPECIFIED, 0, crate::Protocol::Tcp);
            let default = Defaults::of(&default)?;
            let default_backend = Defaults::of(&BackendConfig::new(Ipv4Addr::UNSPECIFIED))?;
            let default_check = Defaults::of(&HealthCheckConfig::default())?;
            for service in services.iter_mut().filter_map(Value::as_table_mut) {
                default.prune(service);
                prune_check(service, &default_check);
                if let Some(Value::Array(backends)) = service.get_mut("backend") {
                    for backend in backends.iter_mut().filter_map(Value::as_table_mut) {
                        default_backend.prune(backend);
                        prune_check(backend, &default_check);
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
        Defaults::of(&FloatingIpConfig::default())?.prune(&mut floating_ip);
        let mut vrrp = Table::new();
        vrrp.insert("floating_ip".into(), Value::Table(floating_ip));
        let mut doc = Table::new();
        doc.insert("vrrp".into(), Value::Table(vrrp));
        toml::to_string(&doc)
    }
}

fn prune_vrrp(vrrp: &mut Table) -> Result<(), toml::ser::Error> {
    Defaults::of(&VrrpConfig::new(Vrid::default(), Priority::default()))?.prune(vrrp);
    prune_section(
        vrrp,
        "floating_ip",
        &Defaults::of(&FloatingIpConfig::default())?,
    );
    if let Some(Value::Array(scripts)) = vrrp.get_mut("track_script") {
        let default = Defaults::of(&TrackScript::new("", ""))?;
        for script in scripts.iter_mut().filter_map(Value::as_table_mut) {
            default.prune(script);
        }
    }
    Ok(())
}

/// A section as written at its defaults, and the keys a parse of it
/// requires: those are written even when they equal the sample's.
struct Defaults {
    table: Table,
    required: Vec<String>,
}

impl Defaults {
    /// From `sample`, the section with defaults wherever it has them. The
    /// required keys are found by leaving each out of the sample in turn
    /// and parsing it back, so a field without a serde default is never
    /// pruned away, whoever adds it.
    fn of<T: Serialize + DeserializeOwned>(sample: &T) -> Result<Self, toml::ser::Error> {
        let table = Table::try_from(sample)?;
        let required = table
            .keys()
            .filter(|key| {
                let mut without = table.clone();
                without.remove(key.as_str());
                Value::Table(without).try_into::<T>().is_err()
            })
            .cloned()
            .collect();
        Ok(Self { table, required })
    }

    /// Drops the keys of `table` that are at their defaults and not
    /// required.
    fn prune(&self, table: &mut Table) {
        table.retain(|key, value| {
            self.required.iter().any(|r| r == key) || self.table.get(key) != Some(value)
        });
    }
}

fn table_mut<'t>(table: &'t mut Table, key: &str) -> Option<&'t mut Table> {
    table.get_mut(key).and_then(Value::as_table_mut)
}

/// Prunes the sub-table `key` and drops it when nothing is left: a
/// section whose absence means its defaults.
fn prune_section(parent: &mut Table, key: &str, defaults: &Defaults) {
    if let Some(section) = table_mut(parent, key) {
        defaults.prune(section);
        if section.is_empty() {
            parent.remove(key);
        }
    }
}

/// A health check is pruned but kept even when empty: its presence
/// switches checks on.
fn prune_check(owner: &mut Table, defaults: &Defaults) {
    if let Some(check) = table_mut(owner, "health_check") {
        defaults.prune(check);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys found required are those the sections' docs call required,
    /// and every sample parses back whole (else every key would look
    /// required, and nothing would be pruned).
    #[test]
    fn required_keys_are_the_fields_without_defaults() {
        fn required<T: Serialize + DeserializeOwned>(sample: &T) -> Vec<String> {
            let defaults = Defaults::of(sample).expect("serializes");
            assert!(Value::Table(defaults.table.clone()).try_into::<T>().is_ok());
            let mut keys = defaults.required;
            keys.sort();
            keys
        }
        assert_eq!(
            required(&NodeConfig::new("", "", Ipv4Addr::UNSPECIFIED)),
            ["private_address", "private_interface", "public_interface"]
        );
        assert_eq!(
            required(&ServiceConfig::new(
                "",
                Ipv4Addr::UNSPECIFIED,
                0,
                crate::Protocol::Tcp
            )),
            ["name", "port", "protocol", "vip"]
        );
        assert_eq!(
            required(&BackendConfig::new(Ipv4Addr::UNSPECIFIED)),
            ["address"]
        );
        assert_eq!(
            required(&VrrpConfig::new(Vrid::default(), Priority::default())),
            ["priority", "vrid"]
        );
        assert_eq!(required(&TrackScript::new("", "")), ["command", "name"]);
        assert!(required(&ConntrackConfig::default()).is_empty());
        assert!(required(&HealthCheckConfig::default()).is_empty());
        assert!(required(&FloatingIpConfig::default()).is_empty());
    }

    /// A config of nothing but required fields, each at its sample's
    /// value, is written whole and reads back.
    #[test]
    fn a_config_at_the_samples_values_reads_back() {
        let mut config = Config::new(NodeConfig::new("", "", Ipv4Addr::UNSPECIFIED));
        let mut service = ServiceConfig::new("", Ipv4Addr::UNSPECIFIED, 0, crate::Protocol::Tcp);
        service
            .backends
            .push(BackendConfig::new(Ipv4Addr::UNSPECIFIED));
        config.services.push(service);
        let mut vrrp = VrrpConfig::new(Vrid::default(), Priority::default());
        vrrp.track_script.push(TrackScript::new("", ""));
        config.vrrp = Some(vrrp);
        let text = config.to_toml().expect("serializes");
        let back: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, config, "{text}");
    }
}
