//! The contract between sonde's kernel programs and its user-space agent.
//!
//! Every record in the ring buffer starts with an [`EventHeader`]. Data
//! records are followed by `captured_len` bytes: the prefix of the syscall's
//! buffer that the kernel copied. `total_len` is always the syscall's full byte
//! count, so user space keeps the true stream offset even when only a prefix
//! was copied.
//!
//! Kinds and enums cross the boundary as `u32` and are decoded with
//! `TryFrom` in user space.
#![no_std]

/// The most bytes one record can carry. The per-run capture limit
/// (`capture.bytes` in the config) is at most this.
pub const MAX_CAPTURE: usize = 16384;
/// Default bytes captured per syscall.
pub const DEFAULT_CAPTURE: u32 = 4096;
/// How many iovecs of one readv/writev/sendmsg/recvmsg are copied from.
/// grpcio writes one slice per frame: with 50 calls in flight a single
/// `sendmsg` had more than 32, and the frames in the rest were lost.
pub const MAX_IOVECS: u32 = 128;

/// Cgroups user space can have the kernel mute at once (the `select`
/// rules' excluded containers): the size of the `SILENCED_CGROUPS` map.
pub const MAX_SILENCED_CGROUPS: u32 = 8192;
/// Set in a `MUTED` map value (the connection's generation otherwise):
/// ship nothing more of the connection, not even message starts.
pub const MUTE_SILENT: u64 = 1 << 63;

/// Record kinds (`EventHeader::kind`).
pub const EVENT_DATA: u32 = 1;
/// The fd was closed; no payload.
pub const EVENT_CLOSE: u32 = 2;
/// The process behind a connection, sent just before the connection's first
/// data record: a [`ProcessRecord`]. A client that exits before user space
/// reads its /proc entry still has a name.
pub const EVENT_PROCESS: u32 = 3;
/// A process called exec(): an [`ExecRecord`] (`tgid` is the process).
pub const EVENT_EXEC: u32 = 4;
/// A process exited (its thread-group leader did): a bare header.
pub const EVENT_EXIT: u32 = 5;

/// Bytes of the file name an exec record carries, its NUL included; longer
/// names are cut (user space reads /proc/PID/exe first).
pub const EXEC_PATH_LEN: usize = 256;

/// Capture sources (`EventHeader::source`): which probe produced a record.
/// User space keys streams by source too, so the plaintext a TLS library
/// sees and the ciphertext its socket carries never merge.
///
/// The kernel's socket hooks, whichever capture path runs (syscall
/// tracepoints or the socket-layer ones), and sched for exec and exit
/// records: the bytes the socket carries.
pub const SOURCE_SYSCALL: u32 = 1;
/// Reserved, not yet emitted: OpenSSL read/write uprobes (plaintext).
pub const SOURCE_TLS_OPENSSL: u32 = 2;
/// Reserved, not yet emitted: Go crypto/tls uprobes (plaintext).
pub const SOURCE_TLS_GO: u32 = 3;
/// Reserved, not yet emitted: Go net/http uprobes.
pub const SOURCE_GO_HTTP: u32 = 4;

/// Bytes of a task name (`comm`), its NUL included.
pub const COMM_LEN: usize = 16;

/// Directions (`EventHeader::direction`).
pub const DIR_NONE: u32 = 0;
/// Bytes written by the traced process.
pub const DIR_EGRESS: u32 = 1;
/// Bytes read by the traced process.
pub const DIR_INGRESS: u32 = 2;

/// Roles (`EventHeader::role`): how the process got the socket.
pub const ROLE_UNKNOWN: u32 = 0;
/// The process called connect() on it.
pub const ROLE_CLIENT: u32 = 1;
/// The process got it from accept()/accept4().
pub const ROLE_SERVER: u32 = 2;

/// Address families (`SockAddrs::family`), as in the kernel.
pub const AF_UNIX: u16 = 1;
/// IPv4.
pub const AF_INET: u16 = 2;
/// IPv6.
pub const AF_INET6: u16 = 10;

