//! Request headers the HTTP parsers keep for each request, by name: the
//! ones the tenant rules name (`enrich::tenant`), usually none or one.
//!
//! The names are handed to each session ([`super::SessionOptions`]), so
//! the parsers stay pure. With no name given nothing is kept and nothing
//! is allocated.

use std::sync::Arc;

use crate::span::model::{Inline, Text};

/// Most bytes of a kept value; a longer value is cut at a character
/// boundary (a tenant id is short: a longer value is not one anyway).
pub const MAX_KEPT_VALUE: usize = 256;

/// Most header names kept: their index must fit the `u8` of
/// [`KeptHeaders`].
pub const MAX_KEPT_NAMES: usize = 64;

/// The names of the request headers to keep, lowercase. A value is known
/// by its name's index here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderNames {
    names: Arc<[String]>,
    /// Bit `n` set: some name is `n` bytes long (bit 63: 63 or more). Every
    /// header line of every request is checked: this turns nearly all of
    /// them away with one test.
    lengths: u64,
}

/// The kept headers of one request: (index in the [`HeaderNames`], value),
/// at most one value per name. One short value (a tenant id) takes no
/// allocation; empty when none is kept.
pub type KeptHeaders = smallvec::SmallVec<[(u8, Text); 1]>;

/// The first [`MAX_KEPT_NAMES`] of `names` as [`HeaderNames`], trimmed
/// and lowercased, each at the index it had: the caller looks values up
/// by its own numbering.
pub fn header_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> HeaderNames {
    let names: Arc<[String]> = names
        .into_iter()
        .take(MAX_KEPT_NAMES)
        .map(|n| n.as_ref().trim().to_ascii_lowercase())
        .collect();
    let lengths = names
        .iter()
        .filter(|n| !n.is_empty())
        .fold(0, |bits, n| bits | length_bit(n.len()));
    HeaderNames { names, lengths }
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

impl HeaderNames {
    /// No names: nothing is kept.
    pub fn none() -> &'static HeaderNames {
        static NONE: std::sync::LazyLock<HeaderNames> = std::sync::LazyLock::new(Default::default);
        &NONE
    }

    /// The index of header `name` (any case), if it is kept.
    #[inline]
    pub fn index_of(&self, name: &[u8]) -> Option<u8> {
        if self.lengths & length_bit(name.len()) == 0 {
            return None;
        }
        self.names
            .iter()
            .position(|n| eq_lowercase(n.as_bytes(), name))
            .and_then(|i| u8::try_from(i).ok())
    }
}

/// Whether `name` in any case is `lower` (lowercase). Eight bytes at a
/// time: byte by byte, the ASCII case-insensitive comparison of a header
/// name cost more than the rest of keeping its value.
fn eq_lowercase(lower: &[u8], name: &[u8]) -> bool {
    let len = name.len();
    if lower.len() != len {
        return false;
    }
    let same = |at: usize| {
        let word = |b: &[u8]| {
            b.get(at..at + 8)
                .and_then(|w| w.try_into().ok())
                .map(u64::from_le_bytes)
        };
        matches!((word(lower), word(name)), (Some(l), Some(n)) if l == to_lower_word(n))
    };
    if len < 8 {
        let word = |b: &[u8]| b.iter().rev().fold(0, |w, &b| (w << 8) | u64::from(b));
        return word(lower) == to_lower_word(word(name));
    }
    // Whole words, then the last eight bytes (overlapping the one before).
    let mut at = 0;
    while at + 8 < len {
        if !same(at) {
            return false;
        }
        at += 8;
    }
    same(len - 8)
}

/// Each ASCII uppercase letter of the eight bytes of `w` made lowercase;
/// bytes of 0x80 and above are left as they are.
fn to_lower_word(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    let ascii = !w & HIGH;
    let low7 = w & !HIGH;
    // Bit 7 of each byte: its low seven bits are at least b'A', and below
    // b'Z' + 1 (no carry leaves a byte: each sum stays under 0x100).
    let from_a = low7 + (0x80 - u64::from(b'A')) * ONES;
    let past_z = low7 + (0x80 - u64::from(b'Z') - 1) * ONES;
    let upper = from_a & !past_z & ascii;
    w | (upper >> 2)
}

impl std::ops::Deref for HeaderNames {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.names
    }
}

/// Keeps `value` as kept header `index` of a request. A repeated header
/// keeps its first non-blank value: the one a server reading the first
/// field would act on, and the same whichever of two gateways reads it.
pub fn keep(kept: &mut KeptHeaders, index: u8, value: &[u8]) {
    let value = value.trim_ascii();
    if value.is_empty() || kept.iter().any(|(i, _)| *i == index) {
        return;
    }
    // A tenant id is short ASCII: kept in place, no UTF-8 decoding.
    let text = match Inline::ascii(value) {
        Some(inline) => Text::Inline(inline),
        None => {
            let text = bounded_text(value);
            // Blank in any script is no value (ASCII blanks are trimmed
            // above).
            if text.chars().all(char::is_whitespace) {
                return;
            }
            text
        }
    };
    kept.push((index, text));
}

/// The value of kept header `index`, if the request carried it.
pub fn value_of(kept: &[(u8, Text)], index: usize) -> Option<&str> {
    kept.iter()
        .find(|(i, _)| usize::from(*i) == index)
        .map(|(_, v)| &**v)
}

