//! Which URLs an Ingress or a VirtualService exposes (an HTTPRoute's are in
//! [`super::httproute`]), and what the
//! `NucleiScan` for it is called. Pure functions of the object.
//!
//! Every host or path that yields no target is reported in
//! [`Derived::skipped`] with the reason, so the source reconciler can put it
//! in an Event instead of dropping it silently.
//!
//! Rules shared by both kinds:
//! * Host names are compared and emitted in lower case, without a trailing
//!   dot. A host must be an ASCII DNS name (internationalised names in
//!   punycode, `xn--…`); wildcard hosts are skipped, as there is no single
//!   name to scan.
//! * A path becomes part of the URL as written. `/` and the empty path mean
//!   the base URL (`https://host`, no trailing slash). Paths with white space,
//!   control or non-ASCII characters, `?` or `#` are skipped.
//! * Regular-expression paths cannot be turned into a URL and are skipped.
//!   A host whose every path was skipped is still scanned at its base URL: it
//!   is exposed, and most templates work on the host.
//! * Targets are deduplicated and sorted, so the same object always gives the
//!   same list (and an unchanged list never rewrites the `NucleiScan`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{HTTPIngressPath, Ingress, IngressTLS};

use crate::api::{MAX_TARGETS, SourceKind, VirtualService, is_valid_target};
use crate::sources::annotations::{describe_char, is_invisible};
use crate::target_policy::TargetPolicy;

/// Longest name [`scan_name`] returns.
///
/// Below the 63-character label limit so a Job name made of the scan name plus
/// `-` and a 10-character run id still fits in a label (Job names become the
/// `job-name` label of their pods).
pub const MAX_SCAN_NAME_LEN: usize = 52;

/// The targets of one source object, and what was left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Derived {
    /// URLs to scan: deduplicated, sorted, each passing
    /// [`crate::api::is_valid_target`]; at most [`MAX_TARGETS`].
    pub targets: Vec<String>,
    /// Hosts, rules or paths that gave no target, in the order met.
    pub skipped: Vec<Skipped>,
}

/// A host, rule or path that yields no target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// What was skipped: a host as written, `host/path`, or a locator such as
    /// `rules[2]` or `http[0].match[1]`.
    pub host_or_rule: String,
    /// Why, in words for an Event.
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.host_or_rule, self.reason)
    }
}

/// Targets of an Ingress.
///
/// One target per distinct (host, path) of its rules. The scheme is `https`
/// when a TLS entry covers the host, else `http`. A TLS entry covers a host it
/// lists, and a wildcard entry `*.example.com` covers exactly one more label
/// (`a.example.com`, not `a.b.example.com` nor `example.com`). A TLS entry
/// without hosts covers every host: the Ingress API defines it as the
/// controller's default (wildcard) certificate.
///
/// Rules without a host match any name and have nothing to scan; they are
/// skipped, as are wildcard hosts and an Ingress with only a default backend.
/// `ImplementationSpecific` paths ending in `/*` (the GCE and AWS convention
/// for a prefix) are read as the prefix; other `ImplementationSpecific` paths
/// with regular-expression characters (ingress-nginx `use-regex`) are skipped.
pub fn ingress_targets(ingress: &Ingress) -> Derived {
    let mut out = Collector::default();
    let Some(spec) = ingress.spec.as_ref() else {
        out.skip("spec", "the Ingress has no spec");
        return out.finish();
    };
    let tls = TlsCoverage::new(spec.tls.as_deref().unwrap_or_default());
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.is_empty() {
        if spec.default_backend.is_some() {
            out.skip(
                "defaultBackend",
                "a default backend answers for any host name, so there is no name to scan",
            );
        } else {
            out.skip("rules", "the Ingress has no rules");
        }
        return out.finish();
    }

    // host -> (scheme, paths); None is the base URL.
    let mut hosts: BTreeMap<String, BTreeSet<Option<String>>> = BTreeMap::new();
    for (i, rule) in rules.iter().enumerate() {
        let raw_host = rule.host.as_deref().unwrap_or_default();
        if raw_host.is_empty() {
            out.skip(
                format!("rules[{i}]"),
                "the rule has no host: it matches any host name, so there is no name to scan",
            );
            continue;
        }
        let host = match normalize_host(raw_host) {
            Ok(host) => host,
            Err(reason) => {
                out.skip(raw_host, reason);
                continue;
            }
        };
        let paths = hosts.entry(host.clone()).or_default();
        let rule_paths = rule.http.as_ref().map(|h| h.paths.as_slice());
        match rule_paths {
            None | Some([]) => {
                paths.insert(None);
            }
            Some(rule_paths) => {
                for p in rule_paths {
                    match ingress_path(p) {
                        Ok(path) => {
                            paths.insert(path);
                        }
                        Err(reason) => {
                            let raw = p.path.as_deref().unwrap_or_default();
                            let sep = if raw.starts_with('/') { "" } else { " " };
                            out.skip(format!("{host}{sep}{raw}"), reason);
                        }
                    }
                }
            }
        }
    }
    for (host, paths) in hosts {
        let scheme = if tls.covers(&host) { "https" } else { "http" };
        out.add_host(scheme, &host, &paths);
    }
    out.finish()
}

