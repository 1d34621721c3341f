//! Which URLs a Gateway API HTTPRoute exposes: a pure function of the route
//! and the Gateways it attaches to.
//!
//! A route is reached through the listeners of its parent Gateways, so
//! * only parents that have **accepted** the route (`status.parents[]` with
//!   `Accepted=True`, written by the Gateway controller) count: a route no
//!   Gateway accepted is not served, and not scanned until it is;
//! * of an accepting Gateway, the listeners the parent reference selects
//!   (`sectionName`, `port`), that carry HTTP (`HTTP`, `HTTPS`), allow the
//!   `HTTPRoute` kind and the route's namespace (`allowedRoutes`;
//!   a `Selector` is taken as the Gateway controller judged it, by its
//!   acceptance);
//! * host names are the route's `hostnames` intersected with the listener's
//!   `hostname`, as Gateway API defines it: a wildcard `*.example.com`
//!   matches any name ending in `.example.com` (one label or more), and
//!   the more specific of the two names wins. A route without hostnames
//!   takes the listener's; a listener without one takes the route's. A name
//!   that is still a wildcard has no single host to scan and is skipped,
//!   as is a listener/route pair with no name at all;
//! * the scheme is `https` for an `HTTPS` listener (TLS terminated at the
//!   Gateway), `http` otherwise; the listener's port is in the URL unless
//!   it is the scheme's default (80, 443);
//! * paths come from `rules[].matches[].path`: `Exact` and `PathPrefix`
//!   as written, `RegularExpression` skipped; a rule without matches, or a
//!   match without a path, is the default `PathPrefix /`, the base URL.
//!
//! Everything left out is in [`Derived::skipped`] with the reason.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::ResourceExt;

use super::targets::{Collector, Derived, REGEX_PATH, check_path, normalize_host};
use crate::api::gateway::{GATEWAY_GROUP, Gateway, GatewayVersion, HttpRoute, Listener, ParentRef};

/// Why a parent gives no target while its Gateway has not accepted the
/// route: a state the Gateway controller owns (and explains in the route's
/// status), and every new route passes through it.
pub const NOT_ACCEPTED: &str =
    "the Gateway has not accepted the route (no Accepted=True in status.parents)";

/// Targets of `route`; `gateway(namespace, name)` finds a parent Gateway.
pub fn httproute_targets<V: GatewayVersion>(
    route: &HttpRoute<V>,
    gateway: impl Fn(&str, &str) -> Option<Arc<Gateway<V>>>,
) -> Derived {
    let mut out = Collector::default();
    let namespace = route.namespace().unwrap_or_default();
    let spec = &route.spec;
    if spec.parent_refs.is_empty() {
        out.skip("parentRefs", "the route attaches to no Gateway");
        return out.finish();
    }
    let paths = route_paths(route, &mut out);
    let parents = route
        .status
        .as_ref()
        .map(|s| s.parents.as_slice())
        .unwrap_or_default();
    let mut matched_hostnames = BTreeSet::new();
    let mut any_listener = false;
    for (i, parent) in spec.parent_refs.iter().enumerate() {
        let gw_ns = parent.namespace_or(&namespace);
        let at = format!("parentRefs[{i}] {gw_ns}/{}", parent.name);
        if !parent.is_gateway() {
            out.skip(at, "not a Gateway: only Gateway listeners are read");
            continue;
        }
        if !parents
            .iter()
            .any(|p| p.accepted() && p.parent_ref.same_as(parent, &namespace))
        {
            out.skip(at, NOT_ACCEPTED);
            continue;
        }
        let Some(gw) = gateway(gw_ns, &parent.name) else {
            out.skip(at, "the Gateway does not exist");
            continue;
        };
        let listeners: Vec<&Listener> = gw
            .spec
            .listeners
            .iter()
            .filter(|l| takes(l, parent, gw_ns == namespace))
            .collect();
        if listeners.is_empty() {
            out.skip(
                at,
                "no HTTP or HTTPS listener of the Gateway takes the route",
            );
            continue;
        }
        for l in listeners {
            any_listener = true;
            let (scheme, default_port) = if l.protocol == "HTTPS" {
                ("https", 443)
            } else {
                ("http", 80)
            };
            let port = if l.port == default_port || l.port <= 0 {
                String::new()
            } else {
                format!(":{}", l.port)
            };
            let listener_host = l.hostname.as_deref().filter(|h| !h.is_empty());
            let hosts: Vec<String> = match (listener_host, spec.hostnames.is_empty()) {
                (None, true) => {
                    out.skip(
                        format!("{gw_ns}/{} listener {}", parent.name, l.name),
                        "neither the listener nor the route names a host: it answers for any host name, so there is no name to scan",
                    );
                    continue;
                }
                (Some(lh), true) => vec![lh.to_owned()],
                (None, false) => {
                    matched_hostnames.extend(spec.hostnames.iter().cloned());
                    spec.hostnames.clone()
                }
                (Some(lh), false) => spec
                    .hostnames
                    .iter()
                    .filter_map(|rh| {
                        let host = intersect(lh, rh)?;
                        matched_hostnames.insert(rh.clone());
                        Some(host)
                    })
                    .collect(),
            };
            for raw in hosts {
                match normalize_host(&raw) {
                    Ok(host) => out.add_host(scheme, &format!("{host}{port}"), &paths),
                    Err(reason) => out.skip(raw, reason),
                }
            }
        }
    }
    if any_listener {
        for rh in spec
            .hostnames
            .iter()
            .filter(|h| !matched_hostnames.contains(*h))
        {
            out.skip(
                rh,
                "matches the hostname of no listener the route is attached to",
            );
        }
    }
    out.finish()
}

