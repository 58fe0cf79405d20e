//! Low-cardinality routes: a request path reduced to a template fit for span
//! names and metric labels (`/users/42/orders` becomes `/users/{id}/orders`).
//!
//! The agent sees no routing table, so identifiers are recognised by their
//! shape: all digits, UUIDs, long hex strings and long tokens mixing letters
//! and digits. Words are kept. Paths deeper than [`MAX_SEGMENTS`] are cut.

/// Segments kept before the rest of a path is replaced by `/*`.
pub const MAX_SEGMENTS: usize = 8;
/// Shortest all-hex segment taken for an identifier.
const MIN_HEX_ID: usize = 16;
/// Shortest letters-and-digits segment taken for an identifier.
const MIN_TOKEN_ID: usize = 20;
/// What an identifier segment becomes.
const ID: &str = "{id}";

/// The route template of a request path (a query or fragment is ignored).
pub fn route(path: &str) -> String {
    let path = strip_query(path);
    let mut out = String::with_capacity(path.len().min(128) + 1);
    for (kept, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        if kept == MAX_SEGMENTS {
            out.push_str("/*");
            return out;
        }
        out.push('/');
        out.push_str(if is_id(segment) { ID } else { segment });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The path of a request-target, without query or fragment. For an
/// absolute-form target (`http://host:port/p?q`) this is `/p`, or `/` when
/// the target names no path.
pub fn path_only(target: &str) -> &str {
    let path = strip_query(target);
    if path.starts_with('/') {
        return path;
    }
    match path.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            match rest.find('/') {
                Some(i) => rest.get(i..).unwrap_or("/"),
                None => "/",
            }
        }
        // `*` (OPTIONS) or an authority (CONNECT): kept as sent.
        _ => path,
    }
}

/// The query of a request-target (after `?`, before any `#`), if not empty.
pub fn query(target: &str) -> Option<&str> {
    let before_fragment = target.split_once('#').map_or(target, |(t, _)| t);
    let (_, q) = before_fragment.split_once('?')?;
    (!q.is_empty()).then_some(q)
}

fn strip_query(target: &str) -> &str {
    match target.find(['?', '#']) {
        Some(i) => target.get(..i).unwrap_or(target),
        None => target,
    }
}

/// Does this path segment look like an identifier rather than a word?
fn is_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(bytes) {
        return true;
    }
    if bytes.len() >= MIN_HEX_ID && bytes.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    bytes.len() >= MIN_TOKEN_ID
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && bytes.iter().any(u8::is_ascii_digit)
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        let table: &[(&str, &str)] = &[
            ("", "/"),
            ("/", "/"),
            ("//", "/"),
            ("/health", "/health"),
            ("/users/", "/users"),
            ("/users/42", "/users/{id}"),
            ("/users/42/orders/7", "/users/{id}/orders/{id}"),
            ("/users/42?expand=1", "/users/{id}"),
            ("/a/b#frag", "/a/b"),
            ("/api/v1/items", "/api/v1/items"),
            ("/api/v2", "/api/v2"),
            (
                "/orders/123e4567-e89b-12d3-a456-426614174000",
                "/orders/{id}",
            ),
            (
                "/orders/123E4567-E89B-12D3-A456-426614174000/lines",
                "/orders/{id}/lines",
            ),
            // Not a UUID, but still a long token with digits.
            ("/x/123e4567-e89b-12d3-a456", "/x/{id}"),
            // Short mixed tokens stay: versions, slugs, file names.
            ("/x/v1-beta2", "/x/v1-beta2"),
            ("/blobs/deadbeefcafebabe", "/blobs/{id}"),
            ("/blobs/deadbeefcafebab", "/blobs/deadbeefcafebab"),
            (
                "/commit/0123456789abcdef0123456789abcdef01234567",
                "/commit/{id}",
            ),
            ("/s/AbCdEfGhIjKlMnOpQr5t", "/s/{id}"),
            ("/s/AbCdEfGhIjKlMnOpQr5", "/s/AbCdEfGhIjKlMnOpQr5"),
            ("/t/eyJhbGciOiJIUzI1NiJ9_abc-def", "/t/{id}"),
            // Long words without digits stay words.
            (
                "/internationalization/settings",
                "/internationalization/settings",
            ),
            ("/a/b/c/d/e/f/g/h", "/a/b/c/d/e/f/g/h"),
            ("/a/b/c/d/e/f/g/h/i", "/a/b/c/d/e/f/g/h/*"),
            ("/a/b/c/d/e/f/g/h/i/j/k", "/a/b/c/d/e/f/g/h/*"),
            (
                "/1/2/3/4/5/6/7/8/9",
                "/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/*",
            ),
            ("/static/app.js", "/static/app.js"),
            ("no-slash", "/no-slash"),
            ("?only=query", "/"),
        ];
        for (path, want) in table {
            assert_eq!(route(path), *want, "route({path:?})");
        }
    }

    #[test]
    fn path_only_table() {
        let table: &[(&str, &str)] = &[
            ("/p", "/p"),
            ("/p?q=1", "/p"),
            ("/p#f", "/p"),
            ("/p?q=1#f", "/p"),
            ("/redirect?to=http://x/y", "/redirect"),
            ("/proxy/http://x/y", "/proxy/http://x/y"),
            ("http://example.com/p?q", "/p"),
            ("http://example.com:8080/a/b", "/a/b"),
            ("https://example.com", "/"),
            ("http://example.com?q=1", "/"),
            ("*", "*"),
            ("example.com:443", "example.com:443"),
            ("", ""),
        ];
        for (target, want) in table {
            assert_eq!(path_only(target), *want, "path_only({target:?})");
        }
    }

    #[test]
    fn query_table() {
        let table: &[(&str, Option<&str>)] = &[
            ("/p", None),
            ("/p?", None),
            ("/p?a=1&b=2", Some("a=1&b=2")),
            ("/p?a=1#frag", Some("a=1")),
            ("/p#frag?x", None),
            ("http://h/p?x=y", Some("x=y")),
        ];
        for (target, want) in table {
            assert_eq!(query(target), *want, "query({target:?})");
        }
    }
}
