//! Real client processes: curl and small inline Python scripts.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{Lines, python_bin};

/// What curl reported for one URL.
#[derive(Clone, Debug)]
pub struct CurlResult {
    pub code: u16,
    /// `%{time_total}` in seconds.
    pub time_total: f64,
    pub local_port: u16,
}

/// One finished curl process.
#[derive(Clone, Debug)]
pub struct CurlRun {
    pub pid: u32,
    pub results: Vec<CurlResult>,
    pub stderr: String,
}

/// Runs one curl process fetching every URL in order. curl reuses one
/// keep-alive connection for URLs on the same host and port.
pub fn curl(urls: &[String]) -> anyhow::Result<CurlRun> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "--noproxy", "*", "--max-time", "30"])
        .args(["-w", "%{http_code} %{time_total} %{local_port}\\n"]);
    for u in urls {
        cmd.args(["-o", "/dev/null"]).arg(u);
    }
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start curl (is it installed?)")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let mut results = Vec::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            bail!("unexpected curl -w line {line:?}");
        }
        results.push(CurlResult {
            code: f[0].parse()?,
            time_total: f[1].parse()?,
            local_port: f[2].parse()?,
        });
    }
    if results.len() != urls.len() {
        bail!(
            "curl ({}) printed {} results for {} URLs; stdout {stdout:?} stderr {stderr:?}",
            out.status,
            results.len(),
            urls.len()
        );
    }
    Ok(CurlRun {
        pid,
        results,
        stderr,
    })
}

/// A finished Python script.
#[derive(Clone, Debug)]
pub struct PyRun {
    pub pid: u32,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl PyRun {
    /// The first stdout line starting with `key ` with the prefix removed.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.stdout
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
    }
}

/// Runs `script` with `args` to completion; fails on a non-zero exit.
pub fn run_python(script: &str, args: &[String]) -> anyhow::Result<PyRun> {
    let child = Command::new(python_bin())
        .arg("-u")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start python3")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    let run = PyRun {
        pid,
        stdout: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    };
    if !out.status.success() {
        bail!("python script failed with {}: {run:?}", out.status);
    }
    Ok(run)
}

/// A Python script still running, driven through stdin.
pub struct PyChild {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines,
    err: Lines,
}

impl PyChild {
    pub fn spawn(script: &str, args: &[String]) -> anyhow::Result<PyChild> {
        let mut child = Command::new(python_bin())
            .arg("-u")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start python3")?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().map(Lines::collect).unwrap_or_default();
        let err = child.stderr.take().map(Lines::collect).unwrap_or_default();
        Ok(PyChild {
            child,
            stdin,
            out,
            err,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.out.get()
    }

    /// Waits for a stdout line starting with `prefix`.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        self.out
            .wait_line(timeout, |l| l.starts_with(prefix))
            .with_context(|| {
                format!(
                    "python client printed no {prefix:?} line; stdout {:?} stderr {:?}",
                    self.out.get(),
                    self.err.get()
                )
            })
    }

    /// Writes one line to the script's stdin.
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the exit; fails on a non-zero code or after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        self.stdin.take();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(50));
                if !status.success() {
                    bail!(
                        "python client exited with {status}; stdout {:?} stderr {:?}",
                        self.out.get(),
                        self.err.get()
                    );
                }
                return Ok(self.out.get());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "python client still running after {timeout:?}; stdout {:?} stderr {:?}",
                    self.out.get(),
                    self.err.get()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PyChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Keep-alive GETs with `http.client`. Arguments: PORT, then one or more
/// phases, each a comma-separated list of paths. Between phases the script
/// prints `waiting` and reads one line from stdin. After the first request it
/// prints `local_port N`; after each request `STATUS PATH`; at the end `done`.
pub const PY_KEEPALIVE_CLIENT: &str = r#"
import http.client, sys
port = int(sys.argv[1])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
first = True
for i, phase in enumerate(sys.argv[2:]):
    if i > 0:
        print("waiting", flush=True)
        if not sys.stdin.readline():
            sys.exit(3)
    for path in phase.split(","):
        conn.request("GET", path, headers={"User-Agent": "sonde-test-python"})
        resp = conn.getresponse()
        resp.read()
        if first:
            print("local_port %d" % conn.sock.getsockname()[1], flush=True)
            first = False
        print("%d %s" % (resp.status, path), flush=True)
conn.close()
print("done", flush=True)
"#;

/// Writes every request in one `sendall` on a raw socket, waits 300 ms so the
/// responses pile up in the socket buffer (the first `recv` then usually
/// returns all of them at once), and reads until the server closes (the last
/// request asks it to).
/// Arguments: PORT PATH... Prints `local_port N`, `reads N N ...` (bytes per
/// `recv`) and `statuses S S ...`.
pub const PY_PIPELINED_CLIENT: &str = r#"
import re, socket, sys, time
port, paths = int(sys.argv[1]), sys.argv[2:]
s = socket.create_connection(("127.0.0.1", port), timeout=20)
print("local_port %d" % s.getsockname()[1], flush=True)
reqs = []
for i, p in enumerate(paths):
    close = "Connection: close\r\n" if i == len(paths) - 1 else ""
    reqs.append("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: sonde-test-pipeline\r\n%s\r\n" % (p, port, close))
s.sendall("".join(reqs).encode())
time.sleep(0.3)
data = b""
reads = []
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    reads.append(len(chunk))
    data += chunk
s.close()
print("reads " + " ".join(str(n) for n in reads), flush=True)
statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
print("statuses " + " ".join(x.decode() for x in statuses), flush=True)
"#;

/// File and pipe I/O full of HTTP-looking bytes, but no sockets. Argument:
/// a file path. Writes 50 MiB, reads it back, then pushes 8 MiB through a pipe.
pub const PY_FILE_IO: &str = r#"
import os, sys
path = sys.argv[1]
msg = (b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
       b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
block = (msg * (65536 // len(msg) + 1))[:65536]
with open(path, "wb") as f:
    for _ in range(50 * 16):
        f.write(block)
    f.flush()
    os.fsync(f.fileno())
total = 0
with open(path, "rb", buffering=0) as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        total += len(b)
r, w = os.pipe()
moved = 0
for _ in range(512):
    os.write(w, block[:16384])
    moved += len(os.read(r, 65536))
os.close(r)
os.close(w)
os.unlink(path)
print("read %d piped %d" % (total, moved), flush=True)
"#;

/// One timed thing a Python client did (a request, a round of requests),
/// as the live-config tests' clients print it: `N START END ...`, times in
/// Unix seconds.
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    pub n: u64,
    pub start: f64,
    pub end: f64,
}

/// The [`Timed`] lines of a client's output; other lines are skipped.
pub fn timed_lines(lines: &[String]) -> Vec<Timed> {
    lines
        .iter()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some(Timed {
                n: f.next()?.parse().ok()?,
                start: f.next()?.parse().ok()?,
                end: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Now, in Unix seconds: what [`Timed`] times are compared with.
pub fn unix_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
