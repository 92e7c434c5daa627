//! Runs the real XDP object through BPF_PROG_TEST_RUN inside a throw-away
//! network namespace that has the interfaces, addresses and (permanent)
//! neighbours that `bpf_fib_lookup` needs, so outputs are fully determined.

use std::{net::Ipv4Addr, path::Path, sync::OnceLock};

use aya::{
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    map_names, port_slot, ring_base, BackendValue, Counters, FlowKey, FlowValue, Reason,
    ServiceKey, ServiceValue, Settings,
};

use lb_agent::dataplane::{
    clock::{calibrate, TickClock},
    maps::{end_flow, end_flow_cache_copies, restore_reply_entries},
    port_pools::{Endpoint, PortPools, SlotLayout},
};

use lb_config::{Config, NodeConfig};

use crate::{netns::NetNs, packet::Mac};

pub const CLIENT: [u8; 4] = [10, 100, 0, 10];
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x10];
pub const VIP: [u8; 4] = [10, 100, 0, 100];
pub const LB_PUB: [u8; 4] = [10, 100, 0, 11];
pub const LB_PRIV: [u8; 4] = [10, 200, 0, 11];
pub const WEB1: [u8; 4] = [10, 200, 0, 21];
pub const WEB1_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x21];
pub const WEB2: [u8; 4] = [10, 200, 0, 22];
pub const WEB2_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x22];
/// Only the benchmark routes to the VIP (it loops flows back onto it).
pub const VIP_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x64];
pub const PUB_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x11];
pub const PRIV_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x11];

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The loaded program and its maps, in a namespace shaped like an LB node.
pub struct Harness {
    pub ebpf: Ebpf,
    /// The agent's port pools over the loaded program's maps (balancer only).
    pub pools: Option<PortPools>,
    program: String,
    pub pub_ifindex: u32,
    pub priv_ifindex: u32,
    // Dropped last: the namespace outlives the program's use of its devices.
    _ns: NetNs,
}

/// bpf(2) command number of `BPF_OBJ_GET_INFO_BY_FD`.
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {name} in the test namespace");
    index
}

/// The `conntrack_floor` reference program's reply map (a hash map keyed
/// like the balancer's reply entries used to be).
const FLOOR_REPLIES: &str = "replies";

/// The balancer's forward table, for writing.
/// Runs `work` with the calling thread on CPU `cpu` (a test run executes
/// on the CPU that asks for it), then lets the thread run anywhere again.
/// None if the machine has no such CPU.
pub fn on_cpu<T>(cpu: usize, work: impl FnOnce() -> T) -> Option<T> {
    // SAFETY: plain syscalls on a zeroed, then filled, CPU set of our own.
    unsafe {
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_getaffinity(0, size, &mut before), 0);
        if !libc::CPU_ISSET(cpu, &before) {
            return None;
        }
        let mut only: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut only);
        assert_eq!(
            libc::sched_setaffinity(0, size, &only),
            0,
            "pin to CPU {cpu}"
        );
        let result = work();
        assert_eq!(libc::sched_setaffinity(0, size, &before), 0);
        Some(result)
    }
}

fn flows_of(ebpf: &mut Ebpf) -> HashMap<&mut aya::maps::MapData, FlowKey, FlowValue> {
    ebpf.map_mut(map_names::FLOWS)
        .expect("flows")
        .try_into()
        .expect("hash")
}

fn mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The kernel's tick mapping, measured once per process (it does not
/// drift, and each measurement takes 150 ms).
fn tick_clock() -> TickClock {
    static CLOCK: OnceLock<TickClock> = OnceLock::new();
    *CLOCK.get_or_init(|| calibrate().expect("calibrate the XDP clock"))
}

