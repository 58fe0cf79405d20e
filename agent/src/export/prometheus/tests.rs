use std::io::{Read, Write};

use super::server::{bind, serve};
use super::*;
use crate::capture::{Endpoint, Endpoints};
use crate::config::MetricsConfig;
use crate::export::testing;
use crate::metrics::store::Store;
use crate::metrics::store_options;
use crate::metrics::{Metrics, Temporality};
use crate::span::model::{Span, SpanKind};
use crate::stats::Stats;

const MS: u64 = 1_000_000;

fn resource(service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: service.into(),
        attributes: vec![
            ("service.name".into(), service.into()),
            ("service.instance.id".into(), format!("{service}-1").into()),
            ("process.pid".into(), AttrValue::Int(42)),
            ("host.name".into(), "node \"a\"".into()),
        ],
        ..Default::default()
    })
}

fn span(route: &str, status: i64, dur_ms: u64, kind: SpanKind, id: u8) -> Span {
    let end = 1_700_000_000_000 * MS;
    let mut s = testing::span(
        route,
        id,
        (end - dur_ms * MS, end),
        vec![
            ("http.request.method", "GET".into()),
            ("http.route", route.into()),
            ("http.response.status_code", AttrValue::Int(status)),
        ],
    );
    s.kind = kind;
    s
}

fn snapshot() -> Snapshot {
    let mut config = MetricsConfig::default();
    config.service_graph.wait_ms = 1;
    let mut store = Store::new(store_options(&config), resource("sonde"));
    let shop = resource("shop");
    let e = Endpoints {
        local: Endpoint::Unknown,
        peer: Endpoint::Unknown,
    };
    store.record(&shop, &span("/a", 200, 5, SpanKind::Server, 0xab), &e);
    store.record(&shop, &span("/a", 200, 300, SpanKind::Server, 0xcd), &e);
    store.record(&shop, &span("/q\"x\\y\nz", 200, 1, SpanKind::Server, 1), &e);
    store.snapshot(1_700_000_001_000 * MS, Temporality::Cumulative)
}

#[test]
fn text_format() {
    let text = render(&snapshot(), Format::Text);
    let has = |line: &str| {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in:\n{text}"
        );
    };
    has("# TYPE http_server_request_duration_seconds histogram");
    let labels = "service_name=\"shop\",service_instance_id=\"shop-1\",http_request_method=\"GET\",http_route=\"/a\",http_response_status_code=\"200\"";
    has(&format!(
        "http_server_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"
    ));
    has(&format!(
        "http_server_request_duration_seconds_bucket{{{labels},le=\"0.25\"}} 1"
    ));
    has(&format!(
        "http_server_request_duration_seconds_bucket{{{labels},le=\"0.5\"}} 2"
    ));
    has(&format!(
        "http_server_request_duration_seconds_bucket{{{labels},le=\"1.0\"}} 2"
    ));
    has(&format!(
        "http_server_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"
    ));
    has(&format!(
        "http_server_request_duration_seconds_count{{{labels}}} 2"
    ));
    has(&format!(
        "http_server_request_duration_seconds_sum{{{labels}}} 0.305"
    ));
    // Escaping in label values.
    assert!(text.contains("http_route=\"/q\\\"x\\\\y\\nz\""), "{text}");
    // The whole resource, once per process.
    assert!(
        text.contains("target_info{service_name=\"shop\",service_instance_id=\"shop-1\",process_pid=\"42\",host_name=\"node \\\"a\\\"\"} 1"),
        "{text}"
    );
    assert!(!text.contains(" # {"), "no exemplars in the text format");
    assert!(!text.contains("# EOF"));
    // Each family appears once, with its samples together.
    assert_eq!(
        text.matches("# TYPE http_server_request_duration_seconds ")
            .count(),
        1
    );
}

#[test]
fn openmetrics_format_with_exemplars() {
    let text = render(&snapshot(), Format::OpenMetrics);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# UNIT http_server_request_duration_seconds seconds\n"));
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_bucket{")
                && l.contains("http_route=\"/a\"")
                && l.contains("le=\"0.005\"")
        })
        .unwrap();
    assert_eq!(
        line.split_once(" # ").map(|x| x.1),
        Some(
            "{trace_id=\"abababababababababababababababab\",span_id=\"abababababababab\"} 0.005 1700000000.000000000"
        ),
        "{line}"
    );
    let slow = text
        .lines()
        .find(|l| l.contains("http_route=\"/a\"") && l.contains("le=\"0.5\""))
        .unwrap();
    assert!(
        slow.contains("trace_id=\"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd\""),
        "{slow}"
    );
    // Empty buckets carry none.
    let empty = text
        .lines()
        .find(|l| l.contains("http_route=\"/a\"") && l.contains("le=\"0.01\""))
        .unwrap();
    assert!(!empty.contains(" # "), "{empty}");
    assert!(text.contains("# TYPE target info\n"));
}

