//! Metric attribute sets: picked from a span without allocating, hashed, and
//! compared with the sets already stored.
//!
//! A set is the values of a fixed list of keys (the metric's), in that
//! order, with absent keys left out. Values are borrowed from the span while
//! a measurement is looked up; only a set never seen before is copied.

use std::hash::Hasher;

use crate::span::model::{AttrValue, Inline, Span};

/// Most attributes one metric keeps.
pub const MAX_ATTRS: usize = 10;

/// An attribute value borrowed from a span (or a resource).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

impl<'a> Val<'a> {
    pub fn of(v: &'a AttrValue) -> Val<'a> {
        match v {
            AttrValue::Str(s) => Val::Str(s),
            AttrValue::Int(i) => Val::Int(*i),
            AttrValue::Bool(b) => Val::Bool(*b),
        }
    }

    pub fn to_stored(self) -> OwnedVal {
        match self {
            Val::Str(s) => OwnedVal::Str(Text::new(s)),
            Val::Int(i) => OwnedVal::Int(i),
            Val::Bool(b) => OwnedVal::Bool(b),
        }
    }
}

/// A stored attribute value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnedVal {
    Str(Text),
    Int(i64),
    Bool(bool),
}

impl OwnedVal {
    pub fn as_val(&self) -> Val<'_> {
        match self {
            OwnedVal::Str(s) => Val::Str(s.as_str()),
            OwnedVal::Int(i) => Val::Int(*i),
            OwnedVal::Bool(b) => Val::Bool(*b),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            OwnedVal::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// Whether `v` is this value (strings compared as bytes).
    #[inline]
    pub fn is(&self, v: &Val<'_>) -> bool {
        match (self, v) {
            (OwnedVal::Str(a), Val::Str(b)) => a.as_bytes() == b.as_bytes(),
            (OwnedVal::Int(a), Val::Int(b)) => a == b,
            (OwnedVal::Bool(a), Val::Bool(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for OwnedVal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnedVal::Str(s) => f.write_str(s.as_str()),
            OwnedVal::Int(i) => write!(f, "{i}"),
            OwnedVal::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A stored string: short ones (methods, schemes, versions, status codes,
/// most routes of a few segments) inline, as span attributes keep them, so
/// comparing a stored attribute set reads no other memory; longer ones on
/// the heap.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    Inline(Inline),
    Heap(Box<str>),
}

impl Text {
    pub fn new(s: &str) -> Text {
        match Inline::new(s) {
            Some(inline) => Text(Repr::Inline(inline)),
            None => Text(Repr::Heap(s.into())),
        }
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.as_str().as_bytes()
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(inline) => inline.as_str(),
            Repr::Heap(s) => s,
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        // A text is inline exactly when it fits: inline and heap texts
        // always differ.
        match (&self.0, &other.0) {
            (Repr::Inline(a), Repr::Inline(b)) => a == b,
            (Repr::Heap(a), Repr::Heap(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Text {}

impl std::hash::Hash for Text {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write(self.as_bytes());
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::new(&s)
    }
}

/// A stored attribute set.
pub type OwnedAttrs = std::sync::Arc<[(Key, OwnedVal)]>;

/// An attribute set under construction, on the stack.
#[derive(Clone, Copy, Debug)]
pub struct AttrSet<'a> {
    items: [(Key, Val<'a>); MAX_ATTRS],
    len: usize,
}

impl Default for AttrSet<'_> {
    fn default() -> Self {
        AttrSet {
            items: [(Key::Method, Val::Bool(false)); MAX_ATTRS],
            len: 0,
        }
    }
}

/// HTTP methods kept as they are; any other becomes `_OTHER`, as the
/// semantic conventions ask (a method is chosen by the client and could
/// otherwise be anything).
const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

macro_rules! keys {
    ($($id:ident = $name:literal,)*) => {
        /// A span attribute the metrics stage reads.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Key { $($id,)* }

        /// The names of [`Key`], in order.
        pub const KEY_NAMES: &[&str] = &[$($name,)*];

        /// The key named `name`. A `match` on literals, so the compiler
        /// compares against constants instead of calling `memcmp`.
        #[inline]
        pub fn key_of(name: &str) -> Option<Key> {
            match name {
                $($name => Some(Key::$id),)*
                _ => None,
            }
        }
    };
}

keys! {
    Method = "http.request.method",
    Route = "http.route",
    StatusCode = "http.response.status_code",
    ErrorType = "error.type",
    UrlScheme = "url.scheme",
    ProtocolName = "network.protocol.name",
    ProtocolVersion = "network.protocol.version",
    ServerAddress = "server.address",
    ServerPort = "server.port",
    RpcSystem = "rpc.system",
    RpcService = "rpc.service",
    RpcMethod = "rpc.method",
    GrpcStatus = "rpc.grpc.status_code",
    DbSystem = "db.system.name",
    DbOperation = "db.operation.name",
    DbNamespace = "db.namespace",
    DbCollection = "db.collection.name",
    DbStatus = "db.response.status_code",
    RequestBodySize = "http.request.body.size",
    ResponseBodySize = "http.response.body.size",
    Client = "client",
    Server = "server",
    ConnectionType = "connection_type",
    Overflow = "otel.metric.overflow",
    Reason = "reason",
    Protocol = "protocol",
    Metric = "metric",
    Side = "side",
    ExportRoute = "route",
    Tenant = "tenant.id",
    ClientTenant = "client_tenant.id",
    ServerTenant = "server_tenant.id",
}

/// Keys there are.
pub const KEY_COUNT: usize = KEY_NAMES.len();

impl Key {
    pub fn name(self) -> &'static str {
        match self {
            Key::Tenant | Key::ClientTenant | Key::ServerTenant => {
                let names = TENANT_NAMES
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                names[self as usize - Key::Tenant as usize]
            }
            _ => KEY_NAMES[self as usize],
        }
    }
}

/// The names of [`Key::Tenant`], [`Key::ClientTenant`] and
/// [`Key::ServerTenant`]: the configured tenant attribute (`tenants.attribute`),
/// and it prefixed `client_` and `server_` for the two ends of a service
/// graph edge. One agent has one setting, so it is kept here rather than
/// passed to every reader of a series.
static TENANT_NAMES: std::sync::RwLock<[&'static str; 3]> =
    std::sync::RwLock::new(["tenant.id", "client_tenant.id", "server_tenant.id"]);

/// Names the tenant keys after `attribute` (see [`Key::name`]).
pub fn set_tenant_attribute(attribute: &str) {
    let mut names = TENANT_NAMES
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if names[0] != attribute {
        // Leaked: the names are handed out as `'static`, and a new name
        // comes only with a reload that changes the setting.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        *names = [
            leak(attribute.to_owned()),
            leak(format!("client_{attribute}")),
            leak(format!("server_{attribute}")),
        ];
    }
}

/// The attributes of one span that metrics read, found in one pass.
#[derive(Clone, Copy, Debug)]
pub struct Picked<'a> {
    values: [Option<&'a AttrValue>; KEY_COUNT],
}

impl<'a> Picked<'a> {
    /// Reads `span`'s attributes once; the first value of a key wins.
    pub fn of(span: &'a Span) -> Picked<'a> {
        let mut values = [None; KEY_COUNT];
        for (k, v) in &span.attributes {
            if let Some(key) = key_of(k) {
                let slot = &mut values[key as usize];
                if slot.is_none() {
                    *slot = Some(v);
                }
            }
        }
        Picked { values }
    }

    #[inline]
    pub fn get(&self, key: Key) -> Option<&'a AttrValue> {
        self.values[key as usize]
    }

    #[inline]
    pub fn has(&self, key: Key) -> bool {
        self.values[key as usize].is_some()
    }
}

impl<'a> AttrSet<'a> {
    /// The values of `keys`, in the order of `keys`; absent keys are left out.
    pub fn from_picked(picked: &Picked<'a>, keys: &[Key]) -> AttrSet<'a> {
        let mut set = AttrSet::default();
        for &key in keys.iter().take(MAX_ATTRS) {
            let Some(value) = picked.get(key) else {
                continue;
            };
            let mut v = Val::of(value);
            if key == Key::Method
                && let Val::Str(m) = v
                && !KNOWN_METHODS.contains(&m)
            {
                v = Val::Str("_OTHER");
            }
            set.push(key, v);
        }
        set
    }

    /// The values of `keys` in `span` (see [`AttrSet::from_picked`]).
    pub fn from_span(span: &'a Span, keys: &[Key]) -> AttrSet<'a> {
        AttrSet::from_picked(&Picked::of(span), keys)
    }

    /// Adds one attribute (ignored once the set is full).
    pub fn push(&mut self, key: Key, value: Val<'a>) {
        if self.len < MAX_ATTRS {
            self.items[self.len] = (key, value);
            self.len += 1;
        }
    }

    pub fn items(&self) -> &[(Key, Val<'a>)] {
        &self.items[..self.len]
    }

    /// The value of `key`, if in the set.
    pub fn get(&self, key: Key) -> Option<Val<'a>> {
        self.items()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// The hash of the set together with the resource slot it belongs to.
    pub fn hash(&self, slot: u32) -> u64 {
        let mut h = fold(u64::from(slot) ^ SEED0, SEED1);
        for (k, v) in self.items() {
            h ^= (*k as u64) << 56;
            h = match v {
                Val::Str(s) => hash_bytes(h, s.as_bytes()),
                Val::Int(i) => fold(h ^ (*i as u64), SEED2),
                Val::Bool(b) => fold(h ^ u64::from(*b) ^ 0xb0, SEED2),
            };
        }
        h
    }

    /// Whether `stored` holds the same attributes.
    pub fn matches(&self, stored: &[(Key, OwnedVal)]) -> bool {
        self.len == stored.len()
            && self
                .items()
                .iter()
                .zip(stored)
                .all(|((k, v), (sk, sv))| k == sk && sv.is(v))
    }

    pub fn to_stored(&self) -> OwnedAttrs {
        self.items()
            .iter()
            .map(|(k, v)| (*k, v.to_stored()))
            .collect()
    }
}

const SEED0: u64 = 0x243f_6a88_85a3_08d3;
const SEED1: u64 = 0x1319_8a2e_0370_7344;
const SEED2: u64 = 0xa409_3822_299f_31d0;
const SEED3: u64 = 0x082e_fa98_ec4e_6c89;

/// Multiplies to 128 bits and folds the halves together.
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline]
fn read8(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[inline]
fn read4(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u64::from(u32::from_le_bytes(w))
}

/// Hashes `bytes` into `seed`: 16 bytes per multiplication, the tail read
/// with overlapping loads rather than copied.
#[inline]
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let mut s = seed ^ (len as u64).wrapping_mul(SEED3);
    let (a, b) = if len <= 16 {
        if len >= 8 {
            (read8(bytes, 0), read8(bytes, len - 8))
        } else if len >= 4 {
            (read4(bytes, 0), read4(bytes, len - 4))
        } else if len > 0 {
            let x = u64::from(bytes[0])
                | (u64::from(bytes[len / 2]) << 8)
                | (u64::from(bytes[len - 1]) << 16);
            (x, 0)
        } else {
            (0, 0)
        }
    } else {
        let mut i = 0;
        while i + 16 < len {
            s = fold(read8(bytes, i) ^ SEED1, read8(bytes, i + 8) ^ s);
            i += 16;
        }
        (read8(bytes, len - 16), read8(bytes, len - 8))
    };
    fold(a ^ SEED1, b ^ s ^ SEED2)
}

/// A fast non-cryptographic hasher for short keys (pointers, addresses).
/// The inputs come from traced traffic, but every table it serves is
/// bounded, so a crafted collision can only slow lookups down within that
/// bound.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(self.0, bytes);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = fold(self.0 ^ u64::from(i) ^ SEED0, SEED1);
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.0 = fold(self.0 ^ u64::from(i) ^ SEED0, SEED1);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.0 = fold(self.0 ^ u64::from(i) ^ SEED0, SEED1);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = fold(self.0 ^ i ^ SEED0, SEED1);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0 = fold(self.0 ^ i as u64 ^ SEED0, SEED1);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.0 = fold(self.0 ^ (i as u64) ^ SEED0, ((i >> 64) as u64) ^ SEED1);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FastBuild = std::hash::BuildHasherDefault<FastHasher>;

/// An IP address hashed as one word (IPv4) or its 16 bytes (IPv6);
/// `std`'s own `Hash` feeds a hasher many small pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpKey(pub std::net::IpAddr);

impl std::hash::Hash for IpKey {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self.0 {
            std::net::IpAddr::V4(a) => h.write_u64(u64::from(u32::from(a))),
            std::net::IpAddr::V6(a) => h.write_u128(u128::from(a)),
        }
    }
}

/// A socket address hashed as one word (IPv4) or two (IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrKey(pub std::net::SocketAddr);

impl std::hash::Hash for AddrKey {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self.0 {
            std::net::SocketAddr::V4(a) => {
                h.write_u64((u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port()));
            }
            std::net::SocketAddr::V6(a) => {
                h.write_u128(u128::from(*a.ip()));
                h.write_u16(a.port());
            }
        }
    }
}

/// For maps keyed by a hash that is already well mixed.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type IdentityBuild = std::hash::BuildHasherDefault<IdentityHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::{SpanKind, SpanStatus};

    fn span(attrs: Vec<(&'static str, AttrValue)>) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: "x".into(),
            kind: SpanKind::Server,
            start_unix_ns: 0,
            end_unix_ns: 1,
            attributes: attrs,
            status: SpanStatus::Unset,
            pid: 1,
            endpoints: crate::capture::Endpoints::UNKNOWN,
            tenant: None,
            tenant_headers: Default::default(),
            rest: Default::default(),
        }
    }

    #[test]
    fn picks_keys_in_key_order_and_skips_absent_ones() {
        let s = span(vec![
            ("http.response.status_code", AttrValue::Int(200)),
            ("url.path", "/users/7".into()),
            ("http.route", "/users/{id}".into()),
            ("http.request.method", "GET".into()),
        ]);
        let set = AttrSet::from_span(
            &s,
            &[Key::Method, Key::Route, Key::ErrorType, Key::StatusCode],
        );
        assert_eq!(
            set.items(),
            &[
                (Key::Method, Val::Str("GET")),
                (Key::Route, Val::Str("/users/{id}")),
                (Key::StatusCode, Val::Int(200)),
            ]
        );
    }

    #[test]
    fn every_key_name_maps_back() {
        for (i, name) in KEY_NAMES.iter().enumerate() {
            let key = key_of(name).unwrap();
            assert_eq!(key as usize, i);
            assert_eq!(key.name(), *name);
        }
        assert_eq!(key_of("url.path"), None);
    }

    #[test]
    fn byte_hash_sees_every_byte_and_the_length() {
        let mut seen = std::collections::HashSet::new();
        let text = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ";
        for len in 0..text.len() {
            assert!(seen.insert(hash_bytes(1, &text[..len])), "length {len}");
            let mut changed = text[..len].to_vec();
            for i in 0..len {
                changed[i] ^= 1;
                assert!(
                    seen.insert(hash_bytes(1, &changed)),
                    "length {len} byte {i}"
                );
                changed[i] ^= 1;
            }
        }
    }

    #[test]
    fn short_and_long_texts() {
        for s in [
            "",
            "GET",
            "exactly twenty-two b..",
            "a longer route /x/y/z/{id}/more",
        ] {
            let t = Text::new(s);
            assert_eq!(t.as_str(), s);
            assert_eq!(t, Text::from(s.to_string()));
            assert!(OwnedVal::Str(t).is(&Val::Str(s)));
        }
        assert_eq!(std::mem::size_of::<OwnedVal>(), 24);
        assert!(!OwnedVal::Str(Text::new("200")).is(&Val::Int(200)));
    }

    #[test]
    fn unknown_methods_become_other() {
        let s = span(vec![("http.request.method", "FROB".into())]);
        let set = AttrSet::from_span(&s, &[Key::Method]);
        assert_eq!(set.get(Key::Method), Some(Val::Str("_OTHER")));
    }

    #[test]
    fn equal_sets_hash_and_match_alike() {
        let a = span(vec![
            ("http.route", "/a".into()),
            ("http.response.status_code", AttrValue::Int(200)),
        ]);
        let b = span(vec![
            ("http.response.status_code", AttrValue::Int(200)),
            ("http.route", "/a".into()),
        ]);
        let c = span(vec![
            ("http.route", "/a".into()),
            ("http.response.status_code", AttrValue::Int(500)),
        ]);
        let keys = [Key::Route, Key::StatusCode];
        let (sa, sb, sc) = (
            AttrSet::from_span(&a, &keys),
            AttrSet::from_span(&b, &keys),
            AttrSet::from_span(&c, &keys),
        );
        assert_eq!(sa.hash(3), sb.hash(3));
        assert_ne!(sa.hash(3), sa.hash(4));
        assert_ne!(sa.hash(3), sc.hash(3));
        let stored = sa.to_stored();
        assert!(sb.matches(&stored));
        assert!(!sc.matches(&stored));
        // A string "200" is not the integer 200.
        let d = span(vec![
            ("http.route", "/a".into()),
            ("http.response.status_code", "200".into()),
        ]);
        assert!(!AttrSet::from_span(&d, &keys).matches(&stored));
    }
}