/// Syscall numbers as recorded in `EventHeader::syscall` (ours, not the
/// kernel's, so they are stable across architectures).
pub mod syscall {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const READV: u32 = 3;
    pub const WRITEV: u32 = 4;
    pub const SENDTO: u32 = 5;
    pub const RECVFROM: u32 = 6;
    pub const SENDMSG: u32 = 7;
    pub const RECVMSG: u32 = 8;
    pub const SENDFILE: u32 = 9;
    pub const CLOSE: u32 = 10;
    /// Kept between connect() entry and exit; never in a record.
    pub const CONNECT: u32 = 11;
}

/// Slots of the kernel's entry-to-exit table, indexed by thread id.
pub const PENDING_SLOTS: u32 = 32768;

/// Indexes of the kernel's per-CPU loss counters (`LOST`).
pub mod lost {
    /// The ring buffer had no room for a record.
    pub const RINGBUF_FULL: u32 = 0;
    /// A thread's syscall overwrote the pending call of another thread
    /// whose id shares its slot; that call's record is lost.
    pub const SLOT_TAKEN: u32 = 1;
    /// Socket bytes moved outside a syscall the socket-layer path reads
    /// buffers from (io_uring, kernel threads, sendmmsg): not recorded.
    pub const NOT_A_SYSCALL: u32 = 2;
    /// A call on a whole-call connection moved more than `WHOLE_CAPTURE`
    /// bytes: the rest of it went uncopied (a gap). Not a lost record.
    pub const CALL_CUT: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// A socket's two endpoints. Addresses are in network byte order; IPv4
/// addresses fill the first four bytes. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddrs {
    pub family: u16,
    pub local_port: u16,
    pub peer_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SockAddrs>() == 40);

/// The fixed header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// `EVENT_*`.
    pub kind: u32,
    /// `DIR_*`.
    pub direction: u32,
    /// Kernel monotonic time at syscall entry, in nanoseconds (on the
    /// socket-layer path, when the bytes moved: the same as `end_ns`).
    pub start_ns: u64,
    /// Kernel monotonic time at syscall exit, in nanoseconds (on the
    /// socket-layer path, when the bytes moved).
    pub end_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// `ROLE_*`.
    pub role: u32,
    /// The socket (its `struct sock` address), 0 when the record has none:
    /// with `generation`, what names a connection, whichever fd or process
    /// reached it.
    pub sock: u64,
    /// Changes whenever the socket's address names another socket.
    pub generation: u64,
    /// The syscall's full byte count (its return value).
    pub total_len: u64,
    /// How many bytes follow the header.
    pub captured_len: u32,
    /// `syscall::*`.
    pub syscall: u32,
    /// `SOURCE_*`.
    pub source: u32,
    pub _pad: u32,
    pub addrs: SockAddrs,
}
pub const HEADER_LEN: usize = core::mem::size_of::<EventHeader>();
const _: () = assert!(HEADER_LEN == 120);

/// An `EVENT_PROCESS` record: the header (`captured_len` is
/// `PROCESS_PAYLOAD_LEN`), the name of the process's main thread,
/// NUL-padded, and the id of the cgroup (v2) the thread ran in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessRecord {
    pub header: EventHeader,
    pub comm: [u8; COMM_LEN],
    /// `bpf_get_current_cgroup_id()`: the inode number of the thread's
    /// cgroup in the unified hierarchy, so that a process that is gone, or
    /// whose pid was reused, by the time user space reads /proc is still
    /// placed in its container.
    pub cgroup_id: u64,
}
/// Bytes of a process record after its header.
pub const PROCESS_PAYLOAD_LEN: usize = COMM_LEN + 8;
const _: () = assert!(core::mem::size_of::<ProcessRecord>() == HEADER_LEN + PROCESS_PAYLOAD_LEN);

/// An `EVENT_EXEC` record: the header (`captured_len` is the name's length,
/// its NUL excluded) and the file name exec() was given, as the kernel
/// keeps it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    pub header: EventHeader,
    pub filename: [u8; EXEC_PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<ExecRecord>() == HEADER_LEN + EXEC_PATH_LEN);

/// The most bytes one record of a whole-call connection carries (see
/// `ProbeConfig::whole_prefix_count`); the rest of a larger call goes
/// uncopied (`lost::CALL_CUT` counts such calls).
pub const WHOLE_CAPTURE: usize = 65536;

