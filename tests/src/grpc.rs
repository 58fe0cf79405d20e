//! HTTP/2 over cleartext (h2c) for the integration tests: a Python grpcio
//! server and client (generic handlers on raw bytes, so no generated code
//! and no protoc), nginx listening with `http2` for prior-knowledge
//! clients, a raw-socket Python HTTP/2 client, and span dumps that show
//! the RPC and HTTP attributes of every relevant span.

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::db::{Ctx, Pick};
use crate::receiver::{Kind, ReceivedSpan, Value};
use crate::servers::Nginx;
use crate::util::{Lines, python_bin, send_signal, wait_port};

/// Proxy variables removed from the servers started here (grpc honours
/// them).
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "all_proxy",
    "grpc_proxy",
    "no_grpc_proxy",
];

/// The gRPC service every test calls.
pub const SERVICE: &str = "demo.Greeter";

/// A grpcio server for `demo.Greeter` on 127.0.0.1, port chosen by the
/// kernel: the one `cargo xtask bench overhead` loads. Methods (raw bytes
/// in and out):
/// - `SayHello`: answers `hello <request>`;
/// - `Missing`: aborts with NOT_FOUND (5), message `no such greeting`;
/// - `Boom`: raises, which grpcio turns into UNKNOWN (2);
/// - `Stream` (server streaming): five messages.
///
/// Prints `listening PORT` once it accepts calls.
pub const PY_GRPC_SERVER: &str = include_str!("../../xtask/python/grpc_server.py");

/// A grpcio client on one insecure channel. Arguments: PORT MODE [N].
/// The channel is connected (`channel_ready_future`) before any call.
/// Modes:
/// - `mixed`: 3 x SayHello, Missing, Boom, Stream; prints `call METHOD CODE`
///   per call (Stream also `stream N` with the messages received);
/// - `concurrent N`: N SayHello futures started at once, then all results;
///   prints `concurrent N` with the number that succeeded;
/// - `phases`: one SayHello, prints `waiting`, reads a line from stdin, then
///   3 x SayHello;
/// - `counts U S`: U x SayHello, S x Stream, then Missing and Boom; prints
///   `call METHOD CODE` per call (a Stream that did not get its five
///   messages prints code -1).
///
/// Prints `done` at the end.
pub const PY_GRPC_CLIENT: &str = r#"
import sys
import grpc
port, mode = int(sys.argv[1]), sys.argv[2]
ch = grpc.insecure_channel("127.0.0.1:%d" % port,
                           options=[("grpc.enable_http_proxy", 0)])
grpc.channel_ready_future(ch).result(timeout=15)
say = ch.unary_unary("/demo.Greeter/SayHello")
unary = {m: ch.unary_unary("/demo.Greeter/" + m) for m in ("SayHello", "Missing", "Boom")}
stream = ch.unary_stream("/demo.Greeter/Stream")

def call(method):
    try:
        unary[method](b"sonde", timeout=15)
        code = 0
    except grpc.RpcError as e:
        code = e.code().value[0]
    print("call %s %d" % (method, code), flush=True)

if mode == "mixed":
    for m in ("SayHello", "SayHello", "SayHello", "Missing", "Boom"):
        call(m)
    got = list(stream(b"sonde", timeout=15))
    print("stream %d" % len(got), flush=True)
    print("call Stream 0", flush=True)
elif mode == "concurrent":
    n = int(sys.argv[3])
    fs = [say.future(b"c%d" % i, timeout=30) for i in range(n)]
    ok = sum(1 for i, f in enumerate(fs) if f.result() == b"hello c%d" % i)
    print("concurrent %d" % ok, flush=True)
elif mode == "phases":
    call("SayHello")
    print("waiting", flush=True)
    if not sys.stdin.readline():
        sys.exit(3)
    for _ in range(3):
        call("SayHello")
elif mode == "counts":
    for _ in range(int(sys.argv[3])):
        call("SayHello")
    for _ in range(int(sys.argv[4])):
        got = list(stream(b"sonde", timeout=15))
        print("call Stream %d" % (0 if len(got) == 5 else -1), flush=True)
    call("Missing")
    call("Boom")
