//! The agent binary's life cycle: a config error stops it before anything
//! is attached, and no kernel program outlives it, however it exits.
//! Needs root and `target/release/sonde` (built by `cargo xtask test`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::io::{BufRead, BufReader};

fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}

fn agent_binary() -> Option<PathBuf> {
    let path = std::env::var_os("SONDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sonde")
        });
    path.is_file().then_some(path)
}

/// Ids of the kernel programs process `pid` holds fds of (from fdinfo), so
/// other agents running at the same time do not count.
fn programs_held_by(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("prog_id:") {
                ids.extend(id.trim().parse::<u32>().ok());
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Which of `ids` are still loaded in the kernel.
fn still_loaded(ids: &[u32]) -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| ids.contains(id))
        .collect()
}

/// Starts the agent and waits for it to say it is ready.
fn start_agent(bin: &std::path::Path, config: &str) -> std::process::Child {
    let dir = std::env::temp_dir().join(format!("sonde-life-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("sonde.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("sonde ready") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("the agent did not get ready within 60 s");
            }
        }
    }
    // Keep draining stderr so the agent never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    child
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nothing_stays_attached_after_kill_9_or_sigterm() {
    if !is_root() {
        eprintln!("skipped: needs root to load eBPF programs");
        return;
    }
    let Some(bin) = agent_binary() else {
        eprintln!("skipped: target/release/sonde not built (cargo build --release -p sonde)");
        return;
    };
    // On the socket-layer path: sock_send_length, sock_recv_length and
    // inet_sock_set_state, and the 2 sched tracepoints of process
    // discovery. On the syscall path: 23 syscall tracepoints instead of
    // the first two.
    for (path, programs) in [("socket", 5), ("syscall", 26)] {
        eprintln!("the {path} capture path");
        attached_until_killed_or_stopped(&bin, path, programs);
    }
}

fn attached_until_killed_or_stopped(bin: &std::path::Path, path: &str, programs: usize) {
    let config = format!("capture:\n  path: {path}\nexport:\n  console: true\n");
    let mut agent = start_agent(bin, &config);
    let ids = programs_held_by(agent.id());
    assert_eq!(ids.len(), programs, "the agent holds its programs: {ids:?}");
    assert_eq!(still_loaded(&ids).len(), programs);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGKILL) };
    let _ = agent.wait();
    wait_until("the programs of a killed agent are gone", || {
        still_loaded(&ids).is_empty()
    });

    let mut agent = start_agent(bin, &config);
    let ids = programs_held_by(agent.id());
    assert_eq!(ids.len(), programs, "{ids:?}");
    let started = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().expect("wait");
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exit within 5 s"
    );
    wait_until("the programs of a stopped agent are gone", || {
        still_loaded(&ids).is_empty()
    });
}

#[test]
fn bad_config_names_key_and_line_and_attaches_nothing() {
    let Some(bin) = agent_binary() else {
        eprintln!("skipped: target/release/sonde not built (cargo build --release -p sonde)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("sonde-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "capture:\n  bytes: 1024\n  byts: 7\n").expect("write");
    let out = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("agent runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad config fails");
    assert!(stderr.contains("line 3"), "names the line: {stderr}");
    assert!(stderr.contains("capture.byts"), "names the key: {stderr}");
    assert!(
        !stderr.contains("sonde ready"),
        "attached nothing: {stderr}"
    );

    std::fs::write(&path, "capture:\n  bytes: 99999\n").expect("write");
    let out = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("agent runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 2") && stderr.contains("capture.bytes"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
