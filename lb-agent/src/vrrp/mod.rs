//! VRRP (RFC 3768 v2, RFC 5798 v3 for IPv4), wire-compatible with
//! keepalived: packet encode/decode (`packet`) here; the state machine and
//! socket I/O follow (issue #5).

pub mod packet;
