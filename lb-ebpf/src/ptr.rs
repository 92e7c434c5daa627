//! The one place that does packet pointer arithmetic: every header access goes
//! through `ptr_at`, which proves to the verifier that the access is in bounds.
//!
//! Header fields are `[u8; N]` (alignment 1), which LLVM would move a byte
//! at a time. Packet data starts on an even address (drivers and the generic
//! XDP path place the Ethernet header so, and the verifier assumes no less),
//! and every field this program reads or writes has an even offset and
//! length, so `load` and `store` move them as 16-bit words: half the
//! instructions on every packet.

use aya_ebpf::programs::XdpContext;

/// Pointer to a `T` at byte `offset` of the packet, or `Err` if the packet is
/// too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

/// Reads an even-sized header field at an even packet offset.
///
/// # Safety
/// `field` lies inside a bounds-checked header, at an even offset.
#[inline(always)]
pub unsafe fn load<const N: usize>(field: *const [u8; N]) -> [u8; N] {
    let words = field as *const u16;
    let mut value = [0u8; N];
    let mut i = 0;
    while i + 1 < N {
        // SAFETY: in bounds and 2-byte aligned per the caller's contract.
        let word = unsafe { *words.add(i / 2) }.to_ne_bytes();
        value[i] = word[0];
        value[i + 1] = word[1];
        i += 2;
    }
    value
}

/// Writes an even-sized header field at an even packet offset.
///
/// # Safety
/// As for `load`.
#[inline(always)]
pub unsafe fn store<const N: usize>(field: *mut [u8; N], value: [u8; N]) {
    let words = field as *mut u16;
    let mut i = 0;
    while i + 1 < N {
        // SAFETY: in bounds and 2-byte aligned per the caller's contract.
        unsafe { *words.add(i / 2) = u16::from_ne_bytes([value[i], value[i + 1]]) };
        i += 2;
    }
}

/// Reads a big-endian 16-bit header field at an even packet offset.
///
/// # Safety
/// As for `load`.
#[inline(always)]
pub unsafe fn load_be16(field: *const [u8; 2]) -> u16 {
    // SAFETY: per the caller's contract.
    u16::from_be_bytes(unsafe { load(field) })
}

/// Writes a big-endian 16-bit header field at an even packet offset.
///
/// # Safety
/// As for `load`.
#[inline(always)]
pub unsafe fn store_be16(field: *mut [u8; 2], value: u16) {
    // SAFETY: per the caller's contract.
    unsafe { store(field, value.to_be_bytes()) }
}
