//! Which processes are traced: the `select` section of the configuration.
//!
//! A process is traced when it matches one of the `include` rules (or there
//! are none) and none of the `exclude` rules. A rule names facts of a
//! container, never of one process in it (the namespace, the pod's name and
//! labels, the namespace's labels, the container's name, the systemd unit),
//! so every process in a cgroup gets the same verdict: the kernel can mute
//! a whole cgroup by its id, and a process forked in an excluded container
//! costs nothing at all.
//!
//! A process in a pod the metadata does not know yet is traced: its spans
//! lack the pod's labels for a moment, where excluding it would lose them
//! for good when the pod turns out to be included. The verdict is taken
//! again once the pod is known.

use std::fmt;

use serde::Deserialize;

use super::k8s::PodMeta;

/// A shell-style name pattern: `*` any run of characters, `?` any one
/// character, everything else itself.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Glob(String);

impl TryFrom<String> for Glob {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing (write \"*\" for anything)".into());
        }
        Ok(Glob(text))
    }
}

impl Glob {
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

/// Iterative glob matching with one backtrack point: linear in practice,
/// never exponential.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// A Kubernetes label selector as `kubectl -l` takes it: requirements
/// separated by commas, all of which must hold: `key=value` (or `==`),
/// `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` (the label is
/// set), `!key` (it is not).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl TryFrom<String> for LabelSelector {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        LabelSelector::parse(&text)
    }
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_requirements(text)? {
            requirements.push(requirement(part.trim())?);
        }
        if requirements.is_empty() {
            return Err("an empty selector (write at least one requirement, like app=web)".into());
        }
        Ok(LabelSelector(requirements))
    }

    /// Every label key the selector looks at: the labels that must be kept
    /// of each pod to match it.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| match r {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::Absent(k) => k.as_str(),
        })
    }

    pub fn matches(&self, labels: &[(String, String)]) -> bool {
        let value = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        self.0.iter().all(|r| match r {
            Requirement::In(k, values) => value(k).is_some_and(|v| values.iter().any(|x| x == v)),
            // As in Kubernetes: a pod without the label satisfies `!=` and `notin`.
            Requirement::NotIn(k, values) => value(k).is_none_or(|v| values.iter().all(|x| x != v)),
            Requirement::Exists(k) => value(k).is_some(),
            Requirement::Absent(k) => value(k).is_none(),
        })
    }
}

/// Splits at the commas outside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err(format!("nested parenthesis in {text:?}")),
            ')' if depth == 1 => depth = 0,
            ')' => return Err(format!("unbalanced ')' in {text:?}")),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unclosed '(' in {text:?}"));
    }
    parts.push(&text[start..]);
    if parts.len() > 1 && parts.iter().any(|p| p.trim().is_empty()) {
        return Err(format!("an empty requirement between commas in {text:?}"));
    }
    Ok(parts.into_iter().filter(|p| !p.trim().is_empty()).collect())
}

fn requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::Absent(label_key(key.trim())?));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotIn(
            label_key(key.trim())?,
            vec![label_value(value.trim())?],
        ));
    }
    if let Some((key, value)) = part.split_once('=') {
        let value = value.strip_prefix('=').unwrap_or(value);
        return Ok(Requirement::In(
            label_key(key.trim())?,
            vec![label_value(value.trim())?],
        ));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim_start();
    if rest.is_empty() {
        return Ok(Requirement::Exists(label_key(key)?));
    }
    let (operator, list) = rest
        .split_once(|c: char| c.is_whitespace() || c == '(')
        .map(|(op, _)| (op, &rest[op.len()..]))
        .unwrap_or((rest, ""));
    let values = value_list(list.trim()).map_err(|e| format!("{e} in requirement {part:?}"))?;
    match operator {
        "in" => Ok(Requirement::In(label_key(key)?, values)),
        "notin" => Ok(Requirement::NotIn(label_key(key)?, values)),
        other => Err(format!(
            "unknown operator {other:?} in {part:?} (expected =, ==, !=, in, notin, or a key alone)"
        )),
    }
}