else:
    sys.exit("unknown mode " + mode)
ch.close()
print("done", flush=True)
"#;

fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether the Python that tests use can import grpc.
pub fn grpcio_available() -> bool {
    Command::new(python_bin())
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The [`PY_GRPC_SERVER`] process.
pub struct GrpcServer {
    child: Child,
    pub port: u16,
    err: Lines,
}

impl GrpcServer {
    pub fn start() -> anyhow::Result<GrpcServer> {
        if !grpcio_available() {
            bail!(
                "{} cannot import grpc: install it (`{0} -m pip install grpcio`, or `cargo xtask deps`)",
                python_bin().display()
            );
        }
        let mut cmd = Command::new(python_bin());
        cmd.arg("-u").arg("-c").arg(PY_GRPC_SERVER);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start python3")?;
        let out = child.stdout.take().map(Lines::collect).unwrap_or_default();
        let err = child.stderr.take().map(Lines::collect).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                bail!("grpc server exited with {status}: {:?}", err.get());
            }
            let port = out
                .get()
                .iter()
                .find_map(|l| l.strip_prefix("listening ")?.trim().parse::<u16>().ok());
            if let Some(port) = port
                && wait_port(port, Duration::from_millis(200))
            {
                return Ok(GrpcServer { child, port, err });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("grpc server did not listen within 20s: {:?}", err.get());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote to stderr (grpcio logs handler exceptions).
    pub fn stderr(&self) -> Vec<String> {
        self.err.get()
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(3));
    }
}

/// The arguments for [`PY_GRPC_CLIENT`] (the script itself turns proxies
/// off on its channel).
pub fn grpc_client_args(port: u16, mode: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![port.to_string(), mode.to_string()];
    v.extend(extra.iter().map(std::string::ToString::to_string));
    v
}

/// `call METHOD CODE` lines of a client's output as `(method, code)`.
pub fn calls(stdout: &[String]) -> Vec<(String, i64)> {
    stdout
        .iter()
        .filter_map(|l| {
            let mut it = l.strip_prefix("call ")?.split_whitespace();
            let method = it.next()?.to_string();
            let code = it.next()?.parse().ok()?;
            Some((method, code))
        })
        .collect()
}

/// nginx (master and one worker) serving `/index.html` over h2c only
/// (`listen ... http2` without TLS: HTTP/2 with prior knowledge). Any other
/// path is a 404.
pub fn start_nginx_h2() -> anyhow::Result<Nginx> {
    Nginx::start_serving("http2", "        location = /index.html { }\n")
}

/// A minimal HTTP/2 client with prior knowledge on one raw socket (stdlib
/// only). curl 7.88.1 (Debian 12) cannot reuse a prior-knowledge connection
/// to nginx 1.22: every request after the first fails with `Error in the
/// HTTP2 framing layer`, agent or not. Arguments: PORT PATH...
///
/// Sends the preface and an empty SETTINGS, then one GET per path, in turn,
/// on streams 1, 3, 5...: `:method` and `:scheme` from the static table,
/// `:path` and `:authority` as literals, and `user-agent: sonde-test-h2`
/// added to the dynamic table by the first request and referenced (index
/// 62) by the others. Prints `local_port N`, then `STATUS PATH` per
/// response.
pub const PY_H2_CLIENT: &str = r#"
import socket, struct, sys
port, paths = int(sys.argv[1]), sys.argv[2:]
s = socket.create_connection(("127.0.0.1", port), timeout=20)

def frame(kind, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload

def lit(b):
    assert len(b) < 127
    return bytes([len(b)]) + b

buf = b""
def read_frame():
    global buf
    while True:
        if len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) >= 9 + n:
                kind, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload, buf = buf[9:9 + n], buf[9 + n:]
                return kind, flags, sid, payload
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed by the server")
        buf += chunk

def status_of(block):
    # nginx sends 200 and 404 as static-table references; other codes as a
    # literal with the :status name (index 8).
    if block[0] in (0x88, 0x8D):
        return 200 if block[0] == 0x88 else 404
    if block[0] in (0x08, 0x48) and block[1] == 3:
        return int(block[2:5])
    return 0

s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
print("local_port %d" % s.getsockname()[1], flush=True)
for i, path in enumerate(paths):
    sid = 2 * i + 1
    ua = bytes([0xBE]) if i else bytes([0x40 | 58]) + lit(b"sonde-test-h2")
    block = (b"\x82\x86" + b"\x04" + lit(path.encode())
             + b"\x01" + lit(b"127.0.0.1:%d" % port) + ua)
    s.sendall(frame(1, 0x5, sid, block))
    status = None
    while True:
        kind, flags, fsid, payload = read_frame()
        if kind == 4 and not flags & 1:
            s.sendall(frame(4, 1, 0, b""))
        if kind == 7:
            sys.exit("GOAWAY from the server")
        if fsid != sid:
            continue
        if kind == 3:
            sys.exit("stream %d reset" % sid)
        if kind == 1 and status is None:
            status = status_of(payload)
        if kind in (0, 1) and flags & 1:
            break
    print("%d %s" % (status, path), flush=True)
s.sendall(frame(7, 0, 0, struct.pack(">II", 2 * len(paths) - 1, 0)))
s.close()
"#;

/// One line per span with the attributes the HTTP/2 tests look at.
pub fn line(s: &ReceivedSpan) -> String {
    let kind = match s.kind {
        Kind::Server => "SERVER".to_string(),
        Kind::Client => "CLIENT".to_string(),
        other => format!("{other:?}"),
    };
    let text = |k: &str| match s.attr(k) {
        Some(Value::Str(v)) => format!("{v:?}"),
        Some(v) => v.to_string(),
        None => "-".to_string(),
    };
    format!(
        "{kind} {:?} pid={} rpc={}/{}/{} grpc_status={} method={} path={} http_status={} ver={} err={} status={:?}{} server={}:{} client={}:{} peer={}:{} dur={}us",
        s.name,
        s.pid().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        text("rpc.system"),
        text("rpc.service"),
        text("rpc.method"),
        text("rpc.grpc.status_code"),
        text("http.request.method"),
        text("url.path"),
        text("http.response.status_code"),
        text("network.protocol.version"),
        text("error.type"),
        s.status,
        if s.status_message.is_empty() {
            String::new()
        } else {
            format!("({:?})", s.status_message)
        },
        text("server.address"),
        text("server.port"),
        text("client.address"),
        text("client.port"),
        text("network.peer.address"),
        text("network.peer.port"),
        s.duration_ns() / 1000,
    )
}

/// Everything received, for failure messages: the spans `relevant` picks
/// (up to 400, by start time), then up to 40 others, then the agent's last
/// log lines.
pub fn report(ctx: &Ctx, relevant: Pick) -> String {
    let mut all = ctx.rx.spans();
    all.sort_by_key(|s| (s.start_ns, s.end_ns));
    let (mine, others): (Vec<&ReceivedSpan>, Vec<&ReceivedSpan>) =
        all.iter().partition(|s| relevant(s));
    let mut out = format!(
        "\n  receiver: {} export requests, {} spans ({} relevant)\n",
        ctx.rx.requests(),
        all.len(),
        mine.len()
    );
    let errors = ctx.rx.errors();
    if !errors.is_empty() {
        let _ = writeln!(out, "  receiver errors: {errors:?}");
    }
    let mut dump = |title: &str, spans: &[&ReceivedSpan], limit: usize| {
        let _ = writeln!(out, "  {title}:");
        for s in spans.iter().take(limit) {
            let _ = writeln!(out, "    {}", line(s));
        }
        if spans.len() > limit {
            let _ = writeln!(out, "    ... and {} more", spans.len() - limit);
        }
    };
    dump("relevant spans", &mine, 400);
    if !others.is_empty() {
        dump("other spans", &others, 40);
    }
    let log = ctx.agent_log();
    let _ = writeln!(out, "  agent log (last 30 lines):");
    for l in log.iter().skip(log.len().saturating_sub(30)) {
        let _ = writeln!(out, "    | {l}");
    }
    out
}
