//! Reads of kernel and user memory that yield zeroes on failure, and a
//! copy of socket addresses.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_user};
use sonde_common::SockAddrs;

/// The value is read into uninitialised stack: the helper fills it, or
/// zeroes it when the read fails. Starting from `T::default()` made the
/// compiler call a byte-by-byte `memset` before every read of a struct.
/// `T` must be plain data (integers, arrays and `repr(C)` structs of them).
#[inline(always)]
pub fn read_kernel<T: Copy>(addr: u64) -> T {
    let mut value = MaybeUninit::<T>::uninit();
    unsafe {
        bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        );
        value.assume_init()
    }
}

/// Zeroed first: in the iovec loop, reads into uninitialised stack left the
/// verifier too many distinct states to prune (over a million
/// instructions processed).
#[inline(always)]
pub fn read_user<T: Copy + Default>(addr: u64) -> T {
    let mut value = T::default();
    let ret = unsafe {
        bpf_probe_read_user(
            (&raw mut value).cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        )
    };
    if ret != 0 { T::default() } else { value }
}

/// `*to = *from`, five 8-byte moves: a plain assignment became a call to a
/// byte-by-byte `memmove` on every record.
#[inline(always)]
pub fn copy_addrs(to: &mut SockAddrs, from: &SockAddrs) {
    const WORDS: usize = core::mem::size_of::<SockAddrs>() / 8;
    const _: () = assert!(core::mem::size_of::<SockAddrs>() == WORDS * 8);
    let src = (from as *const SockAddrs).cast::<u64>();
    let dst = (to as *mut SockAddrs).cast::<u64>();
    for i in 0..WORDS {
        // Volatile, so that the moves are not merged back into a memmove.
        unsafe { dst.add(i).write_volatile(src.add(i).read_unaligned()) };
    }
}