/// `(a, b)` → `[a, b]`.
fn value_list(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| "expected a list of values in parentheses".to_string())?;
    let values = inner
        .split(',')
        .map(|v| label_value(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if values.iter().all(String::is_empty) {
        return Err("an empty list of values".into());
    }
    Ok(values)
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of
/// letters, digits, `-`, `_`, `.`, starting and ending alphanumeric.
fn label_key(key: &str) -> Result<String, String> {
    let name = key.rsplit_once('/').map_or(
        key,
        |(prefix, name)| {
            if prefix.is_empty() { "" } else { name }
        },
    );
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
    };
    if !valid(name) {
        return Err(format!("{key:?} is not a label key"));
    }
    Ok(key.to_owned())
}

/// A label value: empty, or up to 63 of letters, digits, `-`, `_`, `.`.
fn label_value(value: &str) -> Result<String, String> {
    let ok = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(format!("{value:?} is not a label value"));
    }
    Ok(value.to_owned())
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::In(k, v) if v.len() == 1 => write!(f, "{k}={}", v[0])?,
                Requirement::NotIn(k, v) if v.len() == 1 => write!(f, "{k}!={}", v[0])?,
                Requirement::In(k, v) => write!(f, "{k} in ({})", v.join(","))?,
                Requirement::NotIn(k, v) => write!(f, "{k} notin ({})", v.join(","))?,
                Requirement::Exists(k) => f.write_str(k)?,
                Requirement::Absent(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

/// One rule of `select.include` or `select.exclude`: every field written
/// must match (a rule with none is refused by the configuration check).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// The pod's namespace.
    pub namespace: Option<Glob>,
    /// The pod's name.
    pub pod: Option<Glob>,
    /// The pod's labels.
    pub labels: Option<LabelSelector>,
    /// The labels of the pod's namespace.
    pub namespace_labels: Option<LabelSelector>,
    /// The container's name (in its pod).
    pub container: Option<Glob>,
    /// The systemd unit of a process in no container (`nginx.service`).
    pub systemd_unit: Option<Glob>,
}

impl Rule {
    pub fn is_empty(&self) -> bool {
        *self == Rule::default()
    }

    fn matches(&self, subject: &Subject<'_>) -> bool {
        let pod = subject.pod;
        let glob = |g: &Option<Glob>, value: Option<&str>| {
            g.as_ref()
                .is_none_or(|g| value.is_some_and(|v| g.matches(v)))
        };
        glob(&self.namespace, pod.map(|p| &*p.namespace))
            && glob(&self.pod, pod.map(|p| p.name.as_str()))
            && glob(&self.container, subject.container)
            && glob(&self.systemd_unit, subject.systemd_unit)
            && self
                .labels
                .as_ref()
                .is_none_or(|s| pod.is_some_and(|p| s.matches(&p.rule_labels)))
            && self
                .namespace_labels
                .as_ref()
                .is_none_or(|s| subject.namespace_labels.is_some_and(|l| s.matches(l)))
    }
}

/// What a verdict is taken on: the facts of one cgroup.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    pub pod: Option<&'a PodMeta>,
    pub namespace_labels: Option<&'a [(String, String)]>,
    pub container: Option<&'a str>,
    pub systemd_unit: Option<&'a str>,
}

/// The `select` section: which processes are traced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Selection {
    #[serde(deserialize_with = "crate::config::or_default")]
    pub include: Vec<Rule>,
    #[serde(deserialize_with = "crate::config::or_default")]
    pub exclude: Vec<Rule>,
}

impl Selection {
    /// Traces everything.
    pub fn all() -> Self {
        Selection::default()
    }

