//! Tests of destination resolution and of the span worker end to end.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;

use super::otlp::{ENDPOINT, HEADERS, PROTOCOL};
use super::testing;
use super::*;
use crate::config::OtlpConfig;
use crate::span::model::AttrValue;

const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn resolve(config: &ExportConfig, pairs: &[(&str, &str)]) -> Result<Destinations, ExportError> {
    resolve_destinations(config, &env(pairs))
}

fn otlp(pairs: &[(&str, &str)]) -> OtlpTarget {
    resolve(&ExportConfig::default(), pairs)
        .unwrap()
        .otlp
        .expect("OTLP on")
}

#[test]
fn console_only_by_default() {
    assert_eq!(
        resolve(&ExportConfig::default(), &[]).unwrap(),
        Destinations {
            console: true,
            otlp: None,
            tenants: Vec::new(),
        }
    );
    // Empty variables count as unset.
    assert_eq!(
        resolve(
            &ExportConfig::default(),
            &[(ENDPOINT, ""), (TRACES_ENDPOINT, "  "), (PROTOCOL, "")]
        )
        .unwrap()
        .otlp,
        None
    );
}

#[test]
fn endpoint_rules() {
    // gRPC (the default) uses the base endpoint as it is.
    let t = otlp(&[(ENDPOINT, "http://collector:4317")]);
    assert_eq!(t.protocol, Protocol::Grpc);
    assert_eq!(t.endpoint, "http://collector:4317");

    // HTTP appends /v1/traces to the base endpoint, once.
    for base in ["http://collector:4318", "http://collector:4318/"] {
        let t = otlp(&[(ENDPOINT, base), (PROTOCOL, "http/protobuf")]);
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
    }
    let t = otlp(&[(ENDPOINT, "http://gw/otlp"), (PROTOCOL, "http/protobuf")]);
    assert_eq!(t.endpoint, "http://gw/otlp/v1/traces");

    // The traces endpoint is used as it is, and wins over the base one.
    let t = otlp(&[
        (ENDPOINT, "http://base:4318"),
        (TRACES_ENDPOINT, "http://traces:9999/custom"),
        (PROTOCOL, "http/protobuf"),
    ]);
    assert_eq!(t.endpoint, "http://traces:9999/custom");

    // Configuration keys win over the environment.
    let mut config = ExportConfig::default();
    config.otlp.endpoint = Some("http://from-config:4318".into());
    config.otlp.protocol = Some(Protocol::HttpProtobuf);
    let d = resolve(
        &config,
        &[(TRACES_ENDPOINT, "http://from-env:1/x"), (PROTOCOL, "grpc")],
    )
    .unwrap();
    let t = d.otlp.unwrap();
    assert_eq!(t.protocol, Protocol::HttpProtobuf);
    assert_eq!(t.endpoint, "http://from-config:4318/v1/traces");
    assert!(!d.console);

    config.otlp.traces_endpoint = Some("http://exact:4318/path".into());
    let t = resolve(&config, &[]).unwrap().otlp.unwrap();
    assert_eq!(t.endpoint, "http://exact:4318/path");
}

#[test]
fn protocol_rules() {
    let t = otlp(&[
        (ENDPOINT, "http://c:4318"),
        (PROTOCOL, "grpc"),
        (TRACES_PROTOCOL, "http/protobuf"),
    ]);
    assert_eq!(t.protocol, Protocol::HttpProtobuf);

    let err = resolve(
        &ExportConfig::default(),
        &[(ENDPOINT, "http://c:4318"), (PROTOCOL, "http/json")],
    )
    .unwrap_err();
    assert!(matches!(err, ExportError::Protocol { .. }));
    let msg = err.to_string();
    assert!(msg.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{msg}");
    assert!(msg.contains("http/json"), "{msg}");
}

#[test]
fn bad_endpoints() {
    for (value, needle) in [
        ("collector:4317", "http://"),
        ("https://collector:4317", "TLS"),
        ("not a url", "not a URL"),
        ("ftp://collector", "http://"),
    ] {
        let err = resolve(&ExportConfig::default(), &[(ENDPOINT, value)]).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ExportError::Endpoint { .. }),
            "{value}: {msg}"
        );
        assert!(
            msg.contains(ENDPOINT) && msg.contains(needle),
            "{value}: {msg}"
        );
    }
}