/// Targets of an Istio VirtualService.
///
/// Only a VirtualService bound to a gateway other than `mesh` is reachable from
/// outside: absent or empty `gateways` means `mesh` only (Istio's default), so
/// it has no targets. (The Go operator treated an absent list as external.)
///
/// Hosts are `spec.hosts` minus wildcards, short names without a dot (mesh
/// service names); cluster-internal names (`*.svc`, `*.cluster.local`) are
/// the target policy's to refuse ([`apply_policy`]), as for Ingresses.
/// Paths come from `http[].match[].uri` `exact` and `prefix`; `regex` matches
/// are skipped, and so are matches restricted to the `mesh` gateway. A route
/// without matches, or a match without a `uri`, covers the base URL, and so do
/// TLS (passthrough) routes.
///
/// The scheme is always `https`: Istio ingress gateways terminate TLS in the
/// usual setup, commonly redirecting plain HTTP to it, and the VirtualService
/// does not say which Gateway server (port 80 or 443) carries it. Reading the
/// bound Gateway's `servers` would decide it exactly; that needs the Gateway
/// object and is left to the caller.
pub fn virtual_service_targets(vs: &VirtualService) -> Derived {
    let mut out = Collector::default();
    let spec = &vs.spec;
    if spec.gateways.is_empty() {
        out.skip(
            "gateways",
            "no gateways: the routes apply only inside the mesh (Istio's default gateway is `mesh`)",
        );
        return out.finish();
    }
    if spec.gateways.iter().all(|g| g.trim() == MESH) {
        out.skip(
            "gateways",
            "bound only to the `mesh` gateway: the routes apply only inside the mesh",
        );
        return out.finish();
    }
    if spec.http.is_empty() && spec.tls.is_empty() {
        let reason = if spec.tcp.is_empty() {
            "no HTTP or TLS routes"
        } else {
            "only TCP routes, which nuclei's web templates cannot scan"
        };
        out.skip("http", reason);
        return out.finish();
    }

    let mut paths: BTreeSet<Option<String>> = BTreeSet::new();
    let mut reaches_gateway = !spec.tls.is_empty();
    if !spec.tls.is_empty() {
        paths.insert(None);
    }
    for (i, route) in spec.http.iter().enumerate() {
        if route.matches.is_empty() {
            reaches_gateway = true;
            paths.insert(None);
            continue;
        }
        for (j, m) in route.matches.iter().enumerate() {
            let at = format!("http[{i}].match[{j}]");
            if !m.gateways.is_empty() && m.gateways.iter().all(|g| g.trim() == MESH) {
                out.skip(at, "the match applies to the `mesh` gateway only");
                continue;
            }
            reaches_gateway = true;
            let Some(uri) = &m.uri else {
                paths.insert(None);
                continue;
            };
            let path = match (&uri.exact, &uri.prefix, &uri.regex) {
                (Some(p), _, _) | (None, Some(p), _) => p,
                (None, None, Some(_)) => {
                    out.skip(at, REGEX_PATH);
                    continue;
                }
                (None, None, None) => {
                    paths.insert(None);
                    continue;
                }
            };
            match check_path(path) {
                Ok(path) => {
                    paths.insert(path);
                }
                Err(reason) => out.skip(format!("{at} {path}"), reason),
            }
        }
    }
    if !reaches_gateway {
        out.skip("http", "no HTTP route reaches a gateway other than `mesh`");
        return out.finish();
    }

    if spec.hosts.is_empty() {
        out.skip("hosts", "the VirtualService has no hosts");
    }
    let mut seen = BTreeSet::new();
    for raw_host in &spec.hosts {
        let host = match normalize_host(raw_host) {
            Ok(host) => host,
            Err(reason) => {
                out.skip(raw_host, reason);
                continue;
            }
        };
        if !host.contains('.') {
            out.skip(
                raw_host,
                "a short name is a mesh-internal service, not reachable from outside",
            );
            continue;
        }
        if seen.insert(host.clone()) {
            out.add_host("https", &host, &paths);
        }
    }
    out.finish()
}

