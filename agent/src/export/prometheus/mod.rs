//! The Prometheus scrape endpoint: `GET /metrics` in the Prometheus text
//! format (0.0.4), or in OpenMetrics 1.0 with exemplars when the scraper
//! asks for `application/openmetrics-text`.
//!
//! One endpoint serves the metrics of every traced process. Each series
//! carries the labels that tell processes apart (`service_name`,
//! `service_namespace` when set, `service_instance_id`), and `target_info`
//! carries each process's full resource, as the OpenTelemetry Prometheus
//! compatibility rules describe.
//!
//! This module renders; [`server`] serves the page with hyper.

pub mod server;

use std::fmt::Write as _;
use std::sync::Arc;

use crate::enrich::Resource;
use crate::metrics::attrs::{Key, OwnedVal};
use crate::metrics::catalog::{Instrument, label_name, prometheus_name};
use crate::metrics::hist::{RawUnit, bucket_index};
use crate::metrics::store::{Exemplar, MetricSnap, Point, PointValue, Snapshot};
use crate::span::model::AttrValue;

/// The two exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (no exemplars).
    Text,
    /// OpenMetrics 1.0 text, with exemplars.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: &str) -> Format {
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Resource attributes that become labels of every series.
const RESOURCE_LABELS: &[&str] = &["service.namespace", "service.name", "service.instance.id"];

fn escape_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A number as Prometheus writes it.
fn number(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A bucket boundary, always with a decimal point (`1.0`, `0.005`), so the
/// `le` label is the same text in both formats.
fn le_text(v: f64) -> String {
    if !v.is_finite() {
        return "+Inf".into();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn attr_text(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => s.to_string(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
    }
}

/// Appends `name="value"` to a label list, with a comma when needed.
fn push_label(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    let _ = write!(out, "{name}=\"");
    escape_value(out, value);
    out.push('"');
}

/// `name="value",...` for a resource's identifying labels.
fn resource_labels(r: &Resource) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut names = Vec::new();
    for key in RESOURCE_LABELS {
        if let Some(v) = r.attr(key) {
            let name = label_name(key);
            push_label(&mut text, &name, &attr_text(v));
            names.push(name);
        }
    }
    (text, names)
}

/// The label set of one point: the resource's labels, then the point's
/// attributes (a name the resource already uses is left out).
fn labels(base: &(String, Vec<String>), attrs: &[(Key, OwnedVal)]) -> String {
    let mut out = base.0.clone();
    for (k, v) in attrs {
        let name = label_name(k.name());
        if !base.1.contains(&name) {
            push_label(&mut out, &name, &v.to_string());
        }
    }
    out
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        out.push_str(labels);
        out.push('}');
    }
    out.push(' ');
    number(out, value);
}

/// ` # {trace_id="...",span_id="..."} VALUE TIMESTAMP`
fn exemplar(out: &mut String, e: &Exemplar, raw: RawUnit) {
    out.push_str(" # {trace_id=\"");
    for b in e.trace_id {
        let _ = write!(out, "{b:02x}");
    }
    out.push_str("\",span_id=\"");
    for b in e.span_id {
        let _ = write!(out, "{b:02x}");
    }
    out.push_str("\"} ");
    number(out, raw.to_unit(e.raw));
    let _ = write!(
        out,
        " {}.{:09}",
        e.time_ns / 1_000_000_000,
        e.time_ns % 1_000_000_000
    );
}

/// A histogram point as classic buckets.
struct Classic {
    /// (upper bound, count in that bucket), the last one `+Inf`.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
    /// Each exemplar with the index of its bucket.
    exemplars: Vec<(usize, Exemplar)>,
}

/// Classic buckets of a histogram point (`None` for other points).
fn classic_buckets(p: &Point, raw: RawUnit) -> Option<Classic> {
    match &p.value {
        PointValue::Explicit { bounds, hist } => {
            let mut buckets: Vec<(f64, u64)> = bounds
                .values()
                .iter()
                .copied()
                .zip(hist.counts.iter().copied())
                .collect();
            buckets.push((f64::INFINITY, hist.counts.last().copied().unwrap_or(0)));
            let ex = p
                .exemplars
                .iter()
                .map(|e| (bounds.bucket_of(e.raw), *e))
                .collect();
            Some(Classic {
                buckets,
                sum: raw.sum_to_unit(hist.sum),
                count: hist.count,
                exemplars: ex,
            })
        }
        PointValue::Exponential(h) => {
            let mut buckets = vec![(0.0, h.zero_count)];
            for (k, c) in h.counts.iter().enumerate() {
                if *c > 0 {
                    buckets.push((h.upper_bound(h.offset + k as i32), *c));
                }
            }
            buckets.push((f64::INFINITY, 0));
            let ex = p
                .exemplars
                .iter()
                .map(|e| {
                    let v = raw.to_unit(e.raw);
                    let at = if v <= 0.0 {
                        0
                    } else {
                        let upper = h.upper_bound(bucket_index(v, h.scale));
                        buckets
                            .iter()
                            .position(|(b, _)| *b >= upper * (1.0 - 1e-12))
                            .unwrap_or(buckets.len() - 1)
                    };
                    (at, *e)
                })
                .collect();
            Some(Classic {
                buckets,
                sum: raw.sum_to_unit(h.sum),
                count: h.count,
                exemplars: ex,
            })
        }
        _ => None,
    }
}

/// Renders snapshots part by part (see [`crate::metrics::Collection`]), so a large
/// page never sits in memory whole: each family's header is written before
/// its first samples, once, as long as the parts of a family come together.
pub struct Renderer {
    format: Format,
    last_family: Option<String>,
}

impl Renderer {
    pub fn new(format: Format) -> Renderer {
        Renderer {
            format,
            last_family: None,
        }
    }

    /// Appends the samples of every point in `part`.
    pub fn part(&mut self, part: &Snapshot, out: &mut String) {
        let open = self.format == Format::OpenMetrics;
        let bases: Vec<(String, Vec<String>)> = part
            .resources
            .iter()
            .map(|r| resource_labels(&r.resource))
            .collect();
        // Families in the order they first appear, across resources.
        let mut families: Vec<(String, Vec<(usize, &MetricSnap)>)> = Vec::new();
        for (ri, r) in part.resources.iter().enumerate() {
            for m in &r.metrics {
                let name = prometheus_name(&m.name, m.unit, m.instrument);
                match families.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, members)) => members.push((ri, m)),
                    None => families.push((name, vec![(ri, m)])),
                }
            }
        }
        for (name, members) in &families {
            if self.last_family.as_deref() != Some(name.as_str()) {
                if let Some((_, first)) = members.first() {
                    family_header(out, name, first, open);
                }
                self.last_family = Some(name.clone());
            }
            for (ri, m) in members {
                for p in &m.points {
                    point(out, name, &bases[*ri], m, p, open);
                }
            }
        }
    }

    /// Appends `target_info` for `resources` (and `# EOF` for OpenMetrics).
    pub fn finish(&mut self, resources: &[Arc<Resource>], out: &mut String) {
        if self.format == Format::OpenMetrics {
            out.push_str("# HELP target info Target metadata\n# TYPE target info\n");
        } else {
            out.push_str("# HELP target_info Target metadata\n# TYPE target_info gauge\n");
        }
        for r in resources {
            target_info(out, r);
        }
        if self.format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
    }
}

