//! What `/proc/PID` says about one process, read through the `procfs` crate.
//!
//! Each read opens the process's directory once and reads every file
//! relative to it, so a pid that is reused mid-read cannot mix two
//! processes: the files of one that has exited fail to open, and what was
//! read before stays. Nothing here fails or panics; what cannot be read is
//! `None`.

use std::io::Read;
use std::path::Path;

use procfs::FromRead as _;
use procfs::process::{Process, Stat};

/// Most bytes read from `/proc/PID/environ` (larger environments are cut;
/// the variables sonde looks for are usually set early).
const MAX_ENVIRON_BYTES: u64 = 1 << 20;

/// Most bytes read from `/proc/PID/cgroup` (one line per hierarchy).
const MAX_CGROUP_BYTES: u64 = 64 << 10;

/// Most bytes read from `/proc/PID/stat`: one line of 52 numbers and a name
/// of at most 64 bytes is far shorter.
const MAX_STAT_BYTES: u64 = 4 << 10;

/// Everything read from `/proc/PID` to build a resource. Any part may be
/// missing: the process may have exited or may not be readable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcFacts {
    /// Field 22 of `/proc/PID/stat`: start time in clock ticks after boot.
    pub start_time: Option<u64>,
    /// Target of the `/proc/PID/exe` link, without a ` (deleted)` suffix.
    pub exe_path: Option<String>,
    /// The kernel's name of the process (`comm`).
    pub comm: Option<String>,
    /// Raw `/proc/PID/environ`.
    pub environ: Option<Vec<u8>>,
    /// `/proc/PID/cgroup`.
    pub cgroup: Option<String>,
}

impl ProcFacts {
    /// Reads the facts of `pid` under `proc_root` (normally `/proc`).
    pub fn read(proc_root: &Path, pid: u32) -> Self {
        let Some(process) = open(&proc_root.join(pid.to_string())) else {
            return ProcFacts::default();
        };
        let stat = read_stat(&process);
        let exe_path = read_exe(&process);
        // The name in `stat` is the one `/proc/PID/comm` shows: one read
        // gives both it and the start time.
        let comm = stat
            .as_ref()
            .map(|s| s.comm.clone())
            .filter(|c| !c.is_empty());
        // Not `Process::environ`: it reads the whole block, unbounded, into
        // a map where a repeated name keeps its last value, where `getenv`
        // (and so the process itself) sees the first.
        let environ = process.open_relative("environ").ok().and_then(|f| {
            let mut buf = Vec::new();
            f.take(MAX_ENVIRON_BYTES).read_to_end(&mut buf).ok()?;
            Some(buf)
        });
        // Kept as text: cgroup.rs reads every hierarchy's line, skipping
        // lines it cannot use, and learns cgroup ids from the same text.
        let cgroup = process.open_relative("cgroup").ok().and_then(|f| {
            let mut text = String::new();
            f.take(MAX_CGROUP_BYTES).read_to_string(&mut text).ok()?;
            Some(text)
        });
        ProcFacts {
            start_time: stat.map(|s| s.starttime),
            exe_path,
            comm,
            environ,
            cgroup,
        }
    }
}

/// What identifies one run of a process: a pid whose start time or
/// executable changed belongs to another process (or ran `exec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) start_time: Option<u64>,
    pub(super) exe_path: Option<String>,
}

impl Identity {
    /// Whether `now`, read later from the same pid, is still this process.
    /// A new start time is another process; another executable is an exec.
    /// An exe link that cannot be read says nothing: an exited process
    /// that is not yet reaped (a zombie) has none.
    pub(super) fn same_process(&self, now: &Identity) -> bool {
        self.start_time == now.start_time
            && match (&self.exe_path, &now.exe_path) {
                (Some(was), Some(is)) => was == is,
                _ => true,
            }
    }
}

/// The identity of the process whose `/proc` directory is `dir`.
pub(super) fn read_identity(dir: &Path) -> Identity {
    let process = open(dir);
    Identity {
        start_time: process.as_ref().and_then(read_stat).map(|s| s.starttime),
        exe_path: process.as_ref().and_then(read_exe),
    }
}

fn open(dir: &Path) -> Option<Process> {
    Process::new_with_root(dir.to_path_buf()).ok()
}