/// Most patterns the kernel's message-start filter holds (`PREFIXES`).
pub const MAX_PREFIX_PATTERNS: u32 = 32;
/// Bytes of a buffer's start the message-start filter looks at.
pub const PREFIX_LEN: usize = 8;

/// One pattern of the kernel's message-start filter for muted connections:
/// byte `i` of a buffer's first `PREFIX_LEN` bytes matches when
/// `lo[i] <= b <= hi[i]`; `0..=255` matches any byte. User space writes the
/// protocols' patterns into the `PREFIXES` map at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixPattern {
    pub lo: [u8; PREFIX_LEN],
    pub hi: [u8; PREFIX_LEN],
}
const _: () = assert!(core::mem::size_of::<PrefixPattern>() == 2 * PREFIX_LEN);

impl PrefixPattern {
    /// Matches every buffer.
    pub const ANY: PrefixPattern = PrefixPattern {
        lo: [0; PREFIX_LEN],
        hi: [u8::MAX; PREFIX_LEN],
    };

    /// Buffers that start with `bytes` (at most `PREFIX_LEN` of them).
    pub const fn literal(bytes: &[u8]) -> PrefixPattern {
        assert!(
            bytes.len() <= PREFIX_LEN,
            "a pattern covers PREFIX_LEN bytes"
        );
        let mut pattern = PrefixPattern::ANY;
        let mut i = 0;
        while i < bytes.len() {
            pattern = pattern.byte(i, bytes[i]);
            i += 1;
        }
        pattern
    }

    /// This pattern with byte `at` anywhere in `lo..=hi`.
    pub const fn range(mut self, at: usize, lo: u8, hi: u8) -> PrefixPattern {
        self.lo[at] = lo;
        self.hi[at] = hi;
        self
    }

    /// This pattern with byte `at` equal to `value`.
    pub const fn byte(self, at: usize, value: u8) -> PrefixPattern {
        self.range(at, value, value)
    }

    /// Whether a buffer starting with `first` matches.
    #[inline(always)]
    pub fn matches(&self, first: &[u8; PREFIX_LEN]) -> bool {
        let mut i = 0;
        while i < PREFIX_LEN {
            if first[i] < self.lo[i] || first[i] > self.hi[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// Key of the syscall path's per-fd map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);

/// Field offsets inside kernel structures, read from the running kernel's BTF
/// by user space and handed to the programs as a global, so one object runs on
/// every kernel layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    /// `struct sock`'s `sk_type` (SOCK_STREAM, SOCK_DGRAM, ...).
    pub sk_type: u32,
    /// `struct sock`'s `sk_socket`.
    pub sk_socket: u32,
    /// From a `struct socket` to its inode's `i_ino` (the socket and its
    /// inode are allocated together): a Unix socket's identity.
    pub socket_ino: u32,
    /// `struct file`'s reference count (`f_ref`, or `f_count` before 6.13).
    pub file_refs: u32,
    /// What that count holds when one reference is left (0 for `f_ref`,
    /// 1 for `f_count`).
    pub file_one_ref: u32,
    /// `task_struct`'s `flags` (`PF_KTHREAD`, `PF_IO_WORKER`).
    pub task_flags: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 96);

/// Per-run settings handed to the programs as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The agent's own process: never traced, so its export cannot feed back.
    pub agent_tgid: u32,
    /// Bytes copied per syscall, at most `MAX_CAPTURE`.
    pub capture_bytes: u32,
    /// User space is woken only once this many bytes wait in the ring
    /// buffer; below that it finds them on its next timed poll. Waking it
    /// for every record would cost a context switch per syscall.
    pub wakeup_bytes: u32,
    /// Patterns in the `PREFIXES` map, at most `MAX_PREFIX_PATTERNS`.
    pub prefix_count: u32,
    /// Patterns in the `WHOLE_PREFIXES` map: a connection whose first
    /// bytes match one carries a protocol that pipelines small messages,
    /// so its single-buffer calls are copied whole (up to `WHOLE_CAPTURE`
    /// bytes), not only their first `capture_bytes`.
    pub whole_prefix_count: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::PrefixPattern {}
}
