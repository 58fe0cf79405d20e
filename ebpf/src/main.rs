//! sonde's kernel programs: hooks on socket I/O that copy the head of what
//! moved into one ring buffer, on one of two capture paths.
//!
//! - The socket-layer path (`sockets`, kernel 6.3 and later): tracepoints
//!   inside the kernel's socket send and receive, which fire only for
//!   socket I/O and hand over the socket itself.
//! - The syscall path (`syscalls`), the fallback: syscall tracepoints, where
//!   entry decides from the fd table whether the fd is a stream socket and
//!   exit copies what moved. While any is attached, every syscall of every
//!   process pays for it.
//!
//! User space attaches one of the two. `conn` keeps per-socket state and
//! walks kernel structures, `record` builds and sends records, `process`
//! holds the exec and exit tracepoints, `floor` the empty program that
//! measures what the hooks alone cost.
#![no_std]
#![no_main]

mod conn;
mod floor;
mod mem;
mod process;
mod record;
mod sockets;
mod syscalls;

use sonde_common::{KernelOffsets, ProbeConfig};

// ---- globals, set by the agent at load time -------------------------------

#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    agent_tgid: 0,
    capture_bytes: 0,
    wakeup_bytes: 0,
    prefix_count: 0,
    whole_prefix_count: 0,
    _pad: 0,
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
    sk_type: 0,
    sk_socket: 0,
    socket_ino: 0,
    file_refs: 0,
    file_one_ref: 0,
    task_flags: 0,
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
