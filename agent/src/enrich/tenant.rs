//! Which tenant a span belongs to: the `tenants` section of the
//! configuration.
//!
//! Rules are tried in the order written and the first that matches gives
//! the tenant id: a literal (`tenant:`), or else the value the rule found
//! (the header's or label's value, the namespace's name, the variable's
//! value, the cgroup pattern's capture, the executable's name). No rule
//! matching gives `default`, and no default gives no tenant.
//!
//! Most rules are facts of a process (its pod, environment, cgroup,
//! executable): they are judged once per process, with its resource
//! ([`Tenants::of_process`]). A header rule is a fact of one request: a
//! multi-tenant gateway's spans split by the header each request carried.
//! The two kinds keep their written order: a header rule after a process
//! rule that matched is never looked at ([`Tenants::of_request`]).

use std::sync::Arc;

use serde::Deserialize;

use super::Resource;
use super::k8s::PodMeta;
use super::select::Glob;
use crate::protocol::headers::{KeptHeaders, MAX_KEPT_NAMES};
use crate::span::model::{Span, Text};

/// The attribute that carries the tenant id, unless configured.
pub const DEFAULT_ATTRIBUTE: &str = "tenant.id";

/// The header a header rule names unless it says one.
pub const DEFAULT_HEADER: &str = "x-tenant-id";

/// A regular expression over a process's cgroup path (the unified
/// hierarchy's, as `/proc/PID/cgroup` shows it). Its capture group named
/// `tenant`, else its first group, else the whole match is the value.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct CgroupPattern(regex::Regex);

impl TryFrom<String> for CgroupPattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        regex::Regex::new(&text)
            .map(CgroupPattern)
            .map_err(|e| format!("not a regular expression: {e}"))
    }
}

impl PartialEq for CgroupPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for CgroupPattern {}

impl CgroupPattern {
    fn capture<'a>(&self, path: &'a str) -> Option<&'a str> {
        let caps = self.0.captures(path)?;
        caps.name("tenant")
            .or_else(|| caps.get(1))
            .or_else(|| caps.get(0))
            .map(|m| m.as_str())
    }
}

/// One rule of `tenants.rules`: one matcher, and optionally the tenant it
/// gives (else the value the matcher found).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantRule {
    /// An HTTP request header (HTTP/1.x, HTTP/2, gRPC metadata); any case.
    pub header: Option<String>,
    pub pod_label: Option<String>,
    pub namespace_label: Option<String>,
    pub pod_annotation: Option<String>,
    /// The pod's namespace name (pattern).
    pub namespace: Option<Glob>,
    /// An environment variable of the process.
    pub env: Option<String>,
    pub cgroup: Option<CgroupPattern>,
    /// The executable's name (pattern).
    pub executable: Option<Glob>,
    /// The tenant id the rule gives; else the value it matched.
    pub tenant: Option<String>,
}

impl TenantRule {
    /// How many matchers it writes: a valid rule writes exactly one.
    pub fn matchers(&self) -> usize {
        [
            self.header.is_some(),
            self.pod_label.is_some(),
            self.namespace_label.is_some(),
            self.pod_annotation.is_some(),
            self.namespace.is_some(),
            self.env.is_some(),
            self.cgroup.is_some(),
            self.executable.is_some(),
        ]
        .into_iter()
        .filter(|&set| set)
        .count()
    }

    fn give<'a>(&'a self, found: Option<&'a str>) -> Option<&'a str> {
        let found = found.filter(|v| !v.chars().all(char::is_whitespace))?;
        Some(self.tenant.as_deref().unwrap_or(found))
    }
}

/// The `tenants` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// The attribute name of the tenant id on spans, resources and series.
    pub attribute: String,
    #[serde(deserialize_with = "crate::config::or_default")]
    pub rules: Vec<TenantRule>,
    /// The tenant when no rule matches; none: no tenant attribute.
    pub default: Option<String>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            attribute: DEFAULT_ATTRIBUTE.to_owned(),
            rules: Vec::new(),
            default: None,
        }
    }
}