/// `/proc/PID/stat`, parsed by procfs.
pub(crate) fn read_stat(process: &Process) -> Option<Stat> {
    let mut bytes = Vec::new();
    process
        .open_relative("stat")
        .ok()?
        .take(MAX_STAT_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    if !stat_line_is_sliceable(&String::from_utf8_lossy(&bytes)) {
        return None;
    }
    Stat::from_read(bytes.as_slice()).ok()
}

/// Whether procfs can parse `line` without panicking. Its parser slices the
/// line at the first `(` and the last `)` without checking that they are
/// where the kernel puts them (after the pid, before a space), which a
/// stat file in a fake or damaged tree need not respect.
fn stat_line_is_sliceable(line: &str) -> bool {
    let line = line.trim().as_bytes();
    let (Some(open), Some(close)) = (
        line.iter().position(|&b| b == b'('),
        line.iter().rposition(|&b| b == b')'),
    ) else {
        return false;
    };
    // Slices end at `open - 1` and start at `close + 2`: both must be
    // inside the line and on character boundaries.
    open > 0
        && line[open - 1].is_ascii()
        && close > open
        && line.get(close + 1).is_some_and(u8::is_ascii)
}

/// Target of the `exe` link.
fn read_exe(process: &Process) -> Option<String> {
    process
        .exe()
        .ok()
        .map(|p| strip_deleted(&p.to_string_lossy()).to_owned())
        .filter(|p| !p.is_empty())
}

/// Strips the ` (deleted)` the kernel appends to the `exe` link of a process
/// whose binary was removed or replaced.
pub(super) fn strip_deleted(path: &str) -> &str {
    path.strip_suffix(" (deleted)").unwrap_or(path)
}

/// The value of variable `name` in a raw environment block (`NAME=value`
/// entries separated by NUL bytes), as the C library's `getenv` would find
/// it: the first entry wins.
pub fn environ_var<'a>(environ: &'a [u8], name: &str) -> Option<&'a [u8]> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(name.as_bytes())?;
        rest.strip_prefix(b"=")
    })
}

