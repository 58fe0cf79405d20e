//! Process discovery with the real kernel programs: a short-lived program's
//! exec and exit reach the registry. Needs root.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sonde::capture::attach::{ProcessObserver, Processes};
use sonde::capture::probes::Probes;
use sonde::capture::{self, Event};
use sonde::config::CaptureConfig;
use sonde::protocol::prefilter;

fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Exec(u32, PathBuf),
    Exit(u32),
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn of(&self, pid: u32) -> Vec<Seen> {
        let seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.iter()
            .filter_map(|s| match s {
                Seen::Exec(p, exe) if *p == pid => Some(Seen::Exec(*p, exe.clone())),
                Seen::Exit(p) if *p == pid => Some(Seen::Exit(*p)),
                _ => None,
            })
            .collect()
    }
}

impl ProcessObserver for Recorder {
    fn exec(&mut self, pid: u32, exe: &Path) {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.push(Seen::Exec(pid, exe.to_path_buf()));
    }
    fn exit(&mut self, pid: u32) {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.push(Seen::Exit(pid));
    }
}

#[test]
fn a_short_lived_program_is_seen_to_start_and_exit() {
    if !is_root() {
        eprintln!("skipped: needs root to load eBPF programs");
        return;
    }
    let mut probes = Probes::start(&CaptureConfig::default(), &prefilter::all())
        .expect("probes start (run as root)");
    let mut processes = Processes::new(std::process::id(), "/proc");
    processes.scan();
    assert!(
        processes.exe(std::process::id()).is_none(),
        "the agent's own process is not followed"
    );
    let recorder = Recorder::default();
    processes.register(Box::new(recorder.clone()));

    // The file itself, so the path is the one /proc/PID/exe shows.
    let sleep = std::fs::canonicalize("/bin/sleep").expect("sleep installed");
    let mut child = Command::new(&sleep).arg("0.2").spawn().expect("sleep runs");
    let pid = child.id();
    let mut names = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !recorder.of(pid).contains(&Seen::Exit(pid)) {
        while let Some(record) = probes.events.next() {
            if let Ok(Event::Exec { pid: p, filename }) = capture::decode(&record)
                && p == pid
            {
                names.push(filename.to_vec());
            }
            processes.observe(&record);
        }
        let _ = child.try_wait();
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        recorder.of(pid),
        vec![Seen::Exec(pid, sleep.clone()), Seen::Exit(pid)],
        "exec then exit of {pid}"
    );
    assert!(processes.exe(pid).is_none(), "forgotten after its exit");
    assert_eq!(
        names,
        vec![sleep.as_os_str().as_bytes().to_vec()],
        "the kernel's record names the file exec() was given"
    );
}
