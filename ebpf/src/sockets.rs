//! The socket-layer capture path (kernel 6.3 and later).
//!
//! `sock:sock_send_length` and `sock:sock_recv_length` fire inside every
//! socket send and receive, after the bytes moved, in the caller's context
//! and with the socket in hand: no fd-table walk, no state kept from entry
//! to exit, and nothing at all for file or pipe I/O. The bytes are found
//! through the user registers of the syscall the caller is in.
//!
//! `sock:inet_sock_set_state` (on both paths) says when a TCP socket begins,
//! as a client or a server, and when it is gone.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sonde_common::{
    AF_INET, AF_INET6, AF_UNIX, DIR_EGRESS, DIR_INGRESS, ROLE_CLIENT, ROLE_SERVER, lost, syscall,
};

use crate::conn::{sock_begins, sock_state};
use crate::mem::read_kernel;
use crate::record::{self, Bytes, Call, count_lost};
use crate::{config, offsets};

const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;
/// `task_struct.flags`: kernel threads and io_uring workers have no
/// syscall of their own in their registers.
const PF_IO_WORKER: u32 = 0x10;
const PF_KTHREAD: u32 = 0x0020_0000;

/// x86-64 syscall numbers (`orig_ax`) of the calls that move socket bytes.
mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const SPLICE: u64 = 275;
    pub const RECVMMSG: u64 = 299;
    pub const SENDMMSG: u64 = 307;
}

/// The registers of x86-64 `struct pt_regs` that hold a socket call's
/// number and first three arguments, neighbours, read in one go.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SyscallRegs {
    dx: u64,
    si: u64,
    di: u64,
    orig_ax: u64,
}
/// Offset of `dx` in x86-64 `struct pt_regs`.
const PT_REGS_DX: u64 = 12 * 8;

// Fields of the sock_send_length / sock_recv_length records.
const SK: usize = 8;
const FAMILY: usize = 16;
const PROTOCOL: usize = 18;
const RET: usize = 20;
const FLAGS: usize = 24;

#[inline(always)]
fn field<T: Copy + Default>(ctx: &TracePointContext, at: usize) -> T {
    unsafe { ctx.read_at::<T>(at) }.unwrap_or_default()
}

/// Ships what one socket send or receive moved.
#[inline(always)]
fn moved(ctx: &TracePointContext, direction: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == config().agent_tgid {
        return 0;
    }
    let ret: i32 = field(ctx, RET);
    if ret <= 0 {
        return 0;
    }
    let family: u16 = field(ctx, FAMILY);
    match family {
        AF_INET | AF_INET6 if field::<u16>(ctx, PROTOCOL) == IPPROTO_TCP => {}
        AF_UNIX => {}
        _ => return 0,
    }
    // Peeked bytes are read again later: skip them so they count once.
    if direction == DIR_INGRESS && field::<i32>(ctx, FLAGS) & MSG_PEEK != 0 {
        return 0;
    }

    let off = offsets();
    let task = unsafe { bpf_get_current_task_btf() };
    let task_flags: u32 = read_kernel(task as u64 + off.task_flags as u64);
    if task_flags & (PF_KTHREAD | PF_IO_WORKER) != 0 {
        count_lost(lost::NOT_A_SYSCALL);
        return 0;
    }
    let regs = unsafe { bpf_task_pt_regs(task) } as u64;
    let r: SyscallRegs = read_kernel(regs + PT_REGS_DX);
    let sys = match r.orig_ax {
        nr::READ => syscall::READ,
        nr::WRITE => syscall::WRITE,
        nr::READV => syscall::READV,
        nr::WRITEV => syscall::WRITEV,
        nr::SENDTO => syscall::SENDTO,
        nr::RECVFROM => syscall::RECVFROM,
        nr::SENDMSG => syscall::SENDMSG,
        nr::RECVMSG => syscall::RECVMSG,
        // The bytes are not in this process's memory (sendfile, splice),
        // or the message's place in the vector is not known (the mmsg
        // calls): their count is shipped, not their content.
        nr::SENDFILE | nr::SPLICE | nr::SENDMMSG | nr::RECVMMSG => syscall::SENDFILE,
        // io_uring, or socket I/O done for the task by the kernel.
        _ => {
            count_lost(lost::NOT_A_SYSCALL);
            return 0;
        }
    };

    let sk: u64 = field(ctx, SK);
    let Some(state) = sock_state(sk, family) else {
        return 0;
    };
    // Read in place in the map: the stack is too small for a copy.
    let state = unsafe { &*state };
    if state.silenced != 0 {
        return 0;
    }
    let call = Call {
        direction,
        fd: r.di as u32,
        syscall: sys,
        pid_tgid,
        start_ns: 0,
        total: ret as u64,
    };
    record::ship(sk, state, &call, &Bytes::of_call(sys, r.si, r.dx));
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    moved(&ctx, DIR_EGRESS)
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    moved(&ctx, DIR_INGRESS)
}

// ---- TCP socket life --------------------------------------------------------

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// A TCP socket that starts to connect is a client's; one that completes
/// the handshake from SYN_RECV is a server's (it waits to be accepted); one
/// that reaches CLOSE is gone, and its close record goes out.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if field::<u16>(&ctx, 30) != IPPROTO_TCP {
        return 0;
    }
    let sk: u64 = field(&ctx, 8);
    let old: i32 = field(&ctx, 16);
    let new: i32 = field(&ctx, 20);
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => sock_begins(sk, ROLE_CLIENT),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => sock_begins(sk, ROLE_SERVER),
        (_, TCP_CLOSE) => record::send_close(sk, 0, 0),
        _ => {}
    }
    0
}
