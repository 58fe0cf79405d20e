//! Connection state, keyed by socket (`struct sock *`): its generation,
//! role and endpoints, and whether user space muted it. One socket reached
//! through two fds or two processes (an inetd-style server's child reading
//! fd 0 and writing fd 1) is one connection.
//!
//! The syscall path also keeps which (tgid, fd) names which socket, and the
//! arguments kept from syscall entry to exit.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LruHashMap},
};
use sonde_common::{
    AF_INET, AF_INET6, AF_UNIX, ConnKey, KernelOffsets, MAX_PREFIX_PATTERNS, MAX_SILENCED_CGROUPS,
    MUTE_SILENT, PENDING_SLOTS, PREFIX_LEN, PrefixPattern, ROLE_UNKNOWN, SockAddrs, lost,
};

use crate::mem::read_kernel;
use crate::record::count_lost;
use crate::{config, offsets};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;

/// One stream socket we have seen.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SockState {
    /// Changes when the socket's address names a new socket: the time the
    /// state was made, or for a Unix socket its inode number (Unix sockets
    /// have no state changes to say when one is freed).
    pub generation: u64,
    pub role: u32,
    /// 0 until a process first moved bytes on the socket: then its
    /// addresses are read and its cgroup judged (a server's socket is made
    /// in softirq, where neither is known).
    pub seen: u32,
    /// 0 until the socket's first record went out. That record wakes user
    /// space at once, so it can read the process's metadata from /proc
    /// while a short-lived client still runs.
    pub announced: u32,
    /// Not 0 when the socket was first used in a cgroup user space muted:
    /// nothing of it is shipped, not even its close.
    pub silenced: u32,
    /// Not 0 when its first bytes started a message of a protocol that
    /// pipelines small messages: its calls are copied whole.
    pub whole: u32,
    pub _pad: u32,
    pub addrs: SockAddrs,
}

#[map]
static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(65536, 0);

/// Sockets user space found uninteresting, with the generation it saw.
/// For them only bytes that may start a message of a supported protocol are
/// shipped; with [`MUTE_SILENT`] set in the value, nothing is.
#[map]
static MUTED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Cgroups whose processes the `select` rules exclude: the sockets they
/// use are silenced from the start. Looked up once per socket, when it
/// first carries bytes, not per call.
#[map]
static SILENCED_CGROUPS: LruHashMap<u64, u8> =
    LruHashMap::with_max_entries(MAX_SILENCED_CGROUPS, 0);

/// What may start a message of a protocol user space parses, written by
/// user space at load time (`CONFIG.prefix_count` of them).
#[map]
static PREFIXES: Array<PrefixPattern> = Array::with_max_entries(MAX_PREFIX_PATTERNS, 0);

/// What starts a message of a protocol that pipelines small messages
/// (`CONFIG.whole_prefix_count` of them).
#[map]
static WHOLE_PREFIXES: Array<PrefixPattern> = Array::with_max_entries(MAX_PREFIX_PATTERNS, 0);

/// Whether a buffer starting with `first` (its first `PREFIX_LEN` bytes,
/// little-endian) may start a message: the only bytes a muted connection
/// ships.
///
/// Not inlined: as a function of its own it hands the caller one result,
/// where inlined every pattern's exit was a path the verifier walked
/// through the rest of the program (it gave up: too many states).
#[inline(never)]
pub fn may_start_message(first: u64) -> bool {
    matches_any(&PREFIXES, config().prefix_count, first)
}

/// Whether a connection whose first bytes are `first` carries a protocol
/// whose calls are copied whole.
#[inline(never)]
pub fn pipelines(first: u64) -> bool {
    matches_any(&WHOLE_PREFIXES, config().whole_prefix_count, first)
}

#[inline(always)]
fn matches_any(patterns: &Array<PrefixPattern>, count: u32, first: u64) -> bool {
    let first: [u8; PREFIX_LEN] = first.to_le_bytes();
    for i in 0..MAX_PREFIX_PATTERNS {
        if i >= count {
            break;
        }
        if let Some(pattern) = patterns.get(i)
            && pattern.matches(&first)
        {
            return true;
        }
    }
    false
}

/// How user space muted this generation of the socket.
pub enum Mute {
    No,
    /// Ship only message starts.
    Filter,
    /// Ship nothing.
    Silent,
}

#[inline(always)]
pub fn mute_of(sock: u64, generation: u64) -> Mute {
    match unsafe { MUTED.get(&sock) } {
        Some(&muted) if muted & !MUTE_SILENT == generation => {
            if muted & MUTE_SILENT != 0 {
                Mute::Silent
            } else {
                Mute::Filter
            }
        }
        _ => Mute::No,
    }
}

/// Marks the socket's first record as sent, and whether its calls are
/// copied whole from now on.
#[inline(always)]
pub fn mark_announced(sock: u64, whole: bool) {
    if let Some(state) = SOCKS.get_ptr_mut(&sock) {
        unsafe {
            (*state).announced = 1;
            (*state).whole = whole as u32;
        }
    }
}

/// Forgets a socket that is gone, returning what was known of it.
#[inline(always)]
pub fn forget_sock(sock: u64) -> Option<SockState> {
    let state = unsafe { SOCKS.get(&sock) }.copied()?;
    let _ = SOCKS.remove(&sock);
    let _ = MUTED.remove(&sock);
    Some(state)
}

/// Starts a fresh state for a socket that just began to connect or was
/// just accepted: its address may have named another socket before.
#[inline(always)]
pub fn sock_begins(sock: u64, role: u32) {
    let _ = fresh_state(sock, unsafe { bpf_ktime_get_ns() }, role);
}

