//! The lab's state file `<run_dir>/lab.json`: the choices the lab was
//! brought up with. Whatever acts on a running lab later (starting an
//! agent again, `lab status`, the tests' handles) reads them from here, so
//! a restarted agent gets the config the lab was built with.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{LabOptions, LbSetup, Node, Provider, VrrpVersion, XdpMode};

/// The state file's name in the run dir.
pub const STATE_FILE: &str = "lab.json";

/// Files in which builds before `lab.json` kept the state; only named to
/// recognize such a lab.
const OLD_MARKERS: [&str; 4] = ["ha", "xdp", "classic", "provider"];

/// A lab's options that outlive `lab up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabState {
    pub lbs: LbSetup,
    pub vrrp: VrrpVersion,
    /// In humantime's units, as the agent's config writes it ("1s").
    #[serde(with = "duration_text")]
    pub advert_int: Duration,
    pub classic: Vec<Node>,
    pub provider: Provider,
    pub xdp: XdpMode,
}

impl LabState {
    pub fn of(options: &LabOptions) -> Self {
        Self {
            lbs: options.lbs,
            vrrp: options.vrrp,
            advert_int: options.advert_int,
            classic: options.classic.clone(),
            provider: options.provider,
            xdp: options.xdp,
        }
    }

    pub fn is_ha(&self) -> bool {
        self.lbs.is_ha()
    }

    /// Whether `node` runs keepalived + HAProxy rather than the agent.
    pub fn is_classic(&self, node: Node) -> bool {
        self.classic.contains(&node)
    }

    /// The advert interval as the agent's and the lab's configs write it.
    pub fn advert_int_text(&self) -> String {
        lb_config::format_duration(self.advert_int)
    }

    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(STATE_FILE)
    }

    pub fn write(&self, run_dir: &Path) -> Result<()> {
        let path = Self::path(run_dir);
        let text = serde_json::to_string_pretty(self).context("serializing the lab state")?;
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The state of the lab `prefix` in `dir`, its run dir. A lab without a state file (brought
    /// up by an older build, which kept marker files instead, or cut short
    /// before it wrote one) is refused: guessing its options could start
    /// agents that do not match it.
    pub fn read(prefix: &str, dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let down_first = format!("run `cargo xtask lab down --prefix {prefix}` first");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if !dir.exists() {
                    bail!(
                        "lab {prefix} is not up (no {}); `cargo xtask lab up --prefix {prefix}` \
                         brings it up",
                        path.display()
                    );
                }
                let markers: Vec<&str> = OLD_MARKERS
                    .into_iter()
                    .filter(|m| dir.join(m).exists())
                    .collect();
                let why = if markers.is_empty() {
                    "brought up by an older xtask or only half built".to_owned()
                } else {
                    format!(
                        "brought up by an older xtask: marker files {}",
                        markers.join(", ")
                    )
                };
                bail!(
                    "lab {prefix} has no state file {} ({why}); {down_first}",
                    path.display()
                );
            }
            Err(err) => {
                return Err(err).with_context(|| format!("reading {}", path.display()));
            }
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "lab {prefix}: {} does not hold this xtask's lab state; {down_first}",
                path.display()
            )
        })
    }
}

/// `Duration` as humantime text, so the file reads as the command line.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&lb_config::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::udp::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_file_round_trips_in_command_line_terms() {
        let state = LabState {
            lbs: LbSetup::HaPair,
            vrrp: VrrpVersion::V3,
            advert_int: Duration::from_millis(100),
            classic: vec![Node::Lb2],
            provider: Provider::Digitalocean,
            xdp: XdpMode::Native,
        };
        let dir = temp_dir("round");
        state.write(&dir).unwrap();
        let text = std::fs::read_to_string(LabState::path(&dir)).unwrap();
        for needle in [
            "\"lbs\": \"ha-pair\"",
            "\"vrrp\": \"v3\"",
            "\"advert_int\": \"100ms\"",
            "\"lb2\"",
            "\"provider\": \"digitalocean\"",
            "\"xdp\": \"native\"",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        let back: LabState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.advert_int_text(), "100ms");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn options_become_state() {
        let state = LabState::of(&LabOptions::default());
        assert!(state.is_ha() && state.classic.is_empty());
        assert_eq!(
            (state.vrrp, state.advert_int_text().as_str()),
            (VrrpVersion::V2, "1s")
        );
    }

    #[test]
    fn a_lab_without_the_file_is_refused_with_the_way_out() {
        let dir = temp_dir("old");
        std::fs::write(dir.join("ha"), "2 1s").unwrap();
        let err = format!("{:#}", LabState::read("t1", &dir).unwrap_err());
        assert!(err.contains("marker files ha"), "{err}");
        assert!(err.contains("cargo xtask lab down --prefix t1"), "{err}");
        std::fs::write(LabState::path(&dir), "{}").unwrap();
        let err = format!("{:#}", LabState::read("t1", &dir).unwrap_err());
        assert!(err.contains("cargo xtask lab down --prefix t1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = format!("{:#}", LabState::read("t1", &dir).unwrap_err());
        assert!(err.contains("is not up"), "{err}");
    }

    #[test]
    fn strange_files_are_refused() {
        for bad in [
            r#"{"lbs":"ha-pair","vrrp":"v4","advert_int":"1s","classic":[],"provider":"local","xdp":"generic"}"#,
            r#"{"lbs":"ha-pair","vrrp":"v2","advert_int":"1","classic":[],"provider":"local","xdp":"generic"}"#,
            r#"{"lbs":"ha-pair"}"#,
        ] {
            assert!(serde_json::from_str::<LabState>(bad).is_err(), "{bad}");
        }
    }
}
