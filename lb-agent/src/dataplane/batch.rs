//! Whole-table reads of hash maps and arrays with `BPF_MAP_LOOKUP_BATCH`: thousands
//! of entries per system call instead of two calls per entry (the next key,
//! then its value), which is what makes walking a flow table of a million
//! entries cost milliseconds instead of seconds. aya has no batch API yet,
//! so this is the one raw `bpf(2)` call of the agent.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;

/// Entries asked for per call. A hash bucket is never split across calls,
/// so this must exceed the longest bucket chain (a handful in practice).
const BATCH: usize = 8192;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batch read did not work; the caller then walks key by key.
#[derive(Debug, thiserror::Error)]
#[error("batch lookup in a BPF map: {0}")]
pub struct BatchError(#[source] std::io::Error);

/// Where a walk of a hash map stands between calls: the kernel's resume
/// token (a bucket index for hash maps; a key-sized buffer is what the
/// interface asks for, so it holds the larger).
#[derive(Debug, Default, Clone)]
pub struct Cursor(Option<Vec<u8>>);

impl Cursor {
    /// Whether a walk is under way (not at the start).
    pub fn started(&self) -> bool {
        self.0.is_some()
    }
}

/// The whole table in batches, keeping what `keep` picks as each batch
/// comes in (a table of hundreds of thousands of mostly idle entries is
/// never held whole); where the kernel cannot batch this map, `walk` reads
/// it key by key and `keep` filters that.
pub fn read_all<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    mut keep: impl FnMut(&(K, V)) -> bool,
    walk: impl FnOnce() -> Vec<(K, V)>,
) -> Vec<(K, V)> {
    let mut kept = Vec::new();
    let mut cursor = Cursor::default();
    loop {
        match read_some::<K, V>(map, &mut cursor, 1) {
            Ok((entries, done)) => {
                kept.extend(entries.into_iter().filter(&mut keep));
                if done {
                    return kept;
                }
            }
            Err(error) => {
                tracing::debug!(%error, "reading a map key by key");
                return walk().into_iter().filter(&mut keep).collect();
            }
        }
    }
}

/// About `limit` entries (whole batches) from where `cursor` stands, and
/// whether the walk reached the end (the cursor then starts over); all of
/// them with `usize::MAX`. Entries that the program adds or deletes
/// meanwhile may or may not be seen, as with any walk of a live table.
pub fn read_some<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    cursor: &mut Cursor,
    limit: usize,
) -> Result<(Vec<(K, V)>, bool), BatchError> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys: Vec<K> = Vec::with_capacity(BATCH);
    let mut values: Vec<V> = Vec::with_capacity(BATCH);
    let mut entries = Vec::new();
    let token_len = std::mem::size_of::<K>().max(8);
    let mut token_out = vec![0u8; token_len];
    loop {
        let mut attr = BatchAttr {
            in_batch: cursor.0.as_mut().map_or(0, |t| t.as_mut_ptr() as u64),
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for this command; the
        // key, value and token buffers have room for `count` entries of
        // the map's key and value sizes (K and V are the map's layouts,
        // checked when the maps were loaded) and for one token.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        let error = (rc < 0).then(std::io::Error::last_os_error);
        let done = matches!(&error, Some(e) if e.raw_os_error() == Some(libc::ENOENT));
        if let Some(error) = error.filter(|_| !done) {
            return Err(BatchError(error));
        }
        let filled = (attr.count as usize).min(BATCH);
        // SAFETY: the kernel wrote `filled` whole keys and values; both
        // types are plain old data.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        entries.extend(keys.drain(..).zip(values.drain(..)));
        if done {
            cursor.0 = None;
            return Ok((entries, true));
        }
        cursor.0 = Some(token_out.clone());
        if entries.len() >= limit {
            return Ok((entries, false));
        }
    }
}
