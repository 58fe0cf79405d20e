//! Loading the kernel programs, attaching them, and the maps user space
//! reads and writes.
//!
//! Every program is attached through a perf-event link held by an fd of this
//! process: when the agent exits, however it exits, the kernel detaches them.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use sonde_common::{MAX_CAPTURE, MAX_PREFIX_PATTERNS, MUTE_SILENT, PrefixPattern, ProbeConfig};

use super::btf::{Btf, BtfError};
use crate::config::{CaptureConfig, CapturePath};

/// The compiled kernel object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde"));

/// The syscall path's tracepoints; all in `syscalls`.
const SYSCALL_TRACEPOINTS: &[&str] = &[
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_exit_accept",
    "sys_exit_accept4",
    "sys_enter_close",
];

/// The socket-layer path's tracepoints, in `sock` (kernel 6.3 and later).
const SOCKET_TRACEPOINTS: &[&str] = &["sock_send_length", "sock_recv_length"];

/// TCP socket life, on both paths (kernel 4.16 and later).
const SOCK_STATE_TRACEPOINTS: &[&str] = &["inet_sock_set_state"];

/// Process exec and exit, for process discovery (`attach`).
const SCHED_TRACEPOINTS: &[&str] = &["sched_process_exec", "sched_process_exit"];

/// The capture path that runs: the socket-layer one where this kernel has
/// its tracepoints, unless the config says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Socket,
    Syscall,
}

impl Path {
    /// The path `wanted` (`capture.path`) gives on a kernel whose tracefs
    /// is at `tracefs`; an error when it asks for one the kernel lacks.
    pub fn choose(wanted: CapturePath, tracefs: &std::path::Path) -> Result<Path, ProbeError> {
        let socket_layer = has_socket_tracepoints(tracefs);
        match wanted {
            CapturePath::Auto if socket_layer => Ok(Path::Socket),
            CapturePath::Auto | CapturePath::Syscall => Ok(Path::Syscall),
            CapturePath::Socket if socket_layer => Ok(Path::Socket),
            CapturePath::Socket => Err(ProbeError::NoSocketLayer),
        }
    }

    /// How the log and `sonde check` name it.
    pub fn describe(self) -> &'static str {
        match self {
            Path::Socket => {
                "socket-layer tracepoints (sock:sock_send_length, sock:sock_recv_length)"
            }
            Path::Syscall => "syscall tracepoints",
        }
    }

    /// Every hook the path attaches: (category, tracepoint), each the name
    /// of its program too.
    fn hooks(self) -> impl Iterator<Item = (&'static str, &'static str)> {
        let (category, data) = match self {
            Path::Socket => ("sock", SOCKET_TRACEPOINTS),
            Path::Syscall => ("syscalls", SYSCALL_TRACEPOINTS),
        };
        let data = data.iter().map(move |&name| (category, name));
        let state = SOCK_STATE_TRACEPOINTS.iter().map(|&name| ("sock", name));
        data.chain(state)
            .chain(SCHED_TRACEPOINTS.iter().map(|&name| ("sched", name)))
    }
}

/// Whether the kernel has the socket-layer tracepoints (6.3 and later).
pub fn has_socket_tracepoints(tracefs: &std::path::Path) -> bool {
    (SOCKET_TRACEPOINTS.iter()).all(|t| tracefs.join("events/sock").join(t).join("id").is_file())
}

/// Tracepoint program `name` of `ebpf`, loaded into the kernel.
fn loaded<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut TracePoint, ProbeError> {
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingMap(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })?;
    program
        .load()
        .map_err(|source| ProbeError::Program { name, source })?;
    Ok(program)
}

/// Why the probes could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("reading kernel structure offsets: {0}")]
    Btf(#[from] BtfError),
    #[error("tracefs: {0}")]
    Tracefs(String),
    #[error(
        "loading the eBPF programs: {0} (run `sonde check` to see what this kernel or these privileges lack)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source} (run `sonde check`)")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("{0} message-start patterns, more than the kernel's {MAX_PREFIX_PATTERNS}")]
    Prefixes(usize),
    #[error(
        "{given} message-start patterns for a kernel loaded with {loaded}: the count is fixed at load"
    )]
    PrefixCount { given: usize, loaded: usize },
    #[error("cannot count CPUs: {0}")]
    Cpus(String),
    #[error(
        "capture.path is socket, but this kernel has no sock:sock_send_length and \
         sock:sock_recv_length tracepoints (they came in 6.3): set capture.path to auto or syscall"
    )]
    NoSocketLayer,
}

