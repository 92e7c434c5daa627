//! The control API: one JSON request line and one JSON response line per
//! connection on a root-only Unix socket `/run/lb-agent/<instance>.sock`.

pub mod client;
pub mod protocol;
pub(crate) mod server;

use std::path::PathBuf;

/// Directory of the control sockets.
pub const SOCKET_DIR: &str = "/run/lb-agent";

/// The control socket of `instance`.
pub fn socket_path(instance: &str) -> PathBuf {
    PathBuf::from(SOCKET_DIR).join(format!("{instance}.sock"))
}

/// Largest response line the client accepts (a status of many backends).
pub const MAX_LINE: usize = 4 << 20;

/// Largest request line the agent reads: requests are a few names and
/// numbers; anything longer is refused unread.
pub const MAX_REQUEST: usize = 64 << 10;
