"""Tests of the local Kubernetes API server (apiserver.py beside this file).

    python3 -m unittest -v tests/k8s/test_apiserver.py      # from the repo
    python3 -m unittest -v test_apiserver                   # from tests/k8s

Each test starts its own server on a free port.
"""

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from urllib.parse import quote, urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "apiserver.py")
BOOKMARK_INTERVAL = 0.3


class ServerProc:
    """apiserver.py as a child process."""

    def __init__(self, port=0, state=None, extra=()):
        self.state = state
        self.extra = list(extra)
        self.proc = None
        self.port = port
        self.start()

    def start(self):
        cmd = [sys.executable, SERVER, "--port", str(self.port),
               "--bookmark-interval", str(BOOKMARK_INTERVAL), "--rv-wait", "1.0"] + self.extra
        if self.state:
            cmd += ["--state", self.state]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(line.strip().rsplit(":", 1)[1])

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        if self.proc:
            self.proc.stdout.close()
            self.proc.stderr.close()

    def stderr_text(self):
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


class Base(unittest.TestCase):
    server_args = ()

    def setUp(self):
        self.srv = ServerProc(extra=self.server_args)
        self.addCleanup(self.srv.kill)

    # -- HTTP helpers ---------------------------------------------------------

    def request(self, method, path, body=None, headers=None, port=None):
        conn = http.client.HTTPConnection("127.0.0.1", port or self.srv.port, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = dict(headers or {})
            if data is not None:
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            ctype = resp.getheader("Content-Type", "")
            value = json.loads(raw) if ctype.startswith("application/json") else raw.decode()
            return resp.status, value
        finally:
            conn.close()

    def get(self, path, expect=200, headers=None):
        status, value = self.request("GET", path, headers=headers)
        self.assertEqual(status, expect, f"GET {path}: {value}")
        return value

    def apply(self, obj):
        status, value = self.request("PUT", "/_control/objects", obj)
        self.assertIn(status, (200, 201), value)
        return value

    def delete(self, kind, ns, name):
        status, value = self.request("DELETE", f"/_control/objects/{kind}/{ns}/{name}")
        self.assertEqual(status, 200, value)
        return value

    def bulk(self, objs):
        status, value = self.request("POST", "/_control/bulk", objs)
        self.assertEqual(status, 200, value)
        return value

    def compact(self):
        status, value = self.request("POST", "/_control/compact")
        self.assertEqual(status, 200, value)
        return int(value["compactedResourceVersion"])

    def stats(self):
        return self.get("/_control/stats")

    def rv(self):
        return int(self.stats()["resource_version"])

    def watch(self, path, **params):
        w = Watch(self.srv.port, path, params)
        if self._outcome is not None:  # None when used outside a test run
            self.addCleanup(w.close)
        return w


class Watch:
    """A watch stream read by a background thread into a queue. It decodes
    the chunked body itself, strictly: `error` is set when the stream ends
    without its last (zero-length) chunk, which http.client would hide."""

    def __init__(self, port, path, params, headers=None):
        query = urlencode({"watch": "true", **params})
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        lines = [f"GET {path}?{query} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.f = self.sock.makefile("rb")
        status_line = self.f.readline().decode()
        self.status = int(status_line.split()[1])
        self.headers = {}
        while True:
            line = self.f.readline().decode().strip()
            if not line:
                break
            k, v = line.split(":", 1)
            self.headers[k.strip()] = v.strip()
        self.events = queue.Queue()
        self.ended = threading.Event()
        self.error = None
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.body = json.loads(self.f.read(int(self.headers["Content-Length"])))
            self.close(abrupt=False)
            self.ended.set()

    def _read(self):
        buf = b""
        try:
            while True:
                size_line = self.f.readline()
                if not size_line.endswith(b"\r\n"):
                    raise ConnectionError("stream cut before its last chunk")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    if self.f.readline() != b"\r\n":
                        raise ConnectionError("no CRLF after the last chunk")
                    break
                data = self.f.read(size)
                if len(data) != size or self.f.read(2) != b"\r\n":
                    raise ConnectionError("chunk cut short")
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.events.put(json.loads(line))
            if buf:
                raise ConnectionError("stream ended inside a line")
        except Exception as e:  # noqa: BLE001 - reported through self.error
            self.error = e
        finally:
            self.ended.set()

    def next(self, timeout=5.0, skip_bookmarks=True):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no watch event in time")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                raise AssertionError("no watch event in time") from None
            if skip_bookmarks and ev["type"] == "BOOKMARK":
                continue
            return ev

    def take(self, n, timeout=5.0):
        return [self.next(timeout) for _ in range(n)]

    def quiet(self, seconds):
        """The non-bookmark events that arrive within `seconds`."""
        out, deadline = [], time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                return out
            if ev["type"] != "BOOKMARK":
                out.append(ev)

    def close(self, abrupt=True):
        if abrupt:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.f.close()
        self.sock.close()


def pod(ns, name, node="node-1", labels=None, phase="Running"):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "nginx:1.27"}]},
        "status": {"phase": phase},
    }


