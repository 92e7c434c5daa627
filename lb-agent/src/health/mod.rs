//! Backend health checks: probes (`probe`), the rise/fall state machine
//! with an injected clock (`tracker`), and the scheduler that runs one
//! check loop per backend with jitter and bounded concurrency (`scheduler`).

pub mod probe;
pub mod scheduler;
pub mod tracker;

pub use probe::{CheckOutcome, Probe};
pub use scheduler::{CheckReport, CheckTarget, HealthScheduler};
pub use tracker::HealthTracker;
