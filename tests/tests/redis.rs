//! Redis end to end: a real redis-server, real clients (redis-cli,
//! redis-benchmark, the Python `redis` package), the real agent, spans
//! received over OTLP. Needs root (skips otherwise) and a release build of
//! the agent (`cargo build --release -p sonde`).
//!
//! Every command gives one CLIENT span in the client process and one SERVER
//! span in redis-server, named after the command (`GET`, `CONFIG GET`),
//! with `db.query.text` keeping the command (and subcommand) and the first
//! key of a keyed command, every other argument replaced with `?`.
//!
//! Every test starts its own receiver, server and agent; they share the
//! kernel, so a static mutex runs them one at a time.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use sonde_tests::clients::run_python;
use sonde_tests::db::{Ctx, Problems, counts, leaks, must, name_counts};
use sonde_tests::redis::{
    PY_REDIS_CLIENT, RedisServer, redis_benchmark, redis_cli_major, redis_cli_pipe,
    redis_cli_session,
};
use sonde_tests::{Kind, ReceivedSpan, require_root};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one Redis span should say.
struct Expect<'a> {
    name: &'a str,
    text: &'a str,
    namespace: &'a str,
    /// The error prefix of an error reply (`db.response.status_code` and
    /// `error.type`).
    error: Option<&'a str>,
}

fn ok<'a>(name: &'a str, text: &'a str, namespace: &'a str) -> Expect<'a> {
    Expect {
        name,
        text,
        namespace,
        error: None,
    }
}

/// The attributes every Redis span carries, on either side.
fn redis_common(p: &mut Problems, s: &ReceivedSpan, kind: Kind, port: u16) {
    p.kind(s, kind);
    p.str(s, "db.system.name", "redis");
    p.str(s, "server.address", "127.0.0.1");
    p.int(s, "server.port", port.into());
    p.times(s);
}

/// Checks one span against `e`.
fn redis_expect(p: &mut Problems, s: &ReceivedSpan, e: &Expect) {
    p.name(s, e.name);
    p.str(s, "db.operation.name", e.name);
    p.str(s, "db.query.text", e.text);
    p.str(s, "db.namespace", e.namespace);
    p.error(s, e.error.map(|code| (code, code)));
}

fn pid_is(pid: u32) -> impl Fn(&ReceivedSpan) -> bool {
    move |s| s.pid() == Some(pid)
}

