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
pub type HeaderNames = Arc<[String]>;

/// The kept headers of one request: (index in the [`HeaderNames`], value),
/// at most one value per name. One short value (a tenant id) takes no
/// allocation; empty when none is kept.
pub type KeptHeaders = smallvec::SmallVec<[(u8, Text); 1]>;

/// The first [`MAX_KEPT_NAMES`] of `names` as [`HeaderNames`], trimmed
/// and lowercased, each at the index it had: the caller looks values up
/// by its own numbering.
pub fn header_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> HeaderNames {
    names
        .into_iter()
        .take(MAX_KEPT_NAMES)
        .map(|n| n.as_ref().trim().to_ascii_lowercase())
        .collect()
}

/// The index of header `name` (any case) among `names`, if it is kept.
pub fn index_of(names: &[String], name: &[u8]) -> Option<u8> {
    // Called for every header line of every request: the length and the
    // first byte turn nearly every other header away before the full
    // comparison.
    let first = name.first()?.to_ascii_lowercase();
    names
        .iter()
        .position(|n| {
            let n = n.as_bytes();
            n.len() == name.len() && n[0] == first && (n == name || n.eq_ignore_ascii_case(name))
        })
        .and_then(|i| u8::try_from(i).ok())
}

/// Keeps `value` as kept header `index` of a request. A repeated header
/// keeps its first non-empty value: the one a server reading the first
/// field would act on, and the same whichever of two gateways reads it.
pub fn keep(kept: &mut KeptHeaders, index: u8, value: &[u8]) {
    let value = value.trim_ascii();
    if value.is_empty() || kept.iter().any(|(i, _)| *i == index) {
        return;
    }
    kept.push((index, bounded_text(value)));
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
    // A tenant id is short ASCII: kept in place, no UTF-8 decoding.
    if let Some(inline) = Inline::ascii(value) {
        return Text::Inline(inline);
    }
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
        assert_eq!(index_of(&names, b"x-tenant-id"), Some(0));
        assert_eq!(index_of(&names, b"X-TENANT-ID"), Some(0));
        assert_eq!(index_of(&names, b"X-Org"), Some(2));
        assert_eq!(index_of(&names, b"x-tenant"), None);
        assert_eq!(index_of(&names, b""), None, "an empty name names nothing");
        assert_eq!(index_of(&[], b"x-tenant-id"), None);
        let many = header_names((0..100).map(|i| format!("h{i}")));
        assert_eq!(many.len(), MAX_KEPT_NAMES);
    }

    #[test]
    fn first_non_empty_value_is_kept() {
        let mut kept = KeptHeaders::new();
        keep(&mut kept, 0, b"  ");
        keep(&mut kept, 0, b" acme ");
        keep(&mut kept, 0, b"globex");
        keep(&mut kept, 1, b"ops");
        assert_eq!(&kept[..], [(0, Text::from("acme")), (1, Text::from("ops"))]);
        assert_eq!(value_of(&kept, 0), Some("acme"));
        assert_eq!(value_of(&kept, 1), Some("ops"));
        assert_eq!(value_of(&kept, 2), None);
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
        // Short ASCII is kept in place; anything else is decoded.
        assert!(matches!(bounded_text(b"acme"), Text::Inline(_)));
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
