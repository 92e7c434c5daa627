//! Names and paths the lab derives from its prefix (docs/lab.md): so labs
//! with different prefixes run side by side.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::Node;

/// The prefix of `cargo xtask lab up` without `--prefix`.
pub const DEFAULT_PREFIX: &str = "lab";
/// Where the lab keeps configs, logs, pid files and its state file
/// (`<RUN_ROOT>/<prefix>`).
pub const RUN_ROOT: &str = "/run/lb-lab";
/// bpffs mount point; the agent pins under `<BPFFS>/<instance>`.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The agent's control sockets: `<AGENT_SOCKET_DIR>/<instance>.sock`.
pub const AGENT_SOCKET_DIR: &str = "/run/lb-agent";

/// Checks that a prefix is short and made of `[a-z0-9-]`.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = (1..=12).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !prefix.starts_with('-')
        && !prefix.ends_with('-');
    if !ok {
        bail!("lab prefix `{prefix}`: use 1-12 characters of a-z, 0-9 and inner `-`");
    }
    Ok(())
}

/// `/run/lb-lab/<prefix>`.
pub fn run_dir(prefix: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(prefix)
}

/// `<prefix>-<node>`.
pub fn ns_name(prefix: &str, node: Node) -> String {
    format!("{prefix}-{}", node.name())
}

pub(super) fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for ok in ["lab", "demo", "t1", "a-b", "abcdefghijkl"] {
            assert!(validate_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Lab", "a_b", "abcdefghijklm", "a/b"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
        assert_eq!(ns_name("t1", Node::Lb1), "t1-lb1");
        assert_eq!(run_dir("t1"), Path::new("/run/lb-lab/t1"));
    }
}
