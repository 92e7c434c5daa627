//! The configuration model lives in the `lb-config` crate (so xtask and
//! the tests build configs without the agent); the agent reads it through
//! this module.

pub use lb_config::*;

/// A whole config like the lab's, for tests across the crate (lb-config's
/// own tests read the same file).
#[cfg(test)]
pub(crate) const TEST_CONFIG: &str = include_str!("../../lb-config/testdata/lab.toml");
