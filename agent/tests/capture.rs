//! The real kernel programs, loaded into this kernel: what they record for
//! sockets this test drives, and what they never record. Needs root.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sonde::capture::probes::{EmptyProbes, Probes};
use sonde::capture::{self, Endpoint, Event, Role};
use sonde::config::{CaptureConfig, CapturePath};
use sonde::protocol::{Direction, prefilter};

/// The probes see the whole host; one test at a time keeps them apart.
static KERNEL: Mutex<()> = Mutex::new(());

fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// Both capture paths: every test runs on each.
const PATHS: [CapturePath; 2] = [CapturePath::Socket, CapturePath::Syscall];

/// Runs `test` on each capture path, as root (skipped otherwise), one
/// test at a time.
fn on_each_path(test: fn(CapturePath)) {
    if !is_root() {
        eprintln!("skipped: needs root to load eBPF programs");
        return;
    }
    let _guard = KERNEL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for path in PATHS {
        test(path);
    }
}

/// The default capture settings on `path`.
fn on(path: CapturePath) -> CaptureConfig {
    CaptureConfig {
        path,
        ..CaptureConfig::default()
    }
}

/// An owned copy of a data record.
#[derive(Debug)]
struct Seen {
    tgid: u32,
    fd: u32,
    sock: u64,
    role: Role,
    local: Endpoint,
    peer: Endpoint,
    dir: Direction,
    total_len: u64,
    payload: Vec<u8>,
    closed: bool,
}

