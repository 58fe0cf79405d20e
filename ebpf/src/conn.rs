//! Connection state: which (tgid, fd) are stream sockets, their endpoints
//! and role, the connections user space muted, and the arguments kept from
//! syscall entry to exit.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LruHashMap},
};
use sonde_common::{
    ConnKey, KernelOffsets, MAX_PREFIX_PATTERNS, MAX_SILENCED_CGROUPS, MUTE_SILENT, PENDING_SLOTS,
    PREFIX_LEN, PrefixPattern, ROLE_UNKNOWN, SockAddrs, lost,
};

use crate::mem::read_kernel;
use crate::record::count_lost;
use crate::{config, offsets};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const AF_UNIX: u16 = 1;

/// One stream socket we have seen, per (tgid, fd).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct ConnState {
    /// The `struct file *` the fd named when the entry was made: a different
    /// one means the fd was reused without us seeing close().
    pub file: u64,
    pub generation: u64,
    pub role: u32,
    /// 0 until the connection's first record went out. That record wakes
    /// user space at once, so it can read the process's metadata from /proc
    /// while a short-lived client still runs.
    pub announced: u32,
    /// Not 0 when the connection was opened in a cgroup user space muted:
    /// nothing of it is shipped, not even its close.
    pub silenced: u32,
    pub addrs: SockAddrs,
}

#[map]
static CONNS: LruHashMap<ConnKey, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// Connections user space found uninteresting, with the generation it saw.
/// For them only bytes that may start a message of a supported protocol are
/// shipped; with [`MUTE_SILENT`] set in the value, nothing is.
#[map]
static MUTED: LruHashMap<ConnKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Cgroups whose processes the `select` rules exclude: the connections
/// they open are silenced from the start. Looked up once per connection,
/// when its state is made, not per syscall.
#[map]
static SILENCED_CGROUPS: LruHashMap<u64, u8> =
    LruHashMap::with_max_entries(MAX_SILENCED_CGROUPS, 0);

/// What may start a message of a protocol user space parses, written by
/// user space at load time (`CONFIG.prefix_count` of them).
#[map]
static PREFIXES: Array<PrefixPattern> = Array::with_max_entries(MAX_PREFIX_PATTERNS, 0);

/// Whether a buffer starting with `first` (its first `PREFIX_LEN` bytes,
/// little-endian) may start a message: the only bytes a muted connection
/// ships.
///
/// Not inlined: as a function of its own it hands the exit program one
/// result, where inlined every pattern's exit was a path the verifier
/// walked through the rest of the program (it gave up: too many states).
#[inline(never)]
pub fn may_start_message(first: u64) -> bool {
    let first: [u8; PREFIX_LEN] = first.to_le_bytes();
    let count = config().prefix_count;
    for i in 0..MAX_PREFIX_PATTERNS {
        if i >= count {
            break;
        }
        if let Some(pattern) = PREFIXES.get(i)
            && pattern.matches(&first)
        {
            return true;
        }
    }
    false
}

/// How user space muted this generation of the connection.
pub enum Mute {
    No,
    /// Ship only message starts.
    Filter,
    /// Ship nothing.
    Silent,
}

#[inline(always)]
pub fn mute_of(key: &ConnKey, generation: u64) -> Mute {
    match unsafe { MUTED.get(key) } {
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

/// Marks the connection's first record as sent.
#[inline(always)]
pub fn mark_announced(key: &ConnKey) {
    if let Some(state) = CONNS.get_ptr_mut(key) {
        unsafe { (*state).announced = 1 };
    }
}

/// Forgets a closed connection, returning what was known of it.
#[inline(always)]
pub fn forget(key: &ConnKey) -> Option<ConnState> {
    let state = unsafe { CONNS.get(key) }.copied()?;
    let _ = CONNS.remove(key);
    let _ = MUTED.remove(key);
    Some(state)
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
    /// The connection as entry found it, so that exit need not look it up
    /// again (only a connection's first record does, to mark it announced).
    pub conn: ConnState,
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
pub fn conn_state(key: &ConnKey, refresh: bool) -> Option<*mut ConnState> {
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
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let state = ConnState {
        file,
        generation: unsafe { bpf_ktime_get_ns() },
        role: ROLE_UNKNOWN,
        announced: 0,
        silenced: unsafe { SILENCED_CGROUPS.get(&cgroup) }.is_some() as u32,
        addrs,
    };
    CONNS.insert(key, &state, 0).ok()?;
    CONNS.get_ptr_mut(key)
}
