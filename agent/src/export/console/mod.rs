//! Console output: one readable line per span on stdout, and every minute
//! the table of the busiest operations ([`table`]).
//!
//! ```text
//! 2026-11-26T16:45:55.123Z  nginx  SERVER  GET /index.html  200  1.234ms  peer=127.0.0.1:54012
//! ```
//!
//! Fields, two spaces apart: start time (UTC, RFC 3339 with milliseconds),
//! service, kind, what was done (`METHOD path` for HTTP, the span name
//! otherwise), the HTTP status code when there is one, the duration, the
//! peer when known, `tenant=...` when a request header gave the request
//! its tenant, and `error=...` when the span failed. Text that came off
//! the wire is escaped so that one span is always one line and cannot steer
//! the terminal.

pub mod table;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};

use super::ExportItem;
use crate::enrich::Resource;
use crate::span::model::{AttrValue, Span, SpanKind, SpanStatus};

/// Writes console lines for a batch of spans with one locked write.
pub(crate) struct ConsoleSink {
    out: Box<dyn Write + Send>,
    buf: String,
}

impl ConsoleSink {
    pub(crate) fn stdout() -> Self {
        Self::new(Box::new(io::stdout()))
    }

    pub(crate) fn new(out: Box<dyn Write + Send>) -> Self {
        ConsoleSink {
            out,
            buf: String::new(),
        }
    }

    /// Prints one line per item: the lines are gathered first and written
    /// under one lock, so they never interleave with other output.
    pub(crate) fn write(&mut self, items: &[ExportItem]) -> io::Result<()> {
        self.buf.clear();
        for item in items {
            self.buf.push_str(&format_span(&item.resource, &item.span));
            self.buf.push('\n');
        }
        self.out.write_all(self.buf.as_bytes())?;
        self.out.flush()
    }
}

