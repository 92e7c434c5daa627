//! VRRP (RFC 3768 v2, RFC 5798 v3 for IPv4), wire-compatible with
//! keepalived, split as the protocol demands: advertisement encode/decode
//! (`packet`) and a pure state machine with the clock passed in
//! (`machine`). Socket I/O, tracking and the floating IP providers come with
//! the rest of issue #5.

pub mod instance;
pub(crate) mod io;
pub(crate) mod machine;
pub mod packet;
mod realtime;
pub(crate) mod runner;
pub(crate) mod track;