#[test]
fn counters_in_both_formats() {
    let mut config = MetricsConfig::default();
    config.service_graph.wait_ms = 1;
    let mut store = Store::new(store_options(&config), resource("sonde"));
    let e = Endpoints {
        local: Endpoint::Unix,
        peer: Endpoint::Unix,
    };
    store.record(
        &resource("shop"),
        &span("/a", 200, 1, SpanKind::Server, 1),
        &e,
    );
    let snap = store.snapshot(1_700_000_001_000 * MS, Temporality::Cumulative);
    let text = render(&snap, Format::Text);
    assert!(
        text.contains("# TYPE traces_service_graph_request_total counter\n"),
        "{text}"
    );
    assert!(text.contains(
        "traces_service_graph_request_total{service_name=\"sonde\",service_instance_id=\"sonde-1\",client=\"unix\",server=\"shop\",connection_type=\"virtual_node\"} 1\n"
    ), "{text}");
    let open = render(&snap, Format::OpenMetrics);
    assert!(
        open.contains("# TYPE traces_service_graph_request counter\n"),
        "{open}"
    );
    assert!(
        open.contains("traces_service_graph_request_total{"),
        "{open}"
    );
}

#[test]
fn accept_header_picks_the_format() {
    assert_eq!(
        Format::from_accept(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ),
        Format::OpenMetrics
    );
    assert_eq!(Format::from_accept("text/plain"), Format::Text);
    assert_eq!(Format::from_accept(""), Format::Text);
}

#[test]
fn le_values() {
    assert_eq!(le_text(0.005), "0.005");
    assert_eq!(le_text(1.0), "1.0");
    assert_eq!(le_text(16384.0), "16384.0");
    assert_eq!(le_text(f64::INFINITY), "+Inf");
}

/// A metric stage that has seen one 5 ms server span per (service, route,
/// id), ending now (or the idle-series sweep would take them away).
fn live_metrics(spans: &[(&str, &str, u8)], endpoint: Endpoint) -> Arc<Metrics> {
    let metrics = Metrics::new(
        store_options(&MetricsConfig::default()),
        resource("sonde"),
        Arc::new(Stats::default()),
    );
    let e = Endpoints {
        local: endpoint,
        peer: endpoint,
    };
    let mut store = metrics.recorder();
    for (service, route, id) in spans {
        let mut s = span(route, 200, 5, SpanKind::Server, *id);
        s.end_unix_ns = crate::metrics::unix_now_ns();
        s.start_unix_ns = s.end_unix_ns - 5 * MS;
        store.record(&resource(service), &s, &e);
    }
    drop(store);
    metrics
}