/// The console line of `span` (without the newline).
pub fn format_span(resource: &Resource, span: &Span) -> String {
    let mut line = String::with_capacity(128);
    line.push_str(&format_unix_ns(span.start_unix_ns));
    line.push_str("  ");
    line.push_str(&clean(non_empty(&resource.service_name)));
    line.push_str("  ");
    line.push_str(match span.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    });
    line.push_str("  ");
    match (
        str_attr(span, "http.request.method"),
        str_attr(span, "url.path"),
    ) {
        (Some(method), Some(path)) => {
            let _ = write!(line, "{} {}", clean(method), clean(path));
        }
        _ => line.push_str(&clean(non_empty(&span.name))),
    }
    if let Some(status) = span.attr("http.response.status_code") {
        line.push_str("  ");
        line.push_str(&clean(&attr_text(status)));
    }
    line.push_str("  ");
    line.push_str(&format_duration(span.duration_ns()));
    if let Some(address) = str_attr(span, "network.peer.address") {
        let address = clean(address);
        line.push_str("  peer=");
        let port = span.attr("network.peer.port").map(attr_text);
        match port {
            Some(port) if address.contains(':') => {
                let _ = write!(line, "[{address}]:{}", clean(&port));
            }
            Some(port) => {
                let _ = write!(line, "{address}:{}", clean(&port));
            }
            None => line.push_str(&address),
        }
    }
    if let Some(tenant) = &span.tenant {
        line.push_str("  tenant=");
        line.push_str(&clean(tenant));
    }
    if let SpanStatus::Error { description } = &span.status {
        line.push_str("  error");
        if !description.is_empty() {
            line.push('=');
            line.push_str(&clean(description));
        }
    }
    line
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match span.attr(key)? {
        AttrValue::Str(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn attr_text(value: &AttrValue) -> String {
    match value {
        AttrValue::Str(s) => s.to_string(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
    }
}

fn non_empty(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Escapes control characters (newlines, escape sequences) and blanks.
fn clean(s: &str) -> Cow<'_, str> {
    if !s
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() && c != ' ')
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() || c.is_whitespace() && c != ' ' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A duration for people: `0.042ms`, `1.234ms`, `950.000ms`, `2.500s`.
pub fn format_duration(ns: u64) -> String {
    if ns < 1_000_000_000 {
        format!("{}.{:03}ms", ns / 1_000_000, ns / 1_000 % 1_000)
    } else {
        format!("{}.{:03}s", ns / 1_000_000_000, ns / 1_000_000 % 1_000)
    }
}

/// Unix time in nanoseconds as RFC 3339 UTC with milliseconds
/// (`2026-11-26T16:45:55.123Z`).
pub fn format_unix_ns(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let millis = ns / 1_000_000 % 1_000;
    let days = secs / 86_400;
    let in_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        in_day / 3_600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// The Gregorian date `days` days after 1970-01-01: shift the epoch to
/// 0000-03-01 so leap days fall at the end of a year, split into 400-year
/// eras (146097 days each), then into years of the era and days of the
/// year, and map the March-based month back to January-based.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn resource(service: &str) -> Resource {
        Resource {
            service_name: service.into(),
            attributes: vec![("service.name".into(), service.into())],
            ..Default::default()
        }
    }

    fn span(attributes: Vec<(&'static str, AttrValue)>) -> Span {
        let start = 1_795_711_555_123_456_789;
        crate::export::testing::span("GET /index.html", 1, (start, start + 1_234_567), attributes)
    }

    #[test]
    fn http_server_line() {
        let s = span(vec![
            ("http.request.method", "GET".into()),
            ("url.path", "/index.html".into()),
            ("http.response.status_code", AttrValue::Int(200)),
            ("network.peer.address", "127.0.0.1".into()),
            ("network.peer.port", AttrValue::Int(54012)),
        ]);
        assert_eq!(
            format_span(&resource("nginx"), &s),
            "2026-11-26T16:45:55.123Z  nginx  SERVER  GET /index.html  200  1.234ms  peer=127.0.0.1:54012"
        );
    }

    #[test]
    fn client_error_ipv6_line() {
        let mut s = span(vec![
            ("http.request.method", "POST".into()),
            ("url.path", "/api/orders".into()),
            ("http.response.status_code", AttrValue::Int(503)),
            ("network.peer.address", "::1".into()),
            ("network.peer.port", AttrValue::Int(8080)),
        ]);
        s.kind = SpanKind::Client;
        s.end_unix_ns = s.start_unix_ns + 2_500_000_000;
        s.status = SpanStatus::Error {
            description: "503".into(),
        };
        assert_eq!(
            format_span(&resource("shop"), &s),
            "2026-11-26T16:45:55.123Z  shop  CLIENT  POST /api/orders  503  2.500s  peer=[::1]:8080  error=503"
        );
        s.tenant = Some("acme\n".into());
        assert!(
            format_span(&resource("shop"), &s)
                .ends_with("peer=[::1]:8080  tenant=acme\\n  error=503"),
            "a request's tenant, escaped"
        );
    }

    #[test]
    fn non_http_falls_back_to_name() {
        let mut s = span(vec![("network.peer.address", "10.0.0.7".into())]);
        s.name = "GET".into();
        s.end_unix_ns = s.start_unix_ns + 42_000;
        s.status = SpanStatus::Error {
            description: String::new(),
        };
        assert_eq!(
            format_span(&resource(""), &s),
            "2026-11-26T16:45:55.123Z  -  SERVER  GET  0.042ms  peer=10.0.0.7  error"
        );
        // A method without a path is not enough for the HTTP form.
        let s = span(vec![("http.request.method", "GET".into())]);
        assert!(format_span(&resource("x"), &s).contains("  GET /index.html  1.234ms"));
    }

    #[test]
    fn wire_text_cannot_break_the_line() {
        let s = span(vec![
            ("http.request.method", "GET".into()),
            ("url.path", "/a\nb\x1b[31m\tc".into()),
        ]);
        let line = format_span(&resource("svc\r"), &s);
        assert!(!line.contains('\n') && !line.contains('\x1b') && !line.contains('\r'));
        assert!(line.contains("svc\\r"), "{line}");
        assert!(line.contains("/a\\nb\\u{1b}[31m\\tc"), "{line}");
    }

    #[test]
    fn times() {
        assert_eq!(format_unix_ns(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_ns(951_782_400_999_999_999),
            "2000-02-29T00:00:00.999Z"
        );
        assert_eq!(
            format_unix_ns(951_868_800_000_000_000),
            "2000-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_unix_ns(1_700_000_000_000_000_000),
            "2023-11-14T22:13:20.000Z"
        );
        assert_eq!(
            format_unix_ns(4_107_542_399_000_000_000),
            "2100-02-28T23:59:59.000Z"
        );
        assert_eq!(
            format_unix_ns(4_107_542_400_000_000_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(format_unix_ns(u64::MAX), "2554-07-21T23:34:33.709Z");
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0.000ms");
        assert_eq!(format_duration(999), "0.000ms");
        assert_eq!(format_duration(1_234_567), "1.234ms");
        assert_eq!(format_duration(999_999_999), "999.999ms");
        assert_eq!(format_duration(61_000_000_000), "61.000s");
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn sink_writes_one_line_per_span() {
        let out = Shared::default();
        let mut sink = ConsoleSink::new(Box::new(out.clone()));
        let item = ExportItem {
            resource: Arc::new(resource("nginx")),
            span: span(vec![]),
        };
        sink.write(&[item.clone(), item]).unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
    }
}
