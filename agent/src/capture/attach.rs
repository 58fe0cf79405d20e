//! Process discovery for capture sources that attach per process or per
//! binary (uprobes on TLS libraries and Go programs): a /proc scan of the
//! processes running at start, then the kernel's exec and exit records.
//!
//! Sources implement [`ProcessObserver`] and register with [`Processes`],
//! which replays the processes it knows to each new observer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sonde_common::{EVENT_EXEC, EVENT_EXIT};

use super::{Event, decode};

/// Most processes the registry follows; beyond it new ones are counted in
/// [`Processes::dropped`] and not followed. Exits free entries, so only a
/// host with this many live processes (or lost exit records) reaches it.
pub const MAX_PROCESSES: usize = 65536;

/// Told about every process the registry learns of and every one that ends.
pub trait ProcessObserver {
    /// `pid` runs `exe` (from start or since an exec).
    fn exec(&mut self, pid: u32, exe: &Path);
    /// `pid` (a thread-group leader) exited.
    fn exit(&mut self, pid: u32);
}

/// The running processes and their executables, kept current from exec and
/// exit records. The agent's own process is never reported.
pub struct Processes {
    agent_pid: u32,
    proc_root: PathBuf,
    exes: HashMap<u32, PathBuf>,
    observers: Vec<Box<dyn ProcessObserver>>,
    dropped: u64,
}

impl Processes {
    /// An empty registry that reads `proc_root` (`/proc`, or the host's
    /// /proc mounted elsewhere) and skips `agent_pid`.
    pub fn new(agent_pid: u32, proc_root: impl Into<PathBuf>) -> Self {
        Processes {
            agent_pid,
            proc_root: proc_root.into(),
            exes: HashMap::new(),
            observers: Vec::new(),
            dropped: 0,
        }
    }

    /// Adds the processes running now. Call it after the probes are
    /// attached, so that none starts unseen in between.
    pub fn scan(&mut self) {
        for (pid, exe) in scan_proc(&self.proc_root) {
            self.exec(pid, exe);
        }
    }

    /// Adds `observer`, telling it first of every process known.
    pub fn register(&mut self, mut observer: Box<dyn ProcessObserver>) {
        for (&pid, exe) in &self.exes {
            observer.exec(pid, exe);
        }
        self.observers.push(observer);
    }

    /// `pid` now runs `exe`.
    pub fn exec(&mut self, pid: u32, exe: PathBuf) {
        if pid == self.agent_pid {
            return;
        }
        if self.exes.len() >= MAX_PROCESSES && !self.exes.contains_key(&pid) {
            self.dropped += 1;
            return;
        }
        for observer in &mut self.observers {
            observer.exec(pid, &exe);
        }
        self.exes.insert(pid, exe);
    }

    /// `pid` exited.
    pub fn exit(&mut self, pid: u32) {
        if self.exes.remove(&pid).is_some() {
            for observer in &mut self.observers {
                observer.exit(pid);
            }
        }
    }

    /// Handles `record` if it is an exec or exit record; other records
    /// cost one read of their kind.
    pub fn observe(&mut self, record: &[u8]) {
        let Some(kind) = record.get(..4) else {
            return;
        };
        let kind = u32::from_ne_bytes([kind[0], kind[1], kind[2], kind[3]]);
        if kind != EVENT_EXEC && kind != EVENT_EXIT {
            return;
        }
        match decode(record) {
            Ok(Event::Exec { pid, filename }) => {
                // The exe link names the file even when exec was given a
                // relative path; the name the kernel sent is for a process
                // already gone.
                let exe = read_exe(&self.proc_root, pid).unwrap_or_else(|| {
                    PathBuf::from(String::from_utf8_lossy(filename).into_owned())
                });
                self.exec(pid, exe);
            }
            Ok(Event::Exit { pid }) => self.exit(pid),
            _ => {}
        }
    }

    /// The executable of `pid`, if it is followed.
    pub fn exe(&self, pid: u32) -> Option<&Path> {
        self.exes.get(&pid).map(PathBuf::as_path)
    }

    pub fn len(&self) -> usize {
        self.exes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exes.is_empty()
    }