    pub fn traces_everything(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    pub fn traces(&self, subject: &Subject<'_>) -> bool {
        (self.include.is_empty() || self.include.iter().any(|r| r.matches(subject)))
            && !self.exclude.iter().any(|r| r.matches(subject))
    }

    /// The pod label keys the rules look at.
    pub fn label_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .include
            .iter()
            .chain(&self.exclude)
            .filter_map(|r| r.labels.as_ref())
            .flat_map(|s| s.keys().map(str::to_owned))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Whether any rule needs pod metadata to match.
    pub fn needs_pods(&self) -> bool {
        self.include.iter().chain(&self.exclude).any(|r| {
            r.namespace.is_some()
                || r.pod.is_some()
                || r.labels.is_some()
                || r.namespace_labels.is_some()
                || r.container.is_some()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob(p.to_owned())
    }

    #[test]
    fn globs() {
        for (pattern, name, want) in [
            ("kube-system", "kube-system", true),
            ("kube-system", "kube-system2", false),
            ("kube-*", "kube-system", true),
            ("kube-*", "kube-", true),
            ("kube-*", "kube", false),
            ("*-canary", "web-canary", true),
            ("*-canary", "web-canary-2", false),
            ("*", "", true),
            ("*", "anything", true),
            ("web-?", "web-1", true),
            ("web-?", "web-12", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("**", "x", true),
            ("shop-*-db", "shop-eu-west-db", true),
        ] {
            assert_eq!(glob(pattern).matches(name), want, "{pattern} ~ {name}");
        }
        assert!(Glob::try_from(String::new()).is_err());
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_match_as_kubernetes_does() {
        let pod = labels(&[("app", "web"), ("tier", "front"), ("sonde.io/trace", "off")]);
        for (selector, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app = web", true),
            ("app=api", false),
            ("app!=api", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (web, api)", true),
            ("app in (api,db)", false),
            ("app notin (api,db)", true),
            ("missing notin (a)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,tier=front", true),
            ("app=web, tier=back", false),
            ("sonde.io/trace=off", true),
            ("app in (web),tier in (front,back),!missing", true),
            ("app=", false),
        ] {
            let s = LabelSelector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(s.matches(&pod), want, "{selector}");
        }
        let empty_value = LabelSelector::parse("app=").unwrap();
        assert!(empty_value.matches(&labels(&[("app", "")])));
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for (selector, says) in [
            ("", "empty selector"),
            ("app in web", "parentheses"),
            ("app in (web", "unclosed"),
            ("app=web)", "unbalanced"),
            ("app in ((web))", "nested"),
            ("app=web,,tier=x", "empty requirement"),
            ("app has (web)", "unknown operator"),
            ("-app=web", "not a label key"),
            ("app=we b", "not a label value"),
            ("app in ()", "empty list"),
            ("/app=x", "not a label key"),
            ("app=web!", "not a label value"),
        ] {
            let err = LabelSelector::parse(selector).expect_err(selector);
            assert!(err.contains(says), "{selector:?}: {err}");
        }
    }

    #[test]
    fn selectors_print_as_written() {
        for s in [
            "app=web",
            "app!=web",
            "a in (x,y)",
            "a notin (x,y)",
            "a",
            "!a",
            "a=b,!c",
        ] {
            assert_eq!(LabelSelector::parse(s).unwrap().to_string(), s);
        }
    }

    fn pod(namespace: &str, name: &str, pod_labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: "u".into(),
            name: name.into(),
            namespace: namespace.into(),
            rule_labels: labels(pod_labels),
            ..PodMeta::default()
        }
    }

    fn rule(yaml: &str) -> Rule {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn include_and_exclude() {
        let web = pod("shop", "web-7d9f-abcde", &[("app", "web")]);
        let canary = pod(
            "shop",
            "web-canary-1",
            &[("app", "web"), ("track", "canary")],
        );
        let dns = pod("kube-system", "coredns-1", &[("k8s-app", "kube-dns")]);
        let quiet_ns = labels(&[("sonde.io/trace", "off")]);
        fn in_pod(p: &PodMeta) -> Subject<'_> {
            Subject {
                pod: Some(p),
                container: Some("main"),
                ..Subject::default()
            }
        }
        let host_nginx = Subject {
            systemd_unit: Some("nginx.service"),
            ..Subject::default()
        };
        let unknown_pod = Subject::default();

        let everything = Selection::all();
        assert!(everything.traces_everything());
        for s in [in_pod(&web), in_pod(&dns), host_nginx, unknown_pod] {
            assert!(everything.traces(&s));
        }

        let no_system = Selection {
            include: vec![],
            exclude: vec![rule("namespace: kube-*"), rule("labels: track=canary")],
        };
        assert!(no_system.traces(&in_pod(&web)));
        assert!(!no_system.traces(&in_pod(&dns)));
        assert!(!no_system.traces(&in_pod(&canary)));
        assert!(
            no_system.traces(&host_nginx),
            "a rule on pods leaves the host alone"
        );
        assert!(no_system.traces(&unknown_pod));

        let only_shop = Selection {
            include: vec![rule("namespace: shop\npod: web-*")],
            exclude: vec![rule("pod: '*-canary-*'")],
        };
        assert!(only_shop.traces(&in_pod(&web)));
        assert!(!only_shop.traces(&in_pod(&canary)), "exclude wins");
        assert!(!only_shop.traces(&in_pod(&dns)));
        assert!(!only_shop.traces(&host_nginx));

        let by_namespace_label = Selection {
            include: vec![],
            exclude: vec![rule("namespace_labels: sonde.io/trace=off")],
        };
        let quiet = Subject {
            namespace_labels: Some(&quiet_ns),
            ..in_pod(&web)
        };
        assert!(!by_namespace_label.traces(&quiet));
        assert!(
            by_namespace_label.traces(&in_pod(&web)),
            "no namespace labels known"
        );

        let containers_and_units = Selection {
            include: vec![rule("container: main"), rule("systemd_unit: '*.service'")],
            exclude: vec![rule("systemd_unit: sshd.service")],
        };
        assert!(containers_and_units.traces(&in_pod(&web)));
        assert!(containers_and_units.traces(&host_nginx));
        let sshd = Subject {
            systemd_unit: Some("sshd.service"),
            ..Subject::default()
        };
        assert!(!containers_and_units.traces(&sshd));
        let sidecar = Subject {
            container: Some("istio-proxy"),
            ..in_pod(&web)
        };
        assert!(!containers_and_units.traces(&sidecar));
    }

    #[test]
    fn label_keys_and_needs() {
        let s = Selection {
            include: vec![rule("labels: app in (a), !b")],
            exclude: vec![rule("labels: app=x,c"), rule("systemd_unit: x")],
        };
        assert_eq!(s.label_keys(), ["app", "b", "c"]);
        assert!(s.needs_pods());
        let host_only = Selection {
            include: vec![],
            exclude: vec![rule("systemd_unit: x")],
        };
        assert!(!host_only.needs_pods());
        assert!(rule("{}").is_empty());
    }
}
