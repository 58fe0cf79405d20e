//! sonde's kernel programs: syscall tracepoints that copy socket bytes into
//! one ring buffer.
//!
//! At syscall entry we decide, from the fd table of the current task, whether
//! the fd is a stream socket; only then are the arguments kept. At exit the
//! returned byte count tells how much moved, and a prefix of it is copied.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        generated::{bpf_get_smp_processor_id, bpf_probe_read_kernel, bpf_probe_read_user},
    },
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use sonde_common::{
    COMM_LEN, ConnKey, DIR_EGRESS, DIR_INGRESS, DIR_NONE, EVENT_CLOSE, EVENT_DATA, EVENT_PROCESS,
    EventHeader, HEADER_LEN, KernelOffsets, MAX_CAPTURE, MAX_IOVECS, PENDING_SLOTS, ProbeConfig,
    ProcessRecord, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, SockAddrs, lost, syscall,
};

// ---- globals, set by the agent at load time -------------------------------

#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    agent_tgid: 0,
    capture_bytes: 0,
    wakeup_bytes: 0,
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
};

fn config() -> ProbeConfig {
    // Volatile so the compiler cannot fold the zero initialiser.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

fn offsets() -> KernelOffsets {
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

// ---- maps ------------------------------------------------------------------

/// Records for user space. Size is set by the agent (`capture.ring_buffer_bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Records lost in the kernel, by reason (`sonde_common::lost`), summed
/// over CPUs by user space.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNT, 0);

#[inline(always)]
fn count_lost(reason: u32) {
    if let Some(n) = LOST.get_ptr_mut(reason) {
        unsafe { *n += 1 };
    }
}

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Wake user space only when enough is waiting (see
/// `ProbeConfig::wakeup_bytes`): the record whose `len` bytes take the
/// waiting data across a multiple of the threshold wakes it, so there is one
/// wakeup per threshold's worth of records. Records in between find the
/// reader already woken; forcing a wakeup for each of them (while the
/// reader waits for a busy CPU) cost more than the rest of the probe. If a
/// wakeup is missed (two CPUs crossing at once) or the reader is slow to
/// run, the next multiple wakes it again. `urgent` wakes it regardless.
/// `waiting` is what the ring held before this record.
#[inline(always)]
fn wakeup_flag(waiting: u64, len: u64, urgent: bool) -> u64 {
    let threshold = config().wakeup_bytes as u64;
    let threshold = if threshold == 0 { 1 } else { threshold };
    if urgent || (waiting + len) / threshold > waiting / threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// One stream socket we have seen, per (tgid, fd).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ConnState {
    /// The `struct file *` the fd named when the entry was made: a different
    /// one means the fd was reused without us seeing close().
    file: u64,
    generation: u64,
    role: u32,
    /// 0 until the connection's first record went out. That record wakes
    /// user space at once, so it can read the process's metadata from /proc
    /// while a short-lived client still runs.
    announced: u32,
    addrs: SockAddrs,
}

#[map]
static CONNS: LruHashMap<ConnKey, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// Connections user space found uninteresting, with the generation it saw.
/// For them only bytes that may start a message of a supported protocol are
/// shipped.
#[map]
static MUTED: LruHashMap<ConnKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Arguments kept from syscall entry to exit, per thread.
#[repr(C)]
#[derive(Clone, Copy)]
struct PendingCall {
    /// The thread (pid_tgid) the slot holds a call of; 0 when free.
    owner: u64,
    start_ns: u64,
    /// The buffer, or the iovec array, or the msghdr.
    buf: u64,
    iovcnt: u64,
    fd: u32,
    syscall: u32,
    /// The connection as entry found it, so that exit need not look it up
    /// again (only a connection's first record does, to mark it announced).
    conn: ConnState,
}

/// Pending calls in a plain array indexed by thread id: a thread is in one
/// syscall at a time, and an array slot costs a fraction of a hash map
/// insert and delete on every socket syscall. Threads whose ids share a
/// slot and are in socket calls at once lose one record, counted.
#[map]
static PENDING: Array<PendingCall> = Array::with_max_entries(PENDING_SLOTS, 0);

#[inline(always)]
fn pending_slot(pid_tgid: u64) -> Option<&'static mut PendingCall> {
    let slot = PENDING.get_ptr_mut(pid_tgid as u32 & (PENDING_SLOTS - 1))?;
    Some(unsafe { &mut *slot })
}

/// Keeps `call` for this thread's syscall exit.
#[inline(always)]
fn keep_pending(pid_tgid: u64, call: PendingCall) {
    if let Some(slot) = pending_slot(pid_tgid) {
        if slot.owner != 0 && slot.owner != pid_tgid {
            count_lost(lost::SLOT_TAKEN);
        }
        *slot = call;
    }
}

/// Frees this thread's slot (its syscall is not one we follow).
#[inline(always)]
fn drop_pending(pid_tgid: u64) {
    if let Some(slot) = pending_slot(pid_tgid)
        && slot.owner == pid_tgid
    {
        slot.owner = 0;
    }
}

/// This thread's pending call of `syscall`, freeing its slot.
#[inline(always)]
fn take_pending(pid_tgid: u64, syscall: u32) -> Option<PendingCall> {
    let slot = pending_slot(pid_tgid)?;
    if slot.owner != pid_tgid {
        return None;
    }
    let call = *slot;
    slot.owner = 0;
    (call.syscall == syscall).then_some(call)
}

/// Scratch space for building one record, one slot per CPU (too large for
/// the stack and for a per-CPU map). Data gets twice the maximum so that a
/// masked offset plus a masked length always stays inside, as the verifier
/// needs to see.
#[repr(C)]
struct Scratch {
    header: EventHeader,
    data: [u8; 2 * MAX_CAPTURE],
}

#[map]
static SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

// ---- kernel structure walking ----------------------------------------------

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const AF_UNIX: u16 = 1;
const EINPROGRESS: i64 = 115;
const MSG_PEEK: u64 = 2;

#[inline(always)]
fn read_kernel<T: Copy + Default>(addr: u64) -> T {
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
fn read_user<T: Copy + Default>(addr: u64) -> T {
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

/// The `struct file *` behind `fd` in the current task, or 0.
#[inline(always)]
fn file_of(fd: u32, off: &KernelOffsets) -> u64 {
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_kernel(task + off.task_files as u64);
    if files == 0 {
        return 0;
    }
    let fdt: u64 = read_kernel(files + off.files_fdt as u64);
    if fdt == 0 {
        return 0;
    }
    // `max_fds` and `fd` are neighbours in `struct fdtable`: one read for
    // both where the layout allows (this runs on every socket syscall).
    let (max_fds, fd_array) = if off.fdt_fd == off.fdt_max_fds + 8 {
        let pair: [u64; 2] = read_kernel(fdt + off.fdt_max_fds as u64);
        (pair[0] as u32, pair[1])
    } else {
        let max_fds: u32 = read_kernel(fdt + off.fdt_max_fds as u64);
        (max_fds, read_kernel(fdt + off.fdt_fd as u64))
    };
    if fd >= max_fds || fd_array == 0 {
        return 0;
    }
    read_kernel(fd_array + fd as u64 * 8)
}

/// The `struct sock *` of a stream socket file, or 0 for anything else.
#[inline(always)]
fn stream_sock_of(file: u64, off: &KernelOffsets) -> u64 {
    let inode: u64 = read_kernel(file + off.file_inode as u64);
    if inode == 0 {
        return 0;
    }
    let mode: u16 = read_kernel(inode + off.inode_mode as u64);
    if mode & S_IFMT != S_IFSOCK {
        return 0;
    }
    let socket: u64 = read_kernel(file + off.file_private_data as u64);
    if socket == 0 {
        return 0;
    }
    let sock_type: u16 = read_kernel(socket + off.socket_type as u64);
    if sock_type != SOCK_STREAM {
        return 0;
    }
    read_kernel(socket + off.socket_sk as u64)
}

#[inline(always)]
fn read_addrs(sk: u64, off: &KernelOffsets) -> SockAddrs {
    let mut addrs = SockAddrs {
        family: read_kernel(sk + off.sk_family as u64),
        ..SockAddrs::default()
    };
    match addrs.family {
        AF_INET => {
            let local: [u8; 4] = read_kernel(sk + off.sk_rcv_saddr as u64);
            let peer: [u8; 4] = read_kernel(sk + off.sk_daddr as u64);
            addrs.local_addr[..4].copy_from_slice(&local);
            addrs.peer_addr[..4].copy_from_slice(&peer);
        }
        AF_INET6 => {
            addrs.local_addr = read_kernel(sk + off.sk_v6_rcv_saddr as u64);
            addrs.peer_addr = read_kernel(sk + off.sk_v6_daddr as u64);
        }
        _ => return addrs,
    }
    let dport: u16 = read_kernel(sk + off.sk_dport as u64);
    addrs.peer_port = u16::from_be(dport);
    addrs.local_port = read_kernel(sk + off.sk_num as u64);
    addrs
}

/// The state of (tgid, fd) if it is a stream socket, creating or refreshing
/// it as needed. `refresh` re-reads the addresses (after connect()).
#[inline(always)]
fn conn_state(key: &ConnKey, refresh: bool) -> Option<*mut ConnState> {
    let off = offsets();
    let file = file_of(key.fd, &off);
    if file == 0 {
        return None;
    }
    if let Some(state) = CONNS.get_ptr_mut(key) {
        let state_ref = unsafe { &mut *state };
        if state_ref.file == file {
            let unbound = state_ref.addrs.family != AF_UNIX && state_ref.addrs.peer_port == 0;
            if refresh || unbound {
                let sk = stream_sock_of(file, &off);
                if sk != 0 {
                    state_ref.addrs = read_addrs(sk, &off);
                }
            }
            return Some(state);
        }
    }
    let sk = stream_sock_of(file, &off);
    if sk == 0 {
        let _ = CONNS.remove(key);
        return None;
    }
    let addrs = read_addrs(sk, &off);
    match addrs.family {
        AF_INET | AF_INET6 | AF_UNIX => {}
        _ => return None,
    }
    let state = ConnState {
        file,
        generation: unsafe { bpf_ktime_get_ns() },
        role: ROLE_UNKNOWN,
        announced: 0,
        addrs,
    };
    CONNS.insert(key, &state, 0).ok()?;
    CONNS.get_ptr_mut(key)
}

// ---- entry: remember the arguments of socket calls --------------------------

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(16 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1)
}

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
    let Some(state) = state else {
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

/// Whether the first bytes could start a message of a protocol user space
/// parses: an HTTP/1.x request or status line, the HTTP/2 preface, a Redis
/// command array (`*<digit>`), or a MySQL command packet (sequence 0 and a
/// command byte of COM_QUERY, COM_INIT_DB, COM_PING, COM_STMT_PREPARE or
/// COM_STMT_EXECUTE).
#[inline(always)]
fn may_start_message(first: [u8; 8]) -> bool {
    let word = [first[0], first[1], first[2], first[3]];
    if matches!(
        &word,
        b"GET "
            | b"POST"
            | b"PUT "
            | b"HEAD"
            | b"DELE"
            | b"PATC"
            | b"OPTI"
            | b"CONN"
            | b"TRAC"
            | b"HTTP"
            | b"PRI "
    ) {
        return true;
    }
    if first[0] == b'*' && first[1].is_ascii_digit() {
        return true;
    }
    first[3] == 0 && matches!(first[4], 0x02 | 0x03 | 0x0e | 0x16 | 0x17)
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Copies up to `want` bytes from `src` into the scratch data at `at`.
///
/// `black_box` hides the values' known ranges from the compiler, so the
/// bounds checks below stay in the object for the verifier to see.
#[inline(always)]
fn copy_user(scratch: &mut Scratch, at: u64, src: u64, want: u64) -> bool {
    let at = core::hint::black_box(at) & (MAX_CAPTURE as u64 - 1);
    let len = core::hint::black_box(want);
    if len == 0 {
        return true;
    }
    if len > MAX_CAPTURE as u64 {
        return false;
    }
    let dst = unsafe { scratch.data.as_mut_ptr().add(at as usize) };
    unsafe { bpf_probe_read_user(dst.cast(), len as u32, src as *const _) == 0 }
}

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

    // Where the bytes are: one buffer, or an iovec array (readv/writev and
    // the msghdr of sendmsg/recvmsg).
    let (iov_ptr, iovcnt, single) = match call.syscall {
        syscall::READV | syscall::WRITEV => (call.buf, call.iovcnt, false),
        syscall::SENDMSG | syscall::RECVMSG => {
            // struct user_msghdr: name, namelen, iov at 16, iovlen at 24.
            let iov: u64 = read_user(call.buf + 16);
            let iovlen: u64 = read_user(call.buf + 24);
            (iov, iovlen, false)
        }
        syscall::SENDFILE => (0, 0, false),
        _ => (call.buf, 0, true),
    };

    if let Some(muted_generation) = unsafe { MUTED.get(&key) } {
        if *muted_generation == state.generation {
            let first_buf = if single {
                call.buf
            } else {
                read_user::<IoVec>(iov_ptr).base
            };
            if first_buf == 0 || !may_start_message(read_user::<[u8; 8]>(first_buf)) {
                return 0;
            }
        }
    }

    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        return 0;
    };
    let scratch = unsafe { &mut *scratch };

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

    let mut captured: u64 = 0;
    if call.syscall == syscall::SENDFILE {
        // The bytes come from another file; only their count is known.
    } else if single {
        if copy_user(scratch, 0, call.buf, want) {
            captured = want;
        }
    } else {
        for i in 0..MAX_IOVECS as u64 {
            if i >= iovcnt || captured >= want {
                break;
            }
            let iov: IoVec = read_user(iov_ptr + i * 16);
            let room = want - captured;
            let n = if iov.len < room { iov.len } else { room };
            if !copy_user(scratch, captured, iov.base, n) {
                break;
            }
            captured += n;
        }
    }
    let captured = captured & (MAX_CAPTURE as u64 * 2 - 1);
    if captured > MAX_CAPTURE as u64 {
        return 0;
    }

    scratch.header = EventHeader {
        kind: EVENT_DATA,
        direction,
        start_ns: call.start_ns,
        end_ns: unsafe { bpf_ktime_get_ns() },
        tgid: key.tgid,
        tid: pid_tgid as u32,
        fd: call.fd,
        role: state.role,
        generation: state.generation,
        total_len: ret as u64,
        captured_len: captured as u32,
        syscall: call.syscall,
        addrs: state.addrs,
    };
    let record = unsafe {
        core::slice::from_raw_parts(
            (scratch as *const Scratch).cast::<u8>(),
            HEADER_LEN + captured as usize,
        )
    };
    let first = state.announced == 0;
    if first {
        announce_process(&scratch.header);
    }
    if EVENTS
        .output::<[u8]>(
            record,
            wakeup_flag(EVENTS.query(BPF_RB_AVAIL_DATA), record.len() as u64, first),
        )
        .is_err()
    {
        count_lost(lost::RINGBUF_FULL);
    } else if first && let Some(state_ptr) = CONNS.get_ptr_mut(&key) {
        unsafe { (*state_ptr).announced = 1 };
    }
    0
}

/// Sends the name of the current process ahead of `data`, its connection's
/// first record, so that user space can name a process that is gone by the
/// time it reads /proc. The data record that follows wakes user space.
#[inline(always)]
fn announce_process(data: &EventHeader) {
    let off = offsets();
    let task = unsafe { bpf_get_current_task() };
    let leader: u64 = read_kernel(task + off.task_group_leader as u64);
    let Some(mut entry) = EVENTS.reserve::<ProcessRecord>(0) else {
        count_lost(lost::RINGBUF_FULL);
        return;
    };
    entry.write(ProcessRecord {
        header: EventHeader {
            kind: EVENT_PROCESS,
            direction: DIR_NONE,
            captured_len: COMM_LEN as u32,
            total_len: COMM_LEN as u64,
            ..*data
        },
        comm: read_kernel(leader + off.task_comm as u64),
    });
    entry.submit(BPF_RB_NO_WAKEUP);
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
    let Some(state) = (unsafe { CONNS.get(&key) }).copied() else {
        return 0;
    };
    let _ = CONNS.remove(&key);
    let _ = MUTED.remove(&key);
    if let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) {
        let now = unsafe { bpf_ktime_get_ns() };
        entry.write(EventHeader {
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
            addrs: state.addrs,
        });
        // The reserved record already counts as waiting.
        let len = core::mem::size_of::<EventHeader>() as u64;
        let waiting = EVENTS.query(BPF_RB_AVAIL_DATA).saturating_sub(len);
        entry.submit(wakeup_flag(waiting, len, false));
    } else {
        count_lost(lost::RINGBUF_FULL);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
