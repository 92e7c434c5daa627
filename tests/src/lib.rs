//! Shared helpers for the program tests (BPF_PROG_TEST_RUN) and the
//! end-to-end tests: packet crafting, network-namespace guards and locating
//! the build's artifacts.

pub mod arp;
pub mod artifacts;
pub mod do_api;
pub mod e2e;
pub mod flood;
pub mod netns;
pub mod packet;
pub mod program;
pub mod scale;
pub mod table;
