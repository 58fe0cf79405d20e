//! The syscall tracepoint programs: entry keeps the arguments of calls on
//! stream sockets, exit ships what moved.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use sonde_common::{
    ConnKey, DIR_EGRESS, DIR_INGRESS, EVENT_CLOSE, EventHeader, MAX_CAPTURE, ROLE_CLIENT,
    ROLE_SERVER, SOURCE_SYSCALL, syscall,
};

use crate::config;
use crate::conn::{
    self, ConnState, PendingCall, conn_state, drop_pending, keep_pending, take_pending,
};
use crate::mem::read_user;
use crate::record::{self, Bytes};

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
    let state = if fd > i32::MAX as u64 {
        None
    } else {
        conn_state(&key, false)
    };
    let Some(state) = state.filter(|s| unsafe { (**s).silenced } == 0) else {
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
        conn: unsafe { *state },
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
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: call.fd,
    };
    let state = call.conn;

    let bytes = match call.syscall {
        syscall::READV | syscall::WRITEV => Bytes::Iovecs {
            ptr: call.buf,
            count: call.iovcnt,
        },
        syscall::SENDMSG | syscall::RECVMSG => {
            // struct user_msghdr: name, namelen, iov at 16, iovlen at 24.
            Bytes::Iovecs {
                ptr: read_user(call.buf + 16),
                count: read_user(call.buf + 24),
            }
        }
        syscall::SENDFILE => Bytes::Uncopied,
        _ => Bytes::Buffer(call.buf),
    };

    match conn::mute_of(&key, state.generation) {
        conn::Mute::No => {}
        conn::Mute::Silent => return 0,
        conn::Mute::Filter => {
            let first_buf = bytes.first_buffer();
            if first_buf == 0 || !conn::may_start_message(read_user::<u64>(first_buf)) {
                return 0;
            }
        }
    }

    let cfg = config();
    let limit = if cfg.capture_bytes as usize > MAX_CAPTURE {
        MAX_CAPTURE as u64
    } else {
        cfg.capture_bytes as u64
    };
    let want = if (ret as u64) < limit {
        ret as u64
    } else {
        limit
    };

    let header = EventHeader {
        direction,
        start_ns: call.start_ns,
        tgid: key.tgid,
        tid: pid_tgid as u32,
        fd: call.fd,
        role: state.role,
        generation: state.generation,
        total_len: ret as u64,
        syscall: call.syscall,
        source: SOURCE_SYSCALL,
        addrs: state.addrs,
        ..EventHeader::default()
    };
    let first = state.announced == 0;
    if record::send_data(header, &bytes, want, first) && first {
        conn::mark_announced(&key);
    }
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
        conn: ConnState::default(),
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
    if let Some(state) = conn_state(&key, true) {
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
    if let Some(state) = conn_state(&key, true) {
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

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: arg(&ctx, 0) as u32,
    };
    let Some(state) = conn::forget(&key).filter(|s| s.silenced == 0) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    record::send_header(EventHeader {
        kind: EVENT_CLOSE,
        direction: 0,
        start_ns: now,
        end_ns: now,
        tgid: key.tgid,
        tid: pid_tgid as u32,
        fd: key.fd,
        role: state.role,
        generation: state.generation,
        total_len: 0,
        captured_len: 0,
        syscall: syscall::CLOSE,
        source: SOURCE_SYSCALL,
        addrs: state.addrs,
        ..EventHeader::default()
    });
    0
}
