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

// ---------------------------------------------------------------------------
// Tenant routes
// ---------------------------------------------------------------------------

use crate::config::TenantRoute;
use crate::enrich::tenant::ProcessTenant;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

/// A process resource of `tenant` (none: of no tenant).
fn tenant_resource(service: &str, tenant: Option<&str>) -> Arc<Resource> {
    let mut attributes: Vec<(String, AttrValue)> = vec![("service.name".into(), service.into())];
    if let Some(t) = tenant {
        attributes.push(("tenant.id".into(), t.into()));
    }
    Arc::new(Resource {
        service_name: service.into(),
        attributes,
        tenant: ProcessTenant {
            rank: 0,
            tenant: tenant.map(Arc::from),
            ..ProcessTenant::default()
        },
    })
}

fn route(endpoint: &str) -> TenantRoute {
    TenantRoute {
        endpoint: Some(endpoint.into()),
        ..TenantRoute::default()
    }
}

fn tenants(routes: Vec<(&str, TenantRoute)>) -> BTreeMap<String, TenantRoute> {
    routes
        .into_iter()
        .map(|(id, r)| (id.to_string(), r))
        .collect()
}

#[test]
fn tenant_routes_resolve_from_the_file_alone() {
    let mut config = ExportConfig {
        queue_size: 100,
        ..ExportConfig::default()
    };
    config.otlp.endpoint = Some("http://default:4318".into());
    config.otlp.protocol = Some(Protocol::HttpProtobuf);
    config.otlp.headers = BTreeMap::from([("authorization".into(), "Bearer default".into())]);
    config.otlp.batch_size = 50;
    config.otlp.timeout_ms = 700;
    config.tenants = tenants(vec![
        (
            "acme",
            TenantRoute {
                headers: BTreeMap::from([("X-Scope-OrgID".into(), "acme".into())]),
                queue_size: Some(7),
                ..route("http://acme:4318/")
            },
        ),
        (
            "globex",
            TenantRoute {
                traces_endpoint: Some("http://globex:9999/traces".into()),
                protocol: Some(Protocol::Grpc),
                headers: BTreeMap::from([("X-Scope-OrgID".into(), "org-${tenant}".into())]),
                batch_size: Some(3),
                batch_timeout_ms: Some(20),
                timeout_ms: Some(90),
                ..TenantRoute::default()
            },
        ),
        (
            "initech",
            TenantRoute {
                metrics_endpoint: Some("http://initech:4318/v1/metrics".into()),
                ..TenantRoute::default()
            },
        ),
    ]);
    // The environment configures the default route only.
    let d = resolve(
        &config,
        &[
            (HEADERS, "x-from-env=1"),
            (TRACES_ENDPOINT, "http://env:1/x"),
            (PROTOCOL, "grpc"),
        ],
    )
    .unwrap();
    assert_eq!(
        d.otlp.as_ref().unwrap().endpoint,
        "http://default:4318/v1/traces"
    );
    // initech routes metrics only: its spans take the default route.
    let ids: Vec<&str> = d.tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(ids, ["acme", "globex"]);

    let acme = &d.tenants[0];
    assert_eq!(acme.otlp.signal, Signal::Traces);
    // The protocol of export.otlp, the base URL with the signal's path.
    assert_eq!(acme.otlp.protocol, Protocol::HttpProtobuf);
    assert_eq!(acme.otlp.endpoint, "http://acme:4318/v1/traces");
    // Its own headers only: not the default route's, not the environment's.
    assert_eq!(
        acme.otlp.headers,
        vec![("x-scope-orgid".to_string(), "acme".to_string())]
    );
    assert_eq!(acme.otlp.timeout, Duration::from_millis(700));
    assert_eq!(
        acme.batching,
        Batching {
            queue_size: 7,
            batch_size: 50,
            batch_timeout: Duration::from_millis(1000),
        }
    );

    let globex = &d.tenants[1];
    assert_eq!(globex.otlp.protocol, Protocol::Grpc);
    assert_eq!(globex.otlp.endpoint, "http://globex:9999/traces");
    assert_eq!(
        globex.otlp.headers,
        vec![("x-scope-orgid".to_string(), "org-globex".to_string())]
    );
    assert_eq!(globex.otlp.timeout, Duration::from_millis(90));
    assert_eq!(
        globex.batching,
        Batching {
            queue_size: 100,
            batch_size: 3,
            batch_timeout: Duration::from_millis(20),
        }
    );

    // A bad route names its key.
    config.tenants = tenants(vec![("acme", route("acme:4318"))]);
    let err = resolve(&config, &[]).unwrap_err().to_string();
    assert!(
        err.contains("export.tenants.acme.endpoint") && err.contains("http://"),
        "{err}"
    );
}

