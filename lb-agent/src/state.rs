//! Run-time backend changes (`lb-agent backends add/remove`), persisted so
//! they survive an agent restart. The config file stays as the operator
//! wrote it; the state file records the difference, and the agent applies
//! config + state at start.

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
    #[error("state file {path} is corrupt ({message}); fix it or delete it to start from the config alone")]
    Corrupt { path: String, message: String },
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
pub struct BackendSpec {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
}

/// Changes to one service relative to the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceChanges {
    /// Backends added at run time (or config backends with a new weight).
    #[serde(default)]
    pub added: Vec<BackendSpec>,
    /// Config backends removed at run time, as (address, port).
    #[serde(default)]
    pub removed: Vec<(Ipv4Addr, u16)>,
    /// Backends drained by the operator (kept, no new connections) until
    /// `backends add` enables them again.
    #[serde(default)]
    pub drained: Vec<(Ipv4Addr, u16)>,
}

/// The persisted run-time state of one agent instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceChanges>,
}

impl RuntimeState {
    /// Loads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })
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

    pub fn add_backend(&mut self, service: &str, backend: BackendSpec) {
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
        changes.added.push(backend);
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

    pub fn remove_backend(&mut self, service: &str, address: Ipv4Addr, port: u16) {
        let changes = self.services.entry(service.to_string()).or_default();
        changes
            .drained
            .retain(|(a, p)| !(*a == address && *p == port));
        changes
            .added
            .retain(|b| !(b.address == address && b.port == port));
        if !changes.removed.contains(&(address, port)) {
            changes.removed.push((address, port));
        }
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
                        weight: b.weight,
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

    #[test]
    fn changes_apply_on_top_of_config() {
        let config = Config::parse(CONFIG, "t.toml").expect("valid");
        let mut state = RuntimeState::default();
        state.add_backend(
            "www",
            BackendSpec {
                address: addr(23),
                port: 80,
                weight: 2,
            },
        );
        state.remove_backend("www", addr(21), 80);
        let www = &state.effective_backends(&config)["www"];
        let addrs: Vec<_> = www.iter().map(|b| (b.address, b.weight)).collect();
        assert_eq!(addrs, vec![(addr(22), 1), (addr(23), 2)]);

        // Removed then added again: present; config backend with new weight.
        state.add_backend(
            "www",
            BackendSpec {
                address: addr(21),
                port: 80,
                weight: 5,
            },
        );
        state.remove_backend("www", addr(23), 80);
        let www = &state.effective_backends(&config)["www"];
        let addrs: Vec<_> = www.iter().map(|b| (b.address, b.weight)).collect();
        assert_eq!(addrs, vec![(addr(21), 5), (addr(22), 1)]);

        // Drained stays listed until added again.
        state.drain_backend("www", addr(22), 80);
        assert!(state.is_drained("www", addr(22), 80));
        assert_eq!(state.effective_backends(&config)["www"].len(), 2);
        state.add_backend(
            "www",
            BackendSpec {
                address: addr(22),
                port: 80,
                weight: 1,
            },
        );
        assert!(!state.is_drained("www", addr(22), 80));
    }

    #[test]
    fn save_and_load_round_trip_and_corruption() {
        let dir = temp_dir();
        let path = dir.join("inst.json");
        assert_eq!(
            RuntimeState::load(&path).expect("missing is empty"),
            RuntimeState::default()
        );
        let mut state = RuntimeState::default();
        state.add_backend(
            "www",
            BackendSpec {
                address: addr(23),
                port: 8080,
                weight: 1,
            },
        );
        state.save(&path).expect("save");
        assert_eq!(RuntimeState::load(&path).expect("load"), state);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        std::fs::write(&path, "{ not json").expect("write");
        let message = RuntimeState::load(&path).unwrap_err().to_string();
        assert!(
            message.contains("corrupt") && message.contains("delete it"),
            "{message}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