impl TenantConfig {
    /// The first problem the types alone do not catch, as (key, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.attribute.trim().is_empty() {
            return Err((
                "tenants.attribute",
                "must not be empty (for example tenant.id)".into(),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            match rule.matchers() {
                1 => {}
                0 => {
                    return Err((
                        "tenants.rules",
                        format!(
                            "rule {} names no matcher (one of header, pod_label, namespace_label, \
                             pod_annotation, namespace, env, cgroup, executable)",
                            i + 1
                        ),
                    ));
                }
                _ => {
                    return Err((
                        "tenants.rules",
                        format!(
                            "rule {} names more than one matcher; write one per rule",
                            i + 1
                        ),
                    ));
                }
            }
            if rule.header.as_deref().is_some_and(|h| h.trim().is_empty()) {
                return Err(("tenants.rules", format!("rule {}: header is empty", i + 1)));
            }
            if rule.tenant.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(("tenants.rules", format!("rule {}: tenant is empty", i + 1)));
            }
        }
        if self.default.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err((
                "tenants.default",
                "must not be empty (or leave it out)".into(),
            ));
        }
        Ok(())
    }
}

/// The tenant of `span`, a span of the process `resource` describes: the
/// one a header rule gave the request, else the process's. What metrics,
/// routing and budgets go by.
pub fn tenant_of<'a>(resource: &'a Resource, span: &'a Span) -> Option<&'a str> {
    span.tenant.as_deref().or(resource.tenant.tenant.as_deref())
}

/// What the process rules see of one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessView<'a> {
    pub pod: Option<&'a PodMeta>,
    pub namespace_labels: Option<&'a [(String, String)]>,
    /// The values of the variables the rules name (see [`Tenants::env_names`]).
    pub env: &'a [(String, String)],
    pub cgroup_path: Option<&'a str>,
    pub executable: Option<&'a str>,
}

/// A process's tenant: the rank of the rule that gave it (rules before it
/// are the only header rules a span of it tries), and the id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessTenant {
    pub rank: usize,
    pub tenant: Option<Arc<str>>,
    /// The attribute name of tenant ids (`tenants.attribute`), with the
    /// resource so that exporters name a span's own tenant as the rules
    /// that judged its process do.
    pub attribute: Arc<str>,
}

/// The tenant rules, ready to match.
#[derive(Clone, Debug)]
pub struct Tenants {
    config: TenantConfig,
    /// `config.attribute`, shared by every process's tenant.
    attribute: Arc<str>,
    /// Lowercased header names: what the HTTP parsers keep of each
    /// request. A kept value is known by its header's place here, which
    /// stays the same across config reloads (see [`Tenants::after`]).
    headers: Vec<String>,
    /// Per header of `headers`, the first rule naming it: its rank (for a
    /// header no rule reads, [`NO_RULE`]) and the tenant it gives (none:
    /// the header's value). Later rules naming the same header never match
    /// first.
    header_rules: Vec<(usize, Option<Text>)>,
}

/// The rank of no rule: after every rule, and after every process's.
const NO_RULE: usize = usize::MAX;

impl Default for Tenants {
    fn default() -> Self {
        Tenants::new(TenantConfig::default())
    }
}

impl Tenants {
    pub fn new(config: TenantConfig) -> Self {
        Tenants::numbering(config, Vec::new())
    }

    /// These rules, numbering headers as `before` did (a config reload):
    /// requests read under the old rules carry the old numbers, so a
    /// number names one header for as long as the agent runs. A header no
    /// rule reads any more keeps its number and matches no rule.
    pub fn after(self, before: &Tenants) -> Tenants {
        Tenants::numbering(self.config, before.headers.clone())
    }

    fn numbering(config: TenantConfig, mut headers: Vec<String>) -> Tenants {
        // (rank, lowercased header, the tenant it gives) of each header rule.
        let written: Vec<(usize, String, Option<Text>)> = (config.rules.iter().enumerate())
            .filter_map(|(rank, rule)| {
                let name = rule.header.as_deref()?.trim().to_ascii_lowercase();
                Some((rank, name, rule.tenant.as_deref().map(Text::from)))
            })
            .collect();
        let mut new: Vec<&str> = (written.iter())
            .map(|(_, name, _)| name.as_str())
            .filter(|name| !headers.iter().any(|h| h == name))
            .collect();
        new.sort_unstable();
        new.dedup();
        if headers.len() + new.len() > MAX_KEPT_NAMES {
            // Past what the parsers keep: numbered afresh (a request read
            // just before may then be judged by another header's rule).
            headers.clear();
        }
        let mut header_rules = vec![(NO_RULE, None); headers.len()];
        for (rank, name, tenant) in written {
            let index = match headers.iter().position(|h| *h == name) {
                Some(index) => index,
                None => {
                    headers.push(name);
                    header_rules.push((NO_RULE, None));
                    headers.len() - 1
                }
            };
            if let Some(first @ (NO_RULE, _)) = header_rules.get_mut(index) {
                *first = (rank, tenant);
            }
        }
        let attribute = Arc::from(config.attribute.as_str());
        Tenants {
            config,
            attribute,
            headers,
            header_rules,
        }
    }

