//! The XDP program and its maps: loading, pinning, adopting a running
//! instance, attaching, and typed access to every map.

pub(crate) mod batch;
pub mod clock;
pub mod liveness;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod port_pools;
pub(crate) mod reconcile;
pub mod reply_tables;
pub(crate) mod settings;

pub use loader::{Dataplane, LoadOptions, XdpAttachMode};
pub use maps::Tables;

/// The balancer's eBPF object, embedded at build time (see build.rs).
pub static LB_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT_EMBED"));

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The agent binary was built without the eBPF object.
    #[error("this lb-agent was built without its XDP program; build it with `cargo xtask build`")]
    NoObject,
    /// /sys/fs/bpf is not a bpf filesystem and could not be mounted.
    #[error("cannot mount the BPF filesystem on {path}: {source}; mount it with `mount -t bpf bpf {path}`")]
    BpfFs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A filesystem operation on the pin directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A map pinned by an earlier run has another layout than this build expects.
    #[error(
        "pinned map {path} is {found}, this build needs {expected}; \
         it was left by an incompatible version: stop the old agent and remove {dir}"
    )]
    IncompatiblePin {
        path: String,
        dir: String,
        /// Kind and key/value sizes, e.g. `a Hash map of 16/64-byte entries`.
        found: String,
        expected: String,
    },
    /// Loading the object or its maps failed.
    #[error("loading the XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    /// The kernel refused the program or an attach/replace failed.
    #[error("{action}: {source}")]
    Program {
        action: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Pinning a link failed.
    #[error("pinning {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// Writing the redirect devmap failed.
    #[error("map tx_ports: {source}")]
    DevMap {
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    /// The object lacks a map or program this agent needs.
    #[error("the XDP object has no {0}; agent and object are out of step, rebuild with `cargo xtask build`")]
    Missing(String),
    /// An interface named in the config does not exist.
    #[error("interface {name} does not exist on this node (check `ip link`)")]
    NoInterface { name: String },
    /// Too many services or backends for the maps.
    #[error("{what} table is full ({limit} entries)")]
    Full { what: &'static str, limit: u32 },
}

impl DataplaneError {
    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| Self::Map { map, source }
    }
}
