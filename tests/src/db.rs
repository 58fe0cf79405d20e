//! What the database tests (Redis, MySQL/MariaDB) share: a receiver plus an
//! agent, span selection and waiting, and failure messages that show the
//! database attributes of every relevant span.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::agent::Agent;
use crate::receiver::{Kind, ReceivedSpan, Receiver, Status, Value};

/// A span selector.
pub type Pick<'a> = &'a dyn Fn(&ReceivedSpan) -> bool;

/// How long to wait for expected spans.
pub const WAIT: Duration = Duration::from_secs(15);
/// Extra time after the expected spans arrived, to catch any surplus ones.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Unwraps a harness result, panicking with the whole error chain.
pub fn must<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// One line per span with the fields the database tests look at.
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
        "{kind} {:?} pid={} svc={} sys={} ns={} op={} coll={} text={} rows={} code={} err={} status={:?}{} server={}:{} client={}:{} peer={}:{} dur={}us",
        s.name,
        s.pid().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        s.service().unwrap_or("-"),
        text("db.system.name"),
        text("db.namespace"),
        text("db.operation.name"),
        text("db.collection.name"),
        text("db.query.text"),
        text("db.response.returned_rows"),
        text("db.response.status_code"),
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

/// Spans as lines, at most `limit` of them.
pub fn dump(spans: &[&ReceivedSpan], limit: usize) -> String {
    let mut out = String::new();
    for s in spans.iter().take(limit) {
        out.push_str("    ");
        out.push_str(&line(s));
        out.push('\n');
    }
    if spans.len() > limit {
        let _ = writeln!(out, "    ... and {} more", spans.len() - limit);
    }
    out
}

/// `name -> count`, for comparing sets of spans regardless of order.
pub fn name_counts<'a>(
    spans: impl IntoIterator<Item = &'a ReceivedSpan>,
) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in spans {
        *m.entry(s.name.clone()).or_insert(0) += 1;
    }
    m
}

/// Builds a `name -> count` map from pairs.
pub fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (name, n) in pairs {
        if *n > 0 {
            *m.entry(name.to_string()).or_insert(0) += n;
        }
    }
    m
}

/// Every string in the span (name, status message, attributes and resource
/// attributes, nested values included) as `(where, text)`.
pub fn all_strings(s: &ReceivedSpan) -> Vec<(String, String)> {
    fn walk(at: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Str(t) => out.push((at.to_string(), t.clone())),
            Value::Bytes(b) => out.push((at.to_string(), String::from_utf8_lossy(b).into_owned())),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(&format!("{at}[{i}]"), item, out);
                }
            }
            Value::Map(kvs) => {
                for (k, item) in kvs {
                    out.push((format!("{at}.<key>"), k.clone()));
                    walk(&format!("{at}.{k}"), item, out);
                }
            }
            other => out.push((at.to_string(), other.to_string())),
        }
    }
    let mut out = vec![
        ("name".to_string(), s.name.clone()),
        ("status message".to_string(), s.status_message.clone()),
    ];
    for (k, v) in &s.attributes {
        out.push(("attribute key".to_string(), k.clone()));
        walk(k, v, &mut out);
    }
    for (k, v) in &s.resource {
        out.push(("resource key".to_string(), k.clone()));
        walk(&format!("resource {k}"), v, &mut out);
    }
    out
}

/// Where `needle` occurs in `spans`, one line per place.
pub fn leaks(spans: &[ReceivedSpan], needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for s in spans {
        for (at, text) in all_strings(s) {
            if text.contains(needle) {
                found.push(format!("{needle:?} in {at} = {text:?} of [{}]", line(s)));
            }
        }
    }
    found
}

