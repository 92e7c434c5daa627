//! Run-time backend changes (`lb-agent backends add/remove`), persisted so
//! they survive an agent restart. The config file stays as the operator
//! wrote it; the state file records the difference, and the agent applies
//! config + state at start.
//!
//! The state holds only what still differs from the config: a removal is
//! recorded (a "tombstone") only for a backend the config lists, and is
//! forgotten once the config no longer lists it; a backend added at run
//! time and removed again leaves nothing behind.

use std::{
    collections::BTreeMap,
    io::Write,
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::Config;

/// Errors of loading and saving the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading the state file failed.
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error(
        "state file {path} is corrupt ({message}); it must be a JSON object such as \
         {{\"services\": {{\"www\": {{\"added\": [{{\"address\": \"10.200.0.23\", \"port\": 80, \"weight\": 1}}], \"removed\": [], \"drained\": []}}}}}}. \
         Fix it, or move it away to start from the config alone (losing the run-time changes it holds); \
         the agent does not start with it and leaves it untouched"
    )]
    Corrupt { path: String, message: String },
    /// The state file adds backends the config's rules refuse.
    #[error(
        "state file {path} adds backends that check-config would refuse:\n{}\n\
         Fix or delete those entries, or move the file away to start from the config alone; \
         the agent does not start with it and leaves it untouched",
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    Invalid { path: String, problems: Vec<String> },
    /// Writing the state file failed; the change was not applied.
    #[error("cannot save state file {path}: {source}; the change was not applied")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A backend as the state file and the agent see it (port resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
}

/// Changes to one service relative to the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceChanges {
    /// Backends added at run time (or config backends with a new weight).
    #[serde(default)]
    pub added: Vec<BackendSpec>,
    /// Config backends removed at run time, as (address, port): only
    /// backends the config lists.
    #[serde(default)]
    pub removed: Vec<(Ipv4Addr, u16)>,
    /// Backends drained by the operator (kept, no new connections) until
    /// `backends add` enables them again.
    #[serde(default)]
    pub drained: Vec<(Ipv4Addr, u16)>,
}

/// The persisted run-time state of one agent instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeState {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceChanges>,
}

/// Whether `service` of `config` lists the backend `address:port`.
fn in_config(config: &Config, service: &str, address: Ipv4Addr, port: u16) -> bool {
    config.services.iter().any(|s| {
        s.name == service
            && s.backends
                .iter()
                .any(|b| b.address == address && b.port.unwrap_or(s.port) == port)
    })
}

impl RuntimeState {
    /// The state file of `instance` in `state_dir`.
    pub fn path(state_dir: &Path, instance: &str) -> PathBuf {
        state_dir.join(format!("{instance}.json"))
    }

