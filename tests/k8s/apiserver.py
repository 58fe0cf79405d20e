#!/usr/bin/env python3
"""A local Kubernetes API server for sonde's tests (Python 3 stdlib only).

It serves pods, namespaces, apps/v1 replicasets and batch/v1 jobs over plain
HTTP/1.1 with the real list/watch protocol: paginated consistent lists,
field and label selectors, chunked watch streams that replay history from a
resourceVersion, bookmarks, 410 Expired after compaction, and discovery.
Tests change objects through a control API under /_control/ (not a
Kubernetes path). README.md beside this file says what is left out.

    python3 apiserver.py --port 0 [--state FILE] [--bookmark-interval 1]

prints `listening 127.0.0.1:PORT` once it accepts connections.
"""

import argparse
import base64
import bisect
import collections
import copy
import errno
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# ---------------------------------------------------------------------------
# Resources


class Resource:
    """One served resource type and what the real API server says of it."""

    def __init__(self, kind, group, plural, namespaced, short_names, fields, verbs):
        self.kind = kind
        self.group = group
        self.version = "v1"
        self.plural = plural
        self.namespaced = namespaced
        self.short_names = short_names
        # Field selectors the real server accepts for this type, beside
        # metadata.name and metadata.namespace.
        self.fields = ("metadata.name", "metadata.namespace") + fields
        self.verbs = verbs

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self):
        return self.kind.lower()

    def group_prefix(self):
        return f"/apis/{self.group}/{self.version}" if self.group else "/api/v1"


RW_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

RESOURCES = [
    Resource(
        "Pod", "", "pods", True, ["po"],
        ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
         "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
         "status.podIP", "status.nominatedNodeName"),
        RW_VERBS,
    ),
    Resource(
        "Namespace", "", "namespaces", False, ["ns"], ("status.phase",),
        ["create", "delete", "get", "list", "patch", "update", "watch"],
    ),
    Resource("ReplicaSet", "apps", "replicasets", True, ["rs"], ("status.replicas",), RW_VERBS),
    Resource("Job", "batch", "jobs", True, [], ("status.successful",), RW_VERBS),
]

BY_PLURAL = {r.plural: r for r in RESOURCES}
# (group, version) -> {plural: Resource}
BY_GROUP = collections.defaultdict(dict)
for _r in RESOURCES:
    BY_GROUP[(_r.group, _r.version)][_r.plural] = _r


def resource_named(name):
    """The resource for a kind, plural or singular name (any case)."""
    n = name.lower()
    for r in RESOURCES:
        if n in (r.plural, r.singular, r.kind.lower()) or n in r.short_names:
            return r
    return None


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def meta_of(obj):
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


# ---------------------------------------------------------------------------
# Errors (as `Status` objects)


class ApiError(Exception):
    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self):
        s = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            s["details"] = self.details
        s["code"] = self.code
        return s


def bad_request(msg):
    return ApiError(400, "BadRequest", msg)


def invalid(msg, kind="ListOptions"):
    return ApiError(
        422, "Invalid", f'{kind}.meta.k8s.io "" is invalid: {msg}',
        {"group": "meta.k8s.io", "kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": msg}]},
    )


def expired(msg):
    return ApiError(410, "Expired", msg)


def too_large_rv(rv, current):
    return ApiError(
        504, "Timeout", f"Timeout: Too large resource version: {rv}, current: {current}",
        {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
         "retryAfterSeconds": 1},
    )


def not_found(res, name):
    details = {"name": name, "kind": res.plural}
    if res.group:
        details["group"] = res.group
    what = f"{res.plural}.{res.group}" if res.group else res.plural
    return ApiError(404, "NotFound", f'{what} "{name}" not found', details)


# ---------------------------------------------------------------------------
# Selectors


