//! Building records and sending them to user space: the per-CPU scratch
//! record, copies from a user buffer or an iovec array, the wakeup policy,
//! and the loss counters.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_probe_read_user},
    },
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use sonde_common::{
    DIR_NONE, EVENT_CLOSE, EVENT_DATA, EVENT_EXEC, EVENT_PROCESS, EXEC_PATH_LEN, EventHeader,
    ExecRecord, HEADER_LEN, MAX_CAPTURE, MAX_IOVECS, PROCESS_PAYLOAD_LEN, ProcessRecord,
    SOURCE_SYSCALL, WHOLE_CAPTURE, lost, syscall,
};

use crate::conn::{self, Mute, SockState};
use crate::mem::{read_kernel, read_user};
use crate::{config, offsets};

/// Records for user space. Size is set by the agent (`capture.ring_buffer_bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Records lost in the kernel, by reason (`sonde_common::lost`), summed
/// over CPUs by user space.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNT, 0);

#[inline(always)]
pub fn count_lost(reason: u32) {
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

/// Scratch space for building one record, one slot per CPU (too large for
/// the stack and for a per-CPU map). Data gets at least twice the maximum
/// of a head so that a masked offset plus a masked length always stays
/// inside, as the verifier needs to see, and room for a whole call.
#[repr(C)]
struct Scratch {
    header: EventHeader,
    data: [u8; WHOLE_CAPTURE],
}
const _: () = assert!(WHOLE_CAPTURE >= 2 * MAX_CAPTURE);

#[map]
static SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Where a syscall's bytes are in user memory.
pub enum Bytes {
    /// One buffer.
    Buffer(u64),
    /// An iovec array (readv/writev, and the msghdr of sendmsg/recvmsg).
    Iovecs { ptr: u64, count: u64 },
    /// Not in this process's memory (sendfile): only their count is known.
    Uncopied,
}

impl Bytes {
    /// Where the bytes of socket call `syscall` (`syscall::*`) are, from
    /// its buffer (or iovec array, or msghdr) and iovec count arguments.
    #[inline(always)]
    pub fn of_call(syscall: u32, buf: u64, iovcnt: u64) -> Bytes {
        match syscall {
            syscall::READV | syscall::WRITEV => Bytes::Iovecs {
                ptr: buf,
                count: iovcnt,
            },
            syscall::SENDMSG | syscall::RECVMSG => {
                // struct user_msghdr: name, namelen, iov at 16, iovlen at 24.
                Bytes::Iovecs {
                    ptr: read_user(buf + 16),
                    count: read_user(buf + 24),
                }
            }
            syscall::SENDFILE => Bytes::Uncopied,
            _ => Bytes::Buffer(buf),
        }
    }

    /// The address of the first buffer, or 0.
    #[inline(always)]
    pub fn first_buffer(&self) -> u64 {
        match *self {
            Bytes::Buffer(buf) => buf,
            Bytes::Iovecs { ptr, .. } => read_user::<IoVec>(ptr).base,
            Bytes::Uncopied => 0,
        }
    }
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

/// One call that moved bytes on a socket, as a capture path saw it.
pub struct Call {
    pub direction: u32,
    pub fd: u32,
    /// `syscall::*`.
    pub syscall: u32,
    pub pid_tgid: u64,
    /// When the call began, or 0 when only its end is known.
    pub start_ns: u64,
    /// The bytes it moved.
    pub total: u64,
}

/// Ships the bytes `call` moved on socket `sock`: a data record naming the
/// socket, with up to the capture limit of the bytes, unless user space
/// muted the socket.
///
/// A connection whose first bytes start a message of a protocol that
/// pipelines small messages (Redis) has its single-buffer calls copied
/// whole, up to `WHOLE_CAPTURE` bytes, so that no message boundary is lost
/// past the head of a call (one write of 300 pipelined commands). An
/// iovec call gives its head.
#[inline(always)]
pub fn ship(sock: u64, state: &SockState, call: &Call, bytes: &Bytes) {
    match conn::mute_of(sock, state.generation) {
        Mute::No => {}
        Mute::Silent => return,
        Mute::Filter => {
            let first_buf = bytes.first_buffer();
            if first_buf == 0 || !conn::may_start_message(read_user::<u64>(first_buf)) {
                return;
            }
        }
    }
    let first = state.announced == 0;
    let whole = if first {
        let first_buf = bytes.first_buffer();
        first_buf != 0 && conn::pipelines(read_user::<u64>(first_buf))
    } else {
        state.whole != 0
    };
    let total = call.total;
    let sent = match *bytes {
        Bytes::Buffer(buf) if whole => {
            let max = WHOLE_CAPTURE as u64;
            if total > max {
                count_lost(lost::CALL_CUT);
            }
            let want = if total < max { total } else { max };
            send_whole(sock, state, call, buf, want, first)
        }
        _ => {
            let limit = config().capture_bytes as u64;
            let limit = if limit > MAX_CAPTURE as u64 {
                MAX_CAPTURE as u64
            } else {
                limit
            };
            let want = if total < limit { total } else { limit };
            send_data(sock, state, call, bytes, want, first)
        }
    };
    if sent && first {
        conn::mark_announced(sock, whole);
    }
}

/// Forgets socket `sock`, which is gone, and sends its close record if
/// any of it was shipped. `pid_tgid` and `fd` say who closed it, where
/// known (0 when the kernel freed it).
#[inline(always)]
pub fn send_close(sock: u64, pid_tgid: u64, fd: u32) {
    let Some(state) = conn::forget_sock(sock) else {
        return;
    };
    if state.announced == 0 || state.silenced != 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    send_header(EventHeader {
        kind: EVENT_CLOSE,
        direction: 0,
        start_ns: now,
        end_ns: now,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        role: state.role,
        sock,
        generation: state.generation,
        syscall: syscall::CLOSE,
        source: SOURCE_SYSCALL,
        addrs: state.addrs,
        ..EventHeader::default()
    });
}

/// Sends the data record of `call` on `sock`, with up to `want` bytes
/// copied from `bytes`. A connection's `first` record is preceded by a
/// process record and wakes user space. Returns whether the record was
/// sent.
#[inline(always)]
fn send_data(
    sock: u64,
    state: &SockState,
    call: &Call,
    bytes: &Bytes,
    want: u64,
    first: bool,
) -> bool {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        return false;
    };
    let scratch = unsafe { &mut *scratch };

    let mut captured: u64 = 0;
    match *bytes {
        Bytes::Uncopied => {}
        Bytes::Buffer(buf) => {
            if copy_user(scratch, 0, buf, want) {
                captured = want;
            }
        }
        Bytes::Iovecs { ptr, count } => {
            for i in 0..MAX_IOVECS as u64 {
                if i >= count || captured >= want {
                    break;
                }
                let iov: IoVec = read_user(ptr + i * 16);
                let room = want - captured;
                let n = if iov.len < room { iov.len } else { room };
                if !copy_user(scratch, captured, iov.base, n) {
                    break;
                }
                captured += n;
            }
        }
    }
    let captured = captured & (MAX_CAPTURE as u64 * 2 - 1);
    if captured > MAX_CAPTURE as u64 {
        return false;
    }
    output(scratch, sock, state, call, captured, first)
}

/// Sends the data record of `call` on `sock`, with the first `want` bytes
/// (at most `WHOLE_CAPTURE`) of the buffer at `buf`.
#[inline(always)]
fn send_whole(sock: u64, state: &SockState, call: &Call, buf: u64, want: u64, first: bool) -> bool {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = SCRATCH.get_ptr_mut(cpu) else {
        return false;
    };
    let scratch = unsafe { &mut *scratch };
    let len = core::hint::black_box(want);
    if len == 0 || len > WHOLE_CAPTURE as u64 {
        return false;
    }
    let dst = scratch.data.as_mut_ptr();
    let copied = unsafe { bpf_probe_read_user(dst.cast(), len as u32, buf as *const _) == 0 };
    output(
        scratch,
        sock,
        state,
        call,
        if copied { len } else { 0 },
        first,
    )
}

/// Sends the record built in `scratch`: the header of `call` on `sock`,
/// written field by field in place (the stack has no room for a copy),
/// and the `captured` bytes already copied after it.
#[inline(always)]
fn output(
    scratch: &mut Scratch,
    sock: u64,
    state: &SockState,
    call: &Call,
    captured: u64,
    first: bool,
) -> bool {
    if captured > WHOLE_CAPTURE as u64 {
        return false;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let h = &mut scratch.header;
    h.kind = EVENT_DATA;
    h.direction = call.direction;
    h.start_ns = if call.start_ns == 0 {
        now
    } else {
        call.start_ns
    };
    h.end_ns = now;
    h.tgid = (call.pid_tgid >> 32) as u32;
    h.tid = call.pid_tgid as u32;
    h.fd = call.fd;
    h.role = state.role;
    h.sock = sock;
    h.generation = state.generation;
    h.total_len = call.total;
    h.captured_len = captured as u32;
    h.syscall = call.syscall;
    h.source = SOURCE_SYSCALL;
    h._pad = 0;
    crate::mem::copy_addrs(&mut h.addrs, &state.addrs);
    let record = unsafe {
        core::slice::from_raw_parts(
            (scratch as *const Scratch).cast::<u8>(),
            HEADER_LEN + captured as usize,
        )
    };
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
        return false;
    }
    true
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
            captured_len: PROCESS_PAYLOAD_LEN as u32,
            total_len: PROCESS_PAYLOAD_LEN as u64,
            ..*data
        },
        comm: read_kernel(leader + off.task_comm as u64),
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    });
    entry.submit(BPF_RB_NO_WAKEUP);
}