fn family_header(out: &mut String, name: &str, first: &MetricSnap, open: bool) {
    let family = match (open, first.instrument) {
        (true, Instrument::Counter) => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let kind = match first.instrument {
        Instrument::Histogram => "histogram",
        Instrument::Counter => "counter",
        Instrument::Gauge => "gauge",
    };
    let _ = writeln!(out, "# HELP {family} {}", escape_help(first.description));
    let _ = writeln!(out, "# TYPE {family} {kind}");
    if open {
        let unit = match first.unit {
            "s" => Some("seconds"),
            "By" => Some("bytes"),
            _ => None,
        };
        if let Some(unit) = unit
            && family.ends_with(&format!("_{unit}"))
        {
            let _ = writeln!(out, "# UNIT {family} {unit}");
        }
    }
}

/// The samples of one point.
fn point(
    out: &mut String,
    name: &str,
    base: &(String, Vec<String>),
    m: &MetricSnap,
    p: &Point,
    open: bool,
) {
    match &p.value {
        PointValue::Sum(v) | PointValue::Gauge(v) => {
            sample(out, name, &labels(base, &p.attrs), *v);
            out.push('\n');
        }
        _ => {
            let Some(Classic {
                buckets,
                sum,
                count,
                exemplars,
            }) = classic_buckets(p, m.raw)
            else {
                return;
            };
            let plain = labels(base, &p.attrs);
            let mut cumulative = 0u64;
            for (i, (upper, c)) in buckets.iter().enumerate() {
                cumulative += c;
                out.push_str(name);
                out.push_str("_bucket{");
                out.push_str(&plain);
                if !plain.is_empty() {
                    out.push(',');
                }
                let _ = write!(out, "le=\"{}\"}} ", le_text(*upper));
                number(out, cumulative as f64);
                if open && let Some((_, e)) = exemplars.iter().find(|(at, _)| *at == i) {
                    exemplar(out, e, m.raw);
                }
                out.push('\n');
            }
            let _ = write!(out, "{name}_sum");
            sample(out, "", &plain, sum);
            out.push('\n');
            let _ = write!(out, "{name}_count");
            sample(out, "", &plain, count as f64);
            out.push('\n');
        }
    }
}

/// `target_info` of one process, with its whole resource.
fn target_info(out: &mut String, r: &Resource) {
    let mut text = String::new();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in &r.attributes {
        let name = label_name(k);
        if !seen.contains(&name) {
            push_label(&mut text, &name, &attr_text(v));
            seen.push(name);
        }
    }
    sample(out, "target_info", &text, 1.0);
    out.push('\n');
}

/// Renders a whole snapshot into one string.
pub fn render(snap: &Snapshot, format: Format) -> String {
    let mut out = String::new();
    let mut r = Renderer::new(format);
    r.part(snap, &mut out);
    let resources: Vec<Arc<Resource>> = snap
        .resources
        .iter()
        .map(|r| Arc::clone(&r.resource))
        .collect();
    r.finish(&resources, &mut out);
    out
}

/// Series read from the store per part of a streamed page. Small parts
/// keep the rendered text (about 5 KB per histogram series) and so the
/// agent's memory small; the store is locked once per part.
pub const SERIES_PER_PART: usize = 32;

#[cfg(test)]
mod tests;
