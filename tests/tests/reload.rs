//! Live config end to end: the real agent, a Python HTTP server and a
//! Python client that makes one request per connection the whole time,
//! spans received over OTLP. The config file changes under the running
//! agent; needs root (skips otherwise) and a release build of the agent
//! (`cargo build --release -p sonde`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sonde_tests::agent::config_text;
use sonde_tests::clients::{PyChild, timed_lines, unix_now_secs};
use sonde_tests::servers::PyUpstream;
use sonde_tests::util::send_signal;
use sonde_tests::{Agent, Kind, ReceivedSpan, Receiver, require_root};

/// What the issue allows between writing the file and the new settings
/// applying.
const APPLY_WITHIN: Duration = Duration::from_secs(2);
/// How long each setting is left running with requests flowing.
const PHASE: Duration = Duration::from_secs(4);
/// How long to wait for the last spans.
const WAIT: Duration = Duration::from_secs(15);

/// GETs `/seq/N` (N counting from 0), each on a new connection, every
/// 20 ms until stdin closes. Arguments: PORT. Prints `N START END STATUS`
/// per request (Unix seconds), then `done`.
const PY_SEQUENCE_CLIENT: &str = r#"
import http.client, sys, threading, time
port = int(sys.argv[1])
stop = threading.Event()
def watch():
    sys.stdin.readline()
    stop.set()
threading.Thread(target=watch, daemon=True).start()
i = 0
while not stop.is_set():
    start = time.time()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/seq/%d" % i, headers={"User-Agent": "sonde-test-reload"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    print("%d %.6f %.6f %d" % (i, start, time.time(), resp.status), flush=True)
    i += 1
    time.sleep(0.02)
print("done", flush=True)
"#;

fn must<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The request a span is of, by its `/seq/N` path.
fn seq_of(span: &ReceivedSpan) -> Option<u64> {
    span.attr_str("url.path")?
        .strip_prefix("/seq/")?
        .parse()
        .ok()
}