/// Sends a bare header (a close or exit record).
#[inline(always)]
pub fn send_header(header: EventHeader) {
    if let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) {
        entry.write(header);
        // The reserved record already counts as waiting.
        let len = core::mem::size_of::<EventHeader>() as u64;
        let waiting = EVENTS.query(BPF_RB_AVAIL_DATA).saturating_sub(len);
        entry.submit(wakeup_flag(waiting, len, false));
    } else {
        count_lost(lost::RINGBUF_FULL);
    }
}

/// Sends an exec record: `header`, then the NUL-terminated name at kernel
/// address `filename`; `kind` and the lengths are set here.
#[inline(always)]
pub fn send_exec(header: EventHeader, filename: u64) {
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_lost(lost::RINGBUF_FULL);
        return;
    };
    let record = entry.as_mut_ptr();
    // The name is read straight into the ring. The bytes after it are
    // left as they were: `captured_len` says where the name ends.
    let name = unsafe {
        core::slice::from_raw_parts_mut(
            core::ptr::addr_of_mut!((*record).filename).cast::<u8>(),
            EXEC_PATH_LEN,
        )
    };
    let len = unsafe { bpf_probe_read_kernel_str_bytes(filename as *const u8, name) }
        .map_or(0, |s| s.len());
    let len = if len > EXEC_PATH_LEN - 1 {
        EXEC_PATH_LEN - 1
    } else {
        len
    };
    unsafe {
        core::ptr::addr_of_mut!((*record).header).write(EventHeader {
            kind: EVENT_EXEC,
            captured_len: len as u32,
            total_len: len as u64,
            ..header
        });
    }
    let size = core::mem::size_of::<ExecRecord>() as u64;
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA).saturating_sub(size);
    entry.submit(wakeup_flag(waiting, size, false));
}
