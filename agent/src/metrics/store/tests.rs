use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::capture::Endpoint;
use crate::config::MetricsConfig;
use crate::metrics::store_options;

const MS: u64 = 1_000_000;

fn resource(service: &str, instance: &str) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: service.into(),
        attributes: vec![
            ("service.name".into(), service.into()),
            ("service.instance.id".into(), instance.into()),
        ],
        ..Default::default()
    })
}

fn agent() -> Arc<Resource> {
    resource("sonde", "agent-1")
}

fn options(f: impl FnOnce(&mut MetricsConfig)) -> StoreOptions {
    let mut c = MetricsConfig::default();
    f(&mut c);
    store_options(&c)
}

fn no_endpoints() -> Endpoints {
    Endpoints {
        local: Endpoint::Unknown,
        peer: Endpoint::Unknown,
    }
}

struct SpanSpec<'a> {
    kind: SpanKind,
    route: &'a str,
    status: i64,
    dur_ns: u64,
    end_ns: u64,
    id: u8,
}

fn http(s: SpanSpec<'_>) -> Span {
    let failed = match s.kind {
        SpanKind::Server => s.status >= 500,
        SpanKind::Client => s.status >= 400,
    };
    let mut attributes = vec![
        ("http.request.method", AttrValue::from("GET")),
        ("http.response.status_code", AttrValue::Int(s.status)),
        ("url.path", s.route.into()),
        ("url.scheme", "http".into()),
        ("http.route", s.route.into()),
        ("network.protocol.name", "http".into()),
        ("network.protocol.version", "1.1".into()),
        ("server.address", "127.0.0.1".into()),
        ("server.port", AttrValue::Int(8080)),
        ("user_agent.original", "curl/8".into()),
    ];
    if failed {
        attributes.push(("error.type", s.status.to_string().into()));
    }
    Span {
        trace_id: [s.id; 16],
        span_id: [s.id; 8],
        parent_span_id: None,
        name: format!("GET {}", s.route),
        kind: s.kind,
        start_unix_ns: s.end_ns - s.dur_ns,
        end_unix_ns: s.end_ns,
        attributes,
        status: if failed {
            SpanStatus::Error {
                description: String::new(),
            }
        } else {
            SpanStatus::Unset
        },
        pid: 1,
        endpoints: crate::capture::Endpoints::UNKNOWN,
        tenant: None,
        tenant_headers: Default::default(),
        rest: Default::default(),
    }
}

fn server(route: &str, status: i64, dur_ms: u64, end_ms: u64) -> Span {
    http(SpanSpec {
        kind: SpanKind::Server,
        route,
        status,
        dur_ns: dur_ms * MS,
        end_ns: end_ms * MS,
        id: end_ms as u8,
    })
}

fn client(route: &str, status: i64, dur_ms: u64, end_ms: u64) -> Span {
    http(SpanSpec {
        kind: SpanKind::Client,
        route,
        status,
        dur_ns: dur_ms * MS,
        end_ns: end_ms * MS,
        id: end_ms as u8,
    })
}

fn points<'a>(snap: &'a Snapshot, service: &str, metric: &str) -> Vec<&'a Point> {
    snap.resources
        .iter()
        .filter(|r| r.resource.service_name == service)
        .flat_map(|r| &r.metrics)
        .filter(|m| m.name == metric)
        .flat_map(|m| &m.points)
        .collect()
}

fn hist(p: &Point) -> &Explicit {
    match &p.value {
        PointValue::Explicit { hist, .. } => hist,
        other => panic!("not an explicit histogram: {other:?}"),
    }
}

fn str_attr<'a>(p: &'a Point, key: &str) -> Option<&'a str> {
    point_attr(p, key).and_then(OwnedVal::as_str)
}