/// The paths of a route's rules; `None` is the base URL.
fn route_paths<V: GatewayVersion>(
    route: &HttpRoute<V>,
    out: &mut Collector,
) -> BTreeSet<Option<String>> {
    let mut paths = BTreeSet::new();
    if route.spec.rules.is_empty() {
        paths.insert(None);
    }
    for (i, rule) in route.spec.rules.iter().enumerate() {
        if rule.matches.is_empty() {
            paths.insert(None);
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let Some(path) = &m.path else {
                paths.insert(None);
                continue;
            };
            let value = path.value.as_deref().unwrap_or("/");
            let at = format!("rules[{i}].matches[{j}]");
            match path.type_.as_deref().unwrap_or("PathPrefix") {
                "Exact" | "PathPrefix" => match check_path(value) {
                    Ok(p) => {
                        paths.insert(p);
                    }
                    Err(reason) => out.skip(format!("{at} {value}"), reason),
                },
                "RegularExpression" => out.skip(at, REGEX_PATH),
                other => out.skip(
                    at,
                    format!("the path match type {other:?} is not one this operator reads"),
                ),
            }
        }
    }
    paths
}

/// Whether listener `l` takes an HTTPRoute attached by `parent`.
fn takes(l: &Listener, parent: &ParentRef, same_namespace: bool) -> bool {
    let selected = parent.section_name.as_ref().is_none_or(|s| *s == l.name)
        && parent.port.is_none_or(|p| p == l.port);
    let http = matches!(l.protocol.as_str(), "HTTP" | "HTTPS");
    let allowed = l.allowed_routes.as_ref();
    let kinds = allowed.map(|a| a.kinds.as_slice()).unwrap_or_default();
    let kind_ok = kinds.is_empty()
        || kinds.iter().any(|k| {
            k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        });
    let from = allowed
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_deref())
        .unwrap_or("Same");
    let namespace_ok = from != "Same" || same_namespace;
    selected && http && kind_ok && namespace_ok
}

