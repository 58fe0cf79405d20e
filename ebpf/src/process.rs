//! Process life-cycle tracepoints: exec and exit records, so that user
//! space knows which processes run which binaries (for the sources that
//! attach per process) and when a process's state can go.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use sonde_common::{EVENT_EXIT, EventHeader, SOURCE_SYSCALL};

use crate::config;
use crate::record;

/// Offset of `__data_loc char[] filename` in `sched_process_exec`'s record
/// (after the 8 bytes of common fields; stable since the tracepoint exists).
const EXEC_FILENAME_LOC: usize = 8;

/// The current task's header fields, or None for the agent itself.
#[inline(always)]
fn header() -> Option<(EventHeader, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == config().agent_tgid {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let header = EventHeader {
        start_ns: now,
        end_ns: now,
        tgid,
        tid: pid_tgid as u32,
        source: SOURCE_SYSCALL,
        ..EventHeader::default()
    };
    Some((header, pid_tgid as u32))
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some((header, _)) = header() else {
        return 0;
    };
    // A __data_loc field: the low 16 bits are the offset of the bytes in
    // the record.
    let loc = unsafe { ctx.read_at::<u32>(EXEC_FILENAME_LOC) }.unwrap_or(0);
    let filename = if loc == 0 {
        0
    } else {
        ctx.as_ptr() as u64 + (loc & 0xffff) as u64
    };
    record::send_exec(header, filename);
    0
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let Some((header, pid)) = header() else {
        return 0;
    };
    // Other threads' exits leave the process running.
    if pid != header.tgid {
        return 0;
    }
    record::send_header(EventHeader {
        kind: EVENT_EXIT,
        ..header
    });
    0
}