#[test]
fn one_series_per_attribute_set_and_resource() {
    let mut store = Store::new(options(|_| {}), agent());
    let shop = resource("shop", "i-1");
    let cart = resource("cart", "i-2");
    let e = no_endpoints();
    store.record(&shop, &server("/a", 200, 3, 100), &e);
    store.record(&shop, &server("/a", 200, 5, 101), &e);
    store.record(&shop, &server("/a", 500, 5, 102), &e);
    store.record(&shop, &server("/b", 200, 5, 103), &e);
    store.record(&cart, &server("/a", 200, 5, 104), &e);
    // The same process, with a resource the enrich stage built again.
    let shop_again = resource("shop", "i-1");
    store.record(&shop_again, &server("/a", 200, 7, 105), &e);

    let snap = store.snapshot(1000 * MS, Temporality::Cumulative);
    let shop_points = points(&snap, "shop", "http.server.request.duration");
    assert_eq!(shop_points.len(), 3, "{shop_points:#?}");
    let a200 = shop_points
        .iter()
        .find(|p| {
            str_attr(p, "http.route") == Some("/a")
                && point_attr(p, "http.response.status_code") == Some(&OwnedVal::Int(200))
        })
        .unwrap();
    assert_eq!(hist(a200).count, 3);
    assert_eq!(hist(a200).sum, 15 * u128::from(MS));
    // The attributes kept are the metric's, in its order; span-only ones are not.
    let keys: Vec<&str> = a200.attrs.iter().map(|(k, _)| k.name()).collect();
    assert_eq!(
        keys,
        vec![
            "http.request.method",
            "http.route",
            "http.response.status_code",
            "url.scheme",
            "network.protocol.name",
            "network.protocol.version"
        ]
    );
    let a500 = shop_points
        .iter()
        .find(|p| point_attr(p, "http.response.status_code") == Some(&OwnedVal::Int(500)))
        .unwrap();
    assert_eq!(str_attr(a500, "error.type"), Some("500"));
    assert_eq!(
        points(&snap, "cart", "http.server.request.duration").len(),
        1
    );
    // The agent's resource is always listed first.
    assert_eq!(snap.resources[0].resource.service_name, "sonde");
}

#[test]
fn bucket_of_a_duration_on_a_boundary() {
    let mut store = Store::new(options(|_| {}), agent());
    let shop = resource("shop", "i-1");
    // 5 ms is exactly the first boundary (0.005 s); 5 ms + 1 ns is past it.
    let mut on = server("/a", 200, 5, 100);
    let mut past = server("/a", 200, 5, 101);
    past.start_unix_ns -= 1;
    on.start_unix_ns = on.end_unix_ns - 5 * MS;
    store.record(&shop, &on, &no_endpoints());
    store.record(&shop, &past, &no_endpoints());
    let snap = store.snapshot(1000 * MS, Temporality::Cumulative);
    let p = points(&snap, "shop", "http.server.request.duration")[0];
    assert_eq!(&hist(p).counts[..3], &[1, 1, 0]);
}

#[test]
fn overflow_folds_new_sets_into_one_marked_series() {
    let mut store = Store::new(options(|c| c.max_series_per_metric = 3), agent());
    let shop = resource("shop", "i-1");
    let e = no_endpoints();
    for (i, route) in ["/a", "/b", "/c", "/d", "/e", "/a", "/d"]
        .iter()
        .enumerate()
    {
        store.record(&shop, &server(route, 200, 1, 100 + i as u64), &e);
    }
    let snap = store.snapshot(1000 * MS, Temporality::Cumulative);
    let ps = points(&snap, "shop", "http.server.request.duration");
    assert_eq!(ps.len(), 4, "{ps:#?}");
    let overflow: Vec<_> = ps
        .iter()
        .filter(|p| point_attr(p, "otel.metric.overflow") == Some(&OwnedVal::Bool(true)))
        .collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(
        overflow[0].attrs.len(),
        1,
        "the overflow series has no other attribute"
    );
    // /d and /e twice in all went to the overflow series; /a kept its own.
    assert_eq!(hist(overflow[0]).count, 3);
    let a = ps
        .iter()
        .find(|p| str_attr(p, "http.route") == Some("/a"))
        .unwrap();
    assert_eq!(hist(a).count, 2);
    let (_, series, folded) = store
        .series_counts()
        .into_iter()
        .find(|(n, _, _)| *n == "http.server.request.duration")
        .unwrap();
    assert_eq!((series, folded), (4, 3));
    // Another process overflows into its own series.
    let cart = resource("cart", "i-2");
    store.record(&cart, &server("/z", 200, 1, 200), &e);
    let snap = store.snapshot(1000 * MS, Temporality::Cumulative);
    let cart_points = points(&snap, "cart", "http.server.request.duration");
    assert_eq!(cart_points.len(), 1);
    assert_eq!(
        point_attr(cart_points[0], "otel.metric.overflow"),
        Some(&OwnedVal::Bool(true))
    );
}

