//! The configuration model lives in the `lb-config` crate (so xtask and
//! the tests build configs without the agent); the agent reads it through
//! this module.

pub use lb_config::*;

/// A whole config like the lab's, for tests across the crate.
#[cfg(test)]
pub(crate) const TEST_CONFIG: &str = r#"
[node]
public_interface = "pub0"
private_interface = "priv0"
private_address = "10.200.0.11"
xdp_mode = "generic"
port_range = [20000, 29999]
state_dir = "/run/lb-lab/lab/state"
[conntrack]
max_flows = 65536
[[service]]
name = "www"
vip = "10.100.0.100"
port = 80
protocol = "tcp"
  [[service.backend]]
  address = "10.200.0.21"
  [[service.backend]]
  address = "10.200.0.22"
  weight = 3
[[service]]
name = "dns"
vip = "10.100.0.100"
port = 5353
protocol = "udp"
  [[service.backend]]
  address = "10.200.0.21"
"#;
