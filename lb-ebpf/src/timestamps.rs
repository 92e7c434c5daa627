//! TCP timestamp option (RFC 7323) rewriting: a flow's TSval moves onto
//! the balancer's clock towards the backend, and the backend's TSecr moves
//! back onto the client's clock (see `FlowValue::ts_delta`).

use core::ptr::addr_of_mut;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    checksum::{apply, field32_change},
    PROTO_TCP,
};
use network_types::tcp::TcpHdr;

use crate::{
    parsing::{Packet, L4_OFFSET},
    ptr::{load_be16, ptr_at, store_be16},
};

const TCP_HEADER_LEN: usize = 20;
/// Most option bytes a TCP header can have (data offset 15).
const MAX_OPTION_BYTES: usize = 40;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_TIMESTAMP: u8 = 8;
const TIMESTAMP_LEN: u8 = 10;
/// NOP, NOP, kind, length: how nearly every stack lays out the option.
const ALIGNED_TIMESTAMP: [u8; 4] = [OPT_NOP, OPT_NOP, OPT_TIMESTAMP, TIMESTAMP_LEN];

/// Where a segment's TSval and TSecr are: the 8 bytes after the option's
/// kind and length.
pub struct Timestamps {
    /// Offset of TSval from the start of the TCP header.
    offset: usize,
}

/// The timestamp option of `pkt`, if it has one inside its TCP header.
#[inline(always)]
pub fn find(ctx: &XdpContext, pkt: &Packet) -> Option<Timestamps> {
    if pkt.proto != PROTO_TCP {
        return None;
    }
    let header_len = usize::from(pkt.l4_header_len);
    if header_len <= TCP_HEADER_LEN {
        return None;
    }
    let options_len = header_len - TCP_HEADER_LEN;
    // The options must lie inside the frame before any is read.
    ptr_at::<u8>(ctx, L4_OFFSET + header_len - 1).ok()?;
    if options_len >= 12 {
        let first: *const [u8; 4] = ptr_at(ctx, L4_OFFSET + TCP_HEADER_LEN).ok()?;
        // SAFETY: bounds-checked above.
        if unsafe { *first } == ALIGNED_TIMESTAMP {
            return Some(Timestamps {
                offset: TCP_HEADER_LEN + 4,
            });
        }
    }
    let mut at = 0usize;
    for _ in 0..MAX_OPTION_BYTES {
        if at >= options_len || at >= MAX_OPTION_BYTES {
            return None;
        }
        let kind: *const u8 = ptr_at(ctx, L4_OFFSET + TCP_HEADER_LEN + at).ok()?;
        // SAFETY: bounds-checked by ptr_at.
        let kind = unsafe { *kind };
        if kind == OPT_END {
            return None;
        }
        if kind == OPT_NOP {
            at += 1;
            continue;
        }
        let len: *const u8 = ptr_at(ctx, L4_OFFSET + TCP_HEADER_LEN + at + 1).ok()?;
        // SAFETY: bounds-checked by ptr_at.
        let len = usize::from(unsafe { *len });
        if len < 2 || at + len > options_len {
            return None;
        }
        if kind == OPT_TIMESTAMP && len == usize::from(TIMESTAMP_LEN) {
            return Some(Timestamps {
                offset: TCP_HEADER_LEN + at + 2,
            });
        }
        at += len;
    }
    None
}

/// The 32-bit field at `offset` of the TCP header, plus `add` (wrapping),
/// with the TCP checksum updated. Returns the field's old value.
#[inline(always)]
fn shift(ctx: &XdpContext, pkt: &Packet, offset: usize, add: u32) -> Option<u32> {
    let field: *mut [u8; 4] = ptr_at(ctx, L4_OFFSET + (offset & 63)).ok()?;
    // SAFETY: bounds-checked by ptr_at; bytes, so any alignment.
    let old = unsafe { *field };
    let value = u32::from_be_bytes(old);
    let new = value.wrapping_add(add).to_be_bytes();
    // SAFETY: as above; the checksum sits in the fixed header, which parse
    // checked, at an even offset.
    unsafe {
        *field = new;
        let check = addr_of_mut!((*(pkt.l4 as *mut TcpHdr)).check);
        store_be16(
            check,
            apply(load_be16(check), field32_change(old, new, offset % 2 == 1)),
        );
    }
    Some(value)
}

/// Client -> backend: TSval onto the balancer's clock.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, pkt: &Packet, ts: &Timestamps, delta: u32) {
    let _ = shift(ctx, pkt, ts.offset, delta);
}

/// Backend -> client: TSecr back onto the client's clock.
#[inline(always)]
pub fn to_client(ctx: &XdpContext, pkt: &Packet, ts: &Timestamps, delta: u32) {
    let _ = shift(ctx, pkt, ts.offset + 4, delta.wrapping_neg());
}

/// The TSval of a segment (for a new flow's delta).
#[inline(always)]
pub fn tsval(ctx: &XdpContext, ts: &Timestamps) -> Option<u32> {
    let field: *const [u8; 4] = ptr_at(ctx, L4_OFFSET + (ts.offset & 63)).ok()?;
    // SAFETY: bounds-checked by ptr_at.
    Some(u32::from_be_bytes(unsafe { *field }))
}