impl Harness {
    /// Loads another XDP program (`program` in `object`) into a namespace
    /// of the same shape, without balancer settings (for the benchmark's
    /// reference programs), sizing its maps named like the balancer's
    /// conntrack maps to `max_flows`.
    pub fn with_program(object: &Path, program: &str, max_flows: u32) -> Self {
        let ns = NetNs::new("lbt-prog");
        ns.enter_current_thread();
        Self::build_namespace(&ns);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::FLOWS, max_flows)
            .map_max_entries(FLOOR_REPLIES, max_flows)
            .load_file(object)
            .unwrap_or_else(|e| panic!("load {}: {e}", object.display()));
        let xdp: &mut Xdp = ebpf
            .program_mut(program)
            .unwrap_or_else(|| panic!("program {program}"))
            .try_into()
            .expect("XDP program");
        xdp.load().unwrap_or_else(|e| panic!("verifier: {e:?}"));
        Self {
            ebpf,
            pools: None,
            program: program.to_string(),
            pub_ifindex: ifindex("pub0"),
            priv_ifindex: ifindex("priv0"),
            _ns: ns,
        }
    }

    /// Builds the namespace (pub0 10.100.0.11, priv0 10.200.0.11, neighbours
    /// for the client and two web servers), loads `object` and writes
    /// settings for one NAT port range.
    pub fn new(object: &Path, port_min: u16, port_max: u16) -> Self {
        Self::with_capacity(object, port_min, port_max, 4096)
    }

    /// Like `new`, with `max_flows` entries in each conntrack map.
    pub fn with_capacity(object: &Path, port_min: u16, port_max: u16, max_flows: u32) -> Self {
        let ns = NetNs::new("lbt-prog");
        ns.enter_current_thread();
        Self::build_namespace(&ns);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::FLOWS, max_flows)
            .load_file(object)
            .unwrap_or_else(|e| panic!("load {}: {e}", object.display()));
        let program: &mut Xdp = ebpf
            .program_mut("lb")
            .expect("program lb")
            .try_into()
            .expect("lb is XDP");
        program.load().unwrap_or_else(|e| panic!("verifier: {e:?}"));
        let mut pools = PortPools::take(&mut ebpf).expect("port pool maps");
        pools
            .adopt(SlotLayout::new(
                vec![addr(LB_PRIV)],
                vec![(port_min, port_max)],
            ))
            .expect("port pools");

        let mut harness = Self {
            ebpf,
            pools: Some(pools),
            program: "lb".to_string(),
            pub_ifindex: ifindex("pub0"),
            priv_ifindex: ifindex("priv0"),
            _ns: ns,
        };
        // What the agent writes for a node at LB_PRIV with the default
        // timeouts. The NAT ports are the test's: narrower than a config
        // may have them, so that tests can run out of ports.
        let node = NodeConfig::new("pub0", "priv0", Ipv4Addr::from(LB_PRIV));
        let mut settings = Settings {
            port_min,
            port_max,
            public_mac: PUB_MAC,
            private_mac: PRIV_MAC,
            ..Config::new(node).to_settings()
        };
        // Clocked as the agent runs it; the program test
        // `flow_clock_reads_monotonic_time_calibrated_or_not` also covers
        // the uncalibrated fallback.
        tick_clock().apply(&mut settings);
        harness.set_settings(settings);
        let mut tx: DevMapHash<_> = harness
            .ebpf
            .map_mut(map_names::TX_PORTS)
            .expect("tx_ports")
            .try_into()
            .expect("devmap");
        for index in [harness.pub_ifindex, harness.priv_ifindex] {
            tx.insert(index, index, None, 0).expect("tx_ports insert");
        }
        harness
    }

    fn build_namespace(ns: &NetNs) {
        let n = ns.name().to_string();
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .args(["-ec", script])
                .output()
                .expect("spawn sh");
            assert!(
                out.status.success(),
                "setup in {n} failed: {script}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(&format!(
            "ip link set lo up
             ip link add pub0 address {pub_mac} type veth peer name pubpeer
             ip link add priv0 address {priv_mac} type veth peer name privpeer
             for d in pub0 pubpeer priv0 privpeer; do ip link set $d up; done
             ip addr add 10.100.0.11/24 dev pub0
             ip addr add 10.200.0.11/24 dev priv0
             ip neigh replace 10.100.0.10 lladdr {client_mac} dev pub0 nud permanent
             ip neigh replace 10.200.0.21 lladdr {web1_mac} dev priv0 nud permanent
             ip neigh replace 10.200.0.22 lladdr {web2_mac} dev priv0 nud permanent
             ip neigh replace 10.100.0.100 lladdr {vip_mac} dev pub0 nud permanent
             echo 1 > /proc/sys/net/ipv4/conf/pub0/forwarding
             echo 1 > /proc/sys/net/ipv4/conf/priv0/forwarding",
            pub_mac = mac(&PUB_MAC),
            priv_mac = mac(&PRIV_MAC),
            client_mac = mac(&CLIENT_MAC),
            web1_mac = mac(&WEB1_MAC),
            web2_mac = mac(&WEB2_MAC),
            vip_mac = mac(&VIP_MAC),
        ));
    }

    /// Whether the loaded object has a map called `name`.
    pub fn has_map(&self, name: &str) -> bool {
        self.ebpf.map(name).is_some()
    }

    pub fn ebpf_settings(&self) -> Settings {
        let map: Array<_, Settings> = self
            .ebpf
            .map(map_names::SETTINGS)
            .expect("settings")
            .try_into()
            .expect("array");
        map.get(&0, 0).expect("read settings")
    }

    pub fn set_settings(&mut self, settings: Settings) {
        let mut map: Array<_, Settings> = self
            .ebpf
            .map_mut(map_names::SETTINGS)
            .expect("settings")
            .try_into()
            .expect("array");
        map.set(0, settings, 0).expect("write settings");
    }

    /// Installs a service whose ring alternates over `backends` (id, addr, port).
    pub fn add_service(
        &mut self,
        id: u32,
        vip: [u8; 4],
        port: u16,
        proto: u8,
        backends: &[(u32, [u8; 4], u16)],
    ) {
        {
            let mut map: Array<_, BackendValue> = self
                .ebpf
                .map_mut(map_names::BACKENDS)
                .expect("backends")
                .try_into()
                .expect("array");
            let pools = self.pools.as_mut().expect("the balancer's port pools");
            for (backend_id, address, bport) in backends {
                let port_pool = pools
                    .pool_for(Endpoint {
                        addr: addr(*address),
                        port: *bport,
                        proto,
                    })
                    .expect("port pool");
                map.set(
                    *backend_id,
                    BackendValue {
                        addr: *address,
                        port: *bport,
                        _pad: 0,
                        service_id: id,
                        port_pool,
                    },
                    0,
                )
                .expect("write backend");
            }
        }
        {
            let mut rings: Array<_, u32> = self
                .ebpf
                .map_mut(map_names::RINGS)
                .expect("rings")
                .try_into()
                .expect("array");
            for (slot, (backend_id, _, _)) in backends.iter().enumerate() {
                rings
                    .set(ring_base(id, 0) + slot as u32, *backend_id, 0)
                    .expect("write ring");
            }
        }
        {
            let mut vips: HashMap<_, [u8; 4], u32> = self
                .ebpf
                .map_mut(map_names::VIPS)
                .expect("vips")
                .try_into()
                .expect("hash");
            vips.insert(vip, 1, 0).expect("write vip");
        }
        let mut services: HashMap<_, ServiceKey, ServiceValue> = self
            .ebpf
            .map_mut(map_names::SERVICES)
            .expect("services")
            .try_into()
            .expect("hash");
        services
            .insert(
                ServiceKey {
                    vip,
                    port,
                    proto,
                    _pad: 0,
                },
                ServiceValue {
                    id,
                    ring_len: backends.len() as u32,
                    ring_half: 0,
                    _pad: 0,
                },
                0,
            )
            .expect("write service");
    }

    /// Runs one frame arriving on `ingress_ifindex`; returns the action and
    /// the frame as the program left it.
    pub fn run(&self, ingress_ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_repeat(ingress_ifindex, frame, 1)
            .map(|(action, out, _)| (action, out))
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"))
    }

    /// Like `run`, `repeat` times; also returns the kernel's mean duration.
    pub fn run_repeat(
        &self,
        ingress_ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration), ProgramError> {
        let program = self.xdp();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        let result = program.test_run(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration))
    }

    /// The loaded program.
    fn xdp(&self) -> &Xdp {
        self.ebpf
            .program(&self.program)
            .expect("program loaded")
            .try_into()
            .expect("an XDP program")
    }

    /// The loaded program's machine code as the JIT left it, and the name
    /// the kernel gives it in profiles (`bpf_prog_<tag>_<name>`), for
    /// mapping `perf` samples onto instructions (Debian's bpftool has no
    /// disassembler).
    pub fn jit_image(&self) -> std::io::Result<(String, Vec<u8>)> {
        use std::os::fd::{AsFd, AsRawFd};
        let program = self.xdp();
        let tag = program
            .info()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .tag();
        let fd = program
            .fd()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .as_fd()
            .as_raw_fd();
        let symbol = format!("bpf_prog_{tag:016x}_{}", self.program);
        // struct bpf_prog_info: jited_prog_len at byte 16, jited_prog_insns at 24.
        let mut info = [0u64; 32];
        let info_call = |info: &mut [u64; 32]| -> std::io::Result<()> {
            // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info.
            let mut attr = [0u64; 2];
            attr[0] = (fd as u32 as u64) | ((std::mem::size_of_val(info) as u64) << 32);
            attr[1] = info.as_mut_ptr() as u64;
            // SAFETY: attr and info are valid for the sizes passed, and the
            // kernel writes at most info_len bytes and the image's length.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    libc::c_long::from(BPF_OBJ_GET_INFO_BY_FD),
                    attr.as_mut_ptr(),
                    std::mem::size_of_val(&attr) as libc::c_long,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        info_call(&mut info)?;
        let len = (info[2] & 0xffff_ffff) as usize;
        let mut image = vec![0u8; len];
        info = [0u64; 32];
        info[2] = len as u64;
        info[3] = image.as_mut_ptr() as u64;
        info_call(&mut info)?;
        Ok((symbol, image))
    }

    /// Inserts a tracked flow in both directions, as the program would:
    /// the reply entry (`reply`: the backend's packets' key) goes to the
    /// table of the backend endpoint's pool, which becomes the flow's pool.
    pub fn insert_flow(&mut self, client: FlowKey, flow: FlowValue, reply: FlowKey) {
        self.insert_flow_holding(client, flow, reply, lb_common::reply_claim::OWN);
    }

    /// Like `insert_flow`, the flow's claim on its source being `live`
    /// (`OWN_QUEUED`: as flow sync installs a flow of this node's slice
    /// whose source is still in its queue).
    pub fn insert_flow_holding(
        &mut self,
        client: FlowKey,
        mut flow: FlowValue,
        reply: FlowKey,
        live: u64,
    ) {
        let settings = self.ebpf_settings();
        let snat_index = settings
            .snat_index_of(reply.dst_addr)
            .expect("the reply goes to a SNAT address");
        let pools = self.pools.as_mut().expect("the balancer's port pools");
        flow.port_pool = pools
            .pool_for(Endpoint {
                addr: addr(reply.src_addr),
                port: reply.src_port,
                proto: reply.proto,
            })
            .expect("port pool");
        pools
            .replies_mut()
            .set(
                flow.port_pool,
                port_slot(snat_index, reply.dst_port),
                lb_common::ReplyValue {
                    live,
                    ..lb_common::ReplyValue::of(client, &flow)
                },
            )
            .expect("insert reply");
        let mut flows = flows_of(&mut self.ebpf);
        flows.insert(client, flow, 0).expect("insert flow");
    }

    /// Writes entry `index` of `agent_liveness` (`lb_common::liveness`).
    pub fn set_liveness(&mut self, index: u32, value: u64) {
        let mut map: Array<_, u64> = self
            .ebpf
            .map_mut(map_names::AGENT_LIVENESS)
            .expect("agent_liveness")
            .try_into()
            .expect("array");
        map.set(index, value, 0).expect("write agent_liveness");
    }

    /// Entry `index` of `agent_liveness`.
    pub fn liveness(&self, index: u32) -> u64 {
        let map: Array<_, u64> = self
            .ebpf
            .map(map_names::AGENT_LIVENESS)
            .expect("agent_liveness")
            .try_into()
            .expect("array");
        map.get(&index, 0).expect("read agent_liveness")
    }

    /// What a start of the agent does with the pools it finds, here with
    /// NAT ports `port_min..=port_max` on the harness's one SNAT address:
    /// a pool of another layout is made anew around its flows' claims.
    pub fn adopt_pools(&mut self, port_min: u16, port_max: u16) {
        let pools = self.pools.as_mut().expect("the balancer's port pools");
        pools
            .adopt(SlotLayout::new(
                vec![addr(LB_PRIV)],
                vec![(port_min, port_max)],
            ))
            .expect("port pools");
        let mut settings = self.ebpf_settings();
        settings.port_min = port_min;
        settings.port_max = port_max;
        self.set_settings(settings);
    }

    /// The reply entry of NAT source (`snat_index`, `port`) towards `backend`.
    pub fn reply_entry(
        &self,
        backend: Endpoint,
        snat_index: u8,
        port: u16,
    ) -> Option<lb_common::ReplyValue> {
        let pools = self.pools.as_ref()?;
        let pool = pools.pool_of(&backend)?;
        pools
            .replies()
            .get(pool, port_slot(snat_index, port))
            .filter(|entry| entry.live != lb_common::reply_claim::FREE)
    }

    /// Ends a flow the way the agent does when it expires or is removed.
    pub fn remove_flow_as_agent(&mut self, key: &FlowKey) {
        let flow = self.flow(key).expect("flow to remove");
        let mut flows = flows_of(&mut self.ebpf);
        let pools = self.pools.as_mut().expect("the balancer's port pools");
        end_flow(&mut flows, pools, key, &flow);
    }

    /// What the agent does after it removed or rewrote flows: ends the
    /// copies in every CPU's flow cache.
    pub fn end_flow_cache_copies(&mut self) {
        let mut epoch: Array<_, u32> = self
            .ebpf
            .map_mut(map_names::FLOW_CACHE_EPOCH)
            .expect("flow_cache_epoch")
            .try_into()
            .expect("array");
        end_flow_cache_copies(&mut epoch).expect("move the flow cache epoch on");
    }

    /// Deletes `backend`'s entry in `pool_ids` behind the agent's back (the
    /// port pools own that map's handle, so this opens it again by id).
    pub fn forget_pool_id(&self, backend: Endpoint) {
        let program: &Xdp = self
            .ebpf
            .program(&self.program)
            .expect("program")
            .try_into()
            .expect("xdp");
        let ids = program
            .info()
            .expect("program info")
            .map_ids()
            .expect("map ids")
            .unwrap_or_default();
        let map = ids
            .into_iter()
            .filter_map(|id| aya::maps::MapData::from_id(id).ok())
            .find(|map| {
                map.info()
                    .is_ok_and(|info| info.name_as_str() == Some(map_names::POOL_IDS))
            })
            .expect("the program's pool_ids");
        let mut pool_ids: HashMap<_, lb_common::PoolKey, u32> =
            aya::maps::Map::HashMap(map).try_into().expect("hash");
        pool_ids
            .remove(&backend.pool_key())
            .expect("the backend's pool id");
    }

    /// Makes the tables look as an upgrade from the agent before reply
    /// tables finds them: the flow of `key` is tracked, its reply entry is
    /// not, and `peer` marks it as one of the HA peer's slice the way that
    /// agent did (no pool).
    pub fn forget_reply_entry(&mut self, key: &FlowKey, peer: bool) {
        let mut flow = self.flow(key).expect("flow to forget the reply of");
        let pools = self.pools.as_mut().expect("the balancer's port pools");
        pools
            .replies_mut()
            .set(
                flow.port_pool,
                port_slot(flow.snat_index, flow.lb_port),
                lb_common::ReplyValue::default(),
            )
            .expect("clear reply entry");
        if peer {
            flow.port_pool = u32::MAX;
        }
        let mut flows = flows_of(&mut self.ebpf);
        flows.insert(key, flow, 0).expect("rewrite flow");
    }

    /// What the agent does at its first start after that upgrade.
    pub fn restore_reply_entries(&mut self) -> usize {
        let mut flows = flows_of(&mut self.ebpf);
        let pools = self.pools.as_mut().expect("the balancer's port pools");
        restore_reply_entries(&mut flows, pools).expect("restore reply entries")
    }

    pub fn reason_count(&self, reason: Reason) -> u64 {
        let map: PerCpuArray<_, u64> = self
            .ebpf
            .map(map_names::REASONS)
            .expect("reasons")
            .try_into()
            .expect("percpu array");
        map.get(&(reason as u32), 0)
            .expect("read reasons")
            .iter()
            .sum()
    }

    pub fn service_counters(&self, id: u32) -> Counters {
        self.sum_counters(map_names::SERVICE_STATS, id)
    }

    pub fn backend_counters(&self, id: u32) -> Counters {
        self.sum_counters(map_names::BACKEND_STATS, id)
    }

    fn sum_counters(&self, name: &str, id: u32) -> Counters {
        let map: PerCpuArray<_, Counters> = self
            .ebpf
            .map(name)
            .expect("stats map")
            .try_into()
            .expect("percpu array");
        map.get(&id, 0)
            .expect("read counters")
            .iter()
            .fold(Counters::default(), |acc, c| Counters {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
                new_flows: acc.new_flows + c.new_flows,
                rejected: acc.rejected + c.rejected,
            })
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        let map: HashMap<_, FlowKey, FlowValue> = self
            .ebpf
            .map(map_names::FLOWS)
            .expect("flows")
            .try_into()
            .expect("lru hash");
        map.get(key, 0).ok()
    }

    pub fn flow_count(&self) -> usize {
        self.key_count::<FlowValue>(map_names::FLOWS)
    }

    /// Live reply entries: claims in the pools' tables, or the floor
    /// program's reply map.
    pub fn reply_count(&self) -> usize {
        match &self.pools {
            Some(pools) => pools.reply_claims(),
            None => self.key_count::<lb_common::ReplyValue>(FLOOR_REPLIES),
        }
    }

    fn key_count<V: aya::Pod>(&self, name: &str) -> usize {
        let map: HashMap<_, FlowKey, V> = self
            .ebpf
            .map(name)
            .unwrap_or_else(|| panic!("map {name}"))
            .try_into()
            .expect("lru hash");
        map.keys().count()
    }
}