def split_unescaped(s, sep):
    """Splits on `sep` not preceded by a backslash; keeps the escapes."""
    parts, cur, i = [], [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape_field(v):
    out, i = [], 0
    while i < len(v):
        if v[i] == "\\" and i + 1 < len(v):
            out.append(v[i + 1])
            i += 2
        else:
            out.append(v[i])
            i += 1
    return "".join(out)


def field_value(obj, path):
    cur = obj
    for p in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(p)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(s, res):
    """[(field, op, value)] with op in ('=', '!='); 400 for what the real
    server refuses."""
    reqs = []
    if not s:
        return reqs
    for term in split_unescaped(s, ","):
        if not term:
            continue
        # The first unescaped operator.
        i, op = 0, None
        while i < len(term):
            if term[i] == "\\":
                i += 2
                continue
            if term.startswith("!=", i):
                op = "!="
                break
            if term.startswith("==", i):
                op = "=="
                break
            if term[i] == "=":
                op = "="
                break
            i += 1
        if op is None:
            raise bad_request(f'invalid field selector: "{term}": does not contain an operator')
        field = term[:i].strip()
        value = unescape_field(term[i + len(op):])
        if field not in res.fields:
            raise bad_request(f'field label not supported: {field}')
        reqs.append((field, "!=" if op == "!=" else "=", value))
    return reqs


LABEL_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")
LABEL_VALUE_CHARS = LABEL_KEY_CHARS - {"/"}


def split_top_commas(s):
    parts, depth, cur = [], 0, []
    for c in s:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _check_key(k, sel):
    if not k or not set(k) <= LABEL_KEY_CHARS:
        raise bad_request(f'unable to parse requirement: invalid label key "{k}" in "{sel}"')
    return k


def _check_value(v, sel):
    if not set(v) <= LABEL_VALUE_CHARS:
        raise bad_request(f'unable to parse requirement: invalid label value "{v}" in "{sel}"')
    return v


def parse_label_selector(s):
    """[(key, op, values)], op in exists, !exists, =, !=, in, notin, gt, lt."""
    reqs = []
    if not s or not s.strip():
        return reqs
    for part in split_top_commas(s):
        p = part.strip()
        if not p:
            raise bad_request(f'unable to parse requirement: empty requirement in "{s}"')
        if p.startswith("!"):
            reqs.append((_check_key(p[1:].strip(), s), "!exists", ()))
            continue
        # Set-based: key in (a,b) / key notin (a,b)
        words = p.split(None, 1)
        if len(words) == 2:
            rest = words[1].lstrip()
            for op in ("notin", "in"):
                if rest.startswith(op) and rest[len(op):].lstrip().startswith("("):
                    inner = rest[len(op):].strip()
                    if not inner.endswith(")"):
                        raise bad_request(f'unable to parse requirement: missing ")" in "{s}"')
                    vals = [v.strip() for v in inner[1:-1].split(",")]
                    vals = tuple(_check_value(v, s) for v in vals if v)
                    if not vals:
                        raise bad_request(f'unable to parse requirement: for \'{op}\' a set of values is required in "{s}"')
                    reqs.append((_check_key(words[0], s), op, vals))
                    break
            else:
                raise bad_request(f'unable to parse requirement: "{p}"')
            continue
        for op in ("!=", "==", "=", ">", "<"):
            i = p.find(op)
            if i > 0:
                key = _check_key(p[:i].strip(), s)
                val = _check_value(p[i + len(op):].strip(), s)
                norm = {"==": "=", ">": "gt", "<": "lt"}.get(op, op)
                if norm in ("gt", "lt"):
                    try:
                        int(val)
                    except ValueError:
                        raise bad_request(f'unable to parse requirement: for \'gt\', \'lt\' operators, the value must be an integer in "{s}"')
                reqs.append((key, norm, (val,)))
                break
        else:
            reqs.append((_check_key(p, s), "exists", ()))
    return reqs


def label_match(labels, reqs):
    for key, op, vals in reqs:
        has = key in labels
        v = labels.get(key)
        if op == "exists":
            ok = has
        elif op == "!exists":
            ok = not has
        elif op == "=":
            ok = has and v == vals[0]
        elif op == "!=":
            ok = not has or v != vals[0]
        elif op == "in":
            ok = has and v in vals
        elif op == "notin":
            ok = not has or v not in vals
        else:
            try:
                a, b = int(v), int(vals[0])
            except (TypeError, ValueError):
                ok = False
            else:
                ok = a > b if op == "gt" else a < b
        if not ok:
            return False
    return True


class Selector:
    def __init__(self, res, query):
        self.fields = parse_field_selector(query.get("fieldSelector", ""), res)
        self.labels = parse_label_selector(query.get("labelSelector", ""))

    def empty(self):
        return not self.fields and not self.labels

    def matches(self, obj):
        for field, op, value in self.fields:
            got = field_value(obj, field)
            if (got == value) != (op == "="):
                return False
        labels = meta_of(obj).get("labels") or {}
        return label_match(labels, self.labels)


# ---------------------------------------------------------------------------
# Object shaping


def fields_v1(value, depth=0):
    """A FieldsV1 set naming the fields of `value`, as managedFields has."""
    if isinstance(value, dict) and depth < 6:
        return {f"f:{k}": fields_v1(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list) and depth < 6:
        out = {}
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                key = "k:" + json.dumps({"name": item["name"]}, separators=(",", ":"))
                out[key] = {".": {}, **fields_v1(item, depth + 1)}
        return out
    return {}


def make_managed_fields(obj, res, ts):
    meta = {k: v for k, v in meta_of(obj).items()
            if k in ("labels", "annotations", "ownerReferences", "finalizers")}
    main = {}
    if meta:
        main["f:metadata"] = fields_v1(meta)
    if "spec" in obj:
        main["f:spec"] = fields_v1(obj["spec"])
    entries = [{
        "manager": "sonde-tests",
        "operation": "Update",
        "apiVersion": res.api_version,
        "time": ts,
        "fieldsType": "FieldsV1",
        "fieldsV1": main,
    }]
    if "status" in obj:
        entries.append({
            "manager": "kubelet" if res.kind == "Pod" else "kube-controller-manager",
            "operation": "Update",
            "apiVersion": res.api_version,
            "time": ts,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": fields_v1(obj["status"])},
            "subresource": "status",
        })
    return entries


def without_volatile(obj):
    """`obj` without what a no-op update may change (for no-op detection)."""
    o = dict(obj)
    m = dict(meta_of(o))
    for k in ("resourceVersion", "managedFields", "generation"):
        m.pop(k, None)
    o["metadata"] = m
    return o


def list_item(obj):
    """An object as a list item: the real server leaves out kind and apiVersion."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def partial_metadata(obj):
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta_of(obj)}


def with_rv(obj, rv):
    o = dict(obj)
    m = dict(meta_of(obj))
    m["resourceVersion"] = str(rv)
    o["metadata"] = m
    return o


def dumps(v):
    return json.dumps(v, separators=(",", ":"))


# ---------------------------------------------------------------------------
# Continue tokens (the real server's format: base64 of a small JSON object)


def encode_continue(rv, res, key):
    start = f"{key[0]}/{key[1]}" if res.namespaced else key[1]
    raw = dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\u0000"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token, res):
    try:
        pad = "=" * (-len(token) % 4)
        d = json.loads(base64.urlsafe_b64decode(token + pad))
        if d.get("v") != "meta.k8s.io/v1":
            raise ValueError("version")
        rv = int(d["rv"])
        start = d["start"].rstrip("\u0000")
        if res.namespaced:
            ns, name = start.split("/", 1)
        else:
            ns, name = "", start
        return rv, (ns, name)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")


# ---------------------------------------------------------------------------
# The store


class Event:
    __slots__ = ("rv", "type", "obj", "prev")

    def __init__(self, rv, type_, obj, prev):
        self.rv = rv
        self.type = type_
        self.obj = obj  # the object after the change (for DELETED: as deleted, at the delete's RV)
        self.prev = prev  # the object before the change (None for ADDED)


class Store:
    """Objects, one global resourceVersion counter and the history of
    changes, behind one lock; its condition variable wakes watchers.

    Stored objects are never mutated: a change stores a new dict, so lists
    and watch streams can hand out references after the lock is released.
    """

    def __init__(self, state_file=None, rv_wait=3.0):
        self.cond = threading.Condition()
        self.rv = 1
        self.compacted = 1  # watches and exact reads need rv >= this
        self.objects = {r.plural: {} for r in RESOURCES}
        # Per resource: the RVs of its events (sorted) and the events.
        self.hist_rvs = {r.plural: [] for r in RESOURCES}
        self.hist = {r.plural: [] for r in RESOURCES}
        self.snapshots = collections.OrderedDict()
        self.live_cursors = {}  # watcher id -> cursor (history they still need)
        self.close_generation = 0  # bumped by /_control/close-watches
        self.close_abrupt = False
        self.rv_wait = rv_wait
        self.state_file = state_file
        self.journal = None
        if state_file:
            self._load()
            self._rewrite_state()

    # -- persistence: a snapshot line, then one line per change ------------

    def _load(self):
        if not os.path.exists(self.state_file):
            return
        with open(self.state_file, "r", encoding="utf-8") as f:
            lines = f.read().split("\n")
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                # A line cut short by SIGKILL: everything before it holds.
                print(f"state: ignoring a partial line {n + 1} of {self.state_file}", file=sys.stderr, flush=True)
                break
            if "snapshot" in rec:
                s = rec["snapshot"]
                self.rv = int(s["resourceVersion"])
                self.compacted = int(s["compacted"])
                for o in s["objects"]:
                    res = BY_PLURAL[o["resource"]]
                    obj = o["object"]
                    self.objects[res.plural][self._key(res, obj)] = obj
                for e in s["history"]:
                    self.hist_rvs[e["resource"]].append(int(e["rv"]))
                    self.hist[e["resource"]].append(Event(int(e["rv"]), e["type"], e["object"], e.get("prev")))
            elif "change" in rec:
                c = rec["change"]
                res = BY_PLURAL[c["resource"]]
                obj = c["object"]
                key = self._key(res, obj)
                prev = self.objects[res.plural].get(key)
                if c["type"] == "DELETED":
                    self.objects[res.plural].pop(key, None)
                else:
                    self.objects[res.plural][key] = obj
                self._record(res, int(c["rv"]), c["type"], obj, prev)
                self.rv = int(c["rv"])
            elif "compact" in rec:
                self.compacted = int(rec["compact"])
        self._trim()

    def _rewrite_state(self):
        snap = {
            "resourceVersion": self.rv,
            "compacted": self.compacted,
            "objects": [{"resource": p, "object": o} for p, objs in self.objects.items() for o in objs.values()],
            "history": [
                {"resource": p, "rv": e.rv, "type": e.type, "object": e.obj, "prev": e.prev}
                for p, evs in self.hist.items() for e in evs
            ],
        }
        tmp = self.state_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dumps({"snapshot": snap}) + "\n")
        os.replace(tmp, self.state_file)
        if self.journal:
            self.journal.close()
        self.journal = open(self.state_file, "a", encoding="utf-8")

    def _journal(self, rec):
        if self.journal:
            self.journal.write(dumps(rec) + "\n")
            self.journal.flush()

    # -- changes ------------------------------------------------------------

    @staticmethod
    def _key(res, obj):
        m = meta_of(obj)
        return (m.get("namespace", "") if res.namespaced else "", m.get("name", ""))

    def _record(self, res, rv, type_, obj, prev):
        self.hist_rvs[res.plural].append(rv)
        self.hist[res.plural].append(Event(rv, type_, obj, prev))

    def _prepare(self, body):
        """Validates an object from the control API; returns (res, obj)."""
        if not isinstance(body, dict):
            raise bad_request("the object must be a JSON object")
        kind = body.get("kind")
        res = resource_named(kind) if isinstance(kind, str) else None
        if res is None or kind != res.kind:
            raise bad_request(f"kind must be one of {[r.kind for r in RESOURCES]}, got {kind!r}")
        av = body.get("apiVersion", res.api_version)
        if av != res.api_version:
            raise bad_request(f"apiVersion of a {res.kind} must be {res.api_version}, got {av!r}")
        obj = copy.deepcopy(body)
        obj["apiVersion"] = res.api_version
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise bad_request("metadata.name is required")
        if "/" in meta["name"]:
            raise bad_request("metadata.name may not contain '/'")
        if res.namespaced:
            ns = meta.get("namespace") or "default"
            if not isinstance(ns, str) or "/" in ns:
                raise bad_request("metadata.namespace must be a name")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if res.kind == "Namespace":
            labels = dict(meta.get("labels") or {})
            labels["kubernetes.io/metadata.name"] = meta["name"]
            meta["labels"] = labels
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
        return res, obj

    def _apply_locked(self, res, obj):
        """Creates or replaces; returns (stored, created, changed)."""
        key = self._key(res, obj)
        meta = obj["metadata"]
        prev = self.objects[res.plural].get(key)
        ts = now_rfc3339()
        if prev is not None:
            pmeta = meta_of(prev)
            if meta.get("uid") and meta["uid"] != pmeta.get("uid"):
                raise ApiError(
                    409, "Conflict",
                    f'Operation cannot be fulfilled on {res.plural} "{key[1]}": Precondition failed: '
                    f'UID in precondition: {meta["uid"]}, UID in object meta: {pmeta.get("uid")}',
                    {"name": key[1], "kind": res.plural},
                )
            meta["uid"] = pmeta.get("uid")
            meta.setdefault("creationTimestamp", pmeta.get("creationTimestamp"))
            gen = pmeta.get("generation", 1)
            meta["generation"] = gen + 1 if obj.get("spec") != prev.get("spec") else gen
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", ts)
            meta.setdefault("generation", 1)
        if "managedFields" not in meta:
            meta["managedFields"] = make_managed_fields(obj, res, ts)
        if prev is not None and without_volatile(obj) == without_volatile(prev):
            return prev, False, False  # a no-op update, as the real server makes it
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[res.plural][key] = obj
        type_ = "MODIFIED" if prev is not None else "ADDED"
        self._record(res, self.rv, type_, obj, prev)
        self._journal({"change": {"resource": res.plural, "rv": self.rv, "type": type_, "object": obj}})
        return obj, prev is None, True

    def apply(self, body):
        res, obj = self._prepare(body)
        with self.cond:
            stored, created, changed = self._apply_locked(res, obj)
            if changed:
                self.cond.notify_all()
            return stored, created

    def bulk(self, bodies):
        if not isinstance(bodies, list):
            raise bad_request("bulk takes a JSON list of objects")
        prepared = [self._prepare(b) for b in bodies]
        with self.cond:
            n = 0
            try:
                for res, obj in prepared:
                    _, _, changed = self._apply_locked(res, obj)
                    n += changed
            finally:
                self.cond.notify_all()
            return n, self.rv

    def delete(self, res, ns, name):
        with self.cond:
            key = (ns if res.namespaced else "", name)
            prev = self.objects[res.plural].pop(key, None)
            if prev is None:
                raise not_found(res, name)
            self.rv += 1
            obj = with_rv(prev, self.rv)
            self._record(res, self.rv, "DELETED", obj, prev)
            self._journal({"change": {"resource": res.plural, "rv": self.rv, "type": "DELETED", "object": obj}})
            self.cond.notify_all()
            return obj

    def compact(self):
        """Forgets the history up to now: older RVs get 410 Expired."""
        with self.cond:
            self.compacted = self.rv
            self.snapshots.clear()
            self._trim()
            if self.state_file:
                self._rewrite_state()
            self.cond.notify_all()
            return self.compacted

    def _trim(self):
        """Drops history no one can read any more: before the compaction
        point, and not needed by a watcher that is already streaming."""
        keep_from = min([self.compacted] + list(self.live_cursors.values()))
        for p in self.hist:
            i = bisect.bisect_right(self.hist_rvs[p], keep_from)
            if i:
                del self.hist_rvs[p][:i]
                del self.hist[p][:i]

    # -- reads (call with the lock held) ------------------------------------

    def snapshot(self, res, rv):
        """The objects of `res` at `rv`, sorted by (namespace, name): a list
        of keys and a list of objects."""
        ck = (res.plural, rv)
        snap = self.snapshots.get(ck)
        if snap is not None:
            self.snapshots.move_to_end(ck)
            return snap
        if rv < self.compacted:
            raise expired(f"too old resource version: {rv} ({self.compacted})")
        if rv > self.rv:
            raise too_large_rv(rv, self.rv)
        objs = dict(self.objects[res.plural])
        rvs, evs = self.hist_rvs[res.plural], self.hist[res.plural]
        for i in range(len(evs) - 1, bisect.bisect_right(rvs, rv) - 1, -1):
            e = evs[i]
            key = self._key(res, e.obj)
            if e.prev is None:
                objs.pop(key, None)
            else:
                objs[key] = e.prev
        keys = sorted(objs)
        snap = (keys, [objs[k] for k in keys])
        self.snapshots[ck] = snap
        while len(self.snapshots) > 8:
            self.snapshots.popitem(last=False)
        return snap

    def events_after(self, res, cursor):
        rvs = self.hist_rvs[res.plural]
        return self.hist[res.plural][bisect.bisect_right(rvs, cursor):]

    def wait_for_rv(self, rv):
        """Waits (lock held) until the store reached `rv`, as the real server
        waits for its cache; 504 if it does not within rv_wait seconds."""
        deadline = time.monotonic() + self.rv_wait
        while self.rv < rv:
            left = deadline - time.monotonic()
            if left <= 0:
                raise too_large_rv(rv, self.rv)
            self.cond.wait(left)


# ---------------------------------------------------------------------------
# Statistics for the tests


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.watches = {}
        self._clear()

    def _clear(self):
        self.requests = collections.Counter()
        self.by_resource = collections.defaultdict(collections.Counter)
        self.log = collections.deque(maxlen=2000)
        self.watches_total = 0

    def reset(self):
        """Forgets the counters and the log; open watches stay listed."""
        with self.lock:
            self._clear()

    def count(self, verb, res, path, query, agent):
        with self.lock:
            self.requests[verb] += 1
            if res is not None:
                self.by_resource[res.plural][verb] += 1
            self.log.append({"verb": verb, "resource": res.plural if res else None,
                             "path": path, "query": query, "user_agent": agent})

    def watch_opened(self, wid, res, ns, query):
        with self.lock:
            self.watches_total += 1
            self.watches[wid] = {"id": wid, "resource": res.plural, "namespace": ns, "query": query}

    def watch_closed(self, wid):
        with self.lock:
            self.watches.pop(wid, None)

    def as_json(self, store):
        with self.lock:
            out = {
                "watches_open": len(self.watches),
                "watches_total": self.watches_total,
                "watches": list(self.watches.values()),
                "requests": dict(self.requests),
                "requests_by_resource": {k: dict(v) for k, v in self.by_resource.items()},
                "log": list(self.log),
            }
        with store.cond:
            # How far each watch has been sent: at or past a change's
            # resourceVersion, the change is on its way to the client.
            out["watches"] = [dict(w, sent_resource_version=store.live_cursors.get(w["id"]))
                              for w in out["watches"]]
            out["resource_version"] = store.rv
            out["compacted_resource_version"] = store.compacted
            out["objects"] = {p: len(o) for p, o in store.objects.items()}
            out["history_events"] = sum(len(h) for h in store.hist.values())
        out["threads"] = threading.active_count()
        return out


# ---------------------------------------------------------------------------
# Discovery documents


def version_doc():
    return {
        "major": "1", "minor": "33", "gitVersion": "v1.33.0",
        "gitCommit": "60a317eadfcb839692a5551a4a6ae8f3ab8d0fa4", "gitTreeState": "clean",
        "buildDate": "2025-04-23T13:07:14Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_resource_list(group, version):
    resources = []
    for r in sorted(BY_GROUP[(group, version)].values(), key=lambda r: r.plural):
        main = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind, "verbs": r.verbs}
        if r.short_names:
            main["shortNames"] = r.short_names
        if r.kind != "Namespace":
            main["categories"] = ["all"]
        resources.append(main)
        resources.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                          "kind": r.kind, "verbs": ["get", "patch", "update"]})
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def api_group(group):
    gv = {"groupVersion": f"{group}/v1", "version": "v1"}
    return {"name": group, "versions": [gv], "preferredVersion": gv}


def api_group_list():
    groups = sorted({r.group for r in RESOURCES if r.group})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group(g) for g in groups]}


# ---------------------------------------------------------------------------
# HTTP


TRUE = ("true", "1", "True")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sonde-test-apiserver"

    def version_string(self):
        return self.server_version

    # -- plumbing -----------------------------------------------------------

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _read_body(self):
        n = self.headers.get("Content-Length")
        if n is None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._read_chunked()
            return b""
        return self.rfile.read(int(n))

    def _read_chunked(self):
        out = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline()

    def _send_json(self, code, value, extra_headers=()):
        body = dumps(value).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_text(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, err):
        self._send_json(err.code, err.status())

    def _dispatch(self, fn):
        try:
            fn()
        except ApiError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # a bug here: answer 500 rather than drop the client
            traceback.print_exc()
            self.close_connection = True
            try:
                self._send_error(ApiError(500, "InternalError", f"internal error: {e}"))
            except OSError:
                pass

    def do_GET(self):
        self._dispatch(self._get)

    def do_HEAD(self):
        self._dispatch(self._get)

    def do_PUT(self):
        self._dispatch(self._write)

    def do_POST(self):
        self._dispatch(self._write)

    def do_DELETE(self):
        self._dispatch(self._write)

    def do_PATCH(self):
        self._dispatch(self._write)

    # -- routing ------------------------------------------------------------

    def _parse(self):
        u = urlsplit(self.path)
        q = {}
        for k, v in parse_qs(u.query, keep_blank_values=True).items():
            q[k] = v[-1]
        parts = [p for p in u.path.split("/") if p]
        return u.path, u.query, parts, q

    def _meta_only(self, list_request):
        accept = self.headers.get("Accept", "")
        if "as=PartialObjectMetadata" not in accept:
            return False
        wants_list = "as=PartialObjectMetadataList" in accept
        if wants_list != list_request and "," not in accept:
            raise ApiError(406, "NotAcceptable", f"only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf")
        return True

    def _get(self):
        path, query, parts, q = self._parse()
        store, stats = self.server.store, self.server.stats
        agent = self.headers.get("User-Agent", "")
        if parts and parts[0] == "_control":
            return self._control("GET", parts, q)
        if path in ("/healthz", "/livez", "/readyz"):
            stats.count("health", None, path, query, agent)
            return self._send_text(200, "ok")
        disc = self._discovery(path)
        if disc is not None:
            stats.count("discovery", None, path, query, agent)
            return self._send_json(200, disc)
        route = self._route(parts)
        if route is None:
            stats.count("other", None, path, query, agent)
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})
        res, ns, name = route
        if name is None:
            if q.get("watch") in TRUE:
                stats.count("watch", res, path, query, agent)
                return self._watch(res, ns, q, query)
            stats.count("list", res, path, query, agent)
            return self._list(res, ns, q)
        if q.get("watch") in TRUE:
            # A watch on one object: the real server turns it into a
            # metadata.name field selector on the collection.
            stats.count("watch", res, path, query, agent)
            sel = q.get("fieldSelector", "")
            q["fieldSelector"] = f"metadata.name={name}" + (f",{sel}" if sel else "")
            return self._watch(res, ns, q, query)
        stats.count("get", res, path, query, agent)
        meta_only = self._meta_only(False)
        with store.cond:
            obj = store.objects[res.plural].get((ns or "", name))
        if obj is None:
            raise not_found(res, name)
        return self._send_json(200, partial_metadata(obj) if meta_only else obj)

    def _discovery(self, path):
        path = path.rstrip("/") or "/"
        if path == "/version":
            return version_doc()
        if path == "/api":
            host = "%s:%d" % self.server.server_address[:2]
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}
        if path == "/apis":
            return api_group_list()
        if path == "/api/v1":
            return api_resource_list("", "v1")
        parts = path.split("/")
        if len(parts) == 3 and parts[1] == "apis" and any(r.group == parts[2] for r in RESOURCES):
            return dict(api_group(parts[2]), kind="APIGroup", apiVersion="v1")
        if len(parts) == 4 and parts[1] == "apis" and (parts[2], parts[3]) in BY_GROUP:
            return api_resource_list(parts[2], parts[3])
        return None

    @staticmethod
    def _route(parts):
        """(resource, namespace or None, name or None) for a resource path."""
        if parts[:2] == ["api", "v1"]:
            gv, rest = ("", "v1"), parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            gv, rest = (parts[1], parts[2]), parts[3:]
        else:
            return None
        served = BY_GROUP.get(gv)
        if not served or not rest:
            return None
        if len(rest) in (1, 2) and rest[0] in served:
            res = served[rest[0]]
            if len(rest) == 2 and res.namespaced:
                return None
            return res, None, rest[1] if len(rest) == 2 else None
        if len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "status" and gv == ("", "v1"):
            return BY_PLURAL["namespaces"], None, rest[1]
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in served:
            res = served[rest[2]]
            if not res.namespaced:
                return None
            if len(rest) == 3:
                return res, rest[1], None
            if len(rest) == 4 or (len(rest) == 5 and rest[4] == "status"):
                return res, rest[1], rest[3]
        return None

    # -- LIST -----------------------------------------------------------------

    def _list(self, res, ns, q):
        store = self.server.store
        meta_only = self._meta_only(True)
        sel = Selector(res, q)
        rv_s = q.get("resourceVersion", "")
        rvm = q.get("resourceVersionMatch", "")
        cont = q.get("continue", "")
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise bad_request(f"invalid limit {q.get('limit')!r}")
        if limit < 0:
            raise invalid(f"limit: Invalid value: {limit}: must be greater than or equal to 0")
        if rvm and rvm not in ("Exact", "NotOlderThan"):
            raise invalid(f'resourceVersionMatch: Unsupported value: "{rvm}": supported values: "Exact", "NotOlderThan", ""')
        if rvm and cont:
            raise invalid("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided")
        if rvm and not rv_s:
            raise invalid("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided")
        if rvm == "Exact" and rv_s == "0":
            raise invalid('resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
        if cont and rv_s and rv_s != "0":
            raise bad_request("specifying resource version is not allowed when using continue")
        rv = None
        if rv_s and rv_s != "0":
            try:
                rv = int(rv_s)
            except ValueError:
                raise bad_request(f"invalid resource version: {rv_s!r}")
        with store.cond:
            start_after = None
            if cont:
                snap_rv, start_after = decode_continue(cont, res)
                if snap_rv < store.compacted:
                    raise expired(
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter.")
            elif rvm == "Exact":
                if rv < store.compacted:
                    raise expired(f"too old resource version: {rv} ({store.compacted})")
                store.wait_for_rv(rv)
                snap_rv = rv
            else:
                if rv is not None:
                    store.wait_for_rv(rv)
                snap_rv = store.rv
            keys, objs = store.snapshot(res, snap_rv)
        lo, hi = 0, len(keys)
        if ns is not None:
            lo = bisect.bisect_left(keys, (ns, ""))
            hi = bisect.bisect_left(keys, (ns + "\u0000",))
        if start_after is not None:
            lo = max(lo, bisect.bisect_right(keys, start_after))
        items, i = [], lo
        while i < hi and (limit == 0 or len(items) < limit):
            if sel.matches(objs[i]):
                items.append(objs[i])
            i += 1
        meta = {"resourceVersion": str(snap_rv)}
        if limit and i < hi and items:
            meta["continue"] = encode_continue(snap_rv, res, keys[i - 1])
            if sel.empty():
                meta["remainingItemCount"] = hi - i
        if meta_only:
            doc = {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                   "items": [partial_metadata(o) for o in items]}
        else:
            doc = {"kind": res.kind + "List", "apiVersion": res.api_version, "metadata": meta,
                   "items": [list_item(o) for o in items]}
        return self._send_json(200, doc)

    # -- WATCH --------------------------------------------------------------

    def _watch(self, res, ns, q, query):
        store, stats, server = self.server.store, self.server.stats, self.server
        meta_only = self._meta_only(False)
        sel = Selector(res, q)
        rv_s = q.get("resourceVersion", "")
        rvm = q.get("resourceVersionMatch", "")
        sie = q.get("sendInitialEvents")
        bookmarks = q.get("allowWatchBookmarks") in TRUE
        try:
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else server.default_watch_timeout
        except ValueError:
            raise bad_request(f"invalid timeoutSeconds {q.get('timeoutSeconds')!r}")
        if sie is not None:
            if rvm != "NotOlderThan":
                raise invalid("sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan")
            if not bookmarks:
                raise invalid("allowWatchBookmarks: Required value: allowWatchBookmarks must be set to true when sendInitialEvents is provided")
        elif rvm:
            raise invalid("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided")
        rv = None
        if rv_s and rv_s != "0":
            try:
                rv = int(rv_s)
            except ValueError:
                raise bad_request(f"invalid resource version: {rv_s!r}")
        wid = uuid.uuid4().hex
        initial, too_old, compacted = None, None, 0
        with store.cond:
            compacted = store.compacted
            if rv is None:
                # "" and "0": the current state as synthetic ADDED events
                # first (unless sendInitialEvents=false), then changes.
                want_initial = sie != "false"
                cursor = store.rv
            else:
                store.wait_for_rv(rv)
                want_initial = sie == "true"
                if want_initial:
                    cursor = store.rv
                elif rv < store.compacted:
                    too_old = rv
                    cursor = rv
                else:
                    cursor = rv
            if want_initial:
                _, objs = store.snapshot(res, cursor)
                initial = [o for o in objs if (ns is None or meta_of(o).get("namespace") == ns) and sel.matches(o)]
            if too_old is None:
                store.live_cursors[wid] = cursor
            generation = store.close_generation
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", wid)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if too_old is not None:
            err = expired(f"too old resource version: {too_old} ({compacted})").status()
            self._chunks([{"type": "ERROR", "object": err}])
            self.wfile.write(b"0\r\n\r\n")
            return
        stats.watch_opened(wid, res, ns, query)
        shape = partial_metadata if meta_only else (lambda o: o)
        abrupt = False
        try:
            if initial is not None:
                for i in range(0, len(initial), 200):
                    self._chunks([{"type": "ADDED", "object": shape(o)} for o in initial[i:i + 200]])
                if sie == "true":
                    bm = self._bookmark(res, cursor, meta_only)
                    bm["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
                    self._chunks([{"type": "BOOKMARK", "object": bm}])
            abrupt = self._stream(res, ns, sel, shape, cursor, wid, bookmarks, timeout, generation, meta_only)
            if not abrupt:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError):
            abrupt = True
        finally:
            with store.cond:
                store.live_cursors.pop(wid, None)
                store._trim()
            stats.watch_closed(wid)
        if abrupt:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _bookmark(res, rv, meta_only):
        if meta_only:
            return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": {"resourceVersion": str(rv)}}
        return {"kind": res.kind, "apiVersion": res.api_version, "metadata": {"resourceVersion": str(rv)}}

    def _chunks(self, events):
        buf = bytearray()
        for ev in events:
            line = (dumps(ev) + "\n").encode()
            buf += b"%x\r\n" % len(line) + line + b"\r\n"
        if buf:
            self.wfile.write(bytes(buf))

    def _peer_closed(self):
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if not r:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _stream(self, res, ns, sel, shape, cursor, wid, bookmarks, timeout, generation, meta_only):
        """Sends changes after `cursor` until the timeout; True when the
        stream must end without its last chunk (client gone, abrupt close)."""
        store, server = self.server.store, self.server
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + server.bookmark_interval
        while True:
            with store.cond:
                while True:
                    now = time.monotonic()
                    if store.close_generation != generation:
                        return store.close_abrupt
                    evs = store.events_after(res, cursor)
                    if evs or now >= deadline or (bookmarks and now >= next_bookmark):
                        break
                    wake = min(deadline, now + 1.0)
                    if bookmarks:
                        wake = min(wake, next_bookmark)
                    store.cond.wait(max(0.0, wake - now))
                    if time.monotonic() - now >= 0.9 and not store.events_after(res, cursor):
                        break  # idle a second: check the client is still there
                upto = store.rv
                store.live_cursors[wid] = upto
            out = []
            for e in evs:
                ev = self._convert(e, ns, sel)
                if ev is not None:
                    out.append({"type": ev[0], "object": shape(ev[1])})
            now = time.monotonic()
            if bookmarks and now >= next_bookmark:
                out.append({"type": "BOOKMARK", "object": self._bookmark(res, upto, meta_only)})
                next_bookmark = now + server.bookmark_interval
            cursor = upto
            if out:
                self._chunks(out)
            elif self._peer_closed():
                return True
            if now >= deadline:
                return False

    @staticmethod
    def _convert(e, ns, sel):
        """The event a watcher with namespace `ns` and selector `sel` sees,
        or None: an object that starts matching is ADDED, one that stops
        matching DELETED (its previous state at the change's RV)."""
        if ns is not None and meta_of(e.obj).get("namespace") != ns:
            return None
        if e.type == "ADDED":
            return ("ADDED", e.obj) if sel.matches(e.obj) else None
        if e.type == "DELETED":
            return ("DELETED", e.obj) if sel.matches(e.obj) else None
        cur = sel.matches(e.obj)
        old = sel.matches(e.prev)
        if cur and old:
            return ("MODIFIED", e.obj)
        if cur:
            return ("ADDED", e.obj)
        if old:
            return ("DELETED", with_rv(e.prev, e.rv))
        return None

    # -- writes: only the control API ----------------------------------------

    def _write(self):
        path, query, parts, q = self._parse()
        if parts and parts[0] == "_control":
            return self._control(self.command, parts, q)
        body = self._read_body()
        del body
        self.server.stats.count("other", None, path, query, self.headers.get("User-Agent", ""))
        raise ApiError(405, "MethodNotAllowed",
                       f"the server does not allow this method on the requested resource "
                       f"(this test server changes objects only through /_control/)")

    def _control(self, method, parts, q):
        store, stats = self.server.store, self.server.stats
        body = self._read_body() if method in ("PUT", "POST", "DELETE") else b""
        path = "/".join(parts[1:])
        stats.count("control", None, "/" + "/".join(parts), "", self.headers.get("User-Agent", ""))

        def parsed():
            try:
                return json.loads(body)
            except ValueError as e:
                raise bad_request(f"body is not JSON: {e}")

        if method == "PUT" and path == "objects":
            obj, created = store.apply(parsed())
            return self._send_json(201 if created else 200, obj)
        if method == "POST" and path == "bulk":
            n, rv = store.bulk(parsed())
            return self._send_json(200, {"count": n, "resourceVersion": str(rv)})
        if method in ("DELETE", "GET") and parts[1:2] == ["objects"] and len(parts) == 5:
            res = resource_named(parts[2])
            if res is None:
                raise bad_request(f"unknown kind {parts[2]!r}")
            ns = "" if parts[3] == "-" else parts[3]
            if method == "GET":
                with store.cond:
                    obj = store.objects[res.plural].get((ns if res.namespaced else "", parts[4]))
                if obj is None:
                    raise not_found(res, parts[4])
                return self._send_json(200, obj)
            return self._send_json(200, store.delete(res, ns, parts[4]))
        if method == "POST" and path == "compact":
            return self._send_json(200, {"compactedResourceVersion": str(store.compact())})
        if method == "POST" and path == "close-watches":
            with store.cond:
                store.close_generation += 1
                store.close_abrupt = q.get("abrupt") in TRUE
                store.cond.notify_all()
            return self._send_json(200, {"closed": True})
        if method == "GET" and path == "stats":
            return self._send_json(200, stats.as_json(store))
        if method == "POST" and path == "stats/reset":
            stats.reset()
            return self._send_json(200, {"reset": True})
        raise ApiError(404, "NotFound", f"no control endpoint {method} /_control/{path}")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout)):
            return  # a client that went away
        super().handle_error(request, client_address)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", nargs="?", type=int, help="port (same as --port)")
    ap.add_argument("--port", dest="port_opt", type=int, default=None, help="0 picks a free port (default)")
    ap.add_argument("--state", help="state file: loaded at start if present, appended to on every change")
    ap.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between BOOKMARK events (default 1)")
    ap.add_argument("--default-watch-timeout", type=float, default=1800.0,
                    help="watch length when the client sends no timeoutSeconds (default 1800)")
    ap.add_argument("--rv-wait", type=float, default=3.0,
                    help="how long a read waits for a resourceVersion newer than the store's before 504 (default 3)")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    port = args.port_opt if args.port_opt is not None else (args.port or 0)

    store = Store(args.state, rv_wait=args.rv_wait)
    # A restart on the same port may find it still held for a moment (a
    # client's connection being torn down): retry, as a restarted API
    # server's supervisor would.
    deadline = time.monotonic() + 5
    while True:
        try:
            server = Server(("127.0.0.1", port), Handler)
            break
        except OSError as e:
            if e.errno != errno.EADDRINUSE or port == 0 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    server.store = store
    server.stats = Stats()
    server.verbose = args.verbose
    server.bookmark_interval = args.bookmark_interval
    server.default_watch_timeout = args.default_watch_timeout

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("listening %s:%d" % server.server_address[:2], flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if store.journal:
            store.journal.close()


if __name__ == "__main__":
    main()
