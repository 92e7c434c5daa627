//! The maps as the loader pins them match the one list of maps
//! (`lb_common::maps::MAPS`: kind, layout, size). Pinned maps left by an
//! earlier version of the agent: the settings map, the schedule rings and
//! the reason counters, which hold nothing the agent does not rewrite, are
//! replaced when their layout or size changed (rings of 256 slots, 19
//! reasons before issue #11); a connection table of another layout (live
//! flows) is refused with a message that says what to do; one of today's
//! layout in an LRU map (before issue #11) is kept; reply tables holding
//! entries of another layout are refused.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use aya::maps::{MapInfo, MapType};
use integration_tests::artifacts;
use lb_agent::dataplane::{Dataplane, LoadOptions, XdpAttachMode};
use lb_common::{
    map_names,
    maps::{MapKind, MAPS},
    Settings,
};

const BPFFS: &str = "/sys/fs/bpf";

/// Removes the instance's pin directory, also when the test fails.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pin_old_map(dir: &Path, name: &str, kind: &str, key: u32, value: u32) {
    std::fs::create_dir_all(dir).expect("pin directory");
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(dir.join(name))
        .args(["type", kind, "key", &key.to_string(), "value"])
        .args([&value.to_string(), "entries", "1024", "name", name])
        .status()
        .expect("run bpftool");
    assert!(status.success(), "bpftool map create {name}");
}

#[test]
fn an_earlier_versions_pins() {
    let Some(object) = artifacts::lb_object() else {
        return;
    };
    let object = std::fs::read(object).expect("read the XDP object");
    let parsed = aya_obj::Object::parse(&object).expect("parse the XDP object");
    let instance = format!("lbt-pins-{}", std::process::id());
    let dir = PinDir(Path::new(BPFFS).join(&instance));
    let options = LoadOptions {
        instance,
        interfaces: Vec::new(),
        mode: XdpAttachMode::Generic,
        max_flows: 1024,
        bpffs: BPFFS.into(),
    };

    // A fresh load pins every map as the list says.
    let dataplane = Dataplane::load(&options, &object).expect("fresh load");
    for map in &MAPS {
        let info = MapInfo::from_pin(dir.0.join(map.name)).expect("pinned map");
        let kind = MapKind::of(info.map_type().expect("map type"));
        let entries = if map.resized_at_load {
            options.max_flows
        } else {
            map.max_entries
        };
        assert_eq!(
            (kind, info.key_size(), info.value_size(), info.max_entries()),
            (Some(map.kind), map.key_size, map.value_size, entries),
            "{} as the object declares it vs lb_common::maps::MAPS",
            map.name
        );
    }
    for map in &MAPS {
        let Some(spec) = map.inner else { continue };
        let declared = parsed
            .maps
            .get(map.name)
            .and_then(aya_obj::Map::inner)
            .unwrap_or_else(|| panic!("{} declares no inner map", map.name));
        let kind = aya_obj::generated::bpf_map_type::try_from(declared.map_type())
            .ok()
            .and_then(|kind| MapType::try_from(kind).ok())
            .and_then(MapKind::of);
        assert_eq!(
            (kind, declared.key_size(), declared.value_size()),
            (Some(spec.kind), spec.key_size, spec.value_size),
            "the maps {} holds as the object declares them vs MAPS",
            map.name
        );
    }
    drop(dataplane);
    std::fs::remove_dir_all(&dir.0).expect("clear pins");

    // Settings as an older build laid them out (64 bytes).
    pin_old_map(&dir.0, map_names::SETTINGS, "array", 4, 64);
    // Same layouts as now, other sizes (1024 entries).
    pin_old_map(&dir.0, map_names::RINGS, "array", 4, 4);
    pin_old_map(&dir.0, map_names::REASONS, "percpu_array", 4, 8);
    let dataplane = Dataplane::load(&options, &object).expect("old pins replaced");
    let settings = MapInfo::from_pin(dir.0.join(map_names::SETTINGS)).expect("settings pin");
    assert_eq!(
        settings.value_size() as usize,
        std::mem::size_of::<Settings>()
    );
    let rings = MapInfo::from_pin(dir.0.join(map_names::RINGS)).expect("rings pin");
    assert_eq!(rings.max_entries(), lb_common::RING_SLOTS);
    let reasons = MapInfo::from_pin(dir.0.join(map_names::REASONS)).expect("reasons pin");
    assert_eq!(reasons.max_entries(), lb_common::Reason::COUNT);
    drop(dataplane);
    std::fs::remove_dir_all(&dir.0).expect("clear pins");

    // A connection table of another layout holds flows: not thrown away.
    // (80 bytes: the layout before issue #10.)
    let old_flow_value = 80;
    assert_ne!(std::mem::size_of::<lb_common::FlowValue>(), old_flow_value);
    pin_old_map(
        &dir.0,
        map_names::FLOWS,
        "lru_hash",
        16,
        old_flow_value as u32,
    );
    match Dataplane::load(&options, &object) {
        Ok(_) => panic!("an incompatible flow table was adopted"),
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains("flows") && message.contains("remove"),
                "{message}"
            );
        }
    }
    std::fs::remove_dir_all(&dir.0).expect("clear pins");

    // Today's layout in the LRU maps of before issue #11: live flows, kept.
    let flow_value = std::mem::size_of::<lb_common::FlowValue>() as u32;
    pin_old_map(&dir.0, map_names::FLOWS, "lru_hash", 16, flow_value);
    let dataplane = Dataplane::load(&options, &object).expect("LRU flow table kept");
    let flows = MapInfo::from_pin(dir.0.join(map_names::FLOWS)).expect("flows pin");
    assert_eq!(flows.map_type().expect("kind"), MapType::LruHash);
    drop(dataplane);
    std::fs::remove_dir_all(&dir.0).expect("clear pins");

    // The replies hash of before reply tables (56-byte entries): noticed
    // at load so the agent carries its flows over, then dropped.
    let legacy = dir.0.join(map_names::LEGACY_REPLIES);
    pin_old_map(&dir.0, map_names::LEGACY_REPLIES, "hash", 16, 56);
    let mut dataplane = Dataplane::load(&options, &object).expect("replies hash beside");
    assert!(dataplane.legacy_replies);
    dataplane
        .drop_legacy_replies()
        .expect("drop the replies pin");
    assert!(!legacy.exists() && !dataplane.legacy_replies);
    drop(dataplane);
    let dataplane = Dataplane::load(&options, &object).expect("reload");
    assert!(!dataplane.legacy_replies);
    drop(dataplane);
    std::fs::remove_dir_all(&dir.0).expect("clear pins");

    // Reply tables of another entry layout (the 56-byte replies of before
    // reply tables): the program would misread every claim in them.
    pin_outer_with_inner(&dir.0, map_names::REPLY_TABLES, "array", 4, 56);
    match Dataplane::load(&options, &object) {
        Ok(_) => panic!("reply tables of another layout were adopted"),
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains("reply_tables")
                    && message.contains("56-byte")
                    && message.contains("remove"),
                "{message}"
            );
        }
    }
}

