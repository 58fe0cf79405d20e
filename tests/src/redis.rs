//! Redis on loopback for the integration tests and its real clients:
//! redis-cli, redis-benchmark and the Python `redis` package.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{Lines, free_port, send_signal, wait_port};

/// A redis-server process (`--daemonize no`, no persistence) on
/// 127.0.0.1, stopped when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    out: Lines,
}

impl RedisServer {
    /// `$SONDE_TEST_REDIS_SERVER`, else `/usr/bin/redis-server`.
    pub fn binary() -> PathBuf {
        std::env::var_os("SONDE_TEST_REDIS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"))
    }

    /// Starts it on a free port; `password` sets `--requirepass`.
    pub fn start(password: Option<&str>) -> anyhow::Result<RedisServer> {
        let bin = RedisServer::binary();
        if !bin.exists() {
            bail!(
                "{} not found: install redis-server (apt-get install redis-server, or `cargo xtask test`) or set SONDE_TEST_REDIS_SERVER",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("sonde-redis-").tempdir()?;
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--logfile", "", "--loglevel", "notice"]);
        if let Some(pw) = password {
            cmd.args(["--requirepass", pw]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let out = child.stdout.take().map(Lines::collect).unwrap_or_default();
        let err = child.stderr.take().map(Lines::collect).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "redis-server exited with {status}: stdout {:?} stderr {:?}",
                    out.get(),
                    err.get()
                );
            }
            if out.get().iter().any(|l| l.contains("Ready to accept"))
                && wait_port(port, Duration::from_millis(100))
            {
                return Ok(RedisServer {
                    child,
                    port,
                    _dir: dir,
                    out,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "redis-server did not listen on 127.0.0.1:{port} within 10s: stdout {:?} stderr {:?}",
            out.get(),
            err.get()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server logged so far.
    pub fn log(&self) -> Vec<String> {
        self.out.get()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = send_signal(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A finished client process.
#[derive(Clone, Debug)]
pub struct Run {
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args`, feeding `stdin`; fails on a non-zero exit.
fn run(program: &str, args: &[String], stdin: &str) -> anyhow::Result<Run> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("cannot start {program} (install redis-tools, or run `cargo xtask test`)")
        })?;
    let pid = child.id();
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let run = Run {
        pid,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if !out.status.success() {
        bail!("{program} {args:?} failed with {}: {run:?}", out.status);
    }
    Ok(run)
}

/// One redis-cli process with no command arguments: it reads `commands`
/// from stdin, one per line, and sends them one at a time on a single
/// connection (its REPL, which also asks the server for `COMMAND DOCS`
/// first on redis-cli 7 and later).
pub fn redis_cli_session(port: u16, commands: &[&str]) -> anyhow::Result<Run> {
    let mut input = commands.join("\n");
    input.push('\n');
    redis_cli(port, &[], &input)
}

/// redis-cli against 127.0.0.1:`port` with `args` added, fed `stdin`.
fn redis_cli(port: u16, args: &[&str], stdin: &str) -> anyhow::Result<Run> {
    run("redis-cli", &against(port, args), stdin)
}

/// `-h 127.0.0.1 -p PORT`, then `args`.
fn against(port: u16, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    all.extend(args.iter().map(std::string::ToString::to_string));
    all
}

/// `redis-cli --pipe`: sends `protocol` (raw RESP, read from stdin) as
/// fast as it can on one connection, then an `ECHO` of a random marker to
/// know when every reply is in.
pub fn redis_cli_pipe(port: u16, protocol: &str) -> anyhow::Result<Run> {
    redis_cli(port, &["--pipe"], protocol)
}

/// The major version of the installed redis-cli (`redis-cli 7.0.15` -> 7).
pub fn redis_cli_major() -> anyhow::Result<u32> {
    let out = Command::new("redis-cli")
        .arg("--version")
        .output()
        .context("cannot run redis-cli --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("unexpected redis-cli --version output {text:?}"))
}

/// Runs redis-benchmark against 127.0.0.1:`port` with `args` added.
pub fn redis_benchmark(port: u16, args: &[&str]) -> anyhow::Result<Run> {
    run("redis-benchmark", &against(port, args), "")
}

/// The Python `redis` client, RESP2, with no `CLIENT SETINFO` handshake.
/// Arguments: PORT PASSWORD.
///
/// What it sends, by connection (redis-py takes pooled connections for
/// pipelines and pub/sub, so there are three):
/// - A (the single-connection client): `AUTH`, a mistyped `AUHT PASSWORD`
///   (an `ERR unknown command` error that quotes the password), then
///   3 x `PUBLISH news mN`.
/// - B (pool): `AUTH`; one pipelined write of 10 commands: `SET p:0..3`,
///   `GET p:0..2`, 2 x `INCRBY p:n 1`, `DEL p:0`; later one transaction
///   written at once: `MULTI`, `SET t:a 1`, `INCRBY t:n 1`, `GET t:a`, `EXEC`.
/// - C (pub/sub): `AUTH`, `SUBSCRIBE news`, then it only receives the three
///   published messages.
///
/// Prints `pipeline 10`, `typo rejected`, `subscribed`, `got m0 m1 m2`, `multi OK 1 1`, `done`.
pub const PY_REDIS_CLIENT: &str = r#"
import sys, redis
port, pw = int(sys.argv[1]), sys.argv[2]

def client(**kw):
    base = dict(host="127.0.0.1", port=port, password=pw, protocol=2, socket_timeout=10)
    base.update(kw)
    try:
        return redis.Redis(driver_info=None, **base)
    except TypeError:
        return redis.Redis(lib_name=None, lib_version=None, **base)

r = client(single_connection_client=True)
p = r.pipeline(transaction=False)
for i in range(4):
    p.set("p:%d" % i, "v%d" % i)
for i in range(3):
    p.get("p:%d" % i)
p.incr("p:n")
p.incr("p:n")
p.delete("p:0")
print("pipeline %d" % len(p.execute()), flush=True)

# A mistyped AUTH: Redis quotes the arguments of an unknown command back in
# its error message.
try:
    r.execute_command("AUHT", pw)
    sys.exit("AUHT was accepted")
except redis.ResponseError as e:
    print("typo rejected", flush=True)

ps = client().pubsub()
ps.subscribe("news")
m = ps.get_message(timeout=5)
if not m or m["type"] != "subscribe":
    sys.exit("no subscribe confirmation: %r" % (m,))
print("subscribed", flush=True)
for i in range(3):
    r.publish("news", "m%d" % i)
got = []
while len(got) < 3:
    m = ps.get_message(timeout=5)
    if m is None:
        break
    got.append(m["data"].decode())
print("got " + " ".join(got), flush=True)
ps.close()

t = r.pipeline(transaction=True)
t.set("t:a", "1")
t.incr("t:n")
t.get("t:a")
res = t.execute()
print("multi %s %s %s" % ("OK" if res[0] else "FAIL", res[1], res[2].decode()), flush=True)
r.close()
print("done", flush=True)
"#;