/// A `/proc/PID/stat` line with all 52 fields of a current kernel, for
/// trees laid out like `/proc` in tests.
#[cfg(test)]
pub(crate) fn fake_stat_line(pid: u32, comm: &str, start_time: u64) -> String {
    format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 {start_time} \
         8617984 1024 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 \
         0 0 0\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn environ_lookup() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME_X=no\0OTEL_SERVICE_NAME=shop\0OTEL_SERVICE_NAME=second\0";
        assert_eq!(environ_var(env, "OTEL_SERVICE_NAME"), Some(&b"shop"[..]));
        assert_eq!(environ_var(env, "PATH"), Some(&b"/bin"[..]));
        assert_eq!(environ_var(env, "HOME"), None);
        assert_eq!(environ_var(b"", "PATH"), None);
        assert_eq!(environ_var(b"\0\0\0", "PATH"), None);
        // An entry without `=` is not a match, even with the right name.
        assert_eq!(environ_var(b"PATH\0PATH=x", "PATH"), Some(&b"x"[..]));
        // No trailing NUL, empty value, value holding `=`, invalid UTF-8.
        assert_eq!(environ_var(b"A=", "A"), Some(&b""[..]));
        assert_eq!(environ_var(b"A=b=c", "A"), Some(&b"b=c"[..]));
        assert_eq!(environ_var(b"\xff\xfe\0A=\xff", "A"), Some(&b"\xff"[..]));
    }

    /// A throwaway directory laid out like `/proc`.
    struct FakeTree(PathBuf);

    impl FakeTree {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("sonde-proc-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeTree(dir)
        }

        fn write(&self, pid: u32, file: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let dir = self.0.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), contents).unwrap();
            dir
        }

        fn exe(&self, pid: u32, target: &str) {
            let link = self.0.join(pid.to_string()).join("exe");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, link).unwrap();
        }
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn fake_tree_facts() {
        let tree = FakeTree::new("facts");
        tree.write(10, "stat", fake_stat_line(10, "nginx", 987654));
        tree.write(10, "environ", b"OTEL_SERVICE_NAME=web\0");
        tree.write(10, "cgroup", "0::/system.slice/nginx.service\n");
        tree.exe(10, "/usr/sbin/nginx (deleted)");
        let facts = ProcFacts::read(&tree.0, 10);
        assert_eq!(
            facts,
            ProcFacts {
                start_time: Some(987654),
                exe_path: Some("/usr/sbin/nginx".into()),
                comm: Some("nginx".into()),
                environ: Some(b"OTEL_SERVICE_NAME=web\0".to_vec()),
                cgroup: Some("0::/system.slice/nginx.service\n".into()),
            }
        );
        assert_eq!(
            read_identity(&tree.0.join("10")),
            Identity {
                start_time: Some(987654),
                exe_path: Some("/usr/sbin/nginx".into()),
            }
        );

        // A name holding spaces and parentheses: fields count from the last `)`.
        tree.write(11, "stat", fake_stat_line(11, "a) b (c", 555));
        let facts = ProcFacts::read(&tree.0, 11);
        assert_eq!(facts.start_time, Some(555));
        assert_eq!(facts.comm.as_deref(), Some("a) b (c"));
        // Only some files there: the rest is `None`.
        assert_eq!(facts.exe_path, None);
        assert_eq!(facts.environ, None);
        assert_eq!(facts.cgroup, None);

        // An environment larger than the bound is cut.
        let big = vec![b'x'; MAX_ENVIRON_BYTES as usize + 100];
        tree.write(12, "environ", &big);
        let facts = ProcFacts::read(&tree.0, 12);
        assert_eq!(
            facts.environ.map(|e| e.len()),
            Some(MAX_ENVIRON_BYTES as usize)
        );
        // A cgroup file that is not text is not used.
        tree.write(13, "cgroup", b"0::/\xff\n");
        assert_eq!(ProcFacts::read(&tree.0, 13).cgroup, None);
        // No directory at all.
        assert_eq!(ProcFacts::read(&tree.0, 14), ProcFacts::default());
        assert_eq!(
            read_identity(&tree.0.join("14")),
            Identity {
                start_time: None,
                exe_path: None
            }
        );
    }

    #[test]
    fn damaged_stat_files() {
        let tree = FakeTree::new("stat");
        let good = fake_stat_line(20, "nginx", 4242);
        // Shapes the kernel never writes, several of which would make
        // procfs's parser slice out of bounds or inside a character.
        let bad: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"garbage".to_vec(),
            b"(nginx) S 1".to_vec(),
            "\u{e9}(nginx) S 1".into(),
            b"20 (nginx)".to_vec(),
            "20 (nginx)\u{e9}".into(),
            b"20 ) S (".to_vec(),
            b"20 (nginx S 1 2 3".to_vec(),
            b"\xff\xff)\xff\xff".to_vec(),
            good.replace(" 4242 ", " notanumber ").into_bytes(),
        ];
        for (i, stat) in bad.iter().enumerate() {
            tree.write(20, "stat", stat);
            let facts = ProcFacts::read(&tree.0, 20);
            assert_eq!(facts.start_time, None, "case {i}");
            assert_eq!(facts.comm, None, "case {i}");
        }
        // Every strict prefix of a valid line is handled without panicking
        // (one cut inside the last field still parses).
        for end in 0..good.len() {
            tree.write(20, "stat", &good.as_bytes()[..end]);
            let _ = ProcFacts::read(&tree.0, 20);
        }
        tree.write(20, "stat", &good);
        assert_eq!(ProcFacts::read(&tree.0, 20).start_time, Some(4242));
    }

    #[test]
    fn own_process() {
        let me = ProcFacts::read(Path::new("/proc"), std::process::id());
        let exe = std::env::current_exe().unwrap();
        assert_eq!(me.exe_path.as_deref(), exe.to_str());
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(me.comm.as_deref(), Some(comm.trim_end()));
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(me.cgroup.as_deref(), Some(cgroup.as_str()));
        if let Some(path) = std::env::var_os("PATH") {
            let environ = me.environ.as_deref().unwrap();
            let path = path.into_encoded_bytes();
            assert_eq!(environ_var(environ, "PATH"), Some(path.as_slice()));
        }
        assert!(me.start_time.is_some_and(|t| t > 0));
        let again = read_identity(&Path::new("/proc").join(std::process::id().to_string()));
        assert_eq!(again.start_time, me.start_time);
        assert_eq!(again.exe_path, me.exe_path);
    }

    #[test]
    fn child_process_lifetime() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let dir = Path::new("/proc").join(pid.to_string());
        let running = ProcFacts::read(Path::new("/proc"), pid);
        let me = ProcFacts::read(Path::new("/proc"), std::process::id());
        assert_eq!(running.comm.as_deref(), Some("sleep"));
        assert!(
            running
                .exe_path
                .as_deref()
                .is_some_and(|p| p.ends_with("/sleep")),
            "{running:?}"
        );
        assert!(running.start_time >= me.start_time, "{running:?} {me:?}");
        // Killed but not reaped: a zombie has its stat but no exe link, and
        // is still the same process.
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let zombie = loop {
            let stat = open(&dir).as_ref().and_then(read_stat).unwrap();
            if stat.state == 'Z' {
                break read_identity(&dir);
            }
            assert!(std::time::Instant::now() < deadline, "never a zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(zombie.start_time, running.start_time);
        assert_eq!(zombie.exe_path, None);
        let was = Identity {
            start_time: running.start_time,
            exe_path: running.exe_path.clone(),
        };
        assert!(was.same_process(&zombie));
        // Reaped: nothing is left to read.
        child.wait().unwrap();
        assert_eq!(
            ProcFacts::read(Path::new("/proc"), pid),
            ProcFacts::default()
        );
    }

    #[test]
    fn identities() {
        let id = |t: u64, exe: Option<&str>| Identity {
            start_time: Some(t),
            exe_path: exe.map(str::to_owned),
        };
        assert!(id(1, Some("/a")).same_process(&id(1, Some("/a"))));
        assert!(!id(1, Some("/a")).same_process(&id(2, Some("/a"))));
        assert!(!id(1, Some("/a")).same_process(&id(1, Some("/b"))));
        assert!(id(1, Some("/a")).same_process(&id(1, None)));
        assert!(id(1, None).same_process(&id(1, Some("/b"))));
    }
}