def names(items):
    return [f'{i["metadata"].get("namespace", "")}/{i["metadata"]["name"]}' for i in items]


def ev_summary(evs):
    return [(e["type"], e["object"]["metadata"]["name"]) for e in evs]


class DiscoveryTest(Base):
    def test_discovery_documents(self):
        v = self.get("/version")
        self.assertEqual(v["major"], "1")
        self.assertTrue(v["gitVersion"].startswith("v1."))
        self.assertEqual(self.get("/api")["versions"], ["v1"])
        groups = {g["name"]: g for g in self.get("/apis")["groups"]}
        self.assertEqual(set(groups), {"apps", "batch"})
        self.assertEqual(groups["apps"]["preferredVersion"]["groupVersion"], "apps/v1")
        core = {r["name"]: r for r in self.get("/api/v1")["resources"]}
        self.assertTrue(core["pods"]["namespaced"])
        self.assertFalse(core["namespaces"]["namespaced"])
        self.assertIn("watch", core["pods"]["verbs"])
        apps = {r["name"]: r for r in self.get("/apis/apps/v1")["resources"]}
        self.assertEqual(apps["replicasets"]["kind"], "ReplicaSet")
        batch = self.get("/apis/batch/v1")
        self.assertEqual(batch["groupVersion"], "batch/v1")
        self.assertIn("jobs", [r["name"] for r in batch["resources"]])
        missing = self.get("/apis/networking.k8s.io/v1", expect=404)
        self.assertEqual(missing["kind"], "Status")