/// The name of the `NucleiScan` for a source object: `<name>-ingress`,
/// `<name>-vs` or `<name>-httproute`.
///
/// Deterministic; always a valid DNS-1123 label of at most
/// [`MAX_SCAN_NAME_LEN`] characters; never the same for two kinds of source
/// (the suffixes differ), so they never fight over one
/// scan as they did in the Go operator. A name that is too long, or not
/// label-safe (it has dots or upper case), is cut and given an 8-hex-digit hash
/// of the full name, so distinct long names stay distinct.
pub fn scan_name(kind: SourceKind, source_name: &str) -> String {
    let suffix = match kind {
        SourceKind::Ingress => "ingress",
        SourceKind::VirtualService => "vs",
        SourceKind::HttpRoute => "httproute",
    };
    if crate::names::is_dns_label(source_name)
        && source_name.len() + 1 + suffix.len() <= MAX_SCAN_NAME_LEN
    {
        return format!("{source_name}-{suffix}");
    }
    let hash = format!("{:08x}", crate::hash::fnv1a_32(source_name.as_bytes()));
    let keep = MAX_SCAN_NAME_LEN - hash.len() - suffix.len() - 2;
    let sanitized: String = source_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(keep)
        .collect();
    let prefix = sanitized.trim_matches('-');
    if prefix.is_empty() {
        format!("{hash}-{suffix}")
    } else {
        format!("{prefix}-{hash}-{suffix}")
    }
}

const MESH: &str = "mesh";

pub(super) const REGEX_PATH: &str = "a regular-expression path cannot be turned into a URL (the host is still scanned at its base URL)";

/// Collects targets in sorted order and the reasons for what was left out.
#[derive(Default)]
pub(super) struct Collector {
    targets: BTreeSet<String>,
    skipped: Vec<Skipped>,
}

impl Collector {
    pub(super) fn skip(&mut self, what: impl Into<String>, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            host_or_rule: what.into(),
            reason: reason.into(),
        });
    }

    /// Adds `scheme://host` plus each path; the base URL alone when no path
    /// survived, since the host itself is exposed.
    pub(super) fn add_host(&mut self, scheme: &str, host: &str, paths: &BTreeSet<Option<String>>) {
        if paths.is_empty() {
            self.add(format!("{scheme}://{host}"));
        }
        for path in paths {
            let path = path.as_deref().unwrap_or_default();
            self.add(format!("{scheme}://{host}{path}"));
        }
    }

    fn add(&mut self, target: String) {
        // Hosts and paths are checked before they get here; this keeps the
        // promise to the CRD even if those checks and its rule drift apart.
        if is_valid_target(&target) {
            self.targets.insert(target);
        } else {
            self.skip(target, "not a valid http(s) URL for the NucleiScan");
        }
    }

    pub(super) fn finish(mut self) -> Derived {
        let mut targets: Vec<String> = std::mem::take(&mut self.targets).into_iter().collect();
        if targets.len() > MAX_TARGETS {
            let dropped = targets.len() - MAX_TARGETS;
            targets.truncate(MAX_TARGETS);
            self.skip(
                "targets",
                format!(
                    "{dropped} targets beyond the limit of {MAX_TARGETS} per scan were left out"
                ),
            );
        }
        Derived {
            targets,
            skipped: self.skipped,
        }
    }
}

/// Drops the targets whose host `policy` refuses by name or as an IP
/// literal; each is added to [`Derived::skipped`] and returned.
pub fn apply_policy(d: &mut Derived, policy: &TargetPolicy) -> Vec<Skipped> {
    let mut refused = Vec::new();
    d.targets.retain(|t| match policy.refuse_target_host(t) {
        Some(reason) => {
            refused.push(Skipped {
                host_or_rule: t.clone(),
                reason,
            });
            false
        }
        None => true,
    });
    d.skipped.extend(refused.iter().cloned());
    refused
}

/// The IngressClass of an Ingress: `spec.ingressClassName`, else the older
/// `kubernetes.io/ingress.class` annotation.
pub fn ingress_class(ingress: &Ingress) -> Option<&str> {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()?
                .get("kubernetes.io/ingress.class")
                .map(String::as_str)
        })
        .filter(|c| !c.is_empty())
}

/// Which hosts the TLS entries of an Ingress cover.
struct TlsCoverage {
    all: bool,
    hosts: BTreeSet<String>,
}