#[tokio::test]
async fn route_selection() {
    let config = ExportConfig {
        tenants: tenants(vec![
            ("acme", route("http://127.0.0.1:9")),
            ("globex", route("http://127.0.0.1:9")),
        ]),
        ..ExportConfig::default()
    };
    let destinations = resolve_destinations(&config, &HashMap::new()).unwrap();
    assert!(destinations.console && destinations.otlp.is_none());
    let console = console::ConsoleSink::new(Box::new(SharedBuf::default()));
    let stats = Arc::new(Stats::default());
    let handle = start_with(&config, destinations, Some(console), stats).unwrap();
    let sender = handle.sender();

    let acme = tenant_resource("shop", Some("acme"));
    let initech = tenant_resource("shop", Some("initech"));
    let nobody = tenant_resource("shop", None);
    let with_span_tenant = |r: &Arc<Resource>, t: &str| {
        let mut it = item(r, "GET /", 1);
        it.span.tenant = Some(t.into());
        it
    };
    for (what, it, want) in [
        ("a tenant with a route", item(&acme, "GET /", 1), "acme"),
        (
            "a tenant without one",
            item(&initech, "GET /", 1),
            "default",
        ),
        ("no tenant", item(&nobody, "GET /", 1), "default"),
        (
            "a header rule's tenant wins over the process's",
            with_span_tenant(&acme, "globex"),
            "globex",
        ),
        (
            "even when the process has no tenant",
            with_span_tenant(&nobody, "acme"),
            "acme",
        ),
        (
            "and when it has no route",
            with_span_tenant(&acme, "initech"),
            "default",
        ),
    ] {
        assert_eq!(sender.route_of(&it), want, "{what}");
    }
    handle.shutdown(Duration::from_secs(1)).await;

    // Without tenant routes everything takes the default one.
    let config = ExportConfig::default();
    let destinations = resolve_destinations(&config, &HashMap::new()).unwrap();
    let console = console::ConsoleSink::new(Box::new(SharedBuf::default()));
    let handle = start_with(
        &config,
        destinations,
        Some(console),
        Arc::new(Stats::default()),
    )
    .unwrap();
    assert_eq!(
        handle.sender().route_of(&item(&acme, "GET /", 1)),
        "default"
    );
    handle.shutdown(Duration::from_secs(1)).await;
}

/// Tenant routes change under a running export stage: a route added
/// takes its tenant's spans at once, one removed gives them back to the
/// default route, and an unchanged one keeps its queue (spans already in
/// it are not lost).
#[tokio::test]
async fn tenant_routes_change_live() {
    let config = ExportConfig {
        tenants: tenants(vec![
            ("acme", route("http://127.0.0.1:9")),
            ("globex", route("http://127.0.0.1:9")),
        ]),
        ..ExportConfig::default()
    };
    let destinations = resolve_destinations(&config, &HashMap::new()).unwrap();
    let console = console::ConsoleSink::new(Box::new(SharedBuf::default()));
    let mut handle = start_with(
        &config,
        destinations,
        Some(console),
        Arc::new(Stats::default()),
    )
    .unwrap();
    let sender = handle.sender();
    let acme = item(&tenant_resource("shop", Some("acme")), "GET /", 1);
    let globex = item(&tenant_resource("shop", Some("globex")), "GET /", 1);
    let initech = item(&tenant_resource("shop", Some("initech")), "GET /", 1);
    let queue_of = |h: &ExportHandle, tenant: &str| {
        h.sender
            .routes
            .load()
            .tenants
            .get(tenant)
            .map(|r| r.queue.tx.clone())
    };
    let acme_queue = queue_of(&handle, "acme").unwrap();
    let globex_queue = queue_of(&handle, "globex").unwrap();

    // globex moves to another collector, initech gets a route, acme stays.
    let mut moved = route("http://127.0.0.1:10");
    moved
        .headers
        .insert("X-Scope-OrgID".into(), "${tenant}".into());
    let next = ExportConfig {
        tenants: tenants(vec![
            ("acme", route("http://127.0.0.1:9")),
            ("globex", moved),
            ("initech", route("http://127.0.0.1:9")),
        ]),
        ..ExportConfig::default()
    };
    assert_eq!(
        handle.set_tenant_routes(&next).unwrap(),
        ["globex", "initech"]
    );
    assert_eq!(
        sender.route_of(&initech),
        "initech",
        "a clone of the sender sees the change"
    );
    assert_eq!(sender.route_of(&globex), "globex");
    assert!(queue_of(&handle, "acme").unwrap().same_channel(&acme_queue));
    assert!(
        !queue_of(&handle, "globex")
            .unwrap()
            .same_channel(&globex_queue)
    );

    // acme's route goes: its spans take the default route.
    let last = ExportConfig {
        tenants: tenants(vec![("initech", route("http://127.0.0.1:9"))]),
        ..ExportConfig::default()
    };
    assert_eq!(handle.set_tenant_routes(&last).unwrap(), ["acme", "globex"]);
    assert_eq!(sender.route_of(&acme), "default");
    assert_eq!(sender.route_of(&globex), "default");
    assert_eq!(sender.route_of(&initech), "initech");
    // The retired workers end once their queues are let go of.
    drop((acme_queue, globex_queue));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while handle
        .workers
        .iter()
        .filter(|w| !w.task.is_finished())
        .count()
        > 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "retired workers still run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A route that cannot be set up changes nothing.
    let bad = ExportConfig {
        tenants: tenants(vec![("umbrella", route("ftp://127.0.0.1:9"))]),
        ..ExportConfig::default()
    };
    assert!(handle.set_tenant_routes(&bad).is_err());
    assert_eq!(sender.route_of(&initech), "initech");
    handle.shutdown(Duration::from_secs(1)).await;
}

