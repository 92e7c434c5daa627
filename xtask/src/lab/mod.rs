//! The namespace lab of docs/lab.md: namespaces, bridges, veths, nginx and
//! UDP responders on the web servers, the agents (or the classic pair) on
//! the LB nodes; plus the handle (`Lab`) and tear-down guard (`LabGuard`)
//! the tests use.
//!
//! Everything the lab makes derives from its prefix: namespaces `<P>-<node>`,
//! run dir `/run/lb-lab/<P>/` (with the state file `lab.json`), pins
//! `/sys/fs/bpf/<P>-lbN`, agent sockets `/run/lb-agent/<P>-lbN.sock`.
//! Interface names do not: every node has its own namespace, so they are
//! fixed (`pub0`, `priv0`, `eth0`; `<node>[-pub|-priv]` on the switch) and
//! always short enough.
//!
//! - `node`: the machines and the network contract (VIP, nets, ports, SNAT pools)
//! - `prefix`: names and paths derived from the prefix
//! - `options`: `LabOptions` and its typed choices
//! - `state`: the state file of a lab that is up
//! - `lifecycle`: up, attach, down, `LabGuard`
//! - `handle`: `Lab`, commands in its namespaces, status
//! - `topology`: namespaces, bridges, veths, addresses
//! - `web`: nginx and the UDP responders
//! - `download`: a long download from the client, watched to the last byte
//! - `agent`: the agents' configs, start and stop, CLI
//! - `classic`: keepalived + HAProxy on an LB node
//! - `client_tool`: xtask's client tools (`probe`, `hold`...) run from the client
//! - `cloud`: the stand-in DigitalOcean API
//! - `process`: pid files, signals, stopping

mod agent;
mod classic;
mod client_tool;
mod cloud;
mod download;
mod handle;
mod lifecycle;
mod node;
mod options;
mod prefix;
pub mod process;
mod state;
mod topology;
mod web;

pub use agent::{
    agent_config, agent_config_with, agent_model, ha_agent_config, vrrp_model, www_check,
};
pub use classic::{ensure_classic_programs, haproxy_config, keepalived_config};
pub use client_tool::ClientTool;
pub use cloud::{do_mock_binary, floating_ip_model, DO_API_PORT, DROPLETS, ENV_DO_MOCK_BIN};
pub use download::Download;
pub use handle::Lab;
pub use lifecycle::{ensure_all_lab_programs, LabGuard};
pub use node::{
    Node, FLOATING_SNAT, HTTP_PORT, LB1_SNAT_EXTRA, LB2_SNAT_EXTRA, METRICS_PORT, NET_PREFIX_LEN,
    PORT_RANGE, PRIVATE_NET, PUBLIC_NET, UDP_PORT, VIP,
};
pub use options::{LabOptions, LbSetup, Provider, VrrpVersion, XdpMode};
pub use prefix::{
    ns_name, run_dir, validate_prefix, AGENT_SOCKET_DIR, BPFFS, DEFAULT_PREFIX, RUN_ROOT,
};
pub use process::{AGENT_START_TIMEOUT, STOP_GRACE};
pub use state::{LabState, STATE_FILE};
pub use topology::{Link, LINKS};
pub use web::{SLOW_BYTES, SLOW_RATE};

use lifecycle::create_dir;
use prefix::ns_exists;