class ListGetTest(Base):
    def test_list_and_get(self):
        a = self.apply(pod("ns1", "a"))
        self.apply(pod("ns2", "b"))
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1", "labels": {"team": "x"}}})
        self.apply({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": "web-1", "namespace": "ns1"}, "spec": {"replicas": 1}})
        self.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ns2"}, "spec": {}})
        # Filled in on create.
        m = a["metadata"]
        self.assertEqual(len(m["uid"]), 36)
        self.assertTrue(m["creationTimestamp"].endswith("Z"))
        self.assertTrue(m["managedFields"])
        self.assertEqual(m["resourceVersion"], "2")

        lst = self.get("/api/v1/pods")
        self.assertEqual(lst["kind"], "PodList")
        self.assertEqual(lst["apiVersion"], "v1")
        self.assertEqual(lst["metadata"]["resourceVersion"], str(self.rv()))
        self.assertNotIn("continue", lst["metadata"])
        self.assertEqual(names(lst["items"]), ["ns1/a", "ns2/b"])
        for item in lst["items"]:
            self.assertNotIn("kind", item)
            self.assertNotIn("apiVersion", item)
        self.assertEqual(names(self.get("/api/v1/namespaces/ns2/pods")["items"]), ["ns2/b"])
        self.assertEqual(self.get("/api/v1/namespaces/nope/pods")["items"], [])
        self.assertEqual(names(self.get("/apis/apps/v1/replicasets")["items"]), ["ns1/web-1"])
        self.assertEqual(self.get("/apis/apps/v1/namespaces/ns1/replicasets")["kind"], "ReplicaSetList")
        self.assertEqual(names(self.get("/apis/batch/v1/namespaces/ns2/jobs")["items"]), ["ns2/j"])
        nss = self.get("/api/v1/namespaces")
        self.assertEqual(nss["kind"], "NamespaceList")
        self.assertEqual(names(nss["items"]), ["/ns1"])

        one = self.get("/api/v1/namespaces/ns1/pods/a")
        self.assertEqual((one["kind"], one["apiVersion"]), ("Pod", "v1"))
        self.assertEqual(one["metadata"]["uid"], m["uid"])
        ns = self.get("/api/v1/namespaces/ns1")
        self.assertEqual(ns["kind"], "Namespace")
        self.assertEqual(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "ns1")
        rs = self.get("/apis/apps/v1/namespaces/ns1/replicasets/web-1")
        self.assertEqual(rs["apiVersion"], "apps/v1")
        job = self.get("/apis/batch/v1/namespaces/ns2/jobs/j")
        self.assertEqual(job["kind"], "Job")

        missing = self.get("/api/v1/namespaces/ns1/pods/zzz", expect=404)
        self.assertEqual((missing["kind"], missing["reason"], missing["code"]), ("Status", "NotFound", 404))
        self.assertEqual(missing["details"]["name"], "zzz")
        self.get("/api/v1/namespaces/nope", expect=404)
        self.get("/apis/apps/v1/namespaces/ns2/replicasets/web-1", expect=404)
        # Writes go through the control API only.
        status, body = self.request("POST", "/api/v1/namespaces/ns1/pods", pod("ns1", "c"))
        self.assertEqual((status, body["reason"]), (405, "MethodNotAllowed"))

    def test_update_delete_and_noop(self):
        a = self.apply(pod("ns", "a"))
        b = self.apply(pod("ns", "a", labels={"v": "2"}))
        self.assertEqual(b["metadata"]["uid"], a["metadata"]["uid"])
        self.assertEqual(b["metadata"]["creationTimestamp"], a["metadata"]["creationTimestamp"])
        self.assertGreater(int(b["metadata"]["resourceVersion"]), int(a["metadata"]["resourceVersion"]))
        # The same content again changes nothing, as on a real server.
        c = self.apply(pod("ns", "a", labels={"v": "2"}))
        self.assertEqual(c["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"])
        gone = self.delete("pod", "ns", "a")
        self.assertGreater(int(gone["metadata"]["resourceVersion"]), int(b["metadata"]["resourceVersion"]))
        self.get("/api/v1/namespaces/ns/pods/a", expect=404)
        status, _ = self.request("DELETE", "/_control/objects/pod/ns/a")
        self.assertEqual(status, 404)
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
        self.delete("namespace", "-", "x")
        self.assertEqual(self.get("/api/v1/namespaces")["items"], [])
        # A different uid for a live object is a conflict.
        self.apply(pod("ns", "u"))
        status, body = self.request("PUT", "/_control/objects",
                                    dict(pod("ns", "u"), metadata={"name": "u", "namespace": "ns", "uid": "other"}))
        self.assertEqual((status, body["reason"]), (409, "Conflict"))


class PaginationTest(Base):
    def test_pages_of_500_over_1200(self):
        self.bulk([pod(f"ns{i % 3}", f"p{i:05d}") for i in range(1200)])
        rv = self.rv()
        pages, token = [], None
        while True:
            q = {"limit": 500}
            if token:
                q["continue"] = token
            page = self.get("/api/v1/pods?" + urlencode(q))
            pages.append(page)
            self.assertEqual(page["metadata"]["resourceVersion"], str(rv))
            token = page["metadata"].get("continue")
            if not token:
                break
            if len(pages) == 1:
                # Changes after the first page do not show in later pages:
                # the list is consistent at its resourceVersion.
                self.apply(pod("ns2", "zzz-new"))
                self.delete("pod", "ns2", "p01199")
        self.assertEqual([len(p["items"]) for p in pages], [500, 500, 200])
        self.assertEqual(pages[0]["metadata"]["remainingItemCount"], 700)
        all_names = [n for p in pages for n in names(p["items"])]
        self.assertEqual(len(all_names), 1200)
        self.assertEqual(len(set(all_names)), 1200)
        self.assertEqual(all_names, sorted(all_names))
        self.assertIn("ns2/p01199", all_names)
        self.assertNotIn("ns2/zzz-new", all_names)
        # A fresh list sees the changes.
        fresh = names(self.get("/api/v1/pods")["items"])
        self.assertIn("ns2/zzz-new", fresh)
        self.assertNotIn("ns2/p01199", fresh)

    def test_namespaced_pages_with_selector(self):
        self.bulk([pod("a", f"p{i:04d}", node=f"n{i % 2}") for i in range(30)]
                  + [pod("b", f"p{i:04d}", node="n0") for i in range(10)])
        got, token = [], None
        while True:
            q = {"limit": 4, "fieldSelector": "spec.nodeName=n0"}
            if token:
                q["continue"] = token
            page = self.get("/api/v1/namespaces/a/pods?" + urlencode(q))
            self.assertLessEqual(len(page["items"]), 4)
            got += names(page["items"])
            token = page["metadata"].get("continue")
            if not token:
                break
        self.assertEqual(got, [f"a/p{i:04d}" for i in range(0, 30, 2)])

    def test_bad_continue_and_params(self):
        self.get("/api/v1/pods?limit=5&continue=not-a-token", expect=400)
        self.get("/api/v1/pods?resourceVersionMatch=Exact", expect=422)
        self.get("/api/v1/pods?resourceVersion=0&resourceVersionMatch=Exact", expect=422)
        self.get("/api/v1/pods?resourceVersion=abc", expect=400)
        # resourceVersion=0 means any, NotOlderThan an RV we have is fine.
        self.get("/api/v1/pods?resourceVersion=0")
        self.get("/api/v1/pods?resourceVersion=1&resourceVersionMatch=NotOlderThan")
        # An RV from the future: the real server waits, then 504.
        far = self.get("/api/v1/pods?resourceVersion=999999", expect=504)
        self.assertEqual(far["reason"], "Timeout")

    def test_exact_list_at_past_rv(self):
        self.apply(pod("ns", "a"))
        rv = self.rv()
        self.apply(pod("ns", "b"))
        self.delete("pod", "ns", "a")
        self.apply(pod("ns", "c", labels={"x": "1"}))
        old = self.get(f"/api/v1/pods?resourceVersion={rv}&resourceVersionMatch=Exact")
        self.assertEqual(old["metadata"]["resourceVersion"], str(rv))
        self.assertEqual(names(old["items"]), ["ns/a"])
        self.assertEqual(names(self.get("/api/v1/pods")["items"]), ["ns/b", "ns/c"])

    def test_10000_pods_in_pages_of_500(self):
        self.bulk([pod(f"ns{i % 50}", f"pod-{i:05d}", node=f"node-{i % 100}") for i in range(10000)])
        start = time.monotonic()
        count, pages, token = 0, 0, None
        while True:
            q = {"limit": 500}
            if token:
                q["continue"] = token
            page = self.get("/api/v1/pods?" + urlencode(q))
            count += len(page["items"])
            pages += 1
            token = page["metadata"].get("continue")
            if not token:
                break
        self.assertEqual((count, pages), (10000, 20))
        self.assertLess(time.monotonic() - start, 30)
        node = self.get("/api/v1/pods?" + urlencode({"fieldSelector": "spec.nodeName=node-7", "limit": 500}))
        self.assertEqual(len(node["items"]), 100)


class SelectorTest(Base):
    def setUp(self):
        super().setUp()
        self.apply(pod("ns1", "a", node="n1", labels={"app": "web", "tier": "front"}))
        self.apply(pod("ns1", "b", node="n2", labels={"app": "db"}))
        self.apply(pod("ns2", "c", node="n1", labels={"app": "web", "canary": "true"}))
        self.apply(pod("ns2", "d", node="", labels={}, phase="Pending"))

    def sel(self, **params):
        return names(self.get("/api/v1/pods?" + urlencode(params))["items"])

    def test_field_selectors(self):
        self.assertEqual(self.sel(fieldSelector="spec.nodeName=n1"), ["ns1/a", "ns2/c"])
        self.assertEqual(self.sel(fieldSelector="spec.nodeName==n2"), ["ns1/b"])
        self.assertEqual(self.sel(fieldSelector="spec.nodeName!=n1"), ["ns1/b", "ns2/d"])
        self.assertEqual(self.sel(fieldSelector="spec.nodeName="), ["ns2/d"])
        self.assertEqual(self.sel(fieldSelector="metadata.name=b"), ["ns1/b"])
        self.assertEqual(self.sel(fieldSelector="metadata.namespace=ns2"), ["ns2/c", "ns2/d"])
        self.assertEqual(self.sel(fieldSelector="metadata.namespace=ns2,spec.nodeName=n1"), ["ns2/c"])
        self.assertEqual(self.sel(fieldSelector="status.phase=Pending"), ["ns2/d"])
        bad = self.get("/api/v1/pods?fieldSelector=spec.bogus%3Dx", expect=400)
        self.assertIn("field label not supported", bad["message"])
        self.get("/apis/apps/v1/replicasets?fieldSelector=spec.nodeName%3Dx", expect=400)

    def test_label_selectors(self):
        self.assertEqual(self.sel(labelSelector="app=web"), ["ns1/a", "ns2/c"])
        self.assertEqual(self.sel(labelSelector="app==db"), ["ns1/b"])
        self.assertEqual(self.sel(labelSelector="app!=web"), ["ns1/b", "ns2/d"])
        self.assertEqual(self.sel(labelSelector="app in (db, web),tier"), ["ns1/a"])
        self.assertEqual(self.sel(labelSelector="app notin (web)"), ["ns1/b", "ns2/d"])
        self.assertEqual(self.sel(labelSelector="canary"), ["ns2/c"])
        self.assertEqual(self.sel(labelSelector="!canary,app"), ["ns1/a", "ns1/b"])
        self.assertEqual(self.sel(labelSelector="app=web", fieldSelector="spec.nodeName=n1"), ["ns1/a", "ns2/c"])
        self.get("/api/v1/pods?" + urlencode({"labelSelector": "app in web"}), expect=400)
        self.get("/api/v1/pods?" + urlencode({"labelSelector": "a b c"}), expect=400)


class WatchTest(Base):
    server_args = ()

    def test_replay_from_resource_version(self):
        self.apply(pod("ns", "a"))
        rv0 = self.rv()
        self.apply(pod("ns", "b"))
        self.apply(pod("ns", "a", labels={"v": "2"}))
        self.delete("pod", "ns", "b")
        w = self.watch("/api/v1/pods", resourceVersion=rv0)
        self.addCleanup(w.close)
        evs = w.take(3)
        self.assertEqual(ev_summary(evs), [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")])
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
        self.assertEqual(rvs, sorted(rvs))
        self.assertEqual(rvs[-1], self.rv())
        for e in evs:
            self.assertEqual((e["object"]["kind"], e["object"]["apiVersion"]), ("Pod", "v1"))
        self.assertEqual(w.headers.get("Transfer-Encoding"), "chunked")
        self.assertEqual(w.quiet(0.5), [])

    def test_live_events(self):
        w = self.watch("/api/v1/namespaces/ns/pods", resourceVersion=self.rv())
        self.addCleanup(w.close)
        self.apply(pod("other", "x"))  # another namespace: not seen
        self.apply(pod("ns", "a"))
        self.assertEqual(ev_summary([w.next()]), [("ADDED", "a")])
        self.apply(pod("ns", "a", phase="Succeeded"))
        e = w.next()
        self.assertEqual(e["type"], "MODIFIED")
        self.assertEqual(e["object"]["status"]["phase"], "Succeeded")
        gone = self.delete("pod", "ns", "a")
        e = w.next()
        self.assertEqual(e["type"], "DELETED")
        self.assertEqual(e["object"]["metadata"]["resourceVersion"], gone["metadata"]["resourceVersion"])
        # The stats say how far the watch's events have been sent.
        [stat] = self.stats()["watches"]
        self.assertEqual(str(stat["sent_resource_version"]), gone["metadata"]["resourceVersion"])
        # Other resources' changes are not pod events.
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})
        self.assertEqual(w.quiet(0.5), [])

    def test_watch_from_zero_and_unset_lists_state_first(self):
        self.apply(pod("ns", "a"))
        self.apply(pod("ns", "b"))
        for params in ({"resourceVersion": "0"}, {}):
            w = self.watch("/api/v1/pods", **params)
            self.assertEqual(ev_summary(w.take(2)), [("ADDED", "a"), ("ADDED", "b")])
            self.apply(pod("ns", "c" + str(len(params))))
            self.assertEqual(w.next()["type"], "ADDED")
            w.close()

    def test_bookmarks(self):
        w = self.watch("/api/v1/pods", resourceVersion=self.rv(), allowWatchBookmarks="true")
        self.addCleanup(w.close)
        bm = w.next(timeout=3, skip_bookmarks=False)
        self.assertEqual(bm["type"], "BOOKMARK")
        self.assertEqual(set(bm["object"]), {"kind", "apiVersion", "metadata"})
        self.assertEqual(bm["object"]["kind"], "Pod")
        self.assertEqual(bm["object"]["metadata"], {"resourceVersion": str(self.rv())})
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}})
        # The bookmark follows the store's RV even for other kinds' changes.
        deadline = time.monotonic() + 3
        while True:
            bm = w.next(timeout=3, skip_bookmarks=False)
            if bm["object"]["metadata"]["resourceVersion"] == str(self.rv()) or time.monotonic() > deadline:
                break
        self.assertEqual(bm["object"]["metadata"]["resourceVersion"], str(self.rv()))
        # Without allowWatchBookmarks there are none.
        w2 = self.watch("/api/v1/pods", resourceVersion=self.rv())
        self.addCleanup(w2.close)
        time.sleep(BOOKMARK_INTERVAL * 3)
        self.assertTrue(w2.events.empty())

    def test_timeout_ends_stream_cleanly(self):
        start = time.monotonic()
        w = self.watch("/api/v1/pods", resourceVersion=self.rv(), timeoutSeconds=1)
        self.assertTrue(w.ended.wait(5))
        took = time.monotonic() - start
        self.assertIsNone(w.error)  # the last chunk came: no IncompleteRead
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 3)

    def test_selector_transitions(self):
        self.apply(pod("ns", "p", node="n2", labels={"app": "web"}))
        w = self.watch("/api/v1/pods", resourceVersion=self.rv(), fieldSelector="spec.nodeName=n1")
        self.addCleanup(w.close)
        lw = self.watch("/api/v1/pods", resourceVersion=self.rv(), labelSelector="app=web")
        self.addCleanup(lw.close)
        self.apply(pod("ns", "p", node="n1", labels={"app": "web"}))  # starts matching the node
        e = w.next()
        self.assertEqual((e["type"], e["object"]["spec"]["nodeName"]), ("ADDED", "n1"))
        self.assertEqual(lw.next()["type"], "MODIFIED")
        moved = self.apply(pod("ns", "p", node="n3", labels={"app": "api"}))  # stops matching both
        e = w.next()
        self.assertEqual(e["type"], "DELETED")
        # The previous state, at the RV of the change that removed it.
        self.assertEqual(e["object"]["spec"]["nodeName"], "n1")
        self.assertEqual(e["object"]["metadata"]["resourceVersion"], moved["metadata"]["resourceVersion"])
        e = lw.next()
        self.assertEqual((e["type"], e["object"]["metadata"]["labels"]), ("DELETED", {"app": "web"}))
        self.apply(pod("ns", "p", node="n4", labels={"app": "api"}))  # matches neither
        self.delete("pod", "ns", "p")
        self.assertEqual(w.quiet(0.5), [])
        self.assertEqual(lw.quiet(0.1), [])

    def test_send_initial_events(self):
        self.apply(pod("ns", "a"))
        self.apply(pod("ns", "b", node="n9"))
        # What kube-rs sends with watcher::Config::streaming_lists().
        w = self.watch("/api/v1/pods", resourceVersion="0", sendInitialEvents="true",
                       resourceVersionMatch="NotOlderThan", allowWatchBookmarks="true",
                       timeoutSeconds="290", fieldSelector="spec.nodeName=node-1")
        self.addCleanup(w.close)
        self.assertEqual(ev_summary([w.next()]), [("ADDED", "a")])
        bm = w.next(skip_bookmarks=False)
        self.assertEqual(bm["type"], "BOOKMARK")
        self.assertEqual(bm["object"]["metadata"]["annotations"], {"k8s.io/initial-events-end": "true"})
        self.assertEqual(bm["object"]["metadata"]["resourceVersion"], str(self.rv()))
        self.apply(pod("ns", "c"))
        self.assertEqual(ev_summary([w.next()]), [("ADDED", "c")])
        # Periodic bookmarks do not carry the annotation.
        bm = w.next(skip_bookmarks=False)
        self.assertNotIn("annotations", bm["object"]["metadata"])
        bad = self.watch("/api/v1/pods", resourceVersion="0", sendInitialEvents="true", allowWatchBookmarks="true")
        self.assertEqual((bad.status, bad.body["reason"]), (422, "Invalid"))

    def test_kube_rs_default_list_then_watch(self):
        """The requests kube-rs 5's watcher makes with the default Config
        (paged list, then watch from the list's RV with bookmarks)."""
        self.bulk([pod("ns", f"p{i:04d}", node="n1" if i % 3 == 0 else "n2") for i in range(1600)])
        sel = quote("spec.nodeName=n1")
        items, token, rv = [], None, None
        while True:
            path = f"/api/v1/pods?&fieldSelector={sel}&limit=500"
            if token:
                path += "&continue=" + quote(token)
            page = self.get(path)
            items += page["items"]
            rv = page["metadata"]["resourceVersion"]
            token = page["metadata"].get("continue")
            if not token:
                break
        self.assertEqual(len(items), 534)
        self.apply(pod("ns", "late", node="n1"))
        w = Watch(self.srv.port, "/api/v1/pods",
                  {"timeoutSeconds": "290", "fieldSelector": "spec.nodeName=n1",
                   "allowWatchBookmarks": "true", "resourceVersion": rv})
        self.addCleanup(w.close)
        self.assertEqual(ev_summary([w.next()]), [("ADDED", "late")])
        self.assertEqual(w.next(skip_bookmarks=False)["type"], "BOOKMARK")

    def test_watch_single_object_path(self):
        w = self.watch("/api/v1/namespaces/ns/pods/a", resourceVersion=self.rv())
        self.addCleanup(w.close)
        self.apply(pod("ns", "b"))
        self.apply(pod("ns", "a"))
        self.assertEqual(ev_summary([w.next()]), [("ADDED", "a")])

    def test_partial_object_metadata(self):
        self.apply(pod("ns", "a", labels={"k": "v"}))
        hdr = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
        lst = self.get("/api/v1/pods", headers=hdr)
        self.assertEqual(lst["kind"], "PartialObjectMetadataList")
        self.assertEqual(lst["items"][0]["kind"], "PartialObjectMetadata")
        self.assertEqual(set(lst["items"][0]), {"kind", "apiVersion", "metadata"})
        w = Watch(self.srv.port, "/api/v1/pods", {"resourceVersion": lst["metadata"]["resourceVersion"]},
                  headers={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"})
        self.addCleanup(w.close)
        self.apply(pod("ns", "a", labels={"k": "w"}))
        e = w.next()
        self.assertEqual((e["type"], e["object"]["kind"]), ("MODIFIED", "PartialObjectMetadata"))
        self.assertEqual(e["object"]["metadata"]["labels"], {"k": "w"})
        self.assertNotIn("spec", e["object"])


class CompactTest(Base):
    def test_continue_after_compact_is_410(self):
        self.bulk([pod("ns", f"p{i:03d}") for i in range(20)])
        page = self.get("/api/v1/pods?limit=5")
        token = page["metadata"]["continue"]
        self.get("/api/v1/pods?limit=5&continue=" + quote(token))  # fine before
        self.apply(pod("ns", "new"))
        self.compact()
        gone = self.get("/api/v1/pods?limit=5&continue=" + quote(token), expect=410)
        self.assertEqual((gone["kind"], gone["reason"], gone["code"]), ("Status", "Expired", 410))
        old = self.get(f"/api/v1/pods?resourceVersion={page['metadata']['resourceVersion']}"
                       "&resourceVersionMatch=Exact", expect=410)
        self.assertEqual(old["reason"], "Expired")
        # A fresh list works and gives the current RV.
        self.assertEqual(self.get("/api/v1/pods?limit=5")["metadata"]["resourceVersion"], str(self.rv()))

    def test_watch_from_compacted_rv_gets_error_event(self):
        self.apply(pod("ns", "a"))
        rv0 = self.rv()
        self.apply(pod("ns", "b"))
        compacted = self.compact()
        self.assertEqual(compacted, self.rv())
        w = self.watch("/api/v1/pods", resourceVersion=rv0, allowWatchBookmarks="true")
        self.assertEqual(w.status, 200)
        e = w.next(skip_bookmarks=False)
        self.assertEqual(e["type"], "ERROR")
        st = e["object"]
        self.assertEqual((st["kind"], st["code"], st["reason"], st["status"]), ("Status", 410, "Expired", "Failure"))
        self.assertTrue(w.ended.wait(3))
        self.assertIsNone(w.error)
        self.assertTrue(w.events.empty())
        # From the compaction point on, watching works.
        w2 = self.watch("/api/v1/pods", resourceVersion=compacted)
        self.addCleanup(w2.close)
        self.apply(pod("ns", "c"))
        self.assertEqual(ev_summary([w2.next()]), [("ADDED", "c")])

    def test_live_watch_survives_compaction(self):
        w = self.watch("/api/v1/pods", resourceVersion=self.rv())
        self.addCleanup(w.close)
        self.apply(pod("ns", "a"))
        self.assertEqual(w.next()["type"], "ADDED")
        self.apply(pod("ns", "b"))
        self.compact()
        self.apply(pod("ns", "c"))
        self.assertEqual(ev_summary(w.take(2)), [("ADDED", "b"), ("ADDED", "c")])


class RestartTest(unittest.TestCase):
    def test_restart_with_state(self):
        with tempfile.TemporaryDirectory() as d:
            state = os.path.join(d, "state.json")
            srv = ServerProc(state=state)
            self.addCleanup(srv.kill)
            t = Base()
            t._outcome = None
            t.srv = srv
            t.apply(pod("ns", "a"))
            rv_a = t.rv()
            t.bulk([pod("ns", f"b{i}") for i in range(50)])
            t.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})
            t.delete("pod", "ns", "b7")
            before = t.get("/api/v1/pods")
            rv = t.rv()
            port = srv.port
            w = t.watch("/api/v1/pods", resourceVersion=rv)
            srv.kill(signal.SIGKILL)
            self.assertTrue(w.ended.wait(5))  # the client sees the server go
            w.close()
            srv2 = ServerProc(port=port, state=state)
            self.addCleanup(srv2.kill)
            t.srv = srv2
            self.assertEqual(srv2.port, port)
            self.assertEqual(t.rv(), rv)
            after = t.get("/api/v1/pods")
            self.assertEqual(after, before)
            self.assertEqual(t.get("/api/v1/namespaces/ns")["kind"], "Namespace")
            # History survived: a watch from an old RV replays it.
            w = t.watch("/api/v1/pods", resourceVersion=rv_a)
            evs = w.take(51)
            self.assertEqual(evs[-1], {"type": "DELETED", "object": evs[-1]["object"]})
            self.assertEqual(evs[-1]["object"]["metadata"]["name"], "b7")
            w.close()
            # The counter goes on from where it was.
            c = t.apply(pod("ns", "c"))
            self.assertEqual(int(c["metadata"]["resourceVersion"]), rv + 1)
            # SIGTERM too, and a compaction survives a restart.
            t.compact()
            srv2.kill(signal.SIGTERM)
            srv3 = ServerProc(port=port, state=state)
            self.addCleanup(srv3.kill)
            t.srv = srv3
            self.assertEqual(t.rv(), rv + 1)
            w = t.watch("/api/v1/pods", resourceVersion=rv_a)
            self.assertEqual(w.next(skip_bookmarks=False)["object"]["code"], 410)
            w.close()


