//! lb-agent: loads the XDP load balancer, keeps its maps in step with the
//! configuration and run-time changes, and serves the control API.
//!
//! Modules, one job each: `config` (TOML), `check` (check-config), `import` (from haproxy.cfg + keepalived.conf), `state` (persisted run-time
//! changes), `schedule` (weighted ring), `ports` (NAT range vs kernel),
//! `dataplane` (program, pins, maps), `neighbors` (next-hop resolution), `limits` (descriptors, connection caps, backoff, throttled logs),
//! `agent` (operations), `reload` (what a reload may change), `control` (socket API), `metrics` (Prometheus), `cli` and `output`, and
//! `daemon` (the `run` loop).

pub mod agent;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod floating_ip;
pub mod health;
pub mod import;
pub mod limits;
pub mod metrics;
pub mod neighbors;
pub mod output;
pub mod ports;
pub mod reload;
pub mod reset;
pub mod schedule;
pub mod shell;
pub mod state;
pub mod vrrp;
