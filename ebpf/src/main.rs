//! sonde's kernel programs: syscall tracepoints that copy socket bytes into
//! one ring buffer.
//!
//! At syscall entry we decide, from the fd table of the current task, whether
//! the fd is a stream socket; only then are the arguments kept. At exit the
//! returned byte count tells how much moved, and a prefix of it is copied.
//!
//! `conn` keeps connection state and walks kernel structures, `record`
//! builds and sends records, `syscalls` holds the syscall tracepoint
//! programs, `process` the exec and exit tracepoints, `floor` the empty
//! program that measures what the hooks alone cost.
#![no_std]
#![no_main]

mod conn;
mod floor;
mod mem;
mod process;
mod record;
mod syscalls;

use sonde_common::{KernelOffsets, ProbeConfig};

// ---- globals, set by the agent at load time -------------------------------

#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    agent_tgid: 0,
    capture_bytes: 0,
    wakeup_bytes: 0,
    prefix_count: 0,
};

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    inode_mode: 0,
    socket_type: 0,
    socket_sk: 0,
    sk_family: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
    task_group_leader: 0,
    task_comm: 0,
};

fn config() -> ProbeConfig {
    // Volatile so the compiler cannot fold the zero initialiser.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

fn offsets() -> KernelOffsets {
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