/// `value` as text of at most [`MAX_KEPT_VALUE`] bytes: invalid UTF-8 is
/// replaced, and a cut never splits a character.
fn bounded_text(value: &[u8]) -> Text {
    if value.len() <= MAX_KEPT_VALUE
        && let Ok(text) = std::str::from_utf8(value)
    {
        return Text::from(text);
    }
    let mut cut = value.get(..MAX_KEPT_VALUE).unwrap_or(value);
    if cut.len() < value.len()
        && let Err(e) = std::str::from_utf8(cut)
        && e.error_len().is_none()
    {
        // Only the last character is incomplete: it was cut, drop it.
        cut = cut.get(..e.valid_up_to()).unwrap_or_default();
    }
    let text = String::from_utf8_lossy(cut);
    // A replacement character is longer than the byte it replaces.
    let mut end = text.len().min(MAX_KEPT_VALUE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Text::from(text.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_and_compare_in_any_case() {
        let names = header_names([" X-Tenant-Id", "", "X-Org"]);
        assert_eq!(&names[..], ["x-tenant-id", "", "x-org"], "indices kept");
        assert_eq!(names.index_of(b"x-tenant-id"), Some(0));
        assert_eq!(names.index_of(b"X-TENANT-ID"), Some(0));
        assert_eq!(names.index_of(b"X-Org"), Some(2));
        assert_eq!(names.index_of(b"x-tenant"), None);
        assert_eq!(names.index_of(b"x-tenant-ix"), None, "same length");
        assert_eq!(names.index_of(b""), None, "an empty name names nothing");
        assert_eq!(HeaderNames::none().index_of(b"x-tenant-id"), None);
        let many = header_names((0..100).map(|i| format!("h{i}")));
        assert_eq!(many.len(), MAX_KEPT_NAMES);
        assert_eq!(many.index_of(b"H63"), Some(63));
        // Names of 63 bytes or more share one length bit.
        let long = header_names(["x".repeat(63), "y".repeat(80)]);
        assert_eq!(long.index_of("Y".repeat(80).as_bytes()), Some(1));
        assert_eq!(long.index_of("x".repeat(64).as_bytes()), None);
    }

    #[test]
    fn first_non_blank_value_is_kept() {
        let mut kept = KeptHeaders::new();
        keep(&mut kept, 0, b"  ");
        keep(&mut kept, 0, "\u{a0}\u{2003}".as_bytes());
        keep(&mut kept, 0, b" acme ");
        keep(&mut kept, 0, b"globex");
        keep(&mut kept, 1, b"ops");
        assert_eq!(&kept[..], [(0, Text::from("acme")), (1, Text::from("ops"))]);
        assert_eq!(value_of(&kept, 0), Some("acme"));
        assert_eq!(value_of(&kept, 1), Some("ops"));
        assert_eq!(value_of(&kept, 2), None);
        // Short ASCII is kept in place.
        assert!(matches!(kept[0].1, Text::Inline(_)));
    }

    /// The word-at-a-time comparison against the byte-by-byte one, over
    /// every pair of bytes in every place of names of 1 to 17 bytes.
    #[test]
    fn names_compare_as_eq_ignore_ascii_case_does() {
        for len in 1..=17 {
            for at in 0..len {
                for a in 0..=255u8 {
                    let mut lower = vec![b'k'; len];
                    lower[at] = a.to_ascii_lowercase();
                    for b in 0..=255u8 {
                        let mut name = vec![b'K'; len];
                        name[at] = b;
                        assert_eq!(
                            eq_lowercase(&lower, &name),
                            lower.eq_ignore_ascii_case(&name),
                            "{lower:?} {name:?}"
                        );
                    }
                }
            }
        }
        assert!(!eq_lowercase(b"x-tenant-id", b"x-tenant-i"));
        assert!(eq_lowercase(b"", b""));
    }

    #[test]
    fn values_are_bounded_text() {
        let long = "a".repeat(MAX_KEPT_VALUE + 10);
        assert_eq!(bounded_text(long.as_bytes()).len(), MAX_KEPT_VALUE);
        // A character across the bound is dropped whole, never split.
        for before in 250..MAX_KEPT_VALUE {
            for c in ["é", "€", "😀"] {
                let v = "a".repeat(before) + &c.repeat(4);
                let text = bounded_text(v.as_bytes());
                assert!(text.len() <= MAX_KEPT_VALUE, "{before} {c}");
                assert!(v.starts_with(&*text), "{before} {c}: a prefix of the value");
                assert!(
                    text.len() + c.len() > MAX_KEPT_VALUE,
                    "{before} {c}: as much as fits"
                );
            }
        }
        assert_eq!(&*bounded_text(b"acme"), "acme");
        assert_eq!(&*bounded_text("zürich".as_bytes()), "zürich");
        let long = "t".repeat(40);
        assert_eq!(&*bounded_text(long.as_bytes()), long);
        // Bytes that are not UTF-8 become replacement characters, still
        // within the bound.
        assert_eq!(&*bounded_text(b"t\xff1"), "t\u{fffd}1");
        let bad = vec![0xff; MAX_KEPT_VALUE * 2];
        let text = bounded_text(&bad);
        assert!(text.len() <= MAX_KEPT_VALUE && text.chars().all(|c| c == '\u{fffd}'));
    }
}