#[test]
fn header_rules() {
    let t = otlp(&[
        (ENDPOINT, "http://c:4317"),
        (HEADERS, "Api-Key=abc%20def , x-tenant=t1"),
    ]);
    assert_eq!(
        t.headers,
        vec![
            ("api-key".to_string(), "abc def".to_string()),
            ("x-tenant".to_string(), "t1".to_string()),
        ]
    );

    // The traces variable replaces the generic one.
    let t = otlp(&[
        (ENDPOINT, "http://c:4317"),
        (HEADERS, "a=1"),
        (TRACES_HEADERS, "b=2"),
    ]);
    assert_eq!(t.headers, vec![("b".to_string(), "2".to_string())]);

    // Configured headers win over the environment, key by key.
    let config = ExportConfig {
        otlp: OtlpConfig {
            endpoint: Some("http://c:4317".into()),
            headers: BTreeMap::from([("X-Tenant".to_string(), "from-config".to_string())]),
            ..OtlpConfig::default()
        },
        ..ExportConfig::default()
    };
    let t = resolve(&config, &[(HEADERS, "x-tenant=from-env,other=o")])
        .unwrap()
        .otlp
        .unwrap();
    assert_eq!(
        t.headers,
        vec![
            ("other".to_string(), "o".to_string()),
            ("x-tenant".to_string(), "from-config".to_string()),
        ]
    );

    // Errors name the variable or the header, never show the value.
    for (headers, named, secret) in [
        ("authorization=Bearer%zztopsecret", HEADERS, "topsecret"),
        ("bad name=1", "bad name", "=1"),
        ("k=line%0Abreaksecret", "\"k\"", "breaksecret"),
    ] {
        let err = resolve(
            &ExportConfig::default(),
            &[(ENDPOINT, "http://c:4317"), (HEADERS, headers)],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ExportError::Headers { .. }), "{msg}");
        assert!(msg.contains(named) && !msg.contains(secret), "{msg}");
    }
}

#[test]
fn console_switch() {
    let mut config = ExportConfig::default();
    let with_otlp = [(ENDPOINT, "http://c:4317")];
    assert!(!resolve(&config, &with_otlp).unwrap().console);
    config.console = Some(true);
    let d = resolve(&config, &with_otlp).unwrap();
    assert!(d.console && d.otlp.is_some());
    config.console = Some(false);
    assert!(matches!(
        resolve(&config, &[]),
        Err(ExportError::NoDestination)
    ));
    assert!(resolve(&config, &with_otlp).unwrap().otlp.is_some());
}

// ---------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------

fn resource(service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: service.into(),
        attributes: vec![
            ("service.name".into(), service.into()),
            ("process.pid".into(), AttrValue::Int(4321)),
        ],
        ..Default::default()
    })
}

fn item(resource: &Arc<Resource>, name: &str, n: u8) -> ExportItem {
    ExportItem {
        resource: Arc::clone(resource),
        span: testing::span(
            name,
            n,
            (1_700_000_000_000_000_000, 1_700_000_000_001_000_000),
            vec![("http.request.method", "GET".into())],
        ),
    }
}

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let stats = Arc::new(Stats::default());
    let out = SharedBuf::default();
    let config = ExportConfig {
        queue_size: 2,
        ..ExportConfig::default()
    };
    let destinations = Destinations {
        console: true,
        otlp: None,
        tenants: Vec::new(),
    };
    let console = console::ConsoleSink::new(Box::new(out.clone()));
    let handle = start_with(&config, destinations, Some(console), Arc::clone(&stats)).unwrap();
    // The single-threaded test runtime does not run the worker before the
    // first await, so the queue fills up.
    let r = resource("shop");
    let sender = handle.sender();
    let accepted: Vec<bool> = (0..5)
        .map(|i| sender.try_send(item(&r, "GET /", i)))
        .collect();
    assert_eq!(accepted, [true, true, false, false, false]);
    handle.shutdown(Duration::from_secs(5)).await;

    assert_eq!(stats.spans_dropped_queue_full.load(Ordering::Relaxed), 3);
    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 2);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().all(|l| l.contains("  shop  SERVER  GET /  ")),
        "{text}"
    );
    // After shutdown the queue is closed: sends are drops.
    assert!(!sender.try_send(item(&r, "late", 9)));
    assert_eq!(stats.spans_dropped_queue_full.load(Ordering::Relaxed), 4);
}

#[test]
fn start_needs_a_runtime() {
    let stats = Arc::new(Stats::default());
    let destinations = Destinations {
        console: true,
        otlp: None,
        tenants: Vec::new(),
    };
    let console = console::ConsoleSink::new(Box::new(SharedBuf::default()));
    let err = start_with(&ExportConfig::default(), destinations, Some(console), stats).unwrap_err();
    assert!(matches!(err, ExportError::NoRuntime));
}

/// One HTTP request as the fake collector saw it.
#[derive(Debug)]
struct Seen {
    request_line: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 server: answers every request with an empty 200 and
/// reports it on `tx`.
fn fake_collector(listener: TcpListener, tx: std::sync::mpsc::Sender<Seen>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, tx));
        }
    });
}

