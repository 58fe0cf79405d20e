//! The span record every later stage (enrich, metrics, sample, export) sees.

use std::sync::Arc;

use crate::capture::Endpoints;
use crate::protocol::headers::KeptHeaders;

/// OpenTelemetry span kind; sonde only produces these two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// The traced process accepted the connection and answered the request.
    Server,
    /// The traced process opened the connection and sent the request.
    Client,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(Text),
    Int(i64),
    Bool(bool),
}

impl AttrValue {
    /// A fixed string (`"http"`, `"tcp"`, `"GET"`): no allocation, on
    /// every span.
    pub fn fixed(s: &'static str) -> AttrValue {
        AttrValue::Str(Text::Static(s))
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(Text::from(s))
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(Text::Owned(s))
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// A string attribute value: a fixed one, or one read from traffic (kept
/// inline when short: addresses, host names and operation names, on every
/// span, then cost no allocation).
#[derive(Clone)]
pub enum Text {
    Static(&'static str),
    Inline(Inline),
    Owned(String),
}

/// Most bytes a [`Text::Inline`] holds.
pub const INLINE_MAX: usize = 22;

/// A short string stored in place. The bytes past `len` are zero, so two
/// are equal when their fields are (compared without a call to `memcmp`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Inline {
    len: u8,
    bytes: [u8; INLINE_MAX],
}

impl Inline {
    /// `s` stored in place, if it fits.
    pub fn new(s: &str) -> Option<Inline> {
        Some(Inline {
            len: s.len() as u8,
            bytes: padded(s.as_bytes())?,
        })
    }

    /// `bytes` stored in place, if they fit and are ASCII (text read from
    /// traffic, checked for UTF-8 more cheaply when it is short ASCII).
    pub fn ascii(bytes: &[u8]) -> Option<Inline> {
        let stored = padded(bytes)?;
        // Three words (the last overlaps) cover the array, padding included.
        let word = |at: usize| {
            let w = stored.get(at..).and_then(|w| w.first_chunk::<8>());
            w.map_or(0, |w| u64::from_le_bytes(*w))
        };
        let high = (word(0) | word(8) | word(INLINE_MAX - 8)) & 0x8080_8080_8080_8080;
        (high == 0).then_some(Inline {
            len: bytes.len() as u8,
            bytes: stored,
        })
    }

    /// Builds the text with `write`, which gets a buffer of `INLINE_MAX`
    /// bytes, fills a prefix of it with UTF-8 and returns that prefix's
    /// length (for formatting numbers in place).
    pub fn build(write: impl FnOnce(&mut [u8; INLINE_MAX]) -> usize) -> Option<Inline> {
        let mut bytes = [0; INLINE_MAX];
        let len = write(&mut bytes);
        std::str::from_utf8(bytes.get(..len)?).ok()?;
        bytes.get_mut(len..)?.fill(0);
        Some(Inline {
            len: len as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len).min(INLINE_MAX)];
        // SAFETY: the constructors store a whole `str` (`new`), ASCII
        // (`ascii`) or bytes checked to be UTF-8 (`build`), and nothing
        // changes them later.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

/// `bytes` zero-padded to [`INLINE_MAX`], if they fit: copied in pieces of
/// fixed sizes, which may overlap. A copy of a length not known when
/// compiling becomes a call to `memcpy`, which for a few bytes costs more
/// than the copy.
fn padded(bytes: &[u8]) -> Option<[u8; INLINE_MAX]> {
    fn put<const N: usize>(out: &mut [u8; INLINE_MAX], from: &[u8], at: usize) -> Option<()> {
        *out.get_mut(at..)?.first_chunk_mut::<N>()? = *from.get(at..)?.first_chunk::<N>()?;
        Some(())
    }
    let mut out = [0; INLINE_MAX];
    let len = bytes.len();
    match len {
        0 => {}
        1..=3 => {
            for at in [0, len / 2, len - 1] {
                put::<1>(&mut out, bytes, at)?;
            }
        }
        4..=7 => {
            put::<4>(&mut out, bytes, 0)?;
            put::<4>(&mut out, bytes, len - 4)?;
        }
        8..=16 => {
            put::<8>(&mut out, bytes, 0)?;
            put::<8>(&mut out, bytes, len - 8)?;
        }
        17..=INLINE_MAX => {
            put::<8>(&mut out, bytes, 0)?;
            put::<8>(&mut out, bytes, 8)?;
            put::<8>(&mut out, bytes, len - 8)?;
        }
        _ => return None,
    }
    Some(out)
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Inline(s) => s.as_str(),
            Text::Owned(s) => s,
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        match Inline::new(s) {
            Some(inline) => Text::Inline(inline),
            None => Text::Owned(s.to_owned()),
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

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

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Owned(s)
    }
}

/// Span status, per the OpenTelemetry trace API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Error { description: String },
}

/// One finished span, with wall-clock times and semantic-convention
/// attributes. Resource attributes are not here: they belong to the process
/// (`pid`) and are added by the enrich stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Set when the request carried a W3C traceparent.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    /// Unix time in nanoseconds.
    pub start_unix_ns: u64,
    /// Unix time in nanoseconds.
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub status: SpanStatus,
    /// The process (tgid) the span was observed in.
    pub pid: u32,
    /// The connection it was observed on (for the service graph).
    pub endpoints: Endpoints,
    /// The tenant a header rule gave this request; none: its process's
    /// (see `enrich::tenant`).
    pub tenant: Option<Text>,
    /// The request's values of the headers the tenant rules name, by
    /// index in `Tenants::headers()`: what the pipeline judges `tenant`
    /// by. Empty (and unallocated) when none is configured or carried.
    pub tenant_headers: KeptHeaders,
    /// What only an exported span carries, written by [`Span::complete`].
    pub rest: Rest,
}

/// The part of a span only its export needs: the attributes metrics and
/// sampling do not read (full URL, path, peer and client addresses, user
/// agent, query text) and its ids. Most spans are dropped by the sampler
/// once they have fed the metrics, so a span is built in two steps: what
/// metrics and sampling read at once, the rest only for the spans kept.
#[derive(Clone, Default)]
pub struct Rest(Option<Arc<WriteRest>>);

/// Adds what only an exported span carries.
type WriteRest = dyn Fn(&mut Span) + Send + Sync;

impl Rest {
    /// `write` adds the rest to the span when it is kept.
    pub fn later(write: impl Fn(&mut Span) + Send + Sync + 'static) -> Rest {
        Rest(Some(Arc::new(write)))
    }
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Rest(pending)"
        } else {
            "Rest(written)"
        })
    }
}