    /// Whether any rule or a default is written.
    pub fn is_active(&self) -> bool {
        !self.config.rules.is_empty() || self.config.default.is_some()
    }

    pub fn attribute(&self) -> &str {
        &self.config.attribute
    }

    /// The request headers the parsers must keep (lowercase), each at its
    /// number; a number no rule reads any more is an empty name.
    pub fn headers(&self) -> Vec<&str> {
        let read = self.header_rules.iter().map(|(rank, _)| *rank != NO_RULE);
        (self.headers.iter().zip(read))
            .map(|(h, read)| if read { h.as_str() } else { "" })
            .collect()
    }

    /// The environment variables the rules read.
    pub fn env_names(&self) -> impl Iterator<Item = &str> {
        self.config.rules.iter().filter_map(|r| r.env.as_deref())
    }

    /// The pod label keys the rules read.
    pub fn label_keys(&self) -> impl Iterator<Item = &str> {
        self.config
            .rules
            .iter()
            .filter_map(|r| r.pod_label.as_deref())
    }

    /// The pod annotation keys the rules read.
    pub fn annotation_keys(&self) -> impl Iterator<Item = &str> {
        self.config
            .rules
            .iter()
            .filter_map(|r| r.pod_annotation.as_deref())
    }

    /// The tenant of a process by the rules that are facts of processes.
    /// Header rules are skipped here; their place is kept in `rank`.
    pub fn of_process(&self, view: &ProcessView<'_>) -> ProcessTenant {
        let pod = view.pod;
        let lookup = |pairs: &'_ [(String, String)], key: &str| -> Option<String> {
            pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        for (rank, rule) in self.config.rules.iter().enumerate() {
            let found: Option<String> = if rule.header.is_some() {
                continue;
            } else if let Some(key) = &rule.pod_label {
                pod.and_then(|p| lookup(&p.rule_labels, key))
            } else if let Some(key) = &rule.namespace_label {
                view.namespace_labels.and_then(|l| lookup(l, key))
            } else if let Some(key) = &rule.pod_annotation {
                pod.and_then(|p| lookup(&p.rule_annotations, key))
            } else if let Some(glob) = &rule.namespace {
                pod.map(|p| p.namespace.to_string())
                    .filter(|ns| glob.matches(ns))
            } else if let Some(name) = &rule.env {
                lookup(view.env, name)
            } else if let Some(pattern) = &rule.cgroup {
                view.cgroup_path
                    .and_then(|p| pattern.capture(p))
                    .map(str::to_owned)
            } else if let Some(glob) = &rule.executable {
                view.executable
                    .filter(|e| glob.matches(e))
                    .map(str::to_owned)
            } else {
                None
            };
            if let Some(tenant) = rule.give(found.as_deref()) {
                return ProcessTenant {
                    rank,
                    tenant: Some(Arc::from(tenant)),
                    attribute: Arc::clone(&self.attribute),
                };
            }
        }
        ProcessTenant {
            rank: self.config.rules.len(),
            tenant: self.config.default.as_deref().map(Arc::from),
            attribute: Arc::clone(&self.attribute),
        }
    }

