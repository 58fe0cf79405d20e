//! OTLP: one transport for every signal.
//!
//! - [`resolve_target`] decides where a signal goes, from the configuration
//!   and the standard `OTEL_EXPORTER_OTLP_*` variables, by the same rules
//!   for every signal (see below);
//! - [`client::OtlpClient`] sends encoded requests by gRPC or HTTP/protobuf,
//!   with one retry and backoff policy;
//! - [`traces`] and [`metrics`] turn spans and metric snapshots into
//!   `opentelemetry-proto` requests. A new signal (logs) needs its
//!   [`Signal`] variant, a [`client::Payload`] impl and its conversion.
//!
//! The rules, for signal `S` (`TRACES`, `METRICS`):
//!
//! - Endpoint: the signal's own configuration key (a full URL, used as it
//!   is), then `export.otlp.endpoint` (a base URL), then
//!   `OTEL_EXPORTER_OTLP_S_ENDPOINT` (full), then `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (base). For HTTP a base URL gets the signal's path (`/v1/traces`,
//!   `/v1/metrics`); gRPC uses it as it is. No endpoint: the signal does
//!   not go out over OTLP.
//! - Protocol: `export.otlp.protocol`, then `OTEL_EXPORTER_OTLP_S_PROTOCOL`,
//!   then `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.
//! - Headers: `OTEL_EXPORTER_OTLP_S_HEADERS` (or, when unset,
//!   `OTEL_EXPORTER_OTLP_HEADERS`), then `export.otlp.headers` on top: a key
//!   in the configuration wins over the same key in the environment.
//! - Timeout of one request: `export.otlp.timeout_ms`.
//!
//! Empty values count as unset, as the OpenTelemetry specification says.

/// A signal's `Resource…` message for the process `$resource`, with one
/// `Scope…` of sonde's scope holding `$items`, for example
/// `for_resource!(ResourceSpans, scope_spans: ScopeSpans { spans }, r)`.
macro_rules! for_resource {
    ($outer:ident, $scopes:ident: $inner:ident { $items:ident }, $resource:expr) => {
        $outer {
            resource: Some($crate::export::otlp::resource($resource)),
            $scopes: vec![$inner {
                scope: Some($crate::export::otlp::scope()),
                $items,
                ..Default::default()
            }],
            ..Default::default()
        }
    };
}

pub mod client;
pub mod metrics;
pub mod traces;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as PResource;

use super::ExportError;
use crate::config::{OtlpConfig, TenantRoute};
use crate::enrich::{Resource, parse_key_value_list};
use crate::span::model::AttrValue;

pub use client::OtlpClient;

/// The process environment: variable name → value.
pub type Env = HashMap<String, String>;

/// The environment of this process (variables that are not UTF-8 are left out).
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The OTLP wire protocol: the setting `export.otlp.protocol` names.
pub use crate::config::OtlpProtocol as Protocol;

/// What goes out over OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

pub(crate) const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub(crate) const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub(crate) const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";

impl Signal {
    /// `OTEL_EXPORTER_OTLP_S_ENDPOINT`
    pub fn endpoint_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        }
    }

    /// `OTEL_EXPORTER_OTLP_S_PROTOCOL`
    pub fn protocol_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        }
    }

    /// `OTEL_EXPORTER_OTLP_S_HEADERS`
    pub fn headers_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        }
    }

    /// The path appended to a base URL for HTTP.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The gRPC method.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
}

/// Where and how one signal is sent, once resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpTarget {
    pub signal: Signal,
    pub protocol: Protocol,
    /// For gRPC the collector's URL, for HTTP the signal's full URL.
    pub endpoint: String,
    /// Request headers (gRPC metadata), lower-case names, sorted by name.
    pub headers: Vec<(String, String)>,
    /// Timeout of one request.
    pub timeout: Duration,
}

/// `(setting, value)` of an environment variable, when set and not empty.
pub(crate) fn var(env: &Env, name: &str) -> Option<(String, String)> {
    env.get(name)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| (name.to_owned(), v.to_owned()))
}