/// The loaded and attached programs and the maps user space uses.
pub struct Probes {
    /// Holds the programs and their links; dropping it detaches everything.
    _ebpf: Ebpf,
    pub path: Path,
    pub events: RingBuf<MapData>,
    muted: BpfHashMap<MapData, u64, u64>,
    silenced_cgroups: BpfHashMap<MapData, u64, u8>,
    lost: PerCpuArray<MapData, u64>,
    prefixes: Array<MapData, PrefixPattern>,
    /// How many patterns the kernel tries: fixed at load (`CONFIG`).
    prefix_count: usize,
}

impl Probes {
    /// Loads the programs with this run's settings and attaches them all.
    /// `prefixes` are the first bytes that may start a message, as the
    /// protocol table gives them: the kernel's pre-filter for streams it
    /// has not yet seen start one. Their number is fixed from then on
    /// ([`set_prefixes`](Self::set_prefixes) rewrites them).
    pub fn start(config: &CaptureConfig, prefixes: &[PrefixPattern]) -> Result<Probes, ProbeError> {
        let tracefs = crate::check::ensure_tracefs().map_err(ProbeError::Tracefs)?;
        let path = Path::choose(config.path, &tracefs)?;
        let offsets = Btf::from_sys_fs()?.kernel_offsets()?;
        if prefixes.len() > MAX_PREFIX_PATTERNS as usize {
            return Err(ProbeError::Prefixes(prefixes.len()));
        }
        let whole = crate::protocol::prefilter::pipelining();
        let probe_config = ProbeConfig {
            agent_tgid: std::process::id(),
            capture_bytes: config.bytes.clamp(1, MAX_CAPTURE as u32),
            // Never more than half the ring, or it could fill before a wakeup.
            wakeup_bytes: config.wakeup_bytes.min(config.ring_buffer_bytes / 2),
            prefix_count: prefixes.len() as u32,
            whole_prefix_count: whole.len().min(MAX_PREFIX_PATTERNS as usize) as u32,
            _pad: 0,
        };
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| ProbeError::Cpus(format!("{what}: {e}")))?;

        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &probe_config, true)
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("SCRATCH", cpus as u32)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .map_max_entries("SOCKS", config.max_connections)
            .map_max_entries("FDS", config.max_connections)
            .map_max_entries("MUTED", config.max_connections)
            .load(EBPF_OBJECT)?;

        // Before attaching, so the filters are whole from the first record.
        for (name, patterns) in [("PREFIXES", prefixes), ("WHOLE_PREFIXES", &whole[..])] {
            let mut table: Array<&mut MapData, PrefixPattern> =
                Array::try_from(ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?)
                    .map_err(|source| ProbeError::Map { name, source })?;
            for (i, pattern) in patterns
                .iter()
                .take(MAX_PREFIX_PATTERNS as usize)
                .enumerate()
            {
                table
                    .set(i as u32, pattern, 0)
                    .map_err(|source| ProbeError::Map { name, source })?;
            }
        }

        for (category, name) in path.hooks() {
            loaded(&mut ebpf, name)?
                .attach(category, name)
                .map_err(|source| ProbeError::Program { name, source })?;
        }

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
        };
        let events =
            RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|source| ProbeError::Map {
                name: "EVENTS",
                source,
            })?;
        let muted =
            BpfHashMap::try_from(take(&mut ebpf, "MUTED")?).map_err(|source| ProbeError::Map {
                name: "MUTED",
                source,
            })?;
        let silenced_cgroups =
            BpfHashMap::try_from(take(&mut ebpf, "SILENCED_CGROUPS")?).map_err(|source| {
                ProbeError::Map {
                    name: "SILENCED_CGROUPS",
                    source,
                }
            })?;
        let lost =
            PerCpuArray::try_from(take(&mut ebpf, "LOST")?).map_err(|source| ProbeError::Map {
                name: "LOST",
                source,
            })?;
        let prefix_table =
            Array::try_from(take(&mut ebpf, "PREFIXES")?).map_err(|source| ProbeError::Map {
                name: "PREFIXES",
                source,
            })?;
        Ok(Probes {
            _ebpf: ebpf,
            path,
            events,
            muted,
            silenced_cgroups,
            lost,
            prefixes: prefix_table,
            prefix_count: prefixes.len(),
        })
    }

    /// Rewrites the kernel's message-start patterns (a config reload
    /// turned protocols on or off): as many as at load, the slots of a
    /// protocol off filled with a pattern that matches nothing
    /// (`protocol::prefilter::slots`). A syscall that reads the table
    /// while it changes sees old and new slots mixed, which only lets one
    /// buffer through or holds it back.
    pub fn set_prefixes(&mut self, prefixes: &[PrefixPattern]) -> Result<(), ProbeError> {
        if prefixes.len() != self.prefix_count {
            return Err(ProbeError::PrefixCount {
                given: prefixes.len(),
                loaded: self.prefix_count,
            });
        }
        for (i, pattern) in prefixes.iter().enumerate() {
            self.prefixes
                .set(i as u32, pattern, 0)
                .map_err(|source| ProbeError::Map {
                    name: "PREFIXES",
                    source,
                })?;
        }
        Ok(())
    }

    /// The ring buffer's fd, to wait on.
    pub fn events_fd(&self) -> RawFd {
        self.events.as_fd().as_raw_fd()
    }

    /// Tells the kernel to ship only message starts for this socket.
    pub fn mute(&mut self, sock: u64, generation: u64) {
        // A full map evicts its oldest entry (LRU); nothing to count here.
        let _ = self.muted.insert(sock, generation, 0);
    }

    /// Tells the kernel to ship nothing more of this socket.
    pub fn silence(&mut self, sock: u64, generation: u64) {
        let _ = self.muted.insert(sock, generation | MUTE_SILENT, 0);
    }

    /// Tells the kernel to ship nothing of the connections cgroup `id`
    /// opens from now on, or (`silenced` false) to trace them again.
    pub fn silence_cgroup(&mut self, id: u64, silenced: bool) {
        // The map is as large as user space's own set of muted cgroups
        // (MAX_SILENCED_CGROUPS) and LRU besides: nothing to count.
        let _ = if silenced {
            self.silenced_cgroups.insert(id, 1, 0)
        } else {
            self.silenced_cgroups.remove(&id)
        };
    }

    /// Records the kernel lost for `reason` (`sonde_common::lost`), so far.
    pub fn lost_records(&self, reason: u32) -> u64 {
        self.lost
            .get(&reason, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// The empty kernel program attached to every hook [`Probes`] uses: what
/// the hooks alone cost, the floor the agent's own cost is measured
/// against (`sonde floor`).
pub struct EmptyProbes {
    /// Holds the program and its links; dropping it detaches them.
    ebpf: Ebpf,
    pub path: Path,
    pub hooks: usize,
}

impl EmptyProbes {
    /// Attaches the empty program to the hooks of the path `wanted` gives.
    pub fn start(wanted: CapturePath) -> Result<EmptyProbes, ProbeError> {
        let tracefs = crate::check::ensure_tracefs().map_err(ProbeError::Tracefs)?;
        let path = Path::choose(wanted, &tracefs)?;
        let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT)?;
        let name = "empty";
        let program = loaded(&mut ebpf, name)?;
        let mut hooks = 0;
        for (category, tracepoint) in path.hooks() {
            program
                .attach(category, tracepoint)
                .map_err(|source| ProbeError::Program { name, source })?;
            hooks += 1;
        }
        Ok(EmptyProbes { ebpf, path, hooks })
    }

    /// Runs of the empty program on all its hooks so far, and the time
    /// they took: counted only while `aya::sys::enable_stats` is in force
    /// (`kernel.bpf_stats_enabled`).
    pub fn runs(&self) -> Result<(u64, std::time::Duration), ProbeError> {
        let name = "empty";
        let program: &TracePoint = self
            .ebpf
            .program(name)
            .ok_or(ProbeError::MissingMap(name))?
            .try_into()
            .map_err(|source| ProbeError::Program { name, source })?;
        let info = program
            .info()
            .map_err(|source| ProbeError::Program { name, source })?;
        Ok((info.run_count(), info.run_time()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `auto` takes the socket layer where the kernel has it; `socket` on
    /// a kernel without it is an error that says what to set instead.
    #[test]
    fn the_path_follows_the_kernel_and_the_config() {
        let root = std::env::temp_dir().join(format!("sonde-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let choose = |wanted| Path::choose(wanted, &root);
        assert_eq!(choose(CapturePath::Auto).ok(), Some(Path::Syscall));
        assert_eq!(choose(CapturePath::Syscall).ok(), Some(Path::Syscall));
        let err = choose(CapturePath::Socket).expect_err("no socket layer");
        assert!(
            err.to_string()
                .contains("set capture.path to auto or syscall")
        );
        for t in SOCKET_TRACEPOINTS {
            let dir = root.join("events/sock").join(t);
            std::fs::create_dir_all(&dir).expect("the event's directory");
            std::fs::write(dir.join("id"), "1\n").expect("its id file");
        }
        assert_eq!(choose(CapturePath::Auto).ok(), Some(Path::Socket));
        assert_eq!(choose(CapturePath::Socket).ok(), Some(Path::Socket));
        assert_eq!(choose(CapturePath::Syscall).ok(), Some(Path::Syscall));
        assert_eq!(Path::Socket.hooks().count(), 5);
        assert_eq!(Path::Syscall.hooks().count(), 26);
        std::fs::remove_dir_all(&root).ok();
    }
}