#[test]
fn exemplars_keep_the_latest_span_of_each_bucket_and_hold_errors() {
    let mut store = Store::new(options(|_| {}), agent());
    let shop = resource("shop", "i-1");
    let e = no_endpoints();
    let spec = |id: u8, status: i64, dur_ms: u64, end_ms: u64| SpanSpec {
        kind: SpanKind::Server,
        route: "/a",
        status,
        dur_ns: dur_ms * MS,
        end_ns: end_ms * MS,
        id,
    };
    // Bucket (0.1, 0.25]: 1, then 2 (newer) replaces it.
    store.record(&shop, &http(spec(1, 200, 200, 1_000)), &e);
    store.record(&shop, &http(spec(2, 200, 210, 2_000)), &e);
    // Bucket (0, 0.005]: a failed span (3) is kept against a newer success (4)...
    let mut failed = http(spec(3, 200, 1, 3_000));
    failed.status = SpanStatus::Error {
        description: String::new(),
    };
    store.record(&shop, &failed, &e);
    store.record(&shop, &http(spec(4, 200, 1, 4_000)), &e);
    let snap = store.snapshot(20_000 * MS, Temporality::Cumulative);
    let ex = |snap: &Snapshot| {
        let mut v: Vec<(u8, bool)> = points(snap, "shop", "http.server.request.duration")
            .iter()
            .flat_map(|p| p.exemplars.iter().map(|e| (e.trace_id[0], e.failed)))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ex(&snap), vec![(2, false), (3, true)]);
    // ...until it is older than the hold time (10 s).
    store.record(&shop, &http(spec(5, 200, 1, 14_000)), &e);
    let snap = store.snapshot(20_000 * MS, Temporality::Cumulative);
    assert_eq!(ex(&snap), vec![(2, false), (5, false)]);
    let p = points(&snap, "shop", "http.server.request.duration")[0];
    let e5 = p.exemplars.iter().find(|e| e.trace_id[0] == 5).unwrap();
    assert_eq!((e5.raw, e5.time_ns, e5.span_id), (MS, 14_000 * MS, [5; 8]));

    // Off: none at all.
    let mut store = Store::new(options(|c| c.exemplars = false), agent());
    store.record(&shop, &http(spec(1, 200, 1, 1_000)), &no_endpoints());
    let snap = store.snapshot(20_000 * MS, Temporality::Cumulative);
    assert!(
        points(&snap, "shop", "http.server.request.duration")[0]
            .exemplars
            .is_empty()
    );
}

#[test]
fn body_sizes_when_known() {
    let mut store = Store::new(options(|_| {}), agent());
    let shop = resource("shop", "i-1");
    let mut s = server("/a", 200, 1, 100);
    s.attributes
        .push(("http.response.body.size", AttrValue::Int(300)));
    store.record(&shop, &s, &no_endpoints());
    store.record(&shop, &server("/a", 200, 1, 101), &no_endpoints());
    let snap = store.snapshot(1000 * MS, Temporality::Cumulative);
    let resp = points(&snap, "shop", "http.server.response.body.size");
    assert_eq!(resp.len(), 1);
    let h = hist(resp[0]);
    assert_eq!((h.count, h.sum), (1, 300));
    // 300 B is in (256, 1024].
    assert_eq!(h.counts[4], 1);
    assert!(points(&snap, "shop", "http.server.request.body.size").is_empty());
    assert_eq!(str_attr(resp[0], "http.route"), Some("/a"));
}

#[test]
fn rpc_and_database_spans_feed_their_metrics() {
    let mut store = Store::new(options(|_| {}), agent());
    let app = resource("app", "i-1");
    let base = server("/x", 200, 2, 100);
    let mut grpc = base.clone();
    grpc.kind = SpanKind::Client;
    grpc.attributes = vec![
        ("http.request.method", "POST".into()),
        ("rpc.system", "grpc".into()),
        ("rpc.service", "shop.Cart".into()),
        ("rpc.method", "Add".into()),
        ("rpc.grpc.status_code", AttrValue::Int(0)),
        ("server.address", "cart".into()),
        ("server.port", AttrValue::Int(50051)),
    ];
    let mut redis = base.clone();
    redis.kind = SpanKind::Client;
    redis.attributes = vec![
        ("db.system.name", "redis".into()),
        ("db.operation.name", "GET".into()),
        ("db.namespace", "0".into()),
        ("db.query.text", "GET ?".into()),
        ("server.address", "127.0.0.1".into()),
        ("server.port", AttrValue::Int(6379)),
    ];
    let mut redis_server = redis.clone();
    redis_server.kind = SpanKind::Server;
    let mut other = base.clone();
    other.attributes.clear();
    for s in [&grpc, &redis, &redis_server, &other] {
        store.record(&app, s, &no_endpoints());
    }
    let snap = store.snapshot(1000 * MS, Temporality::Cumulative);
    let rpc = points(&snap, "app", "rpc.client.duration");
    assert_eq!(rpc.len(), 1);
    assert_eq!(str_attr(rpc[0], "rpc.method"), Some("Add"));
    assert_eq!(
        point_attr(rpc[0], "server.port"),
        Some(&OwnedVal::Int(50051))
    );
    assert!(points(&snap, "app", "http.client.request.duration").is_empty());
    let db = points(&snap, "app", "db.client.operation.duration");
    assert_eq!(db.len(), 1);
    assert_eq!(str_attr(db[0], "db.operation.name"), Some("GET"));
    assert!(point_attr(db[0], "db.query.text").is_none());
    let dbs = points(&snap, "app", "db.server.operation.duration");
    assert_eq!(dbs.len(), 1);
    assert!(point_attr(dbs[0], "server.address").is_none());
    assert_eq!(
        points(&snap, "app", "http.server.request.duration").len(),
        0
    );
}