/// `(setting, value)` of a configuration key, when set and not empty.
pub(crate) fn key(name: &str, value: &Option<String>) -> Option<(String, String)> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| (name.to_owned(), v.to_owned()))
}

/// Decides whether and where `signal` goes (see the module documentation).
/// `own_endpoint` is the signal's configuration key and its value, for
/// example `("export.otlp.traces_endpoint", &otlp.traces_endpoint)`.
pub fn resolve_target(
    signal: Signal,
    otlp: &OtlpConfig,
    own_endpoint: (&str, &Option<String>),
    env: &Env,
) -> Result<Option<OtlpTarget>, ExportError> {
    // The configuration key was checked when it was read.
    let protocol = match otlp.protocol {
        Some(p) => p,
        None => match var(env, signal.protocol_var()).or_else(|| var(env, PROTOCOL)) {
            None => Protocol::Grpc,
            Some((setting, value)) => {
                crate::config::from_name(&value).ok_or(ExportError::Protocol { setting, value })?
            }
        },
    };

    // (setting, value, whether the value is a base URL)
    let endpoint = key(own_endpoint.0, own_endpoint.1)
        .map(|(s, v)| (s, v, false))
        .or_else(|| key("export.otlp.endpoint", &otlp.endpoint).map(|(s, v)| (s, v, true)))
        .or_else(|| var(env, signal.endpoint_var()).map(|(s, v)| (s, v, false)))
        .or_else(|| var(env, ENDPOINT).map(|(s, v)| (s, v, true)));
    let Some((setting, value, is_base)) = endpoint else {
        return Ok(None);
    };
    let endpoint = if is_base && protocol == Protocol::HttpProtobuf {
        format!("{}{}", value.trim_end_matches('/'), signal.http_path())
    } else {
        value
    };
    check_endpoint(&setting, &endpoint)?;
    let headers = resolve_headers(otlp, env, protocol, signal.headers_var())?;
    Ok(Some(OtlpTarget {
        signal,
        protocol,
        endpoint,
        headers,
        timeout: Duration::from_millis(otlp.timeout_ms.max(1)),
    }))
}

/// Whether and where `signal` of tenant `tenant`'s route goes: the
/// signal's own key (`traces_endpoint`, `metrics_endpoint`: a full URL),
/// else `endpoint` (a base URL). Neither: `None`, and the tenant's
/// `signal` takes the default route. The protocol and timeout left unset
/// are `default`'s (`export.otlp`); no environment variable is read.
pub fn resolve_route_target(
    signal: Signal,
    tenant: &str,
    route: &TenantRoute,
    default: &OtlpConfig,
) -> Result<Option<OtlpTarget>, ExportError> {
    let setting = |key: &str| format!("export.tenants.{tenant}.{key}");
    let own = match signal {
        Signal::Traces => ("traces_endpoint", &route.traces_endpoint),
        Signal::Metrics => ("metrics_endpoint", &route.metrics_endpoint),
    };
    let protocol = route
        .protocol
        .or(default.protocol)
        .unwrap_or(Protocol::Grpc);
    let endpoint = key(&setting(own.0), own.1)
        .map(|(s, v)| (s, v, false))
        .or_else(|| key(&setting("endpoint"), &route.endpoint).map(|(s, v)| (s, v, true)));
    let Some((endpoint_setting, value, is_base)) = endpoint else {
        return Ok(None);
    };
    let endpoint = if is_base && protocol == Protocol::HttpProtobuf {
        format!("{}{}", value.trim_end_matches('/'), signal.http_path())
    } else {
        value
    };
    check_endpoint(&endpoint_setting, &endpoint)?;
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in route.headers_for(tenant) {
        check_header(&setting("headers"), &k, &v, protocol)?;
        headers.insert(k.to_ascii_lowercase(), v);
    }
    Ok(Some(OtlpTarget {
        signal,
        protocol,
        endpoint,
        headers: headers.into_iter().collect(),
        timeout: Duration::from_millis(route.timeout_ms.unwrap_or(default.timeout_ms).max(1)),
    }))
}

