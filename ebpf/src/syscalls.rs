//! The syscall capture path, for kernels without the socket-layer
//! tracepoints: entry keeps the arguments of calls on stream sockets, exit
//! ships what moved.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use sonde_common::{ConnKey, DIR_EGRESS, DIR_INGRESS, ROLE_CLIENT, ROLE_SERVER, syscall};

use crate::config;
use crate::conn::{
    self, PendingCall, SockState, drop_pending, fd_sock, keep_pending, take_pending,
};
use crate::record::{self, Bytes, Call};

const EINPROGRESS: i64 = 115;
const MSG_PEEK: u64 = 2;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(16 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1)
}

// ---- entry: remember the arguments of socket calls --------------------------

#[inline(always)]
fn enter(fd: u64, buf: u64, iovcnt: u64, sys: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let cfg = config();
    if tgid == cfg.agent_tgid {
        return 0;
    }
    let key = ConnKey {
        tgid,
        fd: fd as u32,
    };
    let found = if fd > i32::MAX as u64 {
        None
    } else {
        fd_sock(&key)
    };
    let Some((sock, state)) = found.filter(|&(_, s)| unsafe { (*s).silenced } == 0) else {
        // A slot left by a call whose exit never came must not be taken
        // for this one's.
        drop_pending(pid_tgid);
        return 0;
    };
    let call = PendingCall {
        owner: pid_tgid,
        start_ns: unsafe { bpf_ktime_get_ns() },
        buf,
        iovcnt,
        fd: fd as u32,
        syscall: sys,
        sock,
        state: unsafe { *state },
    };
    keep_pending(pid_tgid, call);
    0
}

// ---- exit: copy what moved ---------------------------------------------------

#[inline(always)]
fn exit(ctx: &TracePointContext, direction: u32, sys: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_pending(pid_tgid, sys) else {
        return 0;
    };
    let ret = ret(ctx);
    if ret <= 0 {
        return 0;
    }
    let state = call.state;

    let bytes = Bytes::of_call(call.syscall, call.buf, call.iovcnt);

    let moved = Call {
        direction,
        fd: call.fd,
        syscall: call.syscall,
        pid_tgid,
        start_ns: call.start_ns,
        total: ret as u64,
    };
    record::ship(call.sock, &state, &moved, &bytes);
    0
}

// ---- the tracepoints ---------------------------------------------------------

macro_rules! data_syscall {
    ($enter:ident, $exit:ident, $sys:expr, $dir:expr, |$ctx:ident| ($fd:expr, $buf:expr, $cnt:expr)) => {
        #[tracepoint]
        pub fn $enter($ctx: TracePointContext) -> u32 {
            enter($fd, $buf, $cnt, $sys)
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx, $dir, $sys)
        }
    };
}

data_syscall!(
    sys_enter_read,
    sys_exit_read,
    syscall::READ,
    DIR_INGRESS,
    |ctx| (arg(&ctx, 0), arg(&ctx, 1), 0)
);
data_syscall!(
    sys_enter_write,
    sys_exit_write,
    syscall::WRITE,
    DIR_EGRESS,
    |ctx| (arg(&ctx, 0), arg(&ctx, 1), 0)
);
data_syscall!(
    sys_enter_readv,
    sys_exit_readv,
    syscall::READV,
    DIR_INGRESS,
    |ctx| (arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2))
);
data_syscall!(
    sys_enter_writev,
    sys_exit_writev,
    syscall::WRITEV,
    DIR_EGRESS,
    |ctx| (arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2))
);
data_syscall!(
    sys_enter_sendto,
    sys_exit_sendto,
    syscall::SENDTO,
    DIR_EGRESS,
    |ctx| (arg(&ctx, 0), arg(&ctx, 1), 0)
);
data_syscall!(
    sys_enter_sendmsg,
    sys_exit_sendmsg,
    syscall::SENDMSG,
    DIR_EGRESS,
    |ctx| (arg(&ctx, 0), arg(&ctx, 1), 0)
);
data_syscall!(
    sys_enter_sendfile64,
    sys_exit_sendfile64,
    syscall::SENDFILE,
    DIR_EGRESS,
    |ctx| (arg(&ctx, 0), 0, 0)
);

// Peeked bytes are read again later: skip MSG_PEEK so they are not counted twice.
data_syscall!(
    sys_enter_recvfrom,
    sys_exit_recvfrom,
    syscall::RECVFROM,
    DIR_INGRESS,
    |ctx| (
        if arg(&ctx, 3) & MSG_PEEK != 0 {
            u64::MAX
        } else {
            arg(&ctx, 0)
        },
        arg(&ctx, 1),
        0
    )
);
data_syscall!(
    sys_enter_recvmsg,
    sys_exit_recvmsg,
    syscall::RECVMSG,
    DIR_INGRESS,
    |ctx| (
        if arg(&ctx, 2) & MSG_PEEK != 0 {
            u64::MAX
        } else {
            arg(&ctx, 0)
        },
        arg(&ctx, 1),
        0
    )
);

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == config().agent_tgid {
        return 0;
    }
    let call = PendingCall {
        owner: pid_tgid,
        start_ns: 0,
        buf: 0,
        iovcnt: 0,
        fd: arg(&ctx, 0) as u32,
        syscall: syscall::CONNECT,
        sock: 0,
        state: SockState::default(),
    };
    keep_pending(pid_tgid, call);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = take_pending(pid_tgid, syscall::CONNECT) else {
        return 0;
    };
    let ret = ret(&ctx);
    if ret != 0 && ret != -EINPROGRESS {
        return 0;
    }
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: call.fd,
    };
    if let Some((_, state)) = fd_sock(&key) {
        unsafe { (*state).role = ROLE_CLIENT };
    }
    0
}

#[inline(always)]
fn accepted(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let fd = ret(ctx);
    if tgid == config().agent_tgid || fd < 0 {
        return 0;
    }
    let key = ConnKey {
        tgid,
        fd: fd as u32,
    };
    if let Some((_, state)) = fd_sock(&key) {
        unsafe { (*state).role = ROLE_SERVER };
    }
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accepted(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accepted(&ctx)
}

/// A close of the last fd naming a socket ends its connection; closes of
/// other fds (a forked server's parent closing its copy) do not.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: arg(&ctx, 0) as u32,
    };
    if let Some(sock) = conn::close_fd(&key) {
        record::send_close(sock, pid_tgid, key.fd);
    }
    0
}
