//! Where an instance's pinned objects live (after bpfman's `directories`):
//! `/sys/fs/bpf/<instance>/<map>` and `/sys/fs/bpf/<instance>/link_<iface>`.

use std::path::{Path, PathBuf};

/// Mount point of the BPF filesystem.
pub const BPFFS: &str = "/sys/fs/bpf";
/// statfs magic of the BPF filesystem.
pub const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub fn instance_dir(root: &Path, instance: &str) -> PathBuf {
    root.join(instance)
}

pub fn map_pin(dir: &Path, map: &str) -> PathBuf {
    dir.join(map)
}

pub fn link_pin(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link_{interface}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_derive_from_instance() {
        let dir = instance_dir(Path::new(BPFFS), "lab-lb1");
        assert_eq!(dir, Path::new("/sys/fs/bpf/lab-lb1"));
        assert_eq!(
            map_pin(&dir, "flows"),
            Path::new("/sys/fs/bpf/lab-lb1/flows")
        );
        assert_eq!(
            link_pin(&dir, "pub0"),
            Path::new("/sys/fs/bpf/lab-lb1/link_pub0")
        );
    }
}