#[test]
fn serves_metrics_over_http() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let metrics = live_metrics(&[("shop", "/a", 7)], Endpoint::Unknown);
    let listener = runtime
        .block_on(bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(serve(listener, metrics));

    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    // Two requests on one connection: OpenMetrics, then the text format.
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
        .unwrap();
    let first = read_response(&mut conn);
    assert!(first.0.starts_with("HTTP/1.1 200 OK"), "{}", first.0);
    assert!(
        first
            .0
            .contains("Content-Type: application/openmetrics-text"),
        "{}",
        first.0
    );
    assert!(first.1.ends_with("# EOF\n"));
    assert!(
        first
            .1
            .contains("trace_id=\"07070707070707070707070707070707\"")
    );
    assert!(
        first.1.contains("sonde_events_read_total{"),
        "self-metrics are served"
    );
    assert!(first.1.contains("sonde_process_memory_rss_bytes{"));
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let second = read_response(&mut conn);
    assert!(
        second.0.contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        second.0
    );
    assert!(!second.1.contains("# EOF"));
    conn.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = read_head(&mut conn);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    conn.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    let (head, body) = read_response(&mut conn);
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    assert_eq!(body, "use GET\n");
    conn.write_all(b"GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = String::new();
    conn.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 404"), "{rest}");
    assert!(rest.ends_with("not found; try /metrics\n"), "{rest}");

    // HTTP/1.0: the page, up to the connection's end.
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.0 200 OK"), "{page}");
    assert!(page.contains("sonde_events_read_total{"), "{page}");

    // A request head over the limit.
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let long = format!(
        "GET /metrics HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let _ = conn.write_all(long.as_bytes());
    let mut rest = String::new();
    let _ = conn.read_to_string(&mut rest);
    assert!(rest.starts_with("HTTP/1.1 431"), "{rest}");
    runtime.shutdown_background();
}

/// Reads the head of one response.
fn read_head(conn: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads one response, with a Content-Length or chunked: (head, body).
fn read_response(conn: &mut std::net::TcpStream) -> (String, String) {
    let mut reader = std::io::BufReader::new(conn);
    let line = |r: &mut std::io::BufReader<&mut std::net::TcpStream>| {
        let mut l = String::new();
        std::io::BufRead::read_line(r, &mut l).unwrap();
        l
    };
    let mut head = String::new();
    loop {
        let l = line(&mut reader);
        head.push_str(&l);
        if l == "\r\n" {
            break;
        }
    }
    let mut body = Vec::new();
    if head.contains("Transfer-Encoding: chunked") {
        loop {
            let size = usize::from_str_radix(line(&mut reader).trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        body.resize(len, 0);
        reader.read_exact(&mut body).unwrap();
    }
    (head, String::from_utf8(body).unwrap())
}

#[test]
fn parts_render_the_same_lines_as_the_whole() {
    let routes: Vec<(&str, String, u8)> = (0..40u8)
        .map(|i| {
            (
                if i % 2 == 0 { "shop" } else { "cart" },
                format!("/r{i}"),
                i,
            )
        })
        .collect();
    let routes: Vec<(&str, &str, u8)> = routes
        .iter()
        .map(|(s, r, i)| (*s, r.as_str(), *i))
        .collect();
    let metrics = live_metrics(&routes, Endpoint::Unix);
    for format in [Format::Text, Format::OpenMetrics] {
        let whole = render(&metrics.snapshot(Temporality::Cumulative), format);
        let mut c = metrics.collect(Temporality::Cumulative);
        let mut r = Renderer::new(format);
        let mut pieces = String::new();
        let mut parts = 0;
        while let Some(part) = c.next_part(3) {
            r.part(&part, &mut pieces);
            parts += 1;
        }
        r.finish(&c.resources(), &mut pieces);
        assert!(parts > 10, "{parts}");
        let lines = |t: &str| {
            let mut v: Vec<String> = t
                .lines()
                .filter(|l| {
                    !l.starts_with("sonde_process")
                        && !l.contains("sonde_events")
                        && !l.starts_with("sonde_")
                })
                .map(str::to_string)
                .collect();
            v.sort();
            v
        };
        assert_eq!(lines(&pieces), lines(&whole));
        // Each family has one header.
        for l in pieces.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert_eq!(pieces.matches(&format!("{l}\n")).count(), 1, "{l}");
        }
    }
}

#[test]
fn serves_a_tenants_own_page() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let metrics = Metrics::new(
        store_options(&MetricsConfig::default()),
        resource("sonde"),
        Arc::new(Stats::default()),
    );
    let of_tenant = |service: &str, tenant: Option<&str>| {
        let mut r = (*resource(service)).clone();
        r.tenant.tenant = tenant.map(Arc::from);
        Arc::new(r)
    };
    {
        let mut store = metrics.recorder();
        for (i, (service, tenant)) in [
            ("shop-acme", Some("acme")),
            ("shop-team", Some("team a/b")),
            ("shop-none", None),
        ]
        .into_iter()
        .enumerate()
        {
            let mut s = span("/a", 200, 5, SpanKind::Server, i as u8 + 1);
            s.end_unix_ns = crate::metrics::unix_now_ns();
            s.start_unix_ns = s.end_unix_ns - 5 * MS;
            let e = Endpoints {
                local: Endpoint::Unknown,
                peer: Endpoint::Unknown,
            };
            store.record(&of_tenant(service, tenant), &s, &e);
        }
    }
    let listener = runtime
        .block_on(bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(serve(listener, metrics));
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let mut get = |path: &str| {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        read_response(&mut conn)
    };
    let services = |page: &str| {
        let mut found: Vec<String> = page
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
            .filter_map(|l| l.split("service_name=\"").nth(1)?.split('"').next())
            .map(str::to_owned)
            .collect();
        found.sort();
        found
    };
    let targets = |page: &str| {
        page.lines()
            .filter(|l| l.starts_with("target_info{"))
            .count()
    };

    let (head, all) = get("/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(services(&all), ["shop-acme", "shop-none", "shop-team"]);
    assert!(all.contains("sonde_events_read_total"));

    let (head, acme) = get("/metrics/acme");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(services(&acme), ["shop-acme"]);
    // Every series of acme says so.
    let series: Vec<&str> = acme
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("target_info"))
        .collect();
    assert!(
        series
            .iter()
            .any(|l| l.starts_with("http_server_request_duration_seconds_count{")),
        "{acme}"
    );
    assert!(
        series.iter().all(|l| l.contains("tenant_id=\"acme\"")),
        "{acme}"
    );
    // The agent's health is of no tenant; the service graph edges of acme's
    // processes are acme's, labelled at the end it is.
    assert!(!acme.contains("sonde_"), "{acme}");
    assert!(
        acme.contains("traces_service_graph_request_total{service_name=\"sonde\",service_instance_id=\"sonde-1\",client=\"unknown\",server=\"shop-acme\",connection_type=\"virtual_node\",server_tenant_id=\"acme\"} 1"),
        "{acme}"
    );
    assert_eq!(targets(&acme), 2, "{acme}");
    assert!(
        acme.contains("target_info{service_name=\"shop-acme\""),
        "{acme}"
    );

    let (_, team) = get("/metrics/team%20a%2Fb");
    assert_eq!(services(&team), ["shop-team"]);

    // A tenant with no series yet: an empty page, not an error.
    let (head, nobody) = get("/metrics/initech");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        services(&nobody).is_empty() && targets(&nobody) == 0,
        "{nobody}"
    );

    let (head, _) = get("/metrics/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = get("/metricsx");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    runtime.shutdown_background();
}