/// Problem list helpers: each check pushes one message naming the span.
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn new() -> Problems {
        Problems(Vec::new())
    }

    pub fn push(&mut self, s: &ReceivedSpan, what: String) {
        self.0.push(format!("{what} in [{}]", line(s)));
    }

    /// A string attribute equals `want`.
    pub fn str(&mut self, s: &ReceivedSpan, key: &str, want: &str) {
        if s.attr_str(key) != Some(want) {
            self.push(s, format!("{key} {:?}, expected {want:?}", s.attr(key)));
        }
    }

    /// An integer attribute equals `want`.
    pub fn int(&mut self, s: &ReceivedSpan, key: &str, want: i64) {
        if s.attr_int(key) != Some(want) {
            self.push(s, format!("{key} {:?}, expected {want}", s.attr(key)));
        }
    }

    /// The attribute is not there.
    pub fn absent(&mut self, s: &ReceivedSpan, key: &str) {
        if let Some(v) = s.attr(key) {
            self.push(s, format!("{key} is {v}, expected no such attribute"));
        }
    }

    /// `want` Some: the string attribute equals it; None: it is absent.
    pub fn opt_str(&mut self, s: &ReceivedSpan, key: &str, want: Option<&str>) {
        match want {
            Some(w) => self.str(s, key, w),
            None => self.absent(s, key),
        }
    }

    pub fn name(&mut self, s: &ReceivedSpan, want: &str) {
        if s.name != want {
            self.push(s, format!("name {:?}, expected {want:?}", s.name));
        }
    }

    pub fn kind(&mut self, s: &ReceivedSpan, want: Kind) {
        if s.kind != want {
            self.push(s, format!("kind {:?}, expected {want:?}", s.kind));
        }
    }

    /// Error spans: status ERROR with `db.response.status_code` and
    /// `error.type`; other spans: neither, and no ERROR status.
    pub fn error(&mut self, s: &ReceivedSpan, want: Option<(&str, &str)>) {
        match want {
            Some((code, etype)) => {
                if s.status != Status::Error {
                    self.push(s, format!("span status {:?}, expected Error", s.status));
                }
                self.str(s, "db.response.status_code", code);
                self.str(s, "error.type", etype);
            }
            None => {
                if s.status == Status::Error {
                    self.push(s, "span status Error on a successful command".to_string());
                }
                self.absent(s, "error.type");
                self.absent(s, "db.response.status_code");
            }
        }
    }

    /// Times are set, ordered and wall-clock.
    pub fn times(&mut self, s: &ReceivedSpan) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        if s.start_ns == 0 || s.duration_ns() < 0 {
            self.push(
                s,
                format!("bad times start={} end={}", s.start_ns, s.end_ns),
            );
        } else if (now - i128::from(s.start_ns)).abs() > 86_400 * 1_000_000_000 {
            self.push(s, format!("start {} is not wall-clock time", s.start_ns));
        }
    }

    pub fn extend(&mut self, more: Vec<String>) {
        self.0.extend(more);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Default for Problems {
    fn default() -> Self {
        Problems::new()
    }
}

/// A receiver plus the agent exporting into it over OTLP/gRPC.
pub struct Ctx {
    pub rx: Receiver,
    agent: Option<Agent>,
}

impl Ctx {
    /// Starts a receiver and an agent with `extra_yaml` merged into the test
    /// config.
    pub fn start(extra_yaml: &str) -> Ctx {
        let rx = must(Receiver::start());
        let agent = must(Agent::start(&rx.grpc_endpoint(), "grpc", extra_yaml));
        Ctx {
            rx,
            agent: Some(agent),
        }
    }

    /// Spans matching `f`, ordered by start time.
    pub fn spans(&self, f: impl Fn(&ReceivedSpan) -> bool) -> Vec<ReceivedSpan> {
        let mut v: Vec<_> = self.rx.spans().into_iter().filter(|s| f(s)).collect();
        v.sort_by_key(|s| (s.start_ns, s.end_ns));
        v
    }

    /// Waits until at least `n` spans match each filter (or [`WAIT`] passes),
    /// then [`SETTLE`] more.
    pub fn wait_counts(&self, wanted: &[(usize, Pick)]) {
        self.rx.wait_for(WAIT, |spans| {
            wanted
                .iter()
                .all(|(n, f)| spans.iter().filter(|s| f(s)).count() >= *n)
        });
        std::thread::sleep(SETTLE);
    }

    /// Everything received, for failure messages: the spans `relevant`
    /// picks (up to 400), then up to 40 others.
    pub fn report(&self, relevant: Pick) -> String {
        let mut all = self.rx.spans();
        all.sort_by_key(|s| (s.start_ns, s.end_ns));
        let (mine, others): (Vec<&ReceivedSpan>, Vec<&ReceivedSpan>) =
            all.iter().partition(|s| relevant(s));
        let mut s = format!(
            "\n  receiver: {} export requests, {} spans ({} relevant)\n",
            self.rx.requests(),
            all.len(),
            mine.len()
        );
        let errors = self.rx.errors();
        if !errors.is_empty() {
            let _ = writeln!(s, "  receiver errors: {errors:?}");
        }
        s.push_str("  relevant spans:\n");
        s.push_str(&dump(&mine, 400));
        if !others.is_empty() {
            s.push_str("  other spans:\n");
            s.push_str(&dump(&others, 40));
        }
        s
    }

    /// Panics with `msg` and a dump of the received spans.
    #[track_caller]
    pub fn fail(&self, msg: &str, relevant: Pick) -> ! {
        panic!("{msg}{}", self.report(relevant));
    }

    #[track_caller]
    pub fn check(&self, ok: bool, msg: &str, relevant: Pick) {
        if !ok {
            self.fail(msg, relevant);
        }
    }

    /// Panics listing every problem, if there are any.
    #[track_caller]
    pub fn check_problems(&self, problems: Problems, relevant: Pick) {
        if !problems.is_empty() {
            let mut msg = format!("{} problem(s):\n", problems.0.len());
            for p in problems.0.iter().take(60) {
                msg.push_str("  - ");
                msg.push_str(p);
                msg.push('\n');
            }
            if problems.0.len() > 60 {
                let _ = writeln!(msg, "  ... and {} more", problems.0.len() - 60);
            }
            self.fail(&msg, relevant);
        }
    }

    /// The agent's log lines so far.
    pub fn agent_log(&self) -> Vec<String> {
        self.agent
            .as_ref()
            .map(Agent::log_lines)
            .unwrap_or_default()
    }

    /// SIGTERM the agent; it must exit 0 within 5 s.
    pub fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            must(agent.stop());
        }
    }
}