/// A collector that accepts connections and never answers; says so on
/// `tx` for each connection.
fn hanging_collector(listener: TcpListener, tx: std::sync::mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            held.push(stream);
            let _ = tx.send(());
        }
    });
}

fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn loads(stats: &Stats, route: &str) -> (u64, u64, u64) {
    let r = stats.routes.get(route);
    (
        r.spans_exported.load(Ordering::Relaxed),
        r.spans_export_failed.load(Ordering::Relaxed),
        r.spans_dropped_queue_full.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_tenant_collector_delays_and_drops_only_its_own_spans() {
    // acme's collector answers; globex's takes connections and never
    // answers; nobody listens on the default route's port.
    let live = TcpListener::bind("127.0.0.1:0").unwrap();
    let live_port = live.local_addr().unwrap().port();
    let (live_tx, live_rx) = std::sync::mpsc::channel();
    fake_collector(live, live_tx);
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let (hung_tx, hung_rx) = std::sync::mpsc::channel();
    hanging_collector(hung, hung_tx);

    let mut config = ExportConfig::default();
    config.otlp.endpoint = Some(format!("http://127.0.0.1:{}", unused_port()));
    config.otlp.protocol = Some(Protocol::HttpProtobuf);
    config.otlp.headers = BTreeMap::from([("authorization".into(), "Bearer default".into())]);
    config.otlp.batch_timeout_ms = 10;
    config.otlp.timeout_ms = 300;
    config.tenants = tenants(vec![
        (
            "acme",
            TenantRoute {
                headers: BTreeMap::from([("X-Scope-OrgID".into(), "${tenant}".into())]),
                batch_size: Some(8),
                timeout_ms: Some(5_000),
                ..route(&format!("http://127.0.0.1:{live_port}"))
            },
        ),
        (
            "globex",
            TenantRoute {
                queue_size: Some(4),
                batch_size: Some(2),
                timeout_ms: Some(30_000),
                ..route(&format!("http://127.0.0.1:{hung_port}"))
            },
        ),
    ]);
    let destinations = resolve_destinations(&config, &HashMap::new()).unwrap();
    let stats = Arc::new(Stats::default());
    let handle = start_with(&config, destinations, None, Arc::clone(&stats)).unwrap();

    let acme = tenant_resource("shop-acme", Some("acme"));
    let globex = tenant_resource("shop-globex", Some("globex"));
    let nobody = tenant_resource("shop-none", None);

    // globex's first flush reaches its collector and hangs there.
    assert!(handle.try_send(item(&globex, "GET /g", 0)));
    hung_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("globex's flush reached its collector");

    let began = Instant::now();
    let mut globex_queued = 1u64;
    for i in 1..=40u8 {
        assert!(handle.try_send(item(&acme, &format!("GET /a{i}"), i)));
        globex_queued += u64::from(handle.try_send(item(&globex, "GET /g", i)));
        assert!(handle.try_send(item(&nobody, "GET /n", i)));
    }

    // acme gets every span, promptly, with its own header only.
    let mut names = std::collections::BTreeSet::new();
    while names.len() < 40 {
        let left = Duration::from_secs(5).saturating_sub(began.elapsed());
        let seen = live_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("acme got {} of 40 spans", names.len()));
        assert_eq!(seen.request_line, "POST /v1/traces HTTP/1.1");
        assert_eq!(
            seen.headers.get("x-scope-orgid").map(String::as_str),
            Some("acme")
        );
        assert!(!seen.headers.contains_key("authorization"), "{seen:?}");
        let request = ExportTraceServiceRequest::decode(&seen.body[..]).unwrap();
        for rs in &request.resource_spans {
            assert!(contains(
                &rs.resource.clone().unwrap_or_default().encode_to_vec(),
                b"shop-acme"
            ));
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                assert!(names.insert(span.name.clone()), "{} twice", span.name);
            }
        }
    }
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "acme waited {:?}",
        began.elapsed()
    );

    // globex kept what its batch and queue hold, dropped the rest.
    assert!(globex_queued <= 1 + 2 + 4, "{globex_queued}");
    assert_eq!(loads(&stats, "globex"), (0, 0, 41 - globex_queued));
    // The default route's collector refuses: its spans fail, none dropped.
    while loads(&stats, "default").1 < 40 {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "default: {:?}",
            loads(&stats, "default")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stopping = Instant::now();
    handle.shutdown(Duration::from_secs(1)).await;
    assert!(stopping.elapsed() < Duration::from_millis(1500));
    assert_eq!(loads(&stats, "acme"), (40, 0, 0));
    assert_eq!(loads(&stats, "default"), (0, 40, 0));
    // What globex still held is lost at shutdown.
    assert_eq!(
        loads(&stats, "globex"),
        (0, globex_queued, 41 - globex_queued)
    );
    // The totals are the routes' sums.
    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 40);
    assert_eq!(
        stats.spans_export_failed.load(Ordering::Relaxed),
        40 + globex_queued
    );
    assert_eq!(
        stats.spans_dropped_queue_full.load(Ordering::Relaxed),
        41 - globex_queued
    );

    // And the agent's own metrics report them per route.
    let metrics = crate::metrics::Metrics::new(
        crate::metrics::store_options(&crate::config::MetricsConfig::default()),
        resource("sonde"),
        Arc::clone(&stats),
    );
    let snap = metrics.snapshot(crate::metrics::Temporality::Cumulative);
    let own = &snap.resources[0].metrics;
    let value = |name: &str, route: &str| -> Option<f64> {
        let m = own.iter().find(|m| m.name == name)?;
        let p = m.points.iter().find(|p| {
            crate::metrics::store::point_attr(p, "route").and_then(|v| v.as_str()) == Some(route)
        })?;
        match p.value {
            crate::metrics::store::PointValue::Sum(v) => Some(v),
            _ => None,
        }
    };
    assert_eq!(
        value("sonde.spans.dropped", "globex"),
        Some((41 - globex_queued) as f64)
    );
    assert_eq!(value("sonde.spans.dropped", "acme"), Some(0.0));
    assert_eq!(value("sonde.spans.exported", "acme"), Some(40.0));
    assert_eq!(value("sonde.spans.export_failed", "default"), Some(40.0));
    let dropped = own
        .iter()
        .find(|m| m.name == "sonde.spans.dropped")
        .unwrap();
    assert!(dropped.points.iter().all(|p| {
        crate::metrics::store::point_attr(p, "reason").and_then(|v| v.as_str())
            == Some("queue_full")
    }));
    assert_eq!(
        dropped.points.len(),
        3,
        "one per route, no unlabelled total"
    );
}