/// Two spans are equal only when both are complete (or share one rest).
impl PartialEq for Rest {
    fn eq(&self, other: &Rest) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Span {
    /// The value of attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    /// Writes what only an exported span carries: the rest of its
    /// attributes, and ids (its own, and a new trace unless the request
    /// carried one). Once is enough; a second call changes nothing.
    pub fn complete(&mut self) {
        if let Some(write) = self.rest.0.take() {
            write(self);
        }
        if self.trace_id == [0; 16] {
            self.trace_id = crate::span::ids::new_trace_id();
        }
        if self.span_id == [0; 8] {
            self.span_id = crate::span::ids::new_span_id();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_inline_long_text_owned() {
        let fits = "a".repeat(INLINE_MAX);
        let longer = "é".repeat(INLINE_MAX / 2) + "x";
        assert!(matches!(Text::from(fits.as_str()), Text::Inline(_)));
        assert!(matches!(Text::from(longer.as_str()), Text::Owned(_)));
        for s in ["", "127.0.0.1", "ü-ß", fits.as_str(), longer.as_str()] {
            assert_eq!(Text::from(s).as_str(), s);
            assert_eq!(AttrValue::from(s), AttrValue::from(s.to_owned()));
        }
        // `build` refuses bytes that are not UTF-8 or a length past the buffer.
        assert!(
            Inline::build(|b| {
                b[0] = 0xff;
                1
            })
            .is_none()
        );
        assert!(Inline::build(|_| INLINE_MAX + 1).is_none());
    }

    /// Every length is copied whole and padded with zeros, so equal texts
    /// are equal inlines whichever constructor made them.
    #[test]
    fn inline_copies_every_length() {
        let source: Vec<u8> = (b'a'..).take(INLINE_MAX + 1).collect();
        for len in 0..=INLINE_MAX + 1 {
            let bytes = &source[..len];
            let s = std::str::from_utf8(bytes).unwrap();
            let (new, ascii) = (Inline::new(s), Inline::ascii(bytes));
            if len > INLINE_MAX {
                assert!(new.is_none() && ascii.is_none(), "{len}");
                continue;
            }
            let (new, ascii) = (new.unwrap(), ascii.unwrap());
            assert_eq!(new.as_str(), s);
            assert!(new.bytes[len..].iter().all(|&b| b == 0), "{len}: padded");
            assert!(new == ascii, "{len}");
            let built = Inline::build(|b| {
                b.fill(b'z');
                b[..len].copy_from_slice(bytes);
                len
            });
            assert!(built == Some(new), "{len}: build pads too");
        }
        assert!(Inline::ascii("é".as_bytes()).is_none(), "not ASCII");
        assert!(Inline::new("ab") != Inline::new("ac"));
    }
}