/// Pins `name` as an array of maps holding one map of the given layout
/// (made with the inner-map flag, as the agent makes its tables).
fn pin_outer_with_inner(dir: &Path, name: &str, kind: &str, key: u32, value: u32) {
    std::fs::create_dir_all(dir).expect("pin directory");
    let inner = dir.join(format!("{name}_inner"));
    let bpftool = |args: &[&str]| {
        let status = Command::new("bpftool")
            .args(args)
            .status()
            .expect("run bpftool");
        assert!(status.success(), "bpftool {args:?}");
    };
    let inner_path = inner.to_str().expect("utf-8 path");
    let outer = dir.join(name);
    let outer_path = outer.to_str().expect("utf-8 path");
    let (key, value) = (key.to_string(), value.to_string());
    bpftool(&[
        "map",
        "create",
        inner_path,
        "type",
        kind,
        "key",
        &key,
        "value",
        &value,
        "entries",
        "8",
        "name",
        "old_inner",
        "flags",
        "4096",
    ]);
    let entries = lb_common::MAX_BACKENDS.to_string();
    bpftool(&[
        "map",
        "create",
        outer_path,
        "type",
        "array_of_maps",
        "key",
        "4",
        "value",
        "4",
        "entries",
        &entries,
        "name",
        name,
        "inner_map",
        "pinned",
        inner_path,
    ]);
    bpftool(&[
        "map", "update", "pinned", outer_path, "key", "0", "0", "0", "0", "value", "pinned",
        inner_path,
    ]);
    std::fs::remove_file(&inner).expect("unpin the inner map");
}