/// The `service.name` of each resource in a metrics request, and the
/// metric names under each.
fn metric_resources(body: &[u8]) -> Vec<(String, Vec<String>)> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let request = ExportMetricsServiceRequest::decode(body).unwrap();
    request
        .resource_metrics
        .iter()
        .map(|rm| {
            let service = rm
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let names = rm
                .scope_metrics
                .iter()
                .flat_map(|s| &s.metrics)
                .map(|m| m.name.clone())
                .collect();
            (service, names)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_take_their_tenants_routes() {
    let collector = || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        fake_collector(listener, tx);
        (format!("http://127.0.0.1:{port}"), rx)
    };
    let (default_url, default_rx) = collector();
    let (acme_url, acme_rx) = collector();
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let globex_url = format!("http://127.0.0.1:{}", hung.local_addr().unwrap().port());
    let (hung_tx, hung_rx) = std::sync::mpsc::channel();
    hanging_collector(hung, hung_tx);

    let mut config = crate::config::Config::default();
    config.export.otlp.endpoint = Some(default_url);
    config.export.otlp.protocol = Some(Protocol::HttpProtobuf);
    config.metrics.otlp.interval_ms = Some(100);
    config.export.tenants = tenants(vec![
        (
            "acme",
            TenantRoute {
                headers: BTreeMap::from([("X-Scope-OrgID".into(), "${tenant}".into())]),
                ..route(&acme_url)
            },
        ),
        (
            "globex",
            TenantRoute {
                timeout_ms: Some(30_000),
                ..route(&globex_url)
            },
        ),
        // Spans only: initech's series stay on the default route.
        (
            "initech",
            TenantRoute {
                traces_endpoint: Some("http://127.0.0.1:9/v1/traces".into()),
                ..TenantRoute::default()
            },
        ),
    ]);
    let stats = Arc::new(Stats::default());
    let metrics = crate::metrics::Metrics::new(
        crate::metrics::store_options(&config.metrics),
        tenant_resource("sonde", None),
        Arc::clone(&stats),
    );
    {
        let mut store = metrics.recorder();
        for (i, (service, tenant)) in [
            ("shop-acme", Some("acme")),
            ("shop-globex", Some("globex")),
            ("shop-initech", Some("initech")),
            ("shop-none", None),
        ]
        .into_iter()
        .enumerate()
        {
            let end = crate::metrics::unix_now_ns();
            let mut span = item(&tenant_resource(service, tenant), "GET /", i as u8).span;
            span.start_unix_ns = end - 1_000_000;
            span.end_unix_ns = end;
            store.record(
                &tenant_resource(service, tenant),
                &span,
                &crate::capture::Endpoints::UNKNOWN,
            );
        }
    }
    let began = Instant::now();
    let tasks = crate::export::metrics::start(Arc::clone(&metrics), &config, None)
        .await
        .unwrap();
    hung_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("globex's export reached its collector");

    // The default route keeps exporting every interval while globex's
    // collector holds its request: three exports of the rest.
    let mut default_exports = 0;
    let mut default_services = std::collections::BTreeSet::new();
    while default_exports < 3 {
        let left = Duration::from_secs(5).saturating_sub(began.elapsed());
        let seen = default_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("default exports: {default_exports}"));
        assert_eq!(seen.request_line, "POST /v1/metrics HTTP/1.1");
        assert!(!seen.headers.contains_key("x-scope-orgid"));
        let resources = metric_resources(&seen.body);
        if resources
            .iter()
            .any(|(_, names)| names.iter().any(|n| n == "sonde.events.read"))
        {
            default_exports += 1;
        }
        default_services.extend(resources.into_iter().map(|(s, _)| s));
    }
    assert_eq!(
        default_services.into_iter().collect::<Vec<_>>(),
        ["shop-initech", "shop-none", "sonde"]
    );

    // acme's collector gets acme's series and nothing else.
    let seen = acme_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("an export of acme's series");
    assert_eq!(seen.request_line, "POST /v1/metrics HTTP/1.1");
    assert_eq!(
        seen.headers.get("x-scope-orgid").map(String::as_str),
        Some("acme")
    );
    let resources = metric_resources(&seen.body);
    assert_eq!(resources.len(), 2, "{resources:?}");
    assert_eq!(resources[0].0, "shop-acme");
    assert!(
        resources[0]
            .1
            .iter()
            .any(|n| n == "http.server.request.duration")
    );
    // The service graph edges its process is an end of, on the agent's
    // resource; the agent's health stays on the default route.
    assert_eq!(resources[1].0, "sonde", "{resources:?}");
    assert!(
        resources[1]
            .1
            .iter()
            .all(|n| n.starts_with("traces_service_graph")),
        "{resources:?}"
    );

    // Shutting down does not wait for globex's collector beyond the budget.
    let stopping = Instant::now();
    tasks.shutdown(Duration::from_millis(500)).await;
    assert!(
        stopping.elapsed() < Duration::from_millis(900),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(
        stats
            .routes
            .get("default")
            .metric_export_failed
            .load(Ordering::Relaxed),
        0
    );
}