/// Waits until a line of the agent's log holds every one of `words`.
fn wait_log(agent: &Agent, words: &[&str], timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = agent
            .log_lines()
            .into_iter()
            .find(|l| words.iter().all(|w| l.contains(w)));
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `text` over `path` the way most programs do: a new file renamed
/// over the old one.
fn replace_file(path: &Path, text: &str) {
    let next = path.with_extension("new");
    must(std::fs::write(&next, text).map_err(Into::into));
    must(std::fs::rename(&next, path).map_err(Into::into));
}

/// Publishes `text` at `path` the way the kubelet updates a ConfigMap
/// volume: the data goes into a new directory `..<version>`, the `..data`
/// link is swapped to it, and `path` is a link through `..data`. The file
/// itself is never written.
fn publish_configmap(path: &Path, version: u32, text: &str) {
    let dir = path.parent().expect("the config has a directory");
    let name = path.file_name().expect("the config has a name");
    let data = dir.join(format!("..v{version}"));
    must(std::fs::create_dir_all(&data).map_err(Into::into));
    must(std::fs::write(data.join(name), text).map_err(Into::into));
    let swap = |link: &Path, target: &Path| {
        let mut tmp_name = link.file_name().unwrap_or_default().to_owned();
        tmp_name.push(".tmp");
        let tmp = link.with_file_name(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        must(std::os::unix::fs::symlink(target, &tmp).map_err(Into::into));
        must(std::fs::rename(&tmp, link).map_err(Into::into));
    };
    swap(&dir.join("..data"), Path::new(&format!("..v{version}")));
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        swap(path, &Path::new("..data").join(name));
    }
}

/// The config file changes while requests flow:
/// 1. a broken file, with SIGHUP: refused with its key and line, and
///    nothing changes (the file would have turned HTTP/1 off);
/// 2. `protocols.http1: false`, as a ConfigMap update (no signal): within
///    2 s no more HTTP spans;
/// 3. HTTP/1 on again the same way: within 2 s every request has its
///    spans again.
///
/// Across every switch no span is duplicated: each request has at most
/// one SERVER and one CLIENT span, and exactly one of each while HTTP/1 is
/// on.
#[test]
fn config_changes_apply_live_and_a_broken_file_changes_nothing() {
    if !require_root() {
        return;
    }
    let rx = must(Receiver::start());
    let server = must(PyUpstream::start("reload-server", "HTTP/1.0"));
    let agent = must(Agent::start(&rx.grpc_endpoint(), "grpc", ""));
    let path = agent.config_path().to_path_buf();
    let client = must(PyChild::spawn(
        PY_SEQUENCE_CLIENT,
        &[server.port.to_string()],
    ));
    let of_test = |s: &ReceivedSpan| seq_of(s).is_some();
    let traced = rx.wait_for(WAIT, |spans| {
        spans.iter().filter(|s| of_test(s)).count() >= 20
    });
    assert!(traced, "no spans before any change{}", rx.report(of_test));
    std::thread::sleep(PHASE / 2);

    // 1. Broken: an unknown key, and a valid change that must not apply.
    let http1_off = must(config_text("protocols:\n  http1: false\n"));
    let broken = format!("{}\ncaptur:\n  bytes: 64\n", http1_off.trim_end());
    let broken_line = broken.lines().position(|l| l == "captur:").unwrap() + 1;
    let broken_at = unix_now_secs();
    replace_file(&path, &broken);
    must(send_signal(agent.pid(), libc::SIGHUP));
    let refused = wait_log(
        &agent,
        &[
            "config reload refused",
            &format!("line {broken_line}: unknown key captur "),
        ],
        APPLY_WITHIN,
    );
    assert!(
        refused.is_some(),
        "no refusal naming the key and line {broken_line} within {APPLY_WITHIN:?}:\n{}",
        agent.log_text()
    );
    std::thread::sleep(PHASE);

    // 2. HTTP/1 off, published like a ConfigMap update, without a signal.
    let off_at = unix_now_secs();
    publish_configmap(&path, 1, &http1_off);
    let applied = wait_log(&agent, &["reloaded: applied protocols"], APPLY_WITHIN);
    assert!(
        applied.is_some(),
        "HTTP/1 off not applied within {APPLY_WITHIN:?}:\n{}",
        agent.log_text()
    );
    std::thread::sleep(PHASE);

    // 3. HTTP/1 on again.
    let on_at = unix_now_secs();
    publish_configmap(&path, 2, &must(config_text("")));
    std::thread::sleep(PHASE);
    let lines = must(client.finish(Duration::from_secs(10)));
    let made = timed_lines(&lines);
    let last = made.last().map_or(0, |r| r.n);

    // Every request of the last phase has both its spans; then a moment
    // for any surplus.
    let settle = APPLY_WITHIN.as_secs_f64();
    let wanted_last: Vec<u64> = made
        .iter()
        .filter(|r| r.start >= on_at + settle)
        .map(|r| r.n)
        .collect();
    rx.wait_for(WAIT, |spans| {
        let seen: Vec<u64> = spans.iter().filter_map(seq_of).collect();
        wanted_last
            .iter()
            .all(|seq| seen.iter().filter(|s| *s == seq).count() >= 2)
    });
    std::thread::sleep(Duration::from_secs(1));

    // (SERVER, CLIENT) spans per request.
    let mut counts: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for span in rx.spans() {
        let Some(seq) = seq_of(&span) else { continue };
        let entry = counts.entry(seq).or_default();
        match span.kind {
            Kind::Server => entry.0 += 1,
            Kind::Client => entry.1 += 1,
            _ => {}
        }
    }
    let mut problems = Vec::new();
    let (mut on_before, mut off, mut on_after) = (0, 0, 0);
    for r in &made {
        let got = counts.get(&r.n).copied().unwrap_or_default();
        if got.0 > 1 || got.1 > 1 {
            problems.push(format!("request {} has spans twice: {got:?}", r.n));
        }
        let expect = if r.end < off_at {
            // Before the switch, broken file included: all traced.
            on_before += 1;
            Some((1, 1))
        } else if r.start >= off_at + settle && r.end < on_at {
            off += 1;
            Some((0, 0))
        } else if r.start >= on_at + settle {
            on_after += 1;
            Some((1, 1))
        } else {
            None
        };
        if let Some(want) = expect
            && got != want
        {
            problems.push(format!(
                "request {} (started {:.3} s after the broken file, {:.3} s after HTTP/1 off, \
                 {:.3} s after HTTP/1 on): (SERVER, CLIENT) spans {got:?}, expected {want:?}",
                r.n,
                r.start - broken_at,
                r.start - off_at,
                r.start - on_at,
            ));
        }
    }
    eprintln!(
        "[reload] {} requests: {on_before} traced before the switch, {off} untraced with HTTP/1 \
         off, {on_after} traced after it came back",
        made.len()
    );
    // Each phase had requests to judge by.
    for (phase, n) in [("before", on_before), ("off", off), ("on again", on_after)] {
        if n < 20 {
            problems.push(format!("only {n} requests in the phase {phase}"));
        }
    }
    if !problems.is_empty() {
        panic!(
            "{} problem(s) over {} requests (last {last}):\n  {}\nagent log:\n{}{}",
            problems.len(),
            made.len(),
            problems
                .iter()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  "),
            agent.log_text(),
            rx.report(of_test)
        );
    }
    must(agent.stop());
}
