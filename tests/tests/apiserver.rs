//! The local Kubernetes API server the agent's metadata tests run against
//! (`tests/k8s/apiserver.py`): its own Python tests, and the Rust handle
//! [`ApiServer`]. Needs only python3, not root.

use std::process::Command;

use serde_json::Value;
use sonde_tests::apiserver::{
    ApiServer, ApiServerConfig, container_id, job, namespace, pod, replicaset, uid_for,
};
use sonde_tests::util::{python_bin, workspace_root};

fn must<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// `python3 -m unittest test_apiserver`, run in tests/k8s (the same as
/// `python3 -m unittest tests/k8s/test_apiserver.py` from the workspace,
/// without depending on how `tests` resolves as a Python package).
#[test]
fn python_tests_of_the_server_pass() {
    let dir = workspace_root().join("tests/k8s");
    let out = Command::new(python_bin())
        .args(["-m", "unittest", "-v", "test_apiserver"])
        .current_dir(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("cannot run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the API server's Python tests failed ({}):\n{stderr}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    // unittest says "Ran N tests" and "OK": make sure some ran.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("Ran ") && !l.starts_with("Ran 0 ")),
        "no Python test ran:\n{stderr}"
    );
}

fn items(list: &Value) -> &[Value] {
    list["items"].as_array().map_or(&[], Vec::as_slice)
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

#[test]
fn handle_applies_lists_and_restarts_with_state() {
    let mut api = must(ApiServer::start_with(ApiServerConfig {
        bookmark_interval: std::time::Duration::from_millis(200),
        ..ApiServerConfig::default()
    }));
    assert!(api.url().starts_with("http://127.0.0.1:"));
    let version = must(api.get_json("/version"));
    assert_eq!(version["major"], "1");

    let rs_uid = uid_for("rs/shop/web-6d4cf56db6");
    let web = pod(
        "shop",
        "web-6d4cf56db6-abcde",
        &uid_for("pod/web"),
        "node-a",
        &[("app", "web"), ("pod-template-hash", "6d4cf56db6")],
        &[("prometheus.io/scrape", "true")],
        Some(("ReplicaSet", "web-6d4cf56db6", rs_uid.as_str())),
        &[
            ("web", container_id("web").as_str()),
            ("sidecar", container_id("sidecar").as_str()),
        ],
    );
    let other = pod(
        "shop",
        "db-0",
        &uid_for("pod/db"),
        "node-b",
        &[("app", "db")],
        &[],
        None,
        &[("db", container_id("db").as_str())],
    );
    let stored = must(api.apply(&web));
    must(api.apply(&other));
    let rv_after = must(api.bulk(&[
        namespace("shop", &[("team", "payments")]),
        replicaset("shop", "web-6d4cf56db6", &rs_uid, Some("web")),
        job(
            "shop",
            "report-28870560",
            &uid_for("job/report"),
            Some("report"),
        ),
    ]));
    assert_eq!(must(api.resource_version()), rv_after);
    let web_rv = stored["metadata"]["resourceVersion"].clone();
    assert!(web_rv.is_string(), "{stored}");
    assert!(stored["metadata"]["managedFields"].is_array());
    assert_eq!(stored["metadata"]["uid"], uid_for("pod/web"));

    // A node's pods, as the agent lists them.
    let path = "/api/v1/pods?&fieldSelector=spec.nodeName%3Dnode-a&limit=500";
    let list = must(api.get_json(path));
    assert_eq!(list["kind"], "PodList");
    let got = items(&list);
    assert_eq!(got.len(), 1, "{list}");
    assert_eq!(name_of(&got[0]), "web-6d4cf56db6-abcde");
    assert!(got[0].get("kind").is_none(), "list items carry no kind");
    let cid = got[0]["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or_default();
    let hex = cid.strip_prefix("containerd://").unwrap_or_default();
    assert_eq!(hex.len(), 64, "{cid}");
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{cid}");
    assert_eq!(
        got[0]["metadata"]["ownerReferences"][0]["kind"],
        "ReplicaSet"
    );
    let list_rv = list["metadata"]["resourceVersion"].clone();
    let rs = must(api.get_json("/apis/apps/v1/namespaces/shop/replicasets/web-6d4cf56db6"));
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    let j = must(api.get_json("/apis/batch/v1/namespaces/shop/jobs/report-28870560"));
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let ns = must(api.get_json("/api/v1/namespaces/shop"));
    assert_eq!(ns["metadata"]["labels"]["team"], "payments");
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "shop"
    );
    let missing = must(api.request("GET", "/api/v1/namespaces/shop/pods/nope", None));
    assert_eq!(missing.status, 404);
    assert_eq!(must(missing.json())["reason"], "NotFound");

    let stats = must(api.stats());
    assert_eq!(stats["requests_by_resource"]["pods"]["list"], 1);
    assert_eq!(stats["watches_open"], 0);
    assert!(
        stats["log"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["user_agent"] == "sonde-tests"))
    );

    // Same port, same objects, same resourceVersion after a crash.
    let port = api.port();
    let pid = api.pid();
    must(api.restart());
    assert_eq!(api.port(), port);
    assert_ne!(api.pid(), pid);
    let again = must(api.get_json("/api/v1/namespaces/shop/pods/web-6d4cf56db6-abcde"));
    assert_eq!(again["metadata"]["resourceVersion"], web_rv);
    assert_eq!(again["metadata"]["uid"], stored["metadata"]["uid"]);
    let list2 = must(api.get_json(path));
    assert_eq!(list2["metadata"]["resourceVersion"], list_rv);
    assert_eq!(items(&list2).len(), 1);
    assert_eq!(must(api.resource_version()), rv_after);
    assert_eq!(must(api.stats())["requests"]["list"], 1, "a new process");

    // Changes go on from the same counter; a deleted pod is gone.
    let gone = must(api.delete("Pod", "shop", "web-6d4cf56db6-abcde"));
    assert_eq!(
        gone["metadata"]["resourceVersion"],
        (rv_after + 1).to_string()
    );
    assert!(items(&must(api.get_json(path))).is_empty());

    // A compaction makes old resourceVersions expire.
    let old_rv = web_rv.as_str().unwrap_or_default().to_string();
    must(api.compact());
    let expired = must(api.request(
        "GET",
        &format!("/api/v1/pods?resourceVersion={old_rv}&resourceVersionMatch=Exact"),
        None,
    ));
    assert_eq!(expired.status, 410);
    let watch = must(api.request(
        "GET",
        &format!("/api/v1/pods?watch=true&resourceVersion={old_rv}"),
        None,
    ));
    assert_eq!(watch.status, 200);
    assert_eq!(watch.header("Transfer-Encoding"), Some("chunked"));
    let event: Value = must(watch.json());
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);

    // A short watch ends cleanly at its timeout, a bookmark on the way.
    let rv = must(api.resource_version());
    let w = must(api.request(
        "GET",
        &format!(
            "/api/v1/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={rv}"
        ),
        None,
    ));
    let body = String::from_utf8_lossy(&w.body).to_string();
    assert!(body.contains("\"BOOKMARK\""), "{body}");

    api.stop();
    assert!(!api.is_running());
    assert!(api.request("GET", "/healthz", None).is_err());
    assert!(api.state_file().exists());
}