impl TlsCoverage {
    fn new(tls: &[IngressTLS]) -> Self {
        let mut all = false;
        let mut hosts = BTreeSet::new();
        for entry in tls {
            match entry.hosts.as_deref() {
                None | Some([]) => all = true,
                Some(list) => hosts.extend(list.iter().map(|h| {
                    let h = h.trim().to_ascii_lowercase();
                    h.strip_suffix('.').map(str::to_owned).unwrap_or(h)
                })),
            }
        }
        TlsCoverage { all, hosts }
    }

    /// `host` is normalized (lower case, no trailing dot).
    fn covers(&self, host: &str) -> bool {
        if self.all || self.hosts.contains(host) {
            return true;
        }
        // A wildcard covers exactly one label: `*.example.com` covers
        // `a.example.com` but neither `example.com` nor `a.b.example.com`.
        match host.split_once('.') {
            Some((first, parent)) if !first.is_empty() => {
                self.hosts.contains(&format!("*.{parent}"))
            }
            _ => false,
        }
    }
}

/// The path of an Ingress path entry: `None` for the base URL.
fn ingress_path(p: &HTTPIngressPath) -> Result<Option<String>, String> {
    let mut path = p.path.as_deref().unwrap_or_default();
    if p.path_type == "ImplementationSpecific" {
        if let Some(prefix) = path.strip_suffix('*')
            && prefix.ends_with('/')
        {
            path = prefix;
        }
        if path.contains([
            '^', '$', '(', ')', '[', ']', '{', '}', '*', '+', '?', '|', '\\',
        ]) {
            return Err(REGEX_PATH.to_owned());
        }
    }
    check_path(path)
}

/// Checks a literal path: `None` for the base URL.
pub(super) fn check_path(path: &str) -> Result<Option<String>, String> {
    if path.is_empty() || path == "/" {
        return Ok(None);
    }
    if !path.starts_with('/') {
        return Err("the path does not start with /".to_owned());
    }
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the path contains {}, which a target URL cannot carry as is",
            describe_char(c)
        ));
    }
    if path.contains(['?', '#']) {
        return Err("the path contains ? or #, which would change the URL's meaning".to_owned());
    }
    Ok(Some(path.to_owned()))
}