    /// Loads the state file for `config`; a missing file is an empty
    /// state. A file that is not what this agent writes, or that adds a
    /// backend the config's rules refuse, is an error: starting without the
    /// run-time changes it holds would lose them silently.
    pub fn load(path: &Path, config: &Config) -> Result<Self, StateError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(StateError::Read {
                    path: shown,
                    source,
                })
            }
        };
        // serde reads a struct from a JSON array too: `[]` would be an
        // empty state.
        if !text.trim_start().starts_with('{') {
            return Err(StateError::Corrupt {
                path: shown,
                message: "it is not a JSON object".into(),
            });
        }
        let state: Self = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let problems = state.problems(config);
        if !problems.is_empty() {
            return Err(StateError::Invalid {
                path: shown,
                problems,
            });
        }
        Ok(state)
    }

    /// The backends this state adds that `config`'s rules refuse (for the
    /// services the config has; the others are not applied).
    pub fn problems(&self, config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, changes) in &self.services {
            if !config.services.iter().any(|s| &s.name == name) {
                continue;
            }
            for added in &changes.added {
                for reason in config.backend_problems(added.address, added.port, added.weight) {
                    problems.push(format!(
                        "service {name:?} backend {}:{} (added at run time): {reason}",
                        added.address, added.port
                    ));
                }
            }
        }
        problems
    }

    /// Drops what no longer differs from `config`: removals of backends
    /// the config does not list (so a backend the config lists again later
    /// appears), additions equal to a config backend, drains of backends
    /// that are gone. Changes to a service the config lacks are kept
    /// (without their removals), in case the service comes back. Returns
    /// whether anything was dropped.
    pub fn prune(&mut self, config: &Config) -> bool {
        let before = self.clone();
        let effective = self.effective_backends(config);
        for (name, changes) in &mut self.services {
            changes
                .removed
                .retain(|(a, p)| in_config(config, name, *a, *p));
            let Some(service) = config.services.iter().find(|s| &s.name == name) else {
                continue;
            };
            changes.added.retain(|added| {
                !service.backends.iter().any(|b| {
                    b.address == added.address
                        && b.port.unwrap_or(service.port) == added.port
                        && b.weight.get() == added.weight
                })
            });
            let present = effective.get(name);
            changes.drained.retain(|(a, p)| {
                present.is_some_and(|list| list.iter().any(|b| b.address == *a && b.port == *p))
            });
        }
        self.services.retain(|_, c| *c != ServiceChanges::default());
        *self != before
    }

    /// Writes atomically (temp file, fsync, rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp: PathBuf = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Adds a backend (or sets its weight, or ends its drain or removal).
    /// A config backend at its config weight needs no entry.
    pub fn add_backend(&mut self, config: &Config, service: &str, backend: BackendSpec) {
        let as_configured = config.services.iter().any(|s| {
            s.name == service
                && s.backends.iter().any(|b| {
                    b.address == backend.address
                        && b.port.unwrap_or(s.port) == backend.port
                        && b.weight.get() == backend.weight
                })
        });
        let changes = self.services.entry(service.to_string()).or_default();
        changes
            .drained
            .retain(|(a, p)| !(*a == backend.address && *p == backend.port));
        changes
            .removed
            .retain(|(a, p)| !(*a == backend.address && *p == backend.port));
        changes
            .added
            .retain(|b| !(b.address == backend.address && b.port == backend.port));
        if !as_configured {
            changes.added.push(backend);
        }
        self.services.retain(|_, c| *c != ServiceChanges::default());
    }

    /// Marks a backend drained (it must exist; the caller checks).
    pub fn drain_backend(&mut self, service: &str, address: Ipv4Addr, port: u16) {
        let changes = self.services.entry(service.to_string()).or_default();
        if !changes.drained.contains(&(address, port)) {
            changes.drained.push((address, port));
        }
    }

    pub fn is_drained(&self, service: &str, address: Ipv4Addr, port: u16) -> bool {
        self.services
            .get(service)
            .is_some_and(|c| c.drained.contains(&(address, port)))
    }

    /// Removes a backend: a run-time one just loses its entries, a config
    /// one gets a removal that hides it from the config.
    pub fn remove_backend(&mut self, config: &Config, service: &str, address: Ipv4Addr, port: u16) {
        let tombstone = in_config(config, service, address, port);
        let changes = self.services.entry(service.to_string()).or_default();
        changes
            .drained
            .retain(|(a, p)| !(*a == address && *p == port));
        changes
            .added
            .retain(|b| !(b.address == address && b.port == port));
        if tombstone && !changes.removed.contains(&(address, port)) {
            changes.removed.push((address, port));
        }
        self.services.retain(|_, c| *c != ServiceChanges::default());
    }

    /// The backends each configured service has after the run-time changes.
    pub fn effective_backends(&self, config: &Config) -> BTreeMap<String, Vec<BackendSpec>> {
        for name in self.services.keys() {
            if !config.services.iter().any(|s| &s.name == name) {
                warn!(service = %name, "state file has changes for a service the config no longer has; ignored");
            }
        }
        config
            .services
            .iter()
            .map(|service| {
                let changes = self.services.get(&service.name);
                let mut list: Vec<BackendSpec> = service
                    .backends
                    .iter()
                    .map(|b| BackendSpec {
                        address: b.address,
                        port: b.port.unwrap_or(service.port),
                        weight: b.weight.get(),
                    })
                    .filter(|b| !changes.is_some_and(|c| c.removed.contains(&(b.address, b.port))))
                    .collect();
                if let Some(changes) = changes {
                    for added in &changes.added {
                        match list
                            .iter_mut()
                            .find(|b| b.address == added.address && b.port == added.port)
                        {
                            Some(existing) => existing.weight = added.weight,
                            None => list.push(*added),
                        }
                    }
                }
                (service.name.clone(), list)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[node]
public_interface = "pub0"
private_interface = "priv0"
private_address = "10.200.0.11"
[[service]]
name = "www"
vip = "10.100.0.100"
port = 80
protocol = "tcp"
  [[service.backend]]
  address = "10.200.0.21"
  [[service.backend]]
  address = "10.200.0.22"
"#;

    fn addr(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, last)
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lb-agent-state-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn spec(last: u8, weight: u32) -> BackendSpec {
        BackendSpec {
            address: addr(last),
            port: 80,
            weight,
        }
    }

    fn config() -> Config {
        Config::parse(CONFIG, "t.toml").expect("valid")
    }

    fn www(config: &mut Config) -> &mut crate::config::ServiceConfig {
        config.service_mut("www").expect("www")
    }

    #[test]
    fn changes_apply_on_top_of_config() {
        let config = config();
        let mut state = RuntimeState::default();
        state.add_backend(&config, "www", spec(23, 2));
        state.remove_backend(&config, "www", addr(21), 80);
        let www = &state.effective_backends(&config)["www"];
        let addrs: Vec<_> = www.iter().map(|b| (b.address, b.weight)).collect();
        assert_eq!(addrs, vec![(addr(22), 1), (addr(23), 2)]);

        // Removed then added again: present; config backend with new weight.
        state.add_backend(&config, "www", spec(21, 5));
        state.remove_backend(&config, "www", addr(23), 80);
        let www = &state.effective_backends(&config)["www"];
        let addrs: Vec<_> = www.iter().map(|b| (b.address, b.weight)).collect();
        assert_eq!(addrs, vec![(addr(21), 5), (addr(22), 1)]);

        // Drained stays listed until added again.
        state.drain_backend("www", addr(22), 80);
        assert!(state.is_drained("www", addr(22), 80));
        assert_eq!(state.effective_backends(&config)["www"].len(), 2);
        state.add_backend(&config, "www", spec(22, 1));
        assert!(!state.is_drained("www", addr(22), 80));
    }

    #[test]
    fn add_remove_cycles_of_a_runtime_backend_leave_nothing_behind() {
        let config = config();
        let mut state = RuntimeState::default();
        for _ in 0..1000 {
            state.add_backend(&config, "www", spec(23, 1));
            state.remove_backend(&config, "www", addr(23), 80);
        }
        assert_eq!(state, RuntimeState::default(), "{state:?}");
        // Re-adding a config backend at its config weight needs no entry.
        state.remove_backend(&config, "www", addr(21), 80);
        assert_eq!(state.services["www"].removed, [(addr(21), 80)]);
        state.add_backend(&config, "www", spec(21, 1));
        assert_eq!(state, RuntimeState::default(), "{state:?}");
    }

    #[test]
    fn a_removed_runtime_backend_does_not_hide_a_later_config_backend() {
        let config = config();
        let mut state = RuntimeState::default();
        state.add_backend(&config, "www", spec(23, 1));
        state.remove_backend(&config, "www", addr(23), 80);
        // The operator then puts 10.200.0.23 into the config.
        let mut later = config.clone();
        www(&mut later)
            .backends
            .push(crate::config::BackendConfig::new(addr(23)));
        let www = &state.effective_backends(&later)["www"];
        assert!(www.iter().any(|b| b.address == addr(23)), "{www:?}");
    }

    #[test]
    fn removals_last_while_the_config_lists_the_backend() {
        let config = config();
        let mut state = RuntimeState::default();
        state.remove_backend(&config, "www", addr(22), 80);
        state.add_backend(&config, "www", spec(21, 7));
        assert!(!state.prune(&config), "nothing to drop yet");
        assert!(!state.effective_backends(&config)["www"]
            .iter()
            .any(|b| b.address == addr(22)));
        // The config drops web2 and gives web1 weight 7: both entries go.
        let mut without = config.clone();
        let backends = &mut www(&mut without).backends;
        backends.retain(|b| b.address != addr(22));
        backends[0].weight = crate::config::Weight::new(7).expect("weight");
        assert!(state.prune(&without));
        assert_eq!(state, RuntimeState::default(), "{state:?}");
        // So web2 listed in the config again is back.
        let www = &state.effective_backends(&config)["www"];
        assert!(www.iter().any(|b| b.address == addr(22)), "{www:?}");
    }

    fn write_and_load(text: &str) -> Result<RuntimeState, StateError> {
        let dir = temp_dir();
        let path = dir.join("inst.json");
        std::fs::write(&path, text).expect("write");
        let loaded = RuntimeState::load(&path, &config());
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            text,
            "loading never rewrites the file"
        );
        let _ = std::fs::remove_dir_all(dir);
        loaded
    }

    #[test]
    fn a_state_file_of_another_shape_is_refused() {
        for (text, expected) in [
            ("[]", "not a JSON object"),
            ("{\"servics\": {}}", "unknown field `servics`"),
            (
                "{\"services\": {\"www\": {\"add\": []}}}",
                "unknown field `add`",
            ),
            (
                "{\"services\": {\"www\": {\"added\": [{\"address\": \"10.200.0.23\", \"port\": 80, \"weight\": 1, \"wieght\": 2}]}}}",
                "unknown field `wieght`",
            ),
        ] {
            let message = write_and_load(text).unwrap_err().to_string();
            assert!(
                message.contains(expected)
                    && message.contains("inst.json")
                    && message.contains("move it away"),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn a_state_file_adding_what_the_config_refuses_is_refused() {
        let added = |address: &str, port: u16, weight: u32| {
            format!(
                "{{\"services\": {{\"www\": {{\"added\": [{{\"address\": \"{address}\", \"port\": {port}, \"weight\": {weight}}}]}}}}}}"
            )
        };
        for (text, expected) in [
            (
                added("10.200.0.23", 80, 1_000_000),
                "weight: 1000000 is out of range",
            ),
            (added("10.200.0.23", 0, 1), "port: 0 is not a backend port"),
            (added("10.100.0.100", 80, 1), "not a VIP"),
            (added("10.200.0.11", 80, 1), "this node's own address"),
            (added("0.0.0.0", 80, 1), "not a unicast address"),
            (added("224.0.0.5", 80, 1), "not a unicast address"),
        ] {
            let message = write_and_load(&text).unwrap_err().to_string();
            assert!(
                message.contains(expected)
                    && message.contains("inst.json")
                    && message.contains("service \"www\" backend"),
                "{text}: {message}"
            );
        }
        assert!(write_and_load(&added("10.200.0.23", 8080, 100)).is_ok());
    }

    #[test]
    fn save_and_load_round_trip_and_corruption() {
        let dir = temp_dir();
        let path = dir.join("inst.json");
        let config = config();
        assert_eq!(
            RuntimeState::load(&path, &config).expect("missing is empty"),
            RuntimeState::default()
        );
        let mut state = RuntimeState::default();
        state.add_backend(
            &config,
            "www",
            BackendSpec {
                address: addr(23),
                port: 8080,
                weight: 1,
            },
        );
        state.save(&path).expect("save");
        assert_eq!(RuntimeState::load(&path, &config).expect("load"), state);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        std::fs::write(&path, "{ not json").expect("write");
        let message = RuntimeState::load(&path, &config).unwrap_err().to_string();
        assert!(
            message.contains("corrupt") && message.contains("move it away"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