/// `(name, query text) -> count`.
fn name_text(spans: &[ReceivedSpan]) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for s in spans {
        let key = (
            s.name.clone(),
            s.attr_str("db.query.text").unwrap_or("<none>").to_string(),
        );
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// redis-cli sends seven commands one at a time on one connection: plain
/// values, a counter, a hash, a WRONGTYPE error, then `SELECT 3` and a SET
/// in database 3. The exact same spans, in order, on both sides.
#[test]
fn redis_cli_commands() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let server = must(RedisServer::start(None));
    let ctx = Ctx::start("");

    let commands = [
        "SET k v",
        "GET k",
        "INCR n",
        "HSET h f v",
        "LPUSH k x",
        "SELECT 3",
        "SET a b",
    ];
    let run = must(redis_cli_session(server.port, &commands));
    assert!(
        run.stdout.contains("WRONGTYPE"),
        "redis-cli did not get the WRONGTYPE error: {run:?}"
    );

    // redis-cli 7 asks for COMMAND DOCS (a reply of some hundred KB, far
    // past the capture limit) before the first command.
    let mut want = Vec::new();
    if must(redis_cli_major()) >= 7 {
        want.push(ok("COMMAND DOCS", "COMMAND DOCS", "0"));
    }
    want.extend([
        ok("SET", "SET k ?", "0"),
        ok("GET", "GET k", "0"),
        ok("INCR", "INCR n", "0"),
        ok("HSET", "HSET h ? ?", "0"),
        Expect {
            name: "LPUSH",
            text: "LPUSH k ?",
            namespace: "0",
            error: Some("WRONGTYPE"),
        },
        // The SELECT itself runs in the database that was current when it
        // was sent; its index is an argument like any other.
        ok("SELECT", "SELECT ?", "0"),
        ok("SET", "SET a ?", "3"),
    ]);

    let srv_pid = server.pid();
    let srv = |s: &ReceivedSpan| s.pid() == Some(srv_pid) && s.kind == Kind::Server;
    let cli = pid_is(run.pid);
    let relevant = |s: &ReceivedSpan| s.pid() == Some(srv_pid) || cli(s);
    ctx.wait_counts(&[(want.len(), &srv), (want.len(), &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(&cli);
    let names = |v: &[ReceivedSpan]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let want_names: Vec<String> = want.iter().map(|e| e.name.to_string()).collect();
    ctx.check(
        names(&servers) == want_names && names(&clients) == want_names,
        &format!(
            "expected spans {want_names:?} on both sides;\n  redis-server SERVER spans: {:?}\n  redis-cli spans: {:?}",
            names(&servers),
            names(&clients)
        ),
        &relevant,
    );
    eprintln!(
        "[redis_cli_commands] sample spans:\n  {}\n  {}",
        servers[1].full(),
        clients[1].full()
    );
    let mut p = Problems::new();
    for (s, e) in servers.iter().zip(&want) {
        redis_common(&mut p, s, Kind::Server, server.port);
        redis_expect(&mut p, s, e);
    }
    for (s, e) in clients.iter().zip(&want) {
        redis_common(&mut p, s, Kind::Client, server.port);
        redis_expect(&mut p, s, e);
    }
    ctx.check_problems(p, &relevant);
    ctx.stop();
}

/// redis-benchmark, one connection per test, 16 commands per write: every
/// pipelined command is its own span on both sides.
#[test]
fn redis_pipelined_benchmark() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    const N: usize = 1600;
    let server = must(RedisServer::start(None));
    let ctx = Ctx::start("");

    let n = N.to_string();
    let run = must(redis_benchmark(
        server.port,
        &["-n", &n, "-P", "16", "-c", "1", "-t", "set,get", "-q"],
    ));
    eprintln!("[redis_pipelined_benchmark] {}", run.stdout.trim());

    // Before its tests, redis-benchmark reads the server's `save` and
    // `appendonly` settings with two CONFIG GET commands.
    let want = counts(&[("SET", N), ("GET", N), ("CONFIG GET", 2)]);
    let total: usize = want.values().sum();
    let srv_pid = server.pid();
    let srv = |s: &ReceivedSpan| s.pid() == Some(srv_pid) && s.kind == Kind::Server;
    let cli = pid_is(run.pid);
    let relevant = |s: &ReceivedSpan| s.pid() == Some(srv_pid) || cli(s);
    ctx.wait_counts(&[(total, &srv), (total, &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(&cli);
    ctx.check(
        name_counts(&servers) == want && name_counts(&clients) == want,
        &format!(
            "expected {want:?} on both sides;\n  redis-server SERVER spans: {:?}\n  redis-benchmark spans: {:?}",
            name_counts(&servers),
            name_counts(&clients)
        ),
        &relevant,
    );
    let mut p = Problems::new();
    let check = |p: &mut Problems, s: &ReceivedSpan, kind: Kind| {
        redis_common(p, s, kind, server.port);
        let e = match s.name.as_str() {
            "SET" => ok("SET", "SET key:__rand_int__ ?", "0"),
            "GET" => ok("GET", "GET key:__rand_int__", "0"),
            _ => return,
        };
        redis_expect(p, s, &e);
    };
    for s in &servers {
        check(&mut p, s, Kind::Server);
    }
    for s in &clients {
        check(&mut p, s, Kind::Client);
    }
    ctx.check_problems(p, &relevant);
    ctx.stop();
}

/// `redis-cli --pipe` with 300 SET commands: about 11 KB that it writes in
/// one call, and that redis-server reads in one, far past the 1,024 bytes
/// the test agents copy of a call. Every command is a span on both sides:
/// Redis connections have their calls copied whole.
#[test]
fn redis_cli_pipe_300() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    const N: usize = 300;
    let server = must(RedisServer::start(None));
    let ctx = Ctx::start("");

    let mut protocol = String::new();
    for i in 0..N {
        let (key, value) = (format!("pipe:{i:04}"), format!("value-{i:06}"));
        protocol.push_str(&format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
            key.len(),
            value.len()
        ));
    }
    assert!(protocol.len() > 10_000, "{} bytes", protocol.len());
    let run = must(redis_cli_pipe(server.port, &protocol));
    assert!(
        run.stdout.contains(&format!("replies: {N}")),
        "redis-cli --pipe: {run:?}"
    );

    // redis-cli ends with an ECHO of a marker to know all replies are in.
    let want = counts(&[("SET", N), ("ECHO", 1)]);
    let srv_pid = server.pid();
    let srv = |s: &ReceivedSpan| s.pid() == Some(srv_pid) && s.kind == Kind::Server;
    let cli = pid_is(run.pid);
    let relevant = |s: &ReceivedSpan| s.pid() == Some(srv_pid) || cli(s);
    ctx.wait_counts(&[(N + 1, &srv), (N + 1, &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(&cli);
    ctx.check(
        name_counts(&servers) == want && name_counts(&clients) == want,
        &format!(
            "expected {want:?} on both sides;\n  redis-server SERVER spans: {:?}\n  redis-cli spans: {:?}",
            name_counts(&servers),
            name_counts(&clients)
        ),
        &relevant,
    );
    // Spans of one call share their times: compare the texts as a set.
    let mut p = Problems::new();
    let want_texts: Vec<String> = (0..N).map(|i| format!("SET pipe:{i:04} ?")).collect();
    for (kind, spans) in [(Kind::Server, &servers), (Kind::Client, &clients)] {
        let mut texts = Vec::new();
        for s in spans.iter().filter(|s| s.name == "SET") {
            redis_common(&mut p, s, kind, server.port);
            texts.push(s.attr_str("db.query.text").unwrap_or_default().to_owned());
        }
        texts.sort();
        if texts != want_texts {
            p.0.push(format!("{kind:?} SET texts: {texts:?}"));
        }
    }
    ctx.check_problems(p, &relevant);
    ctx.stop();
}

/// The password the Python test's server requires; distinctive, so a search
/// for it finds nothing else.
const PASSWORD: &str = "pw-sonde-3f1c9a";

/// Python's `redis` client against a password-protected server: a
/// pipeline, pub/sub and a MULTI/EXEC transaction. Pushed pub/sub messages
/// make no spans; AUTH makes a span whose text hides the password, and the
/// password appears nowhere, not even through a mistyped AUTH whose error
/// message quotes it.
#[test]
fn redis_python_client() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let server = must(RedisServer::start(Some(PASSWORD)));
    let ctx = Ctx::start("");

    let run = must(run_python(
        PY_REDIS_CLIENT,
        &[server.port.to_string(), PASSWORD.to_string()],
    ));
    assert!(
        run.value("pipeline") == Some("10")
            && run.value("typo") == Some("rejected")
            && run.value("got") == Some("m0 m1 m2")
            && run.value("multi") == Some("OK 1 1"),
        "python redis client: {run:?}"
    );

    // Three connections, each opened with AUTH (see PY_REDIS_CLIENT).
    let want_list: &[(&str, &str, usize)] = &[
        ("AUTH", "AUTH ?", 3),
        ("SET", "SET p:0 ?", 1),
        ("SET", "SET p:1 ?", 1),
        ("SET", "SET p:2 ?", 1),
        ("SET", "SET p:3 ?", 1),
        ("GET", "GET p:0", 1),
        ("GET", "GET p:1", 1),
        ("GET", "GET p:2", 1),
        ("INCRBY", "INCRBY p:n ?", 2),
        ("DEL", "DEL p:0", 1),
        ("AUHT", "AUHT ?", 1),
        ("SUBSCRIBE", "SUBSCRIBE ?", 1),
        ("PUBLISH", "PUBLISH ? ?", 3),
        ("MULTI", "MULTI", 1),
        ("SET", "SET t:a ?", 1),
        ("INCRBY", "INCRBY t:n ?", 1),
        ("GET", "GET t:a", 1),
        ("EXEC", "EXEC", 1),
    ];
    let mut want = BTreeMap::new();
    for (name, text, n) in want_list {
        *want
            .entry((name.to_string(), text.to_string()))
            .or_insert(0) += n;
    }
    let total: usize = want.values().sum();

    let srv_pid = server.pid();
    let srv = |s: &ReceivedSpan| s.pid() == Some(srv_pid) && s.kind == Kind::Server;
    let cli = pid_is(run.pid);
    let relevant = |s: &ReceivedSpan| s.pid() == Some(srv_pid) || cli(s);
    ctx.wait_counts(&[(total, &srv), (total, &cli)]);
    let servers = ctx.spans(srv);
    let clients = ctx.spans(&cli);
    ctx.check(
        name_text(&servers) == want && name_text(&clients) == want,
        &format!(
            "expected (name, text) counts {want:?} on both sides;\n  redis-server SERVER spans: {:?}\n  python spans: {:?}",
            name_text(&servers),
            name_text(&clients)
        ),
        &relevant,
    );
    let mut p = Problems::new();
    for (side, kind) in [(&servers, Kind::Server), (&clients, Kind::Client)] {
        for s in side {
            redis_common(&mut p, s, kind, server.port);
            p.str(s, "db.operation.name", &s.name);
            p.str(s, "db.namespace", "0");
            let error = (s.name == "AUHT").then_some(("ERR", "ERR"));
            p.error(s, error);
        }
        // The queued commands sit between MULTI and EXEC.
        let order: Vec<&str> = side
            .iter()
            .map(|s| s.name.as_str())
            .skip_while(|n| *n != "MULTI")
            .take(5)
            .collect();
        if order != ["MULTI", "SET", "INCRBY", "GET", "EXEC"] {
            p.0.push(format!(
                "{kind:?} side: the transaction's spans run {order:?}, expected MULTI SET INCRBY GET EXEC"
            ));
        }
    }
    p.extend(leaks(&ctx.rx.spans(), PASSWORD));
    ctx.check_problems(p, &relevant);
    ctx.stop();
}