/// Checks that `endpoint` is an `http://` URL with a host; errors name `setting`.
fn check_endpoint(setting: &str, endpoint: &str) -> Result<(), ExportError> {
    endpoint_problem(endpoint).map_err(|reason| ExportError::Endpoint {
        setting: setting.to_owned(),
        reason,
    })
}

/// What is wrong with `endpoint`, unless it is an `http://` URL with a host.
pub(crate) fn endpoint_problem(endpoint: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("{endpoint:?} is not a URL ({e}); write it as http://HOST:PORT"))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "{endpoint:?} uses https, but this build of sonde has no TLS support; \
                 send to an http:// endpoint (for example a collector on the node)"
            ));
        }
        _ => {
            return Err(format!(
                "{endpoint:?} does not start with http://; write it as http://HOST:PORT"
            ));
        }
    }
    if url.host().is_none() {
        return Err(format!(
            "{endpoint:?} has no host; write it as http://HOST:PORT"
        ));
    }
    Ok(())
}

/// Request headers: the signal's own variable (`signal_headers`) or else
/// `OTEL_EXPORTER_OTLP_HEADERS`, then `export.otlp.headers` on top.
fn resolve_headers(
    otlp: &OtlpConfig,
    env: &Env,
    protocol: Protocol,
    signal_headers: &str,
) -> Result<Vec<(String, String)>, ExportError> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let from_env = [signal_headers, HEADERS]
        .into_iter()
        .find_map(|name| Some((name, env.get(name).filter(|v| !v.trim().is_empty())?)));
    if let Some((name, text)) = from_env {
        let list = parse_key_value_list(text).map_err(|e| ExportError::Headers {
            setting: name.to_owned(),
            reason: e.to_string(),
        })?;
        for (k, v) in list {
            check_header(name, &k, &v, protocol)?;
            headers.insert(k.to_ascii_lowercase(), v);
        }
    }
    for (k, v) in &otlp.headers {
        let k = k.trim();
        let v = v.trim();
        check_header("export.otlp.headers", k, v, protocol)?;
        headers.insert(k.to_ascii_lowercase(), v.to_owned());
    }
    Ok(headers.into_iter().collect())
}

fn check_header(
    setting: &str,
    name: &str,
    value: &str,
    protocol: Protocol,
) -> Result<(), ExportError> {
    header_problem(name, value, protocol).map_err(|reason| ExportError::Headers {
        setting: setting.to_owned(),
        reason,
    })
}

/// What is wrong with header `name: value` for `protocol`, if anything.
/// The message never holds the value: it is often a credential.
pub(crate) fn header_problem(name: &str, value: &str, protocol: Protocol) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    let name_ok = match protocol {
        Protocol::Grpc => tonic::metadata::AsciiMetadataKey::from_bytes(lower.as_bytes()).is_ok(),
        Protocol::HttpProtobuf => http::HeaderName::from_bytes(lower.as_bytes()).is_ok(),
    };
    if !name_ok {
        return Err(format!(
            "{name:?} is not a valid header name (letters, digits and -_. only)"
        ));
    }
    if http::HeaderValue::from_str(value).is_err() || !value.is_ascii() {
        return Err(format!(
            "the value of header {name:?} holds characters a header cannot carry \
             (control characters or non-ASCII); percent-encode them"
        ));
    }
    Ok(())
}

/// The endpoint without a user name or password, for logs.
pub fn redact_userinfo(endpoint: &str) -> String {
    match reqwest::Url::parse(endpoint) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        _ => endpoint.to_owned(),
    }
}

// Pieces of the OTLP data model every signal uses.

pub(crate) fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub(crate) fn attr_value(v: &AttrValue) -> any_value::Value {
    match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    }
}

/// A process resource, with its attributes only (nothing about the agent).
pub(crate) fn resource(r: &Resource) -> PResource {
    PResource {
        attributes: r
            .attributes
            .iter()
            .map(|(k, v)| kv(k, attr_value(v)))
            .collect(),
        ..Default::default()
    }
}

/// The instrumentation scope of everything sonde exports.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "sonde".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}