    /// Processes not followed because [`MAX_PROCESSES`] were.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The target of `<proc_root>/<pid>/exe`: the executable's path as the
/// process sees it (in its own mount namespace). The link is read, never
/// followed. None for kernel threads and processes that are gone.
fn read_exe(proc_root: &Path, pid: u32) -> Option<PathBuf> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe")).ok()
}

/// Every process under `proc_root` with an executable, as (pid, exe).
/// Processes that exit during the scan, and kernel threads, are left out.
pub fn scan_proc(proc_root: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_exe(proc_root, pid)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{encode_exec, encode_exit};
    use sonde_common::EventHeader;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl Log {
        fn take(&self) -> Vec<String> {
            std::mem::take(
                &mut *self
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        }
    }

    impl ProcessObserver for Log {
        fn exec(&mut self, pid: u32, exe: &Path) {
            let line = format!("exec {pid} {}", exe.display());
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line);
        }
        fn exit(&mut self, pid: u32) {
            let line = format!("exit {pid}");
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line);
        }
    }

    #[test]
    fn the_scan_finds_this_process() {
        let me = std::process::id();
        let found = scan_proc(Path::new("/proc"));
        let exe = found.iter().find(|(pid, _)| *pid == me).map(|(_, e)| e);
        let want = std::fs::read_link("/proc/self/exe").expect("own exe link");
        assert_eq!(exe, Some(&want), "{} processes found", found.len());
    }

    #[test]
    fn the_registry_skips_the_agent() {
        let me = std::process::id();
        let mut all = Processes::new(0, "/proc");
        all.scan();
        assert!(all.exe(me).is_some());
        let mut agent = Processes::new(me, "/proc");
        agent.scan();
        assert!(agent.exe(me).is_none());
        agent.exec(me, PathBuf::from("/usr/bin/sonde"));
        assert!(agent.exe(me).is_none());
    }

    /// A fake /proc: entries that are not pids and pids without an exe link
    /// (kernel threads, or gone) are skipped.
    #[test]
    fn the_scan_skips_what_is_not_a_process() {
        let root = std::env::temp_dir().join(format!("sonde-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["123", "456", "self", "net"] {
            std::fs::create_dir_all(root.join(dir)).expect("temp dir");
        }
        std::os::unix::fs::symlink("/usr/bin/true", root.join("123/exe")).expect("symlink");
        let found = scan_proc(&root);
        std::fs::remove_dir_all(&root).ok();
        assert_eq!(found, vec![(123, PathBuf::from("/usr/bin/true"))]);
        assert!(scan_proc(&root).is_empty(), "a missing /proc is empty");
    }

    #[test]
    fn observers_hear_of_known_processes_then_records() {
        let log = Log::default();
        let mut p = Processes::new(1, "/nonexistent");
        p.exec(10, PathBuf::from("/usr/sbin/nginx"));
        p.register(Box::new(log.clone()));
        assert_eq!(log.take(), ["exec 10 /usr/sbin/nginx"]);

        let header = EventHeader {
            tgid: 20,
            tid: 20,
            ..Default::default()
        };
        // /nonexistent/20/exe cannot be read: the kernel's name is used.
        p.observe(&encode_exec(&header, b"/usr/bin/curl"));
        assert_eq!(p.exe(20), Some(Path::new("/usr/bin/curl")));
        p.observe(&encode_exit(&header));
        p.observe(&encode_exit(&header)); // told once
        assert!(p.exe(20).is_none());
        // The agent's own exec is not reported.
        p.observe(&encode_exec(
            &EventHeader { tgid: 1, ..header },
            b"/usr/bin/sonde",
        ));
        assert_eq!(log.take(), ["exec 20 /usr/bin/curl", "exit 20"]);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn the_registry_is_bounded() {
        let mut p = Processes::new(0, "/nonexistent");
        for pid in 1..=MAX_PROCESSES as u32 + 2 {
            p.exec(pid, PathBuf::from("/bin/x"));
        }
        assert_eq!((p.len(), p.dropped()), (MAX_PROCESSES, 2));
        // A known pid's exec is no new entry.
        p.exec(1, PathBuf::from("/bin/y"));
        assert_eq!(p.dropped(), 2);
    }
}