fn ip(a: [u8; 4], port: u16) -> Endpoint {
    Endpoint::Ip(IpAddr::V4(Ipv4Addr::from(a)), port)
}

/// The point of `traces_service_graph_{metric}` for one edge.
fn graph_point<'a>(
    snap: &'a Snapshot,
    metric: &str,
    client: &str,
    server: &str,
) -> Option<&'a Point> {
    points(snap, "sonde", &format!("traces_service_graph_{metric}"))
        .into_iter()
        .find(|p| str_attr(p, "client") == Some(client) && str_attr(p, "server") == Some(server))
}

/// One loopback connection as its client (port 40000) and its server
/// (port 8080) see it.
fn loopback_views() -> (Endpoints, Endpoints) {
    let (client, server) = (ip([127, 0, 0, 1], 40000), ip([127, 0, 0, 1], 8080));
    (
        Endpoints {
            local: client,
            peer: server,
        },
        Endpoints {
            local: server,
            peer: client,
        },
    )
}

fn sum(p: &Point) -> f64 {
    match p.value {
        PointValue::Sum(v) => v,
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn service_graph_pairs_both_ends_on_this_node() {
    let mut store = Store::new(options(|_| {}), agent());
    let curl = resource("curl", "c-1");
    let nginx = resource("nginx", "n-1");
    let (client_view, server_view) = loopback_views();
    for i in 0..3u64 {
        let status = if i == 2 { 404 } else { 200 };
        let srv = http(SpanSpec {
            kind: SpanKind::Server,
            route: "/a",
            status,
            dur_ns: 2 * MS,
            end_ns: (100 + 10 * i) * MS,
            id: 10 + i as u8,
        });
        let cli = http(SpanSpec {
            kind: SpanKind::Client,
            route: "/a",
            status,
            dur_ns: 3 * MS,
            end_ns: (101 + 10 * i) * MS,
            id: 20 + i as u8,
        });
        store.record(&nginx, &srv, &server_view);
        store.record(&curl, &cli, &client_view);
    }
    let snap = store.snapshot(200 * MS, Temporality::Cumulative);
    let total = graph_point(&snap, "request_total", "curl", "nginx").unwrap();
    assert_eq!(sum(total), 3.0);
    assert!(point_attr(total, "connection_type").is_none());
    // The 404 is an error for the client: the edge failed.
    let failed = graph_point(&snap, "request_failed_total", "curl", "nginx").unwrap();
    assert_eq!(sum(failed), 1.0);
    let srv = graph_point(&snap, "request_server_seconds", "curl", "nginx").unwrap();
    let cli = graph_point(&snap, "request_client_seconds", "curl", "nginx").unwrap();
    assert_eq!((hist(srv).count, hist(srv).sum), (3, 6 * u128::from(MS)));
    assert_eq!((hist(cli).count, hist(cli).sum), (3, 9 * u128::from(MS)));
    assert_eq!(cli.exemplars[0].trace_id[0], 22);
    assert_eq!(store.graph_counts(), Some((0, 0, 0, 0)));
}

#[test]
fn service_graph_names_the_unseen_side_by_address() {
    let mut store = Store::new(options(|c| c.service_graph.wait_ms = 1000), agent());
    let curl = resource("curl", "c-1");
    let nginx = resource("nginx", "n-1");
    // A client on loopback: its server may be on this node, so it waits.
    let cli = http(SpanSpec {
        kind: SpanKind::Client,
        route: "/a",
        status: 200,
        dur_ns: 3 * MS,
        end_ns: 100 * MS,
        id: 1,
    });
    store.record(
        &curl,
        &cli,
        &Endpoints {
            local: ip([127, 0, 0, 1], 40000),
            peer: ip([127, 0, 0, 1], 8080),
        },
    );
    // A server whose client is at an address never seen on this node:
    // counted at once.
    let srv = http(SpanSpec {
        kind: SpanKind::Server,
        route: "/a",
        status: 503,
        dur_ns: 2 * MS,
        end_ns: 100 * MS,
        id: 2,
    });
    store.record(
        &nginx,
        &srv,
        &Endpoints {
            local: ip([10, 0, 0, 1], 80),
            peer: ip([192, 168, 1, 7], 51000),
        },
    );
    let snap = store.snapshot(500 * MS, Temporality::Cumulative);
    let from_client = graph_point(&snap, "request_total", "192.168.1.7", "nginx").unwrap();
    assert_eq!(sum(from_client), 1.0);
    assert_eq!(
        str_attr(from_client, "connection_type"),
        Some("virtual_node")
    );
    let failed = graph_point(&snap, "request_failed_total", "192.168.1.7", "nginx");
    assert_eq!(failed.map(sum), Some(1.0));
    assert!(graph_point(&snap, "request_total", "curl", "127.0.0.1:8080").is_none());
    // After the wait, the client is counted alone, its server named by
    // the address it used.
    store.expire(1200 * MS);
    let snap = store.snapshot(1200 * MS, Temporality::Cumulative);
    let to_server = graph_point(&snap, "request_total", "curl", "127.0.0.1:8080").unwrap();
    assert_eq!(sum(to_server), 1.0);
    assert_eq!(str_attr(to_server, "connection_type"), Some("virtual_node"));
    assert!(graph_point(&snap, "request_server_seconds", "curl", "127.0.0.1:8080").is_none());
    assert_eq!(store.graph_counts(), Some((0, 1, 1, 0)));
}

#[test]
fn delta_snapshots_report_changes_only() {
    let mut store = Store::new(options(|_| {}), agent());
    let shop = resource("shop", "i-1");
    let e = no_endpoints();
    store.record(&shop, &server("/a", 200, 1, 100), &e);
    store.record(&shop, &server("/b", 200, 1, 100), &e);
    let d1 = store.snapshot(1000 * MS, Temporality::Delta);
    assert_eq!(points(&d1, "shop", "http.server.request.duration").len(), 2);
    store.record(&shop, &server("/a", 200, 300, 1500), &e);
    let d2 = store.snapshot(2000 * MS, Temporality::Delta);
    let ps = points(&d2, "shop", "http.server.request.duration");
    assert_eq!(ps.len(), 1, "the idle series is left out");
    assert_eq!(hist(ps[0]).count, 1);
    assert_eq!(hist(ps[0]).sum, 300 * u128::from(MS));
    assert_eq!(ps[0].start_ns, 1000 * MS);
    assert_eq!(ps[0].exemplars.len(), 1);
    // Cumulative snapshots in between do not disturb the deltas.
    let c = store.snapshot(2100 * MS, Temporality::Cumulative);
    let a = points(&c, "shop", "http.server.request.duration")
        .into_iter()
        .find(|p| str_attr(p, "http.route") == Some("/a"))
        .unwrap();
    assert_eq!(hist(a).count, 2);
    let d3 = store.snapshot(3000 * MS, Temporality::Delta);
    assert!(points(&d3, "shop", "http.server.request.duration").is_empty());
}

#[test]
fn exponential_histograms_when_asked() {
    let mut store = Store::new(
        options(|c| c.histogram = crate::config::Histogram::Exponential),
        agent(),
    );
    let shop = resource("shop", "i-1");
    for (i, ms) in [1u64, 2, 4, 100, 1000].iter().enumerate() {
        store.record(
            &shop,
            &server("/a", 200, *ms, 2000 + i as u64),
            &no_endpoints(),
        );
    }
    let snap = store.snapshot(5000 * MS, Temporality::Cumulative);
    let p = points(&snap, "shop", "http.server.request.duration")[0];
    let PointValue::Exponential(h) = &p.value else {
        panic!("{p:?}")
    };
    assert_eq!(h.count, 5);
    assert!(h.counts.len() <= 160);
    assert_eq!(h.counts.iter().sum::<u64>(), 5);
    assert!(!p.exemplars.is_empty());
}

#[test]
fn idle_series_and_their_resources_are_forgotten() {
    let mut store = Store::new(options(|c| c.idle_series_secs = 60), agent());
    let shop = resource("shop", "i-1");
    let cart = resource("cart", "i-2");
    store.record(&shop, &server("/a", 200, 1, 1_000), &no_endpoints());
    store.record(&cart, &server("/a", 200, 1, 50_000), &no_endpoints());
    store.evict_idle(70_000 * MS);
    let snap = store.snapshot(70_000 * MS, Temporality::Cumulative);
    assert!(points(&snap, "shop", "http.server.request.duration").is_empty());
    assert_eq!(
        points(&snap, "cart", "http.server.request.duration").len(),
        1
    );
    assert!(
        snap.resources
            .iter()
            .all(|r| r.resource.service_name != "shop")
    );
    // It comes back as a new series.
    store.record(&shop, &server("/a", 200, 1, 71_000), &no_endpoints());
    store.record(&cart, &server("/a", 200, 1, 71_000), &no_endpoints());
    let snap = store.snapshot(72_000 * MS, Temporality::Cumulative);
    let p = points(&snap, "shop", "http.server.request.duration")[0];
    assert_eq!(hist(p).count, 1);
    assert_eq!(p.start_ns, 71_000 * MS);
    let c = points(&snap, "cart", "http.server.request.duration")[0];
    assert_eq!(hist(c).count, 2);
}

#[test]
fn a_size_series_never_takes_the_overflow_attributes() {
    let mut store = Store::new(options(|c| c.max_series_per_metric = 1), agent());
    let shop = resource("shop", "i-1");
    store.record(&shop, &server("/a", 200, 1, 100), &no_endpoints());
    // The duration metric is full: /b goes to its overflow series, but the
    // size metric still has room and keeps /b's own attributes.
    let mut b = server("/b", 200, 1, 101);
    b.attributes
        .push(("http.response.body.size", AttrValue::Int(10)));
    store.record(&shop, &b, &no_endpoints());
    let snap = store.snapshot(1000 * MS, Temporality::Cumulative);
    let sizes = points(&snap, "shop", "http.server.response.body.size");
    assert_eq!(sizes.len(), 1);
    assert_eq!(str_attr(sizes[0], "http.route"), Some("/b"));
    assert!(point_attr(sizes[0], "otel.metric.overflow").is_none());
    let durations = points(&snap, "shop", "http.server.request.duration");
    assert_eq!(durations.len(), 2);
}

#[test]
fn edges_after_eviction_name_the_new_process() {
    let mut store = Store::new(options(|c| c.idle_series_secs = 60), agent());
    let remote = Endpoints {
        local: ip([10, 0, 0, 1], 80),
        peer: ip([192, 168, 1, 7], 51000),
    };
    let old = resource("old", "o-1");
    store.record(&old, &server("/a", 200, 1, 1_000), &remote);
    store.record(&old, &server("/a", 200, 1, 2_000), &remote);
    store.evict_idle(100_000 * MS);
    // A new process takes the freed slot; its edges carry its own name.
    let new = resource("new", "n-1");
    store.record(&new, &server("/a", 200, 1, 101_000), &remote);
    let snap = store.snapshot(102_000 * MS, Temporality::Cumulative);
    let p = graph_point(&snap, "request_total", "192.168.1.7", "new").unwrap();
    assert_eq!(sum(p), 1.0);
    assert!(graph_point(&snap, "request_total", "192.168.1.7", "old").is_none());
    // A known edge keeps counting into the same series.
    store.record(&new, &server("/a", 200, 1, 101_500), &remote);
    let snap = store.snapshot(102_000 * MS, Temporality::Cumulative);
    let p = graph_point(&snap, "request_total", "192.168.1.7", "new").unwrap();
    assert_eq!(sum(p), 2.0);
    let s = graph_point(&snap, "request_server_seconds", "192.168.1.7", "new").unwrap();
    assert_eq!(hist(s).count, 2);
}

#[test]
fn size_series_stay_right_when_eviction_moves_series() {
    let mut store = Store::new(options(|c| c.idle_series_secs = 60), agent());
    let shop = resource("shop", "i-1");
    let sized = |route: &str, size: i64, end_ms: u64| {
        let mut s = server(route, 200, 1, end_ms);
        s.attributes
            .push(("http.response.body.size", AttrValue::Int(size)));
        s
    };
    store.record(&shop, &sized("/a", 1, 1_000), &no_endpoints());
    store.record(&shop, &sized("/b", 20, 50_000), &no_endpoints());
    store.record(&shop, &sized("/c", 300, 50_000), &no_endpoints());
    // /a goes: /b and /c move down one place in both metrics.
    store.evict_idle(70_000 * MS);
    store.record(&shop, &sized("/b", 20, 71_000), &no_endpoints());
    store.record(&shop, &sized("/c", 300, 71_000), &no_endpoints());
    store.record(&shop, &sized("/a", 1, 71_000), &no_endpoints());
    let snap = store.snapshot(72_000 * MS, Temporality::Cumulative);
    let sizes = points(&snap, "shop", "http.server.response.body.size");
    let by_route = |route: &str| {
        let p = sizes
            .iter()
            .find(|p| str_attr(p, "http.route") == Some(route))
            .unwrap_or_else(|| panic!("no size series for {route}"));
        (hist(p).count, hist(p).sum)
    };
    assert_eq!(by_route("/a"), (1, 1));
    assert_eq!(by_route("/b"), (2, 40));
    assert_eq!(by_route("/c"), (2, 600));
}

#[test]
fn spans_the_sampler_dropped_count_but_are_no_exemplars() {
    let mut store = Store::new(options(|_| {}), agent());
    let shop = resource("shop", "i-1");
    let remote = Endpoints {
        local: ip([10, 0, 0, 1], 80),
        peer: ip([192, 168, 1, 7], 51000),
    };
    let mut sized = server("/a", 200, 1, 1_000);
    sized
        .attributes
        .push(("http.response.body.size", AttrValue::Int(10)));
    store.record_sampled(&shop, &sized, &remote, false);
    store.record_sampled(&shop, &server("/a", 200, 1, 2_000), &remote, false);
    let snap = store.snapshot(20_000 * MS, Temporality::Cumulative);
    let duration = points(&snap, "shop", "http.server.request.duration")[0];
    assert_eq!(hist(duration).count, 2);
    assert!(duration.exemplars.is_empty(), "{:?}", duration.exemplars);
    let size = points(&snap, "shop", "http.server.response.body.size")[0];
    assert_eq!(hist(size).count, 1);
    assert!(size.exemplars.is_empty());
    let edge = "request_server_seconds";
    let graph = graph_point(&snap, edge, "192.168.1.7", "shop").unwrap();
    assert_eq!(hist(graph).count, 2);
    assert!(graph.exemplars.is_empty());

    // An exported one is.
    store.record_sampled(&shop, &server("/a", 200, 1, 3_000), &remote, true);
    let snap = store.snapshot(20_000 * MS, Temporality::Cumulative);
    let duration = points(&snap, "shop", "http.server.request.duration")[0];
    let ids: Vec<u8> = duration.exemplars.iter().map(|e| e.trace_id[0]).collect();
    assert_eq!(ids, [server("/a", 200, 1, 3_000).trace_id[0]]);
    let graph = graph_point(&snap, edge, "192.168.1.7", "shop").unwrap();
    assert_eq!(graph.exemplars.len(), 1);
}

fn of_tenant(service: &str, tenant: Option<&str>) -> Arc<Resource> {
    let mut r = Arc::unwrap_or_clone(resource(service, &format!("{service}-1")));
    r.tenant.tenant = tenant.map(Arc::from);
    Arc::new(r)
}

/// Every series carries its tenant: a request's own (a header rule's) over
/// its process's; a service graph edge carries each end's, and a tenant's
/// reading takes the edges it is an end of.
#[test]
fn series_carry_their_tenant_and_edges_both_ends() {
    let mut store = Store::new(options(|_| {}), agent());
    let gateway = of_tenant("gateway", Some("edge"));
    let billing = of_tenant("billing", Some("globex"));
    let plain = of_tenant("plain", None);
    let (client_view, server_view) = loopback_views();
    // The gateway serves a request of acme (by its header) and one of its
    // own tenant; billing calls it.
    for (i, header) in [Some("acme"), None].into_iter().enumerate() {
        let i = i as u64;
        let mut srv = server("/a", 200, 2, 100 + 10 * i);
        srv.tenant = header.map(crate::span::model::Text::from);
        store.record(&gateway, &srv, &server_view);
        store.record(&billing, &client("/a", 200, 3, 101 + 10 * i), &client_view);
    }
    store.record(&plain, &server("/p", 200, 1, 130), &no_endpoints());

    let snap = store.snapshot(200 * MS, Temporality::Cumulative);
    let mut tenants: Vec<Option<&str>> = points(&snap, "gateway", "http.server.request.duration")
        .iter()
        .map(|p| str_attr(p, "tenant.id"))
        .collect();
    tenants.sort();
    assert_eq!(tenants, [Some("acme"), Some("edge")]);
    let billing_points = points(&snap, "billing", "http.client.request.duration");
    assert_eq!(billing_points.len(), 1);
    assert_eq!(str_attr(billing_points[0], "tenant.id"), Some("globex"));
    let plain_points = points(&snap, "plain", "http.server.request.duration");
    assert_eq!(point_attr(plain_points[0], "tenant.id"), None);

    let edges: Vec<(Option<&str>, Option<&str>, f64)> =
        points(&snap, "sonde", "traces_service_graph_request_total")
            .iter()
            .filter(|p| str_attr(p, "client") == Some("billing"))
            .map(|p| {
                (
                    str_attr(p, "client_tenant.id"),
                    str_attr(p, "server_tenant.id"),
                    sum(p),
                )
            })
            .collect();
    assert_eq!(edges.len(), 2, "{edges:?}");
    assert!(
        edges.contains(&(Some("globex"), Some("acme"), 1.0)),
        "{edges:?}"
    );
    assert!(
        edges.contains(&(Some("globex"), Some("edge"), 1.0)),
        "{edges:?}"
    );

    // Readings by tenant: acme's has the gateway's acme series and the
    // edge into it, not the gateway's other series.
    let read = |store: &mut Store, filter: SeriesFilter| {
        let mut seen = Vec::new();
        for metric in 0..store.metric_count() {
            let (parts, _) = store.collect_part_of(
                &filter,
                metric,
                0,
                usize::MAX,
                200 * MS,
                Temporality::Cumulative,
            );
            for part in parts {
                for m in &part.metrics {
                    for p in &m.points {
                        let tenant = ["tenant.id", "client_tenant.id", "server_tenant.id"]
                            .map(|k| str_attr(p, k).unwrap_or("-").to_owned())
                            .join("/");
                        seen.push(format!(
                            "{} {} {tenant}",
                            part.resource.service_name, m.name
                        ));
                    }
                }
            }
        }
        seen.sort();
        seen
    };
    let acme = read(&mut store, SeriesFilter::Tenant(Arc::from("acme")));
    assert_eq!(
        acme,
        [
            "gateway http.server.request.duration acme/-/-",
            "sonde traces_service_graph_request_client_seconds -/globex/acme",
            "sonde traces_service_graph_request_server_seconds -/globex/acme",
            "sonde traces_service_graph_request_total -/globex/acme",
        ]
    );
    let globex = read(&mut store, SeriesFilter::Tenant(Arc::from("globex")));
    assert_eq!(globex.len(), 1 + 2 * 3, "{globex:#?}");
    let rest = read(
        &mut store,
        SeriesFilter::Except(Arc::new(["acme".to_owned(), "globex".to_owned()].into())),
    );
    // The default route: what is of no routed tenant, and the edge from
    // globex into the gateway's own tenant (an end not routed).
    assert_eq!(
        rest,
        [
            "gateway http.server.request.duration edge/-/-",
            "plain http.server.request.duration -/-/-",
            "sonde traces_service_graph_request_client_seconds -/globex/edge",
            "sonde traces_service_graph_request_server_seconds -/-/-",
            "sonde traces_service_graph_request_server_seconds -/globex/edge",
            "sonde traces_service_graph_request_total -/-/-",
            "sonde traces_service_graph_request_total -/globex/edge",
        ]
    );
    let resources: Vec<String> = store
        .resources_of(&SeriesFilter::Tenant(Arc::from("acme")))
        .iter()
        .map(|r| r.service_name.clone())
        .collect();
    assert_eq!(resources, ["sonde", "gateway"]);
}

/// An edge between two tenants' processes is read by both their routes,
/// each with its own delta: neither takes the other's share.
#[test]
fn both_routes_of_an_edge_get_whole_deltas() {
    let mut store = Store::new(options(|_| {}), agent());
    let caller = of_tenant("caller", Some("acme"));
    let callee = of_tenant("callee", Some("globex"));
    let (client_view, server_view) = loopback_views();
    let call = |store: &mut Store, i: u64| {
        store.record(&callee, &server("/a", 200, 2, 100 + 10 * i), &server_view);
        store.record(&caller, &client("/a", 200, 3, 101 + 10 * i), &client_view);
    };
    let total = |store: &mut Store, tenant: &str| -> f64 {
        let metric = MetricId::GraphRequests as usize;
        let (parts, _) = store.collect_part_of(
            &SeriesFilter::Tenant(Arc::from(tenant)),
            metric,
            0,
            usize::MAX,
            1000 * MS,
            Temporality::Delta,
        );
        parts
            .iter()
            .flat_map(|p| &p.metrics)
            .flat_map(|m| &m.points)
            .map(sum)
            .sum()
    };
    for i in 0..3 {
        call(&mut store, i);
    }
    assert_eq!(total(&mut store, "acme"), 3.0);
    assert_eq!(total(&mut store, "globex"), 3.0);
    assert_eq!(total(&mut store, "acme"), 0.0);
    call(&mut store, 3);
    assert_eq!(total(&mut store, "globex"), 1.0);
    assert_eq!(total(&mut store, "acme"), 1.0);
}

/// Tenants keep their numbers; past the bound a new tenant gets none, and
/// the ones numbered before keep theirs.
#[test]
fn tenant_numbers_are_stable_and_bounded() {
    let mut t = TenantNumbers::default();
    assert_eq!(t.number_of("acme"), Some(0));
    assert_eq!(t.number_of("globex"), Some(1));
    assert_eq!(t.number_of("acme"), Some(0), "not the last one given");
    assert_eq!(t.name(1), Some("globex"));
    assert_eq!(t.name(2), None);
    for i in 2..MAX_TENANTS {
        assert_eq!(t.number_of(&format!("t{i}")), Some(i as u32));
    }
    assert_eq!(t.number_of("one-too-many"), None);
    assert_eq!(t.refused, 1);
    assert_eq!(t.number_of("acme"), Some(0));
    assert_eq!(
        t.number_of(&format!("t{}", MAX_TENANTS - 1)),
        Some(MAX_TENANTS as u32 - 1)
    );
}