class RobustnessTest(Base):
    def test_disconnects_do_not_leak(self):
        self.apply(pod("ns", "a"))
        threads_before = self.stats()["threads"]
        watches = [self.watch("/api/v1/pods", resourceVersion=self.rv(), allowWatchBookmarks="true")
                   for _ in range(10)]
        watches += [self.watch("/api/v1/pods", resourceVersion=self.rv()) for _ in range(10)]
        deadline = time.monotonic() + 5
        while self.stats()["watches_open"] != 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.stats()["watches_open"], 20)
        self.assertEqual(len(self.stats()["watches"]), 20)
        for w in watches:
            w.close(abrupt=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            s = self.stats()
            if s["watches_open"] == 0 and s["threads"] <= threads_before + 1:
                break
            time.sleep(0.1)
        s = self.stats()
        self.assertEqual(s["watches_open"], 0)
        self.assertLessEqual(s["threads"], threads_before + 1)
        self.assertEqual(s["watches_total"], 20)
        # Still serving.
        self.apply(pod("ns", "b"))
        self.assertEqual(len(self.get("/api/v1/pods")["items"]), 2)
        self.assertEqual(self.srv.proc.poll(), None)

    def test_disconnect_during_burst(self):
        w = self.watch("/api/v1/pods", resourceVersion=self.rv())
        self.bulk([pod("ns", f"p{i}") for i in range(3000)])
        w.next()
        w.close(abrupt=True)
        self.bulk([pod("ns", f"q{i}") for i in range(3000)])
        # The server finds the client gone when a write fails or after a
        # second idle; on a loaded machine writing the burst out can take
        # several seconds before either.
        deadline = time.monotonic() + 20
        while self.stats()["watches_open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.stats()["watches_open"], 0)
        self.assertEqual(self.stats()["objects"]["pods"], 6000)

    def test_stats_counts_requests(self):
        self.apply(pod("ns", "a"))
        self.request("POST", "/_control/stats/reset")
        self.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1")
        self.get("/api/v1/namespaces/ns/pods/a")
        self.get("/api/v1/namespaces/ns/pods/zz", expect=404)
        self.get("/version")
        w = self.watch("/api/v1/pods", resourceVersion=self.rv(), timeoutSeconds=1)
        self.assertTrue(w.ended.wait(5))
        s = self.stats()
        self.assertEqual(s["requests"]["list"], 1)
        self.assertEqual(s["requests"]["get"], 2)
        self.assertEqual(s["requests"]["watch"], 1)
        self.assertEqual(s["requests"]["discovery"], 1)
        self.assertEqual(s["requests_by_resource"]["pods"], {"list": 1, "get": 2, "watch": 1})
        lists = [e for e in s["log"] if e["verb"] == "list"]
        self.assertEqual(lists[0]["query"], "fieldSelector=spec.nodeName%3Dnode-1")

    def test_close_watches(self):
        w1 = self.watch("/api/v1/pods", resourceVersion=self.rv())
        self.request("POST", "/_control/close-watches")
        self.assertTrue(w1.ended.wait(3))
        self.assertIsNone(w1.error)
        w2 = self.watch("/api/v1/pods", resourceVersion=self.rv())
        self.request("POST", "/_control/close-watches?abrupt=true")
        self.assertTrue(w2.ended.wait(3))
        self.assertIsNotNone(w2.error)  # cut without the last chunk
        w3 = self.watch("/api/v1/pods", resourceVersion=self.rv())
        self.addCleanup(w3.close)
        self.apply(pod("ns", "a"))
        self.assertEqual(w3.next()["type"], "ADDED")

    def test_rv_from_the_future(self):
        w = self.watch("/api/v1/pods", resourceVersion=self.rv() + 100)
        self.assertEqual((w.status, w.body["code"]), (504, 504))
        # One that comes in time is waited for.
        rv = self.rv()
        threading.Timer(0.1, lambda: self.apply(pod("ns", "soon"))).start()
        w = self.watch("/api/v1/pods", resourceVersion=rv + 1)
        self.addCleanup(w.close)
        self.assertEqual(w.status, 200)


if __name__ == "__main__":
    unittest.main()
