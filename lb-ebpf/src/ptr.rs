//! The one place that does packet pointer arithmetic: every header access goes
//! through `ptr_at`, which proves to the verifier that the access is in bounds.

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
