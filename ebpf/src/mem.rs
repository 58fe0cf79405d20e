//! Reads of kernel and user memory that yield a default value on failure.

use aya_ebpf::helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_user};

#[inline(always)]
pub fn read_kernel<T: Copy + Default>(addr: u64) -> T {
    let mut value = T::default();
    let ret = unsafe {
        bpf_probe_read_kernel(
            (&raw mut value).cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        )
    };
    if ret != 0 { T::default() } else { value }
}

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
