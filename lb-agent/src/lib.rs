//! lb-agent: loads the XDP load balancer, keeps its maps in step with the
//! configuration and run-time changes, and serves the control API.
//!
//! Modules, one job each: `config` (TOML), `check` (check-config), `import` (from haproxy.cfg + keepalived.conf), `state` (persisted run-time
//! changes), `schedule` (weighted ring), `ports` (NAT range vs kernel),
//! `dataplane` (program, pins, maps), `neighbors` (next-hop resolution), `limits` (descriptors, connection caps, backoff, throttled logs),
//! `agent` (operations), `reload` (what a reload may change), `control` (socket API), `metrics` (Prometheus), `cli` and `output`, and
//! `daemon` (the `run` loop).
//!
//! Modules nothing outside the crate uses (the binary, the integration
//! tests) are `pub(crate)`, so the compiler reports their dead code.

pub(crate) mod agent;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod floating_ip;
pub(crate) mod health;
pub mod import;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod neighbors;
pub mod output;
pub(crate) mod ports;
pub(crate) mod reload;
pub(crate) mod reset;
pub(crate) mod schedule;
pub(crate) mod shell;
pub(crate) mod state;
pub mod sync;
pub mod vrrp;
