//! Loads the XDP program with its maps pinned under
//! `/sys/fs/bpf/<instance>/`, adopting the maps (and so the live flows) of an
//! earlier run, and attaches it through pinned bpf_links so the data path
//! keeps forwarding when the agent dies. A restarted agent swaps its program
//! into the existing links atomically (`bpf_link_update`): no packet sees a
//! detached interface.

use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{ArrayOfMaps, Map, MapData, MapInfo},
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    map_names,
    maps::{InnerSpec, MapKind, MapSpec, OnMismatch, MAPS},
};
use tracing::{info, warn};

use super::{maps::Tables, pins, DataplaneError};

/// How the program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode, works on every interface.
    Generic,
}

/// What to load and where.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub instance: String,
    /// Interfaces to attach to (public first; duplicates are ignored).
    pub interfaces: Vec<String>,
    pub mode: XdpAttachMode,
    /// Size of each connection-tracking map.
    pub max_flows: u32,
    /// BPF filesystem root, normally `/sys/fs/bpf`.
    pub bpffs: PathBuf,
}

/// A loaded (and possibly attached) instance of the program.
pub struct Dataplane {
    ebpf: Ebpf,
    dir: PathBuf,
    interfaces: Vec<String>,
    mode: XdpAttachMode,
    /// Whether maps of an earlier run were adopted.
    pub adopted: bool,
    /// Whether the earlier run kept reply entries in the `replies` hash
    /// (`restore_reply_entries`, then `drop_legacy_replies`).
    pub legacy_replies: bool,
}

const PROGRAM: &str = "lb";

/// The balancer program of a loaded object.
fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(PROGRAM)
        .ok_or_else(|| DataplaneError::Missing(format!("program {PROGRAM}")))?
        .try_into()
        .map_err(|source| DataplaneError::Program {
            action: "program lb is not XDP".into(),
            source,
        })
}

/// Mounts the BPF filesystem on `path` unless it already is one.
pub fn ensure_bpffs(path: &Path) -> Result<(), DataplaneError> {
    let err = |source| DataplaneError::BpfFs {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    let stat = nix::sys::statfs::statfs(path).map_err(|errno| err(errno.into()))?;
    if stat.filesystem_type().0 as i64 == pins::BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| err(errno.into()))?;
    info!(path = %path.display(), "mounted the BPF filesystem");
    Ok(())
}

fn describe(kind: Option<MapKind>, key: u32, value: u32) -> String {
    match kind {
        Some(kind) => {
            let name = format!("{kind:?}");
            let article = if name.starts_with(['A', 'E', 'I', 'O', 'U']) {
                "an"
            } else {
                "a"
            };
            format!("{article} {name} map of {key}/{value}-byte keys/values")
        }
        None => format!("a map of another kind with {key}/{value}-byte keys/values"),
    }
}