fn serve(stream: TcpStream, tx: std::sync::mpsc::Sender<Seen>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let _ = writer.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        );
        let _ = tx.send(Seen {
            request_line: request_line.trim_end().to_string(),
            headers,
            body,
        });
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_end_to_end() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    fake_collector(listener, tx);

    let mut config = ExportConfig::default();
    config.otlp.endpoint = Some(format!("http://127.0.0.1:{port}"));
    config.otlp.protocol = Some(Protocol::HttpProtobuf);
    config.otlp.headers = BTreeMap::from([("X-Sonde-Test".to_string(), "yes".to_string())]);
    config.otlp.batch_timeout_ms = 20;
    config.otlp.timeout_ms = 5000;
    let destinations = resolve_destinations(&config, &HashMap::new()).unwrap();
    assert!(!destinations.console);
    let stats = Arc::new(Stats::default());
    let handle = start_with(&config, destinations, None, Arc::clone(&stats)).unwrap();

    let shop = resource("shop-a");
    let cart = resource("cart-b");
    assert!(handle.try_send(item(&shop, "GET /one", 1)));
    assert!(handle.try_send(item(&shop, "GET /two", 2)));
    assert!(handle.try_send(item(&cart, "GET /three", 3)));
    handle.shutdown(Duration::from_secs(10)).await;

    let seen: Vec<Seen> = (0..2)
        .map(|_| rx.recv_timeout(Duration::from_secs(5)).expect("a request"))
        .collect();
    for s in &seen {
        assert_eq!(s.request_line, "POST /v1/traces HTTP/1.1");
        assert_eq!(
            s.headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
        assert_eq!(
            s.headers.get("x-sonde-test").map(String::as_str),
            Some("yes")
        );
        assert!(!s.body.is_empty());
        assert!(contains(&s.body, b"service.name"));
        assert!(contains(&s.body, b"sonde"));
    }
    // One request per resource, each with that process's spans only.
    let shop_req = seen.iter().find(|s| contains(&s.body, b"shop-a")).unwrap();
    assert!(contains(&shop_req.body, b"GET /one") && contains(&shop_req.body, b"GET /two"));
    assert!(!contains(&shop_req.body, b"GET /three"));
    let cart_req = seen.iter().find(|s| contains(&s.body, b"cart-b")).unwrap();
    assert!(contains(&cart_req.body, b"GET /three"));

    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 3);
    assert_eq!(stats.spans_export_failed.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_failures_are_counted() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = ExportConfig::default();
    config.otlp.endpoint = Some(format!("http://127.0.0.1:{port}"));
    config.otlp.batch_timeout_ms = 10;
    config.otlp.timeout_ms = 300;
    let destinations = resolve_destinations(&config, &HashMap::new()).unwrap();
    assert_eq!(destinations.otlp.as_ref().unwrap().protocol, Protocol::Grpc);
    let stats = Arc::new(Stats::default());
    let handle = start_with(&config, destinations, None, Arc::clone(&stats)).unwrap();

    let r = resource("shop");
    assert!(handle.try_send(item(&r, "GET /a", 1)));
    assert!(handle.try_send(item(&r, "GET /b", 2)));
    let waited = Instant::now();
    while stats.spans_export_failed.load(Ordering::Relaxed) < 2 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "failures not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown(Duration::from_secs(2)).await;
    assert_eq!(stats.spans_export_failed.load(Ordering::Relaxed), 2);
    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_in_time_when_the_collector_hangs() {
    // Accepts connections (the kernel does) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = ExportConfig::default();
    config.otlp.endpoint = Some(format!("http://127.0.0.1:{port}"));
    config.otlp.protocol = Some(Protocol::HttpProtobuf);
    config.otlp.batch_timeout_ms = 5_000;
    config.otlp.timeout_ms = 30_000;
    let destinations = resolve_destinations(&config, &HashMap::new()).unwrap();
    let stats = Arc::new(Stats::default());
    let handle = start_with(&config, destinations, None, Arc::clone(&stats)).unwrap();

    let r = resource("shop");
    for i in 0..3 {
        assert!(handle.try_send(item(&r, "GET /slow", i)));
    }
    let began = Instant::now();
    handle.shutdown(Duration::from_millis(500)).await;
    assert!(
        began.elapsed() < Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(stats.spans_export_failed.load(Ordering::Relaxed), 3);
    drop(listener);
}

#[test]
fn endpoints_are_logged_without_credentials() {
    assert_eq!(
        redact_userinfo("http://user:pw@collector:4318/v1/traces"),
        "http://collector:4318/v1/traces"
    );
    assert_eq!(
        redact_userinfo("http://collector:4317"),
        "http://collector:4317"
    );
}