    /// The tenant of one request of a process whose tenant is `process`,
    /// when it is not the process's: that of the first header rule written
    /// before the process's own rule whose header the request carried
    /// (`kept`: values by index in [`headers`](Self::headers), trimmed and
    /// never blank). A value that becomes the tenant is taken out of `kept`.
    pub fn of_request(&self, process: &ProcessTenant, kept: &mut KeptHeaders) -> Option<Text> {
        let rank_of = |index: u8| {
            self.header_rules
                .get(usize::from(index))
                .map_or(NO_RULE, |r| r.0)
        };
        let (place, rank) = (kept.iter().enumerate())
            .map(|(place, (index, _))| (place, rank_of(*index)))
            .min_by_key(|&(_, rank)| rank)?;
        if rank >= process.rank {
            return None;
        }
        let (index, value) = kept.get_mut(place)?;
        let tenant = match self.header_rules.get(usize::from(*index)) {
            Some((_, Some(literal))) => literal.clone(),
            _ => std::mem::replace(value, Text::Static("")),
        };
        (Some(&*tenant) != process.tenant.as_deref()).then_some(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> TenantConfig {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(namespace: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: "u".into(),
            name: "p".into(),
            namespace: namespace.into(),
            rule_labels: pairs(labels),
            rule_annotations: pairs(annotations),
            ..PodMeta::default()
        }
    }

    const RULES: &str = "
rules:
  - header: X-Tenant-ID
  - pod_label: tenant-id
  - namespace_label: tenant
  - pod_annotation: example.com/tenant
  - namespace: team-a-*
    tenant: team-a
  - env: TENANT_ID
  - cgroup: '^/system\\.slice/(?P<tenant>[a-z]+)-api\\.service$'
  - executable: billing-*
    tenant: billing
  - header: x-org
default: shared
";

    #[test]
    fn rules_in_order_first_match_wins() {
        let t = Tenants::new(config(RULES));
        assert_eq!(t.headers(), ["x-tenant-id", "x-org"]);
        let of = |view: ProcessView<'_>| t.of_process(&view).tenant.map(|s| s.to_string());
        let labelled = pod("team-a-prod", &[("tenant-id", "acme")], &[]);
        let annotated = pod("team-a-prod", &[], &[("example.com/tenant", "globex")]);
        let in_team_ns = pod("team-a-prod", &[], &[]);
        let other_ns = pod("misc", &[], &[]);
        let ns_labels = pairs(&[("tenant", "initech")]);
        let env = pairs(&[("TENANT_ID", "umbrella")]);
        let none: &[(String, String)] = &[];
        for (what, view, want) in [
            (
                "pod label first",
                ProcessView {
                    pod: Some(&labelled),
                    namespace_labels: Some(&ns_labels),
                    env: &env,
                    ..Default::default()
                },
                Some("acme"),
            ),
            (
                "namespace label before annotation",
                ProcessView {
                    pod: Some(&annotated),
                    namespace_labels: Some(&ns_labels),
                    ..Default::default()
                },
                Some("initech"),
            ),
            (
                "annotation",
                ProcessView {
                    pod: Some(&annotated),
                    ..Default::default()
                },
                Some("globex"),
            ),
            (
                "namespace glob gives its literal",
                ProcessView {
                    pod: Some(&in_team_ns),
                    env: &env,
                    ..Default::default()
                },
                Some("team-a"),
            ),
            (
                "env after a namespace that does not match",
                ProcessView {
                    pod: Some(&other_ns),
                    env: &env,
                    ..Default::default()
                },
                Some("umbrella"),
            ),
            (
                "cgroup capture",
                ProcessView {
                    env: none,
                    cgroup_path: Some("/system.slice/orders-api.service"),
                    executable: Some("billing-worker"),
                    ..Default::default()
                },
                Some("orders"),
            ),
            (
                "executable glob",
                ProcessView {
                    cgroup_path: Some("/system.slice/orders.service"),
                    executable: Some("billing-worker"),
                    ..Default::default()
                },
                Some("billing"),
            ),
            (
                "default",
                ProcessView {
                    executable: Some("nginx"),
                    ..Default::default()
                },
                Some("shared"),
            ),
        ] {
            assert_eq!(of(view).as_deref(), want, "{what}");
        }
        // An empty value is no match.
        let blank = pod("misc", &[("tenant-id", " ")], &[]);
        assert_eq!(
            of(ProcessView {
                pod: Some(&blank),
                ..Default::default()
            })
            .as_deref(),
            Some("shared")
        );
        // No default: no tenant.
        let bare = Tenants::new(config("rules: [{env: T}]"));
        assert_eq!(bare.of_process(&ProcessView::default()).tenant, None);
        assert!(!Tenants::new(TenantConfig::default()).is_active());
    }

    #[test]
    fn header_rules_keep_their_place() {
        let t = Tenants::new(config(RULES));
        let gateway = t.of_process(&ProcessView {
            executable: Some("envoy"),
            ..Default::default()
        });
        assert_eq!(gateway.rank, 9, "no process rule matched");
        let labelled_pod = pod("misc", &[("tenant-id", "acme")], &[]);
        let labelled = t.of_process(&ProcessView {
            pod: Some(&labelled_pod),
            ..Default::default()
        });
        assert_eq!(labelled.rank, 1);

        // The tenant a request goes by, carrying `values` of the headers.
        let of = |t: &Tenants, process: &ProcessTenant, values: &[Option<&str>]| {
            let mut kept = KeptHeaders::new();
            for (i, v) in values.iter().enumerate() {
                if let Some(v) = v {
                    crate::protocol::headers::keep(&mut kept, i as u8, v.as_bytes());
                }
            }
            let own = t.of_request(process, &mut kept).map(|t| t.to_string());
            if own.is_some() {
                assert_ne!(
                    own.as_deref(),
                    process.tenant.as_deref(),
                    "given when it differs"
                );
            }
            own.or(process.tenant.as_deref().map(str::to_owned))
        };
        // The first header rule comes before every process rule.
        assert_eq!(
            of(&t, &gateway, &[Some("acme"), None]).as_deref(),
            Some("acme")
        );
        assert_eq!(
            of(&t, &labelled, &[Some("globex"), None]).as_deref(),
            Some("globex"),
            "the header rule is written first"
        );
        assert_eq!(
            of(&t, &gateway, &[Some("globex"), Some("initech")]).as_deref(),
            Some("globex"),
            "both headers: the first rule wins"
        );
        // The last header rule comes after the pod label: a labelled pod's
        // spans never look at it.
        assert_eq!(
            of(&t, &labelled, &[None, Some("initech")]).as_deref(),
            Some("acme")
        );
        assert_eq!(
            of(&t, &gateway, &[None, Some("initech")]).as_deref(),
            Some("initech")
        );
        assert_eq!(of(&t, &gateway, &[None, None]).as_deref(), Some("shared"));
        assert_eq!(
            of(&t, &gateway, &[Some("  "), None]).as_deref(),
            Some("shared"),
            "a blank header is no match"
        );
        assert_eq!(
            of(&t, &gateway, &[Some("shared"), None]).as_deref(),
            Some("shared"),
            "the process's own tenant by header"
        );
        // A header rule with a literal, and a later one on the same header
        // that never matches first.
        let literal = Tenants::new(config(
            "rules: [{header: x-internal, tenant: ops}, {header: X-Internal}]",
        ));
        assert_eq!(literal.headers(), ["x-internal"]);
        let p = literal.of_process(&ProcessView::default());
        assert_eq!(of(&literal, &p, &[Some("yes")]).as_deref(), Some("ops"));
        assert_eq!(of(&literal, &p, &[None]), None);
        // A kept index no rule names (headers of a config since replaced).
        assert_eq!(of(&literal, &p, &[None, None, Some("x")]), None);
    }

    /// A reload keeps the numbers of the headers read before; a header no
    /// rule reads any more keeps its number, unread, until the numbers run
    /// out and start over.
    #[test]
    fn header_numbers_carry_over_reloads() {
        let first = Tenants::new(config("rules: [{header: x-a}, {header: x-b}]"));
        let second = Tenants::new(config("rules: [{header: X-C}, {env: E}, {header: x-b}]"));
        let second = second.after(&first);
        assert_eq!(second.headers(), ["", "x-b", "x-c"]);
        let third = Tenants::new(config("rules: [{header: x-a}]")).after(&second);
        assert_eq!(third.headers(), ["x-a", "", ""]);
        // The parsers' bound: numbered afresh.
        let many: Vec<String> = (0..MAX_KEPT_NAMES)
            .map(|i| format!("{{header: h{i}}}"))
            .collect();
        let full = Tenants::new(config(&format!("rules: [{}]", many.join(", ")))).after(&third);
        assert_eq!(full.headers().len(), MAX_KEPT_NAMES);
        assert_eq!(full.headers()[0], "h0");
    }

    #[test]
    fn bad_rules_are_refused() {
        for (yaml, says) in [
            ("rules: [{tenant: x}]", "names no matcher"),
            ("rules: [{env: A, header: b}]", "more than one matcher"),
            ("rules: [{env: A, tenant: ''}]", "tenant is empty"),
            ("rules: [{header: ' '}]", "header is empty"),
            ("attribute: ''", "must not be empty"),
            ("default: ' '", "must not be empty"),
        ] {
            let err = config(yaml).check().expect_err(yaml);
            assert!(err.1.contains(says), "{yaml}: {err:?}");
        }
        assert!(
            serde_saphyr::from_str::<TenantConfig>("rules: [{cgroup: '('}]").is_err(),
            "a bad regular expression"
        );
        config(RULES).check().unwrap();
    }
}