/// Replaces whatever state `sock`'s address had with a new one, and
/// forgets a mute of the socket that was there before.
#[inline(always)]
fn fresh_state(sock: u64, generation: u64, role: u32) -> Option<*mut SockState> {
    let state = SockState {
        generation,
        role,
        ..SockState::default()
    };
    SOCKS.insert(&sock, &state, 0).ok()?;
    let _ = MUTED.remove(&sock);
    SOCKS.get_ptr_mut(&sock)
}

/// The inode number of a socket: a Unix socket's generation.
#[inline(always)]
fn inode_number(sk: u64, off: &KernelOffsets) -> u64 {
    let socket: u64 = read_kernel(sk + off.sk_socket as u64);
    if socket == 0 {
        return 0;
    }
    read_kernel(socket + off.socket_ino as u64)
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

/// The state of stream socket `sk` of address family `family`, as the
/// current process moves bytes on it, made if new. None for sockets that
/// are not TCP or Unix stream sockets (the caller has checked the
/// protocol of inet sockets).
#[inline(always)]
pub fn sock_state(sk: u64, family: u16) -> Option<*mut SockState> {
    let off = offsets();
    // A Unix socket's state holds only if its inode is the same; only a
    // socket with no state is checked for being a stream socket (states
    // are made for nothing else).
    let unix_ino = if family == AF_UNIX {
        inode_number(sk, &off)
    } else {
        0
    };
    let state = match SOCKS.get_ptr_mut(&sk) {
        Some(state) if family != AF_UNIX || unsafe { (*state).generation } == unix_ino => state,
        _ if family == AF_UNIX => {
            let sk_type: u16 = read_kernel(sk + off.sk_type as u64);
            if sk_type != SOCK_STREAM {
                return None;
            }
            fresh_state(sk, unix_ino, ROLE_UNKNOWN)?
        }
        _ => fresh_state(sk, unsafe { bpf_ktime_get_ns() }, ROLE_UNKNOWN)?,
    };
    let s = unsafe { &mut *state };
    if s.seen == 0 {
        s.seen = 1;
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        s.silenced = unsafe { SILENCED_CGROUPS.get(&cgroup) }.is_some() as u32;
        s.addrs = read_addrs(sk, &off);
    } else if s.addrs.family != AF_UNIX && (s.addrs.peer_port == 0 || s.addrs.local_port == 0) {
        // Read before connect() finished: read again until bound.
        s.addrs = read_addrs(sk, &off);
    }
    Some(state)
}

// ---- the syscall path: (tgid, fd) to socket ----------------------------------

/// Which socket an fd names, as the syscall path found it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FdState {
    /// The `struct file *` the fd named when the entry was made: a different
    /// one means the fd was reused without us seeing close().
    pub file: u64,
    pub sock: u64,
}

#[map]
static FDS: LruHashMap<ConnKey, FdState> = LruHashMap::with_max_entries(65536, 0);

/// The socket behind (tgid, fd) if it is a stream socket, and its state.
#[inline(always)]
pub fn fd_sock(key: &ConnKey) -> Option<(u64, *mut SockState)> {
    let off = offsets();
    let file = file_of(key.fd, &off);
    if file == 0 {
        return None;
    }
    let sock = match unsafe { FDS.get(key) } {
        Some(fd) if fd.file == file => fd.sock,
        _ => {
            let sock = stream_sock_of(file, &off);
            if sock == 0 {
                let _ = FDS.remove(key);
                return None;
            }
            FDS.insert(key, &FdState { file, sock }, 0).ok()?;
            sock
        }
    };
    let family: u16 = read_kernel(sock + off.sk_family as u64);
    match family {
        AF_INET | AF_INET6 | AF_UNIX => Some((sock, sock_state(sock, family)?)),
        _ => None,
    }
}

/// Forgets (tgid, fd) as it is closed. Returns its socket if this was the
/// last reference to the file: no other fd, in this process or another,
/// names it.
#[inline(always)]
pub fn close_fd(key: &ConnKey) -> Option<u64> {
    let fd = unsafe { FDS.get(key) }.copied()?;
    let _ = FDS.remove(key);
    let off = offsets();
    let refs: u64 = read_kernel(fd.file + off.file_refs as u64);
    (refs == off.file_one_ref as u64).then_some(fd.sock)
}

/// Arguments kept from syscall entry to exit, per thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    /// The thread (pid_tgid) the slot holds a call of; 0 when free.
    pub owner: u64,
    pub start_ns: u64,
    /// The buffer, or the iovec array, or the msghdr.
    pub buf: u64,
    pub iovcnt: u64,
    pub fd: u32,
    pub syscall: u32,
    pub sock: u64,
    /// The socket as entry found it, so that exit need not look it up
    /// again (only a socket's first record does, to mark it announced).
    pub state: SockState,
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
pub fn keep_pending(pid_tgid: u64, call: PendingCall) {
    if let Some(slot) = pending_slot(pid_tgid) {
        if slot.owner != 0 && slot.owner != pid_tgid {
            count_lost(lost::SLOT_TAKEN);
        }
        *slot = call;
    }
}

/// Frees this thread's slot (its syscall is not one we follow).
#[inline(always)]
pub fn drop_pending(pid_tgid: u64) {
    if let Some(slot) = pending_slot(pid_tgid)
        && slot.owner == pid_tgid
    {
        slot.owner = 0;
    }
}

/// This thread's pending call of `syscall`, freeing its slot.
#[inline(always)]
pub fn take_pending(pid_tgid: u64, syscall: u32) -> Option<PendingCall> {
    let slot = pending_slot(pid_tgid)?;
    if slot.owner != pid_tgid {
        return None;
    }
    let call = *slot;
    slot.owner = 0;
    (call.syscall == syscall).then_some(call)
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