/// Runs `work` (in a helper process, so its syscalls are traced: the probes
/// skip the agent's own process, which is this test), and collects records
/// of that process, and the closes of its sockets (whoever saw them go),
/// until `done` holds, the helper has exited, or 10 s pass.
fn record_while(
    config: &CaptureConfig,
    work: impl FnOnce() -> std::process::Child,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let mut probes = Probes::start(config, &prefilter::all()).expect("probes start (run as root)");
    let mut child = work();
    let pid = child.id();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exited_at: Option<Instant> = None;
    while Instant::now() < deadline && !done(&seen) {
        // Once the helper has exited, one more pass drains what it left.
        if exited_at.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
            break;
        }
        if exited_at.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
            exited_at = Some(Instant::now());
        }
        while let Some(rec) = probes.events.next() {
            match capture::decode(&rec).expect("well-formed record") {
                Event::Data {
                    conn,
                    role,
                    endpoints,
                    direction,
                    total_len,
                    payload,
                    ..
                } if conn.tgid == pid => seen.push(Seen {
                    tgid: conn.tgid,
                    fd: conn.fd,
                    sock: conn.sock,
                    role,
                    local: endpoints.local,
                    peer: endpoints.peer,
                    dir: direction,
                    total_len,
                    payload: payload.to_vec(),
                    closed: false,
                }),
                Event::Close { conn, .. }
                    if conn.tgid == pid || seen.iter().any(|r| r.sock == conn.sock) =>
                {
                    seen.push(Seen {
                        tgid: conn.tgid,
                        fd: conn.fd,
                        sock: conn.sock,
                        role: Role::Unknown,
                        local: Endpoint::Unknown,
                        peer: Endpoint::Unknown,
                        dir: Direction::Egress,
                        total_len: 0,
                        payload: Vec::new(),
                        closed: true,
                    });
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

fn python(script: &str) -> std::process::Child {
    std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .spawn()
        .expect("python3 runs")
}

#[test]
fn client_socket_bytes_roles_and_endpoints() {
    on_each_path(client_socket_bytes_roles_and_endpoints_on);
}

fn client_socket_bytes_roles_and_endpoints_on(path: CapturePath) {
    eprintln!("client_socket_bytes_roles_and_endpoints: {path} path");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // An echo-ish server in this process: its own syscalls are not traced.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        s.write_all(&buf[..n]).unwrap();
        // A large reply: 5000 bytes, more than the 1024 captured.
        s.write_all(&vec![b'x'; 5000]).unwrap();
    });
    let script = format!(
        "import socket,time\n\
         s=socket.create_connection(('127.0.0.1',{port}))\n\
         s.sendall(b'hello sonde')\n\
         got=b''\n\
         while len(got)<5011:\n    d=s.recv(65536)\n    if not d: break\n    got+=d\n\
         s.close()\n\
         time.sleep(1)\n"
    );
    let seen = record_while(
        &CaptureConfig {
            bytes: 1024,
            ..on(path)
        },
        || python(&script),
        |s| s.iter().any(|r| r.closed),
    );
    server.join().unwrap();

    let sent: Vec<&Seen> = seen
        .iter()
        .filter(|r| r.dir == Direction::Egress && !r.closed)
        .collect();
    assert_eq!(sent.len(), 1, "one send: {seen:?}");
    assert_eq!(sent[0].payload, b"hello sonde");
    assert_eq!(sent[0].role, Role::Client);
    assert!(sent[0].fd > 2, "the socket's fd, not stdio: {seen:?}");
    assert_eq!(
        sent[0].peer,
        Endpoint::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    );
    assert!(matches!(sent[0].local, Endpoint::Ip(_, p) if p != 0 && p != port));

    let received: Vec<&Seen> = seen
        .iter()
        .filter(|r| r.dir == Direction::Ingress)
        .collect();
    let total: u64 = received.iter().map(|r| r.total_len).sum();
    assert_eq!(total, 5011, "every byte counted even when not captured");
    assert!(
        received
            .iter()
            .all(|r| r.payload.len() as u64 <= r.total_len.min(1024))
    );
    assert!(received[0].payload.starts_with(b"hello sonde"));
    assert!(
        seen.iter().any(|r| r.closed && r.sock == sent[0].sock),
        "close seen: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|r| r.closed || (r.tgid, r.sock) == (sent[0].tgid, sent[0].sock))
    );
}

#[test]
fn files_and_pipes_are_never_recorded() {
    on_each_path(files_and_pipes_are_never_recorded_on);
}

fn files_and_pipes_are_never_recorded_on(path: CapturePath) {
    eprintln!("files_and_pipes_are_never_recorded: {path} path");
    let dir = std::env::temp_dir().join(format!("sonde-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big");
    let script = format!(
        "import os\n\
         data=b'GET / HTTP/1.1\\r\\n'*65536\n\
         open('{f}','wb').write(data)\n\
         assert open('{f}','rb').read()==data\n\
         r,w=os.pipe()\n\
         os.write(w,b'GET /pipe HTTP/1.1\\r\\n\\r\\n'); os.read(r,100)\n",
        f = file.display()
    );
    let seen = record_while(&on(path), || python(&script), |_| false);
    std::fs::remove_dir_all(&dir).ok();
    assert!(seen.is_empty(), "file and pipe I/O recorded: {seen:?}");
}

#[test]
fn unix_stream_sockets_are_recorded() {
    on_each_path(unix_stream_sockets_are_recorded_on);
}

fn unix_stream_sockets_are_recorded_on(path: CapturePath) {
    eprintln!("unix_stream_sockets_are_recorded: {path} path");
    let script = "import socket,time\n\
                  a,b=socket.socketpair()\n\
                  a.sendall(b'GET /unix HTTP/1.1\\r\\n\\r\\n')\n\
                  b.recv(100)\n\
                  time.sleep(1)\n";
    let seen = record_while(&on(path), || python(script), |s| s.len() >= 2);
    assert!(
        seen.iter().any(|r| r.dir == Direction::Egress
            && r.payload == b"GET /unix HTTP/1.1\r\n\r\n"
            && r.peer == Endpoint::Unix),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r.dir == Direction::Ingress && r.total_len == 22),
        "{seen:?}"
    );
}

#[test]
fn capture_limit_is_honoured_without_recompiling() {
    on_each_path(capture_limit_is_honoured_without_recompiling_on);
}

fn capture_limit_is_honoured_without_recompiling_on(path: CapturePath) {
    eprintln!("capture_limit_is_honoured_without_recompiling: {path} path");
    let config = CaptureConfig {
        bytes: 16384,
        ..on(path)
    };
    // writev of three buffers, 20000 bytes in all: 16384 captured.
    let script = "import socket,time\n\
                  a,b=socket.socketpair()\n\
                  a.sendmsg([b'a'*6000,b'b'*6000,b'c'*8000])\n\
                  n=0\n\
                  while n<20000: n+=len(b.recv(65536))\n\
                  time.sleep(1)\n";
    let seen = record_while(
        &config,
        || python(script),
        |s| s.iter().any(|r| r.dir == Direction::Egress),
    );
    let sent = seen
        .iter()
        .find(|r| r.dir == Direction::Egress)
        .unwrap_or_else(|| panic!("no send recorded: {seen:?}"));
    assert_eq!(sent.total_len, 20000);
    assert_eq!(sent.payload.len(), 16384);
    assert!(sent.payload[..6000].iter().all(|&c| c == b'a'));
    assert!(sent.payload[6000..12000].iter().all(|&c| c == b'b'));
    assert!(sent.payload[12000..].iter().all(|&c| c == b'c'));
}

/// A connection whose first bytes start a Redis command has its calls
/// copied whole, up to 64 KiB: 3,000 pipelined commands in one write lose
/// no message boundary. Another connection's calls give their head.
#[test]
fn pipelining_connections_are_copied_whole() {
    on_each_path(pipelining_connections_are_copied_whole_on);
}

fn pipelining_connections_are_copied_whole_on(path: CapturePath) {
    eprintln!("pipelining_connections_are_copied_whole: {path} path");
    let script = "import socket,time\n\
                  def through(data):\n    a,b=socket.socketpair()\n    a.sendall(data)\n    n=0\n    while n<len(data): n+=len(b.recv(1<<20))\n\
                  through(b'*1\\r\\n$4\\r\\nPING\\r\\n'*3000)\n\
                  through(b'*1\\r\\n$80000\\r\\n'+b'x'*80000+b'\\r\\n')\n\
                  through(b'GET / HTTP/1.1\\r\\n'+b'x'*5000)\n\
                  time.sleep(1)\n";
    let config = CaptureConfig {
        bytes: 1024,
        ..on(path)
    };
    let sent = |seen: &[Seen], total: u64| {
        seen.iter()
            .find(|r| r.dir == Direction::Egress && r.total_len == total)
            .map(|r| r.payload.len())
    };
    let seen = record_while(&config, || python(script), |s| sent(s, 5016).is_some());
    assert_eq!(
        sent(&seen, 42000),
        Some(42000),
        "pipelined commands: {seen:?}"
    );
    assert_eq!(
        sent(&seen, 80014),
        Some(65536),
        "a larger call: its first 64 KiB"
    );
    assert_eq!(sent(&seen, 5016), Some(1024), "HTTP: the head");
}

/// Runs `script` in python and collects what its process sends; at the
/// first record, `act` is told the connection (to mute or silence it).
fn sent_after(
    path: CapturePath,
    script: &str,
    act: impl Fn(&mut Probes, u64, u64),
) -> Vec<Vec<u8>> {
    let mut probes = Probes::start(&on(path), &prefilter::all()).expect("probes start");
    let mut child = python(script);
    let pid = child.id();
    let mut sent = Vec::new();
    let mut acted = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut first = None;
        while let Some(rec) = probes.events.next() {
            if let Ok(Event::Data {
                conn,
                direction: Direction::Egress,
                payload,
                ..
            }) = capture::decode(&rec)
                && conn.tgid == pid
            {
                sent.push(payload.to_vec());
                if !acted {
                    first = Some(conn);
                    acted = true;
                }
            }
        }
        if let Some(conn) = first {
            act(&mut probes, conn.sock, conn.generation);
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    sent
}

#[test]
fn muted_connections_ship_only_message_starts() {
    on_each_path(muted_connections_ship_only_message_starts_on);
}

fn muted_connections_ship_only_message_starts_on(path: CapturePath) {
    eprintln!("muted_connections_ship_only_message_starts: {path} path");
    // First a TLS-looking record, then (after the test muted the connection)
    // more binary bytes, an HTTP request, and binary bytes again.
    let script = "import socket,time,sys\n\
                  a,b=socket.socketpair()\n\
                  a.sendall(b'\\x16\\x03\\x01\\x00\\x05hello')\n\
                  time.sleep(1.5)\n\
                  a.sendall(b'\\x17\\x03\\x03binary')\n\
                  a.sendall(b'GET /after HTTP/1.1\\r\\n\\r\\n')\n\
                  a.sendall(b'\\x17\\x03\\x03binary again')\n\
                  time.sleep(0.5)\n";
    let sent = sent_after(path, script, |probes, sock, generation| {
        probes.mute(sock, generation);
    });
    assert_eq!(
        sent,
        vec![
            b"\x16\x03\x01\x00\x05hello".to_vec(),
            b"GET /after HTTP/1.1\r\n\r\n".to_vec()
        ],
        "after muting only the message start is shipped"
    );
}

/// The unified cgroup hierarchy, if this host mounts one.
fn unified_root() -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    sonde::enrich::cgroup::unified_mount(&text)
}

#[test]
fn process_records_carry_the_cgroup_id() {
    on_each_path(process_records_carry_the_cgroup_id_on);
}

fn process_records_carry_the_cgroup_id_on(path: CapturePath) {
    eprintln!("process_records_carry_the_cgroup_id: {path} path");
    let root = unified_root().expect("a cgroup2 mount (this kernel has one)");
    // A kubelet-shaped cgroup, so the id names a container's directory.
    let dir = root.join(format!(
        "sonde-test-{}/kubepods-pod3d1e6b5a_7c2f_4e8d_9a0b_1c2d3e4f5a6b.slice",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create a cgroup");
    let id = std::fs::metadata(&dir).unwrap().ino();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
    });
    let mut probes = Probes::start(&on(path), &prefilter::all()).expect("probes start");
    // The shell moves itself into the cgroup, then becomes the client.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 -c \"import socket; s=socket.create_connection(('127.0.0.1',{port})); s.sendall(b'GET / HTTP/1.1\\r\\n\\r\\n')\"",
        dir.display()
    );
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .spawn()
        .expect("sh runs");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = None;
    while Instant::now() < deadline && found.is_none() {
        while let Some(rec) = probes.events.next() {
            if let Ok(Event::Process {
                tgid, cgroup_id, ..
            }) = capture::decode(&rec)
                && tgid == pid
            {
                found = Some(cgroup_id);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    server.join().unwrap();
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(dir.parent().unwrap());
    assert_eq!(
        found,
        Some(id),
        "the process record names the client's cgroup"
    );
}

/// Every record of `pid` in the ring buffer, and the closes of its
/// sockets, until `pid` exits (and a moment more), as (kind, fd) pairs:
/// "process", "data" or "close".
fn records_of(probes: &mut Probes, child: &mut std::process::Child) -> Vec<(&'static str, u32)> {
    let pid = child.id();
    let mut seen = Vec::new();
    let mut socks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exited_at: Option<Instant> = None;
    while Instant::now() < deadline {
        if exited_at.is_some_and(|t| t.elapsed() > Duration::from_millis(300)) {
            break;
        }
        if exited_at.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
            exited_at = Some(Instant::now());
        }
        while let Some(rec) = probes.events.next() {
            match capture::decode(&rec) {
                Ok(Event::Process { tgid, .. }) if tgid == pid => seen.push(("process", 0)),
                Ok(Event::Data { conn, .. }) if conn.tgid == pid => {
                    socks.push(conn.sock);
                    seen.push(("data", conn.fd));
                }
                Ok(Event::Close { conn, .. }) if conn.tgid == pid || socks.contains(&conn.sock) => {
                    seen.push(("close", conn.fd));
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// A cgroup the agent silenced (the `select` rules exclude it): its
/// processes' connections leave no record at all, while the same client
/// in another cgroup is recorded; once the cgroup is traced again, so is
/// its next client.
#[test]
fn silenced_cgroups_send_nothing() {
    on_each_path(silenced_cgroups_send_nothing_on);
}

fn silenced_cgroups_send_nothing_on(path: CapturePath) {
    eprintln!("silenced_cgroups_send_nothing: {path} path");
    let root = unified_root().expect("a cgroup2 mount (this kernel has one)");
    let base = root.join(format!("sonde-test-silence-{}", std::process::id()));
    let (muted_dir, other_dir) = (base.join("excluded"), base.join("traced"));
    for dir in [&muted_dir, &other_dir] {
        std::fs::create_dir_all(dir).expect("create a cgroup");
    }
    let muted_id = std::fs::metadata(&muted_dir).unwrap().ino();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
    // Two connections, each a request and its response, in cgroup `dir`.
    let client = |dir: &std::path::Path| {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c \"
import socket
for _ in range(2):
    s = socket.create_connection(('127.0.0.1', {port}))
    s.sendall(b'GET / HTTP/1.1\\r\\n\\r\\n')
    s.recv(100)
    s.close()
\"",
            dir.display()
        );
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .spawn()
            .expect("sh runs")
    };

    let mut probes = Probes::start(&on(path), &prefilter::all()).expect("probes start");
    probes.silence_cgroup(muted_id, true);
    let muted = records_of(&mut probes, &mut client(&muted_dir));
    let traced = records_of(&mut probes, &mut client(&other_dir));
    probes.silence_cgroup(muted_id, false);
    let again = records_of(&mut probes, &mut client(&muted_dir));
    for dir in [&muted_dir, &other_dir, &base] {
        let _ = std::fs::remove_dir(dir);
    }

    assert_eq!(muted, [], "nothing of a silenced cgroup's connections");
    for (what, seen) in [("another cgroup", &traced), ("traced again", &again)] {
        let count = |kind| seen.iter().filter(|(k, _)| *k == kind).count();
        assert_eq!(count("process"), 2, "{what}: {seen:?}");
        assert_eq!(count("data"), 4, "{what}: {seen:?}");
        assert_eq!(count("close"), 2, "{what}: {seen:?}");
    }
}

/// A connection silenced while open (its pod turned out excluded) ships
/// no more data.
#[test]
fn silenced_connections_stop() {
    on_each_path(silenced_connections_stop_on);
}

fn silenced_connections_stop_on(path: CapturePath) {
    eprintln!("silenced_connections_stop: {path} path");
    let script = "import socket,time\n\
                  a,b=socket.socketpair()\n\
                  a.sendall(b'GET /first HTTP/1.1\\r\\n\\r\\n')\n\
                  time.sleep(1.5)\n\
                  a.sendall(b'GET /second HTTP/1.1\\r\\n\\r\\n')\n\
                  time.sleep(0.5)\n";
    let sent = sent_after(path, script, |probes, sock, generation| {
        probes.silence(sock, generation);
    });
    assert_eq!(
        sent,
        vec![b"GET /first HTTP/1.1\r\n\r\n".to_vec()],
        "after silencing, not even a message start"
    );
}

/// `sonde floor`'s empty program is attached to the agent's hooks and runs
/// on a socket exchange: at least once per send and receive on the
/// socket-layer path, twice (entry and exit) on the syscall path.
#[test]
fn empty_programs_run_on_the_agents_hooks() {
    on_each_path(empty_programs_run_on_the_agents_hooks_on);
}

fn empty_programs_run_on_the_agents_hooks_on(path: CapturePath) {
    eprintln!("empty_programs_run_on_the_agents_hooks: {path} path");
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF run statistics");
    let floor = EmptyProbes::start(path).expect("the empty programs load and attach");
    let (hooks, runs_per_call) = match path {
        CapturePath::Syscall => (26, 2),
        _ => (5, 1),
    };
    assert_eq!(floor.hooks, hooks);
    let (before, _) = floor.runs().expect("the program's statistics");
    let mut helper = python(
        "import socket\n\
         a, b = socket.socketpair()\n\
         for _ in range(100):\n    a.send(b'x'); b.recv(1)\n",
    );
    assert!(helper.wait().expect("the helper ran").success());
    let (after, took) = floor.runs().expect("the program's statistics");
    assert!(
        after - before >= 200 * runs_per_call,
        "{} runs for 100 sends and receives",
        after - before
    );
    assert!(took > Duration::ZERO);
    drop(floor);
    // Detached: the real programs load and attach as before.
    Probes::start(&on(path), &prefilter::all()).expect("the agent's probes");
}
