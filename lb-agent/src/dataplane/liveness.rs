//! The agent's heartbeat in the program's `agent_liveness` map. The
//! program's guard (`lb_common::floating_addresses_lost`) reads it: an
//! agent killed without a chance to clean up stops writing it, and its
//! node then stops answering ARP for the floating addresses once the peer
//! is master. Written by the VRRP thread, whose silence is what matters.

use std::path::Path;

use aya::maps::{Array, Map, MapData};
use lb_common::{liveness, map_names};

use super::{maps::monotonic_ns, pins, DataplaneError};

pub struct Heartbeat {
    map: Array<MapData, u64>,
}

impl Heartbeat {
    /// The heartbeat of the instance pinned at `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, DataplaneError> {
        let name = map_names::AGENT_LIVENESS;
        let data =
            MapData::from_pin(pins::map_pin(pin_dir, name)).map_err(DataplaneError::map(name))?;
        let map = Array::try_from(Map::Array(data)).map_err(DataplaneError::map(name))?;
        Ok(Self { map })
    }

    /// Says the agent is alive now.
    pub fn beat(&mut self) -> Result<(), DataplaneError> {
        self.map
            .set(liveness::AGENT, monotonic_ns(), 0)
            .map_err(DataplaneError::map(map_names::AGENT_LIVENESS))
    }
}