/// The host names both `listener` and `route` match, as Gateway API
/// intersects them: the more specific name, or `None`. Either may be a
/// wildcard (`*.example.com`, one or more labels before the suffix).
fn intersect(listener: &str, route: &str) -> Option<String> {
    let norm = |h: &str| {
        let h = h.trim().to_ascii_lowercase();
        h.strip_suffix('.').map(str::to_owned).unwrap_or(h)
    };
    let (l, r) = (norm(listener), norm(route));
    // `*.s` matches `x.s` and `x.y.s`, never `s` itself.
    let covers = |wild: &str, name: &str| match wild.strip_prefix('*') {
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => wild == name,
    };
    if covers(&l, &r) {
        Some(route.trim().to_owned())
    } else if covers(&r, &l) {
        Some(listener.trim().to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::gateway::V1;
    use serde_json::{Value, json};

    fn gateway(listeners: Value) -> Arc<Gateway<V1>> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "public", "namespace": "infra"},
                "spec": {"gatewayClassName": "x", "listeners": listeners}
            }))
            .unwrap(),
        )
    }

    fn accepted(parent: &Value) -> Value {
        json!({"parentRef": parent, "controllerName": "example.com/gw",
               "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                               "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    }

    /// A route in `apps` attached to `infra/public` (all listeners unless
    /// `section` is set), accepted unless `accept` is false.
    fn route(hostnames: Value, section: Option<&str>, rules: Value, accept: bool) -> HttpRoute<V1> {
        let mut parent = json!({"name": "public", "namespace": "infra"});
        if let Some(s) = section {
            parent["sectionName"] = json!(s);
        }
        let parents = if accept {
            vec![accepted(&parent)]
        } else {
            vec![]
        };
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "apps"},
            "spec": {"parentRefs": [parent], "hostnames": hostnames, "rules": rules},
            "status": {"parents": parents}
        }))
        .unwrap()
    }

    fn listeners() -> Value {
        let all = json!({"namespaces": {"from": "All"}});
        json!([
            {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com", "allowedRoutes": all},
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com", "allowedRoutes": all},
            {"name": "alt", "port": 8443, "protocol": "HTTPS", "hostname": "alt.example.com", "allowedRoutes": all},
            {"name": "tls", "port": 9443, "protocol": "TLS", "hostname": "*.example.com", "allowedRoutes": all},
            {"name": "open", "port": 8080, "protocol": "HTTP", "allowedRoutes": all},
            {"name": "same-ns", "port": 81, "protocol": "HTTP", "hostname": "same.example.com"}
        ])
    }

    fn targets(r: &HttpRoute<V1>, gw: &Arc<Gateway<V1>>) -> Derived {
        httproute_targets(r, |ns, name| {
            (ns == "infra" && name == "public").then(|| gw.clone())
        })
    }

    #[test]
    fn each_hostname_meets_each_listener_that_takes_the_route() {
        let gw = gateway(listeners());
        let rules = json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/shop"}},
                                        {"path": {"type": "Exact", "value": "/login"}},
                                        {"path": {"type": "RegularExpression", "value": "/v[0-9]+"}}]}]);
        let d = targets(
            &route(
                json!(["Shop.Example.com", "*.alt.example.com", "other.org"]),
                None,
                rules,
                true,
            ),
            &gw,
        );
        assert_eq!(
            d.targets,
            [
                "http://other.org:8080/login",
                "http://other.org:8080/shop",
                "http://shop.example.com/login",
                "http://shop.example.com/shop",
                "http://shop.example.com:8080/login",
                "http://shop.example.com:8080/shop",
                "https://shop.example.com/login",
                "https://shop.example.com/shop",
            ]
        );
        let skipped: Vec<String> = d.skipped.iter().map(|s| s.to_string()).collect();
        assert!(
            skipped.iter().any(|s| s.contains("rules[0].matches[2]")),
            "{skipped:?}"
        );
        // The wildcard route name meets `*.example.com` as itself (still a
        // wildcard) and the `open` listener likewise: nothing to scan.
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with("*.alt.example.com: a wildcard")),
            "{skipped:?}"
        );
    }

    #[test]
    fn a_route_without_hostnames_takes_the_listeners_and_a_listener_without_one_the_routes() {
        let gw = gateway(listeners());
        let d = targets(&route(json!([]), Some("alt"), json!([]), true), &gw);
        assert_eq!(d.targets, ["https://alt.example.com:8443"]);
        let d = targets(
            &route(json!(["a.test"]), Some("open"), json!([]), true),
            &gw,
        );
        assert_eq!(d.targets, ["http://a.test:8080"]);
        let d = targets(&route(json!([]), Some("open"), json!([]), true), &gw);
        assert!(d.targets.is_empty());
        assert!(
            d.skipped[0]
                .reason
                .contains("neither the listener nor the route"),
            "{d:?}"
        );
    }

    #[test]
    fn a_wildcard_route_name_takes_the_more_specific_listener_name() {
        let gw = gateway(listeners());
        let d = targets(
            &route(json!(["*.example.com"]), Some("alt"), json!([]), true),
            &gw,
        );
        assert_eq!(d.targets, ["https://alt.example.com:8443"]);
        // A wildcard matches one label or more, never the bare suffix.
        assert_eq!(
            intersect("*.example.com", "a.b.example.com").as_deref(),
            Some("a.b.example.com")
        );
        assert_eq!(intersect("*.example.com", "example.com"), None);
        assert_eq!(intersect("a.example.com", "b.example.com"), None);
        assert_eq!(
            intersect("*.b.example.com", "*.example.com").as_deref(),
            Some("*.b.example.com")
        );
    }

    #[test]
    fn a_route_no_gateway_accepted_or_a_listener_that_refuses_it_gives_no_target() {
        let gw = gateway(listeners());
        let d = targets(
            &route(json!(["a.example.com"]), None, json!([]), false),
            &gw,
        );
        assert!(d.targets.is_empty());
        assert!(d.skipped[0].reason.contains("not accepted"), "{d:?}");
        // Accepted for another listener than the one referenced.
        let mut r = route(json!(["a.example.com"]), Some("https"), json!([]), true);
        r.status.as_mut().unwrap().parents[0]
            .parent_ref
            .section_name = Some("http".into());
        assert!(targets(&r, &gw).targets.is_empty());
        // `same-ns` allows only routes of the Gateway's namespace; `tls` is not HTTP.
        for section in ["same-ns", "tls"] {
            let d = targets(
                &route(json!(["same.example.com"]), Some(section), json!([]), true),
                &gw,
            );
            assert!(d.targets.is_empty(), "{section}: {d:?}");
            assert!(
                d.skipped[0].reason.contains("no HTTP or HTTPS listener"),
                "{d:?}"
            );
        }
        // A Gateway that is gone.
        let r = route(json!(["a.example.com"]), None, json!([]), true);
        let d = httproute_targets(&r, |_, _| None);
        assert!(d.skipped[0].reason.contains("does not exist"), "{d:?}");
    }

    #[test]
    fn a_hostname_no_listener_matches_is_reported() {
        let gw = gateway(listeners());
        let d = targets(
            &route(
                json!(["a.example.com", "b.org"]),
                Some("https"),
                json!([]),
                true,
            ),
            &gw,
        );
        assert_eq!(d.targets, ["https://a.example.com"]);
        assert_eq!(d.skipped[0].host_or_rule, "b.org");
    }

    #[test]
    fn rules_without_matches_or_paths_are_the_base_url() {
        let gw = gateway(listeners());
        let rules = json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}, {}, {"matches": [{}]}]);
        let d = targets(
            &route(json!(["a.example.com"]), Some("https"), rules, true),
            &gw,
        );
        assert_eq!(d.targets, ["https://a.example.com"]);
    }

    #[test]
    fn a_parent_that_is_not_a_gateway_is_skipped() {
        let gw = gateway(listeners());
        let mut r = route(json!(["a.example.com"]), None, json!([]), true);
        r.spec.parent_refs[0].kind = Some("Service".into());
        r.spec.parent_refs[0].group = Some(String::new());
        let d = targets(&r, &gw);
        assert!(d.targets.is_empty());
        assert!(d.skipped[0].reason.contains("not a Gateway"), "{d:?}");
    }
}