/// Checks the pins of an earlier run against this build's `MAPS`:
/// replaces those an upgrade may replace, refuses the others when their
/// layout differs, and keeps flow tables of another size or of the LRU
/// kind of earlier versions (with a warning) so live flows survive.
fn check_pins_compatible(dir: &Path, max_flows: u32) -> Result<(), DataplaneError> {
    for map in &MAPS {
        let path = pins::map_pin(dir, map.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(DataplaneError::map(map.name))?;
        let found = (info.key_size(), info.value_size());
        let kind = info.map_type().ok().and_then(MapKind::of);
        let layout_differs = found != (map.key_size, map.value_size);
        if map.on_mismatch == OnMismatch::Replace {
            if layout_differs || kind != Some(map.kind) || info.max_entries() != map.max_entries {
                // Nothing in these outlives a restart anyway (see
                // `OnMismatch::Replace`), so an upgrade that reshaped them
                // drops the old pin (a program still running keeps its own
                // reference until the new one replaces it).
                std::fs::remove_file(&path).map_err(|source| DataplaneError::Io {
                    action: "removing a map pin of an earlier version",
                    path: path.display().to_string(),
                    source,
                })?;
                info!(path = %path.display(), "replaced a map of an earlier version");
            }
            continue;
        }
        let legacy_lru_table = map.resized_at_load && kind == Some(MapKind::LruHash);
        if layout_differs || (kind != Some(map.kind) && !legacy_lru_table) {
            return Err(DataplaneError::IncompatiblePin {
                path: path.display().to_string(),
                dir: dir.display().to_string(),
                found: describe(kind, found.0, found.1),
                expected: describe(Some(map.kind), map.key_size, map.value_size),
            });
        }
        if let Some(inner) = map.inner {
            check_inner_maps(&path, dir, map, inner)?;
        }
        if legacy_lru_table {
            warn!(
                map = map.name,
                "keeping the pinned connection table of an earlier version so live flows \
                 survive; it evicts idle connections when full, so a SYN flood can still \
                 displace them: stop the agent (without --keep-forwarding) to replace it"
            );
        }
        if map.resized_at_load && info.max_entries() != max_flows {
            warn!(
                map = map.name,
                pinned = info.max_entries(),
                configured = max_flows,
                "keeping the pinned connection table and its size so live flows survive; \
                 stop the agent (without --keep-forwarding) to apply the new conntrack.max_flows"
            );
        }
    }
    Ok(())
}

/// The kind and key/value sizes of the first map the pinned array of maps
/// at `path` holds; `None` if it holds none (nothing there to misread).
fn first_inner_layout(
    path: &Path,
    map: &MapSpec,
) -> Result<Option<(Option<MapKind>, u32, u32)>, DataplaneError> {
    let data = MapData::from_pin(path).map_err(DataplaneError::map(map.name))?;
    let outer: ArrayOfMaps<MapData, MapData> = Map::ArrayOfMaps(data)
        .try_into()
        .map_err(DataplaneError::map(map.name))?;
    for index in 0..map.max_entries {
        if let Ok(inner) = outer.get(&index, 0) {
            let info = inner.info().map_err(DataplaneError::map(map.name))?;
            let kind = info.map_type().ok().and_then(MapKind::of);
            return Ok(Some((kind, info.key_size(), info.value_size())));
        }
    }
    Ok(None)
}

/// Refuses a pinned array of maps whose maps have another layout: the
/// program would read their entries with this build's layout, and the
/// kernel refuses new maps of this layout beside them.
fn check_inner_maps(
    path: &Path,
    dir: &Path,
    map: &MapSpec,
    inner: InnerSpec,
) -> Result<(), DataplaneError> {
    let Some((kind, key_size, value_size)) = first_inner_layout(path, map)? else {
        return Ok(());
    };
    if (kind, key_size, value_size) == (Some(inner.kind), inner.key_size, inner.value_size) {
        return Ok(());
    }
    Err(DataplaneError::IncompatiblePin {
        path: path.display().to_string(),
        dir: dir.display().to_string(),
        found: format!(
            "an array of maps holding {}",
            describe(kind, key_size, value_size)
        ),
        expected: format!(
            "one holding {}",
            describe(Some(inner.kind), inner.key_size, inner.value_size)
        ),
    })
}

impl Dataplane {
    /// Loads `object` (verifier included) with maps pinned under
    /// `<bpffs>/<instance>/`, reusing pinned maps of an earlier run.
    pub fn load(opts: &LoadOptions, object: &[u8]) -> Result<Self, DataplaneError> {
        if object.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        ensure_bpffs(&opts.bpffs)?;
        let dir = pins::instance_dir(&opts.bpffs, &opts.instance);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| DataplaneError::Io {
                action: "creating pin directory",
                path: dir.display().to_string(),
                source,
            })?;
        check_pins_compatible(&dir, opts.max_flows)?;
        let adopted = pins::map_pin(&dir, map_names::FLOWS).exists();
        let legacy_replies = pins::map_pin(&dir, map_names::LEGACY_REPLIES).exists();

        let mut loader = EbpfLoader::new();
        let pin_paths: Vec<(&str, PathBuf)> = MAPS
            .iter()
            .map(|map| (map.name, pins::map_pin(&dir, map.name)))
            .collect();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        for map in MAPS.iter().filter(|m| m.resized_at_load) {
            loader.map_max_entries(map.name, opts.max_flows);
        }
        let mut ebpf = loader.load(object)?;
        xdp_program(&mut ebpf)?
            .load()
            .map_err(|source| DataplaneError::Program {
                action: "loading the XDP program (verifier)".into(),
                source,
            })?;
        let mut interfaces: Vec<String> = Vec::new();
        for name in &opts.interfaces {
            if !interfaces.contains(name) {
                interfaces.push(name.clone());
            }
        }
        if adopted {
            info!(dir = %dir.display(), "adopted pinned maps and their flows from an earlier run");
        }
        Ok(Self {
            ebpf,
            dir,
            interfaces,
            mode: opts.mode,
            adopted,
            legacy_replies,
        })
    }

    /// Removes the pin of the earlier run's `replies` hash, once its flows
    /// have their reply entries in the reply tables.
    pub fn drop_legacy_replies(&mut self) -> Result<(), DataplaneError> {
        let path = pins::map_pin(&self.dir, map_names::LEGACY_REPLIES);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DataplaneError::Io {
                    action: "removing the replies map of an earlier version",
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        self.legacy_replies = false;
        Ok(())
    }

    /// Where this instance's maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the maps out of the loaded object for typed access.
    pub fn tables(&mut self) -> Result<Tables, DataplaneError> {
        Tables::take(&mut self.ebpf)
    }

    /// Attaches to every interface: replaces the program in an existing
    /// pinned link, or attaches and pins a new link.
    pub fn attach(&mut self) -> Result<(), DataplaneError> {
        let interfaces = self.interfaces.clone();
        for interface in &interfaces {
            if interface_index(interface).is_none() {
                return Err(DataplaneError::NoInterface {
                    name: interface.clone(),
                });
            }
            let pin = pins::link_pin(&self.dir, interface);
            if pin.exists() {
                self.replace_in_link(interface, &pin)?;
            } else {
                self.attach_new(interface, &pin)?;
            }
        }
        Ok(())
    }

    fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        xdp_program(&mut self.ebpf)
    }

    fn replace_in_link(&mut self, interface: &str, pin: &Path) -> Result<(), DataplaneError> {
        let pinned = PinnedLink::from_pin(pin).map_err(|e| DataplaneError::Io {
            action: "opening pinned link",
            path: pin.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let link: aya::programs::xdp::XdpLink =
            FdLink::from(pinned)
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| DataplaneError::Io {
                    action: "pinned link is not an XDP link",
                    path: pin.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        let program = self.program()?;
        let id = program
            .attach_to_link(link)
            .map_err(|source| DataplaneError::Program {
                action: format!("replacing the program on {interface}"),
                source,
            })?;
        // The pin keeps the link (and the attachment) alive, not our fd.
        let _ = program.take_link(id);
        info!(interface, "swapped the new program into the existing link");
        Ok(())
    }

    fn attach_new(&mut self, interface: &str, pin: &Path) -> Result<(), DataplaneError> {
        let modes: &[(XdpMode, &str)] = match self.mode {
            XdpAttachMode::Native => &[(XdpMode::Driver, "native")],
            XdpAttachMode::Generic => &[(XdpMode::Skb, "generic")],
            XdpAttachMode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        };
        let program = self.program()?;
        let mut last_error = None;
        for (mode, label) in modes {
            match program.attach(interface, *mode) {
                Ok(id) => {
                    let link = program
                        .take_link(id)
                        .map_err(|source| DataplaneError::Program {
                            action: format!("taking the link on {interface}"),
                            source,
                        })?;
                    let fd_link: FdLink =
                        link.try_into()
                            .map_err(|e: aya::programs::links::LinkError| DataplaneError::Io {
                                action: "this kernel attached XDP without bpf_link; cannot pin",
                                path: interface.to_string(),
                                source: std::io::Error::other(e.to_string()),
                            })?;
                    fd_link.pin(pin).map_err(|source| DataplaneError::Pin {
                        path: pin.display().to_string(),
                        source,
                    })?;
                    info!(interface, mode = label, "attached XDP program");
                    return Ok(());
                }
                Err(error) => {
                    warn!(interface, mode = label, %error, "XDP attach failed");
                    last_error = Some(error);
                }
            }
        }
        Err(DataplaneError::Program {
            action: format!("attaching to {interface}"),
            source: last_error.unwrap_or(aya::programs::ProgramError::NotLoaded),
        })
    }

    /// Detaches from every interface and removes every pin of the instance.
    pub fn detach_and_unpin(self) -> Result<(), DataplaneError> {
        remove_instance(&self.dir, &self.interfaces)
    }
}

/// Removes an instance's links (detaching the program) and map pins.
pub fn remove_instance(dir: &Path, interfaces: &[String]) -> Result<(), DataplaneError> {
    for interface in interfaces {
        let pin = pins::link_pin(dir, interface);
        if pin.exists() {
            match PinnedLink::from_pin(&pin) {
                Ok(link) => {
                    let _ = link.unpin();
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&pin);
                }
            }
            info!(interface, "detached XDP program");
        }
    }
    for map in &MAPS {
        let _ = std::fs::remove_file(pins::map_pin(dir, map.name));
    }
    std::fs::remove_dir(dir).or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(DataplaneError::Io {
            action: "removing pin directory",
            path: dir.display().to_string(),
            source: e,
        }),
    })
}

/// ifindex of `name` in this network namespace.
pub fn interface_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// The addresses on interface `name` in this network namespace.
fn interface_addresses(name: &str) -> impl Iterator<Item = nix::sys::socket::SockaddrStorage> {
    let name = name.to_string();
    nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter(move |entry| entry.interface_name == name)
        .filter_map(|entry| entry.address)
}

/// The IPv4 addresses on interface `name` in this network namespace.
pub fn interface_ipv4_addresses(name: &str) -> Vec<std::net::Ipv4Addr> {
    interface_addresses(name)
        .filter_map(|address| address.as_sockaddr_in().map(|a| a.ip()))
        .collect()
}

/// The hardware (MAC) address of `name` in this network namespace (from
/// netlink, which, unlike /sys, follows `nsenter --net`).
pub fn interface_mac(name: &str) -> Option<[u8; 6]> {
    interface_addresses(name).find_map(|address| address.as_link_addr()?.addr())
}