pub fn addr(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

/// Keeps the calling thread on the CPU it runs on, so that every run of
/// the program sees the same per-CPU maps (the half-open ring, counters).
pub fn stay_on_this_cpu() {
    // SAFETY: plain libc calls on the calling thread with a zeroed set.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Harness {
    /// Half-open flows the program ended to make room, over all CPUs.
    pub fn half_open_evicted(&self) -> u64 {
        let map: PerCpuArray<_, lb_common::HalfOpenCursor> = self
            .ebpf
            .map(map_names::HALF_OPEN_CURSORS)
            .expect("half_open_cursors")
            .try_into()
            .expect("percpu array");
        map.get(&0, 0)
            .expect("read the half-open cursors")
            .iter()
            .map(|c| c.evicted)
            .sum()
    }
}

impl Harness {
    /// Takes every event waiting in the flow-sync ring buffer.
    /// Events the program could not write because the ring was full.
    pub fn flow_events_lost(&self) -> u64 {
        let map: PerCpuArray<_, u64> = self
            .ebpf
            .map(map_names::FLOW_EVENTS_LOST)
            .expect("flow_events_lost")
            .try_into()
            .expect("percpu array");
        map.get(&0, 0).expect("read flow_events_lost").iter().sum()
    }

    pub fn take_flow_events(&mut self) -> Vec<lb_common::FlowEvent> {
        let mut ring = aya::maps::RingBuf::try_from(
            self.ebpf
                .map_mut(map_names::FLOW_EVENTS)
                .expect("flow_events"),
        )
        .expect("ring buffer");
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<lb_common::FlowEvent>());
            // SAFETY: the program writes whole `FlowEvent`s (length checked).
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
        events
    }
}