/// Lower-cases `raw` and drops one trailing dot; errors say why it is not a
/// scannable DNS name.
pub(super) fn normalize_host(raw: &str) -> Result<String, String> {
    if raw.starts_with('*') {
        return Err("a wildcard host has no single name to scan".to_owned());
    }
    if let Some(c) = raw.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(if c.is_ascii() || c.is_control() || is_invisible(c) {
            format!("the host contains {}", describe_char(c))
        } else {
            "the host is not an ASCII DNS name (write internationalised names in punycode, xn--…)"
                .to_owned()
        });
    }
    let host = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    if host.len() > 253 {
        return Err("the host is longer than 253 characters".to_owned());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(
                "the host has an empty label (two dots in a row, or a leading dot)".to_owned(),
            );
        }
        if label.len() > 63 {
            return Err(format!(
                "the host label {label:?} is longer than 63 characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!("the host contains {c:?}, which a DNS name cannot"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the host label {label:?} starts or ends with '-'"));
        }
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HttpMatchRequest, HttpRoute, OpaqueRoute, StringMatch, VirtualServiceSpec};
    use k8s_openapi::api::networking::v1::{
        HTTPIngressRuleValue, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    };

    // ---- fixtures ----------------------------------------------------------

    struct Rule {
        host: Option<&'static str>,
        paths: Option<Vec<(&'static str, &'static str)>>,
    }

    fn host(h: &'static str) -> Rule {
        Rule {
            host: Some(h),
            paths: None,
        }
    }

    fn hostless(paths: &[&'static str]) -> Rule {
        Rule {
            host: None,
            paths: Some(paths.iter().map(|p| (*p, "Prefix")).collect()),
        }
    }

    impl Rule {
        fn paths(mut self, paths: &[&'static str]) -> Self {
            self.paths = Some(paths.iter().map(|p| (*p, "Prefix")).collect());
            self
        }

        fn typed_paths(mut self, paths: &[(&'static str, &'static str)]) -> Self {
            self.paths = Some(paths.to_vec());
            self
        }
    }

    fn backend() -> IngressBackend {
        IngressBackend {
            service: Some(IngressServiceBackend {
                name: "svc".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ingress(rules: Vec<Rule>, tls: Vec<Option<Vec<&str>>>) -> Ingress {
        let rules = rules
            .into_iter()
            .map(|r| IngressRule {
                host: r.host.map(str::to_owned),
                http: r.paths.map(|paths| HTTPIngressRuleValue {
                    paths: paths
                        .into_iter()
                        .map(|(p, t)| HTTPIngressPath {
                            path: Some(p.to_owned()),
                            path_type: t.to_owned(),
                            backend: backend(),
                        })
                        .collect(),
                }),
            })
            .collect();
        let tls = tls
            .into_iter()
            .map(|hosts| IngressTLS {
                hosts: hosts.map(|h| h.into_iter().map(str::to_owned).collect()),
                secret_name: Some("cert".into()),
            })
            .collect();
        Ingress {
            spec: Some(IngressSpec {
                rules: Some(rules),
                tls: Some(tls),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn targets(d: &Derived) -> Vec<&str> {
        d.targets.iter().map(String::as_str).collect()
    }

    fn skipped(d: &Derived) -> Vec<&str> {
        d.skipped.iter().map(|s| s.host_or_rule.as_str()).collect()
    }

    // ---- Ingress -----------------------------------------------------------

    #[test]
    fn ingress_targets_follow_the_table() {
        struct Case {
            name: &'static str,
            rules: Vec<Rule>,
            tls: Vec<Option<Vec<&'static str>>>,
            want: Vec<&'static str>,
            skipped: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "a host without tls is http",
                rules: vec![host("app.example.com")],
                tls: vec![],
                want: vec!["http://app.example.com"],
                skipped: vec![],
            },
            Case {
                name: "a host listed in tls is https",
                rules: vec![host("app.example.com")],
                tls: vec![Some(vec!["app.example.com"])],
                want: vec!["https://app.example.com"],
                skipped: vec![],
            },
            Case {
                name: "tls for another host leaves this one http",
                rules: vec![host("a.example.com"), host("b.example.com")],
                tls: vec![Some(vec!["b.example.com"])],
                want: vec!["http://a.example.com", "https://b.example.com"],
                skipped: vec![],
            },
            Case {
                name: "a wildcard tls host covers exactly one label",
                rules: vec![
                    host("a.example.com"),
                    host("a.b.example.com"),
                    host("example.com"),
                ],
                tls: vec![Some(vec!["*.example.com"])],
                want: vec![
                    "http://a.b.example.com",
                    "http://example.com",
                    "https://a.example.com",
                ],
                skipped: vec![],
            },
            Case {
                name: "a tls entry without hosts covers every host",
                rules: vec![host("a.example.com"), host("b.example.org")],
                tls: vec![None],
                want: vec!["https://a.example.com", "https://b.example.org"],
                skipped: vec![],
            },
            Case {
                name: "a tls entry with an empty host list covers every host",
                rules: vec![host("a.example.com")],
                tls: vec![Some(vec![])],
                want: vec!["https://a.example.com"],
                skipped: vec![],
            },
            Case {
                name: "tls hosts match regardless of case and trailing dot",
                rules: vec![host("App.Example.com.")],
                tls: vec![Some(vec!["APP.example.COM."])],
                want: vec!["https://app.example.com"],
                skipped: vec![],
            },
            Case {
                name: "root and empty paths are the base url and other paths are appended",
                rules: vec![host("a.example.com").paths(&["/", "", "/api", "/api/", "/admin"])],
                tls: vec![],
                want: vec![
                    "http://a.example.com",
                    "http://a.example.com/admin",
                    "http://a.example.com/api",
                    "http://a.example.com/api/",
                ],
                skipped: vec![],
            },
            Case {
                name: "duplicate hosts and paths across rules are merged",
                rules: vec![
                    host("a.example.com").paths(&["/api", "/api"]),
                    host("A.example.com").paths(&["/api", "/web"]),
                    host("a.example.com."),
                ],
                tls: vec![],
                want: vec![
                    "http://a.example.com",
                    "http://a.example.com/api",
                    "http://a.example.com/web",
                ],
                skipped: vec![],
            },
            Case {
                name: "hostless rules and wildcard hosts are skipped",
                rules: vec![
                    hostless(&["/"]),
                    host("*.example.com"),
                    host("ok.example.com"),
                ],
                tls: vec![],
                want: vec!["http://ok.example.com"],
                skipped: vec!["rules[0]", "*.example.com"],
            },
            Case {
                name: "unicode, spaces, underscores and malformed labels are skipped",
                rules: vec![
                    host("bücher.example.com"),
                    host("xn--bcher-kva.example.com"),
                    host("a b.example.com"),
                    host("zero\u{200B}width.example.com"),
                    host("ctl\u{7}.example.com"),
                    host("under_score.example.com"),
                    host("a..example.com"),
                    host(".example.com"),
                    host("-dash.example.com"),
                    host("example.com.."),
                    host("host.example.com:8443"),
                ],
                tls: vec![],
                want: vec!["http://xn--bcher-kva.example.com"],
                skipped: vec![
                    "bücher.example.com",
                    "a b.example.com",
                    "zero\u{200B}width.example.com",
                    "ctl\u{7}.example.com",
                    "under_score.example.com",
                    "a..example.com",
                    ".example.com",
                    "-dash.example.com",
                    "example.com..",
                    "host.example.com:8443",
                ],
            },
            Case {
                name: "regex paths are skipped but the host keeps its base url",
                rules: vec![
                    host("a.example.com").typed_paths(&[
                        ("/api(/|$)(.*)", "ImplementationSpecific"),
                        ("/v[0-9]+/", "ImplementationSpecific"),
                    ]),
                    host("b.example.com").typed_paths(&[
                        ("/static(/|$)(.*)", "ImplementationSpecific"),
                        ("/web", "Prefix"),
                    ]),
                ],
                tls: vec![],
                want: vec!["http://a.example.com", "http://b.example.com/web"],
                skipped: vec![
                    "a.example.com/api(/|$)(.*)",
                    "a.example.com/v[0-9]+/",
                    "b.example.com/static(/|$)(.*)",
                ],
            },
            Case {
                name: "a trailing /* on an implementation specific path is a prefix",
                rules: vec![host("a.example.com").typed_paths(&[
                    ("/*", "ImplementationSpecific"),
                    ("/api/*", "ImplementationSpecific"),
                    ("/plain", "ImplementationSpecific"),
                ])],
                tls: vec![],
                want: vec![
                    "http://a.example.com",
                    "http://a.example.com/api/",
                    "http://a.example.com/plain",
                ],
                skipped: vec![],
            },
            Case {
                name: "paths with spaces, unicode, query or no leading slash are skipped",
                rules: vec![
                    host("a.example.com")
                        .paths(&["/a b", "/späti", "/x?y=1", "/frag#x", "relative", "/ok"]),
                ],
                tls: vec![],
                want: vec!["http://a.example.com/ok"],
                skipped: vec![
                    "a.example.com/a b",
                    "a.example.com/späti",
                    "a.example.com/x?y=1",
                    "a.example.com/frag#x",
                    "a.example.com relative",
                ],
            },
        ];
        for case in cases {
            let got = ingress_targets(&ingress(case.rules, case.tls));
            assert_eq!(targets(&got), case.want, "{}", case.name);
            assert_eq!(
                skipped(&got),
                case.skipped,
                "{}: {:#?}",
                case.name,
                got.skipped
            );
        }
    }

    #[test]
    fn an_ingress_with_only_a_default_backend_has_no_targets() {
        let ing = Ingress {
            spec: Some(IngressSpec {
                default_backend: Some(backend()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = ingress_targets(&ing);
        assert!(got.targets.is_empty());
        assert_eq!(skipped(&got), ["defaultBackend"]);
    }

    #[test]
    fn an_ingress_without_spec_or_rules_has_no_targets() {
        let got = ingress_targets(&Ingress::default());
        assert!(got.targets.is_empty());
        assert_eq!(skipped(&got), ["spec"]);
        let got = ingress_targets(&ingress(vec![], vec![]));
        assert_eq!(skipped(&got), ["rules"]);
    }

    #[test]
    fn skip_reasons_say_what_is_wrong() {
        let got = ingress_targets(&ingress(
            vec![
                hostless(&["/"]),
                host("*.example.com"),
                host("bücher.example.com"),
                host("zero\u{200B}width.example.com"),
            ],
            vec![],
        ));
        let reasons: Vec<String> = got.skipped.iter().map(ToString::to_string).collect();
        assert!(reasons[0].contains("no host"), "{reasons:?}");
        assert!(reasons[1].contains("wildcard"), "{reasons:?}");
        assert!(reasons[2].contains("punycode"), "{reasons:?}");
        assert!(
            reasons[3].contains("invisible character (U+200B)"),
            "{reasons:?}"
        );
    }

    #[test]
    fn more_targets_than_a_scan_holds_are_cut_with_a_reason() {
        let paths: Vec<&'static str> = (0..MAX_TARGETS + 5)
            .map(|i| &*Box::leak(format!("/p{i:05}").into_boxed_str()))
            .collect();
        let got = ingress_targets(&ingress(vec![host("a.example.com").paths(&paths)], vec![]));
        assert_eq!(got.targets.len(), MAX_TARGETS);
        assert_eq!(skipped(&got), ["targets"]);
        assert!(got.skipped[0].reason.contains("5 targets"));
    }

    #[test]
    fn every_target_satisfies_the_crd_rule() {
        let got = ingress_targets(&ingress(
            vec![host("A.Example.COM.").paths(&["/x", "/y/z.txt", "/%20"])],
            vec![None],
        ));
        assert!(!got.targets.is_empty());
        assert!(got.targets.iter().all(|t| is_valid_target(t)));
    }

    // ---- VirtualService ----------------------------------------------------

    fn uri(kind: &str, value: &str) -> HttpMatchRequest {
        let mut m = StringMatch::default();
        match kind {
            "exact" => m.exact = Some(value.into()),
            "prefix" => m.prefix = Some(value.into()),
            "regex" => m.regex = Some(value.into()),
            _ => {}
        }
        HttpMatchRequest {
            uri: Some(m),
            gateways: vec![],
        }
    }

    fn route(matches: Vec<HttpMatchRequest>) -> HttpRoute {
        HttpRoute { matches }
    }

    fn vs(hosts: &[&str], gateways: &[&str], http: Vec<HttpRoute>) -> VirtualService {
        VirtualService::new(
            "web",
            VirtualServiceSpec {
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                gateways: gateways.iter().map(|g| g.to_string()).collect(),
                http,
                ..Default::default()
            },
        )
    }

    #[test]
    fn virtual_service_targets_follow_the_table() {
        let gw = &["istio-system/public"][..];
        let cases: Vec<(&str, VirtualService, Vec<&str>, Vec<&str>)> = vec![
            (
                "no gateways means mesh only",
                vs(&["web.example.com"], &[], vec![route(vec![])]),
                vec![],
                vec!["gateways"],
            ),
            (
                "only the mesh gateway means mesh only",
                vs(&["web.example.com"], &["mesh"], vec![route(vec![])]),
                vec![],
                vec!["gateways"],
            ),
            (
                "a gateway plus mesh is external",
                vs(
                    &["web.example.com"],
                    &["mesh", "public"],
                    vec![route(vec![])],
                ),
                vec!["https://web.example.com"],
                vec![],
            ),
            (
                "wildcards and short names are skipped; cluster names are the policy's",
                vs(
                    &[
                        "*",
                        "*.example.com",
                        "reviews",
                        "reviews.prod.svc.cluster.local",
                        "reviews.prod.svc",
                        "db.internal.cluster.local",
                        "Web.Example.com.",
                        "web.example.com",
                    ],
                    gw,
                    vec![route(vec![])],
                ),
                vec![
                    "https://db.internal.cluster.local",
                    "https://reviews.prod.svc",
                    "https://reviews.prod.svc.cluster.local",
                    "https://web.example.com",
                ],
                vec!["*", "*.example.com", "reviews"],
            ),
            (
                "exact and prefix matches become paths and regex is skipped",
                vs(
                    &["web.example.com"],
                    gw,
                    vec![
                        route(vec![uri("prefix", "/api"), uri("exact", "/login")]),
                        route(vec![uri("regex", "^/v[0-9]+/.*"), uri("prefix", "/")]),
                    ],
                ),
                vec![
                    "https://web.example.com",
                    "https://web.example.com/api",
                    "https://web.example.com/login",
                ],
                vec!["http[1].match[0]"],
            ),
            (
                "a host with only regex matches keeps its base url",
                vs(
                    &["web.example.com"],
                    gw,
                    vec![route(vec![uri("regex", "^/v[0-9]+/.*")])],
                ),
                vec!["https://web.example.com"],
                vec!["http[0].match[0]"],
            ),
            (
                "a match without uri covers the base url",
                vs(
                    &["web.example.com"],
                    gw,
                    vec![route(vec![HttpMatchRequest::default()])],
                ),
                vec!["https://web.example.com"],
                vec![],
            ),
            (
                "matches bound to mesh only do not count",
                vs(
                    &["web.example.com"],
                    gw,
                    vec![route(vec![
                        HttpMatchRequest {
                            gateways: vec!["mesh".into()],
                            ..uri("prefix", "/internal")
                        },
                        uri("prefix", "/public"),
                    ])],
                ),
                vec!["https://web.example.com/public"],
                vec!["http[0].match[0]"],
            ),
            (
                "when every match is mesh only nothing reaches the gateway",
                vs(
                    &["web.example.com"],
                    gw,
                    vec![route(vec![HttpMatchRequest {
                        gateways: vec!["mesh".into()],
                        ..uri("prefix", "/internal")
                    }])],
                ),
                vec![],
                vec!["http[0].match[0]", "http"],
            ),
            (
                "paths apply to every host and duplicate hosts are merged",
                vs(
                    &["a.example.com", "b.example.com", "A.example.com"],
                    gw,
                    vec![route(vec![uri("prefix", "/x")])],
                ),
                vec!["https://a.example.com/x", "https://b.example.com/x"],
                vec![],
            ),
            (
                "no http routes and no tls routes gives nothing",
                vs(&["web.example.com"], gw, vec![]),
                vec![],
                vec!["http"],
            ),
            (
                "a bad path is skipped with its match",
                vs(
                    &["web.example.com"],
                    gw,
                    vec![route(vec![uri("prefix", "/a b"), uri("exact", "/ok")])],
                ),
                vec!["https://web.example.com/ok"],
                vec!["http[0].match[0] /a b"],
            ),
            (
                "no hosts gives nothing",
                vs(&[], gw, vec![route(vec![])]),
                vec![],
                vec!["hosts"],
            ),
        ];
        for (name, v, want, skips) in cases {
            let got = virtual_service_targets(&v);
            assert_eq!(targets(&got), want, "{name}");
            assert_eq!(skipped(&got), skips, "{name}: {:#?}", got.skipped);
        }
    }

    #[test]
    fn tls_passthrough_routes_cover_the_base_url_and_tcp_alone_does_not() {
        let mut v = vs(&["db.example.com"], &["public"], vec![]);
        v.spec.tls = vec![OpaqueRoute {}];
        assert_eq!(
            targets(&virtual_service_targets(&v)),
            ["https://db.example.com"]
        );
        v.spec.tls.clear();
        v.spec.tcp = vec![OpaqueRoute {}];
        let got = virtual_service_targets(&v);
        assert!(got.targets.is_empty());
        assert!(got.skipped[0].reason.contains("TCP"));
    }

    // ---- scan names --------------------------------------------------------

    fn assert_label(name: &str) {
        assert!(name.len() <= MAX_SCAN_NAME_LEN, "{name} is too long");
        assert!(
            crate::names::is_dns_label(name),
            "{name} is not a DNS label"
        );
    }

    #[test]
    fn short_names_get_a_readable_kind_suffix() {
        assert_eq!(scan_name(SourceKind::Ingress, "web"), "web-ingress");
        assert_eq!(scan_name(SourceKind::VirtualService, "web"), "web-vs");
    }

    #[test]
    fn an_ingress_and_a_virtual_service_of_the_same_name_never_share_a_scan() {
        let names = [
            "web",
            "web-ingress",
            "web-vs",
            "a.b.c",
            &"x".repeat(253),
            &"very-long-name-".repeat(10),
        ];
        for name in names {
            let i = scan_name(SourceKind::Ingress, name);
            let v = scan_name(SourceKind::VirtualService, name);
            assert_ne!(i, v, "{name}");
            assert_label(&i);
            assert_label(&v);
        }
    }

    #[test]
    fn long_or_dotted_names_are_cut_and_hashed_but_stay_distinct() {
        let cases = [
            "a".repeat(253),
            format!("{}b", "a".repeat(252)),
            "my.app".to_owned(),
            "my-app".to_owned(),
            "My-App".to_owned(),
            "-".to_owned(),
            String::new(),
            "ünïcode".to_owned(),
            "x".repeat(MAX_SCAN_NAME_LEN - "-ingress".len()),
            "x".repeat(MAX_SCAN_NAME_LEN - "-ingress".len() + 1),
        ];
        let mut seen = BTreeSet::new();
        for name in &cases {
            let got = scan_name(SourceKind::Ingress, name);
            assert_label(&got);
            assert!(got.ends_with("-ingress"), "{got}");
            assert!(seen.insert(got.clone()), "{name:?} collides as {got}");
        }
        assert_eq!(
            scan_name(SourceKind::Ingress, &"x".repeat(44)),
            format!("{}-ingress", "x".repeat(44))
        );
    }

    #[test]
    fn scan_names_are_stable_across_releases() {
        // Changing these renames every scan in every cluster.
        assert_eq!(
            scan_name(SourceKind::Ingress, "my.app"),
            "my-app-619d1e02-ingress"
        );
        assert_eq!(
            scan_name(SourceKind::VirtualService, &"a".repeat(100)),
            format!("{}-0a0bb1d9-vs", "a".repeat(MAX_SCAN_NAME_LEN - 12))
        );
    }
}
