//! The generated workload: N source objects (Ingresses or Gateway API
//! HTTPRoutes) across namespaces, with a deterministic mix of annotations and
//! host names shared between objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{ApiResource, DynamicObject};
use nuclei_operator::api::SourceKind;
use nuclei_operator::api::gateway::{Gateway, GatewayVersion, HttpRoute, V1};
use nuclei_operator::sources::annotations as ann;
use nuclei_operator::sources::targets::scan_name;
use serde::Serialize;
use serde_json::{Value, json};

/// Label on every source object the harness creates (value: the run id), so
/// its watches and clean-up select only its own objects.
pub const RUN_LABEL: &str = "loadtest.nuclei-operator/run";

/// The Gateway every generated HTTPRoute attaches to, one per namespace.
pub const GATEWAY: &str = "lt";

/// What writes the generated routes' status, as a Gateway controller would.
pub const GATEWAY_CONTROLLER: &str = "loadtest.nuclei-operator/gateway";

/// The kind of source object the workload is made of (`--source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `networking.k8s.io/v1` Ingresses.
    #[default]
    Ingress,
    /// `gateway.networking.k8s.io/v1` HTTPRoutes, each attached to the
    /// namespace's Gateway `lt` and accepted by it.
    #[value(name = "httproute")]
    #[serde(rename = "httproute")]
    HttpRoute,
}

impl Source {
    /// The operator's name for the kind (it picks the scan name suffix).
    pub fn kind(self) -> SourceKind {
        match self {
            Source::Ingress => SourceKind::Ingress,
            Source::HttpRoute => SourceKind::HttpRoute,
        }
    }

    /// The Kubernetes kind, for log lines and the report.
    pub fn noun(self) -> &'static str {
        match self {
            Source::Ingress => "Ingress",
            Source::HttpRoute => "HTTPRoute",
        }
    }

    /// The plural of [`Source::noun`].
    pub fn nouns(self) -> &'static str {
        match self {
            Source::Ingress => "Ingresses",
            Source::HttpRoute => "HTTPRoutes",
        }
    }

    /// The API resource the objects are created at; dynamic, so that one
    /// create loop serves both kinds.
    pub fn resource(self) -> ApiResource {
        match self {
            Source::Ingress => ApiResource::erase::<Ingress>(&()),
            Source::HttpRoute => ApiResource::erase::<HttpRoute<V1>>(&()),
        }
    }

    /// The object of `item`, as sent to the API server.
    pub fn object(self, item: &Item, run_id: &str) -> DynamicObject {
        let body = match self {
            Source::Ingress => serde_json::to_value(ingress(item, run_id)),
            Source::HttpRoute => Ok(httproute(item, run_id)),
        };
        body.and_then(serde_json::from_value)
            .expect("a generated object is valid")
    }

    /// The status a controller writes right after the create (merge patch
    /// of the status subresource), if the kind needs one before the
    /// operator derives any target: a route counts only once a Gateway
    /// accepted it.
    pub fn status(self, item: &Item) -> Option<Value> {
        match self {
            Source::Ingress => None,
            Source::HttpRoute => Some(route_status(item)),
        }
    }

    /// The scan targets the operator derives from the object of `item`
    /// (with its status, and for a route the namespace's Gateway).
    pub fn targets(self, item: &Item) -> Vec<String> {
        use nuclei_operator::sources::{httproute::httproute_targets, targets::ingress_targets};
        match self {
            Source::Ingress => ingress_targets(&ingress(item, "targets")).targets,
            Source::HttpRoute => {
                let route = accepted_route(item);
                let gw: Arc<Gateway<V1>> = Arc::new(
                    serde_json::from_value(gateway(&item.namespace))
                        .expect("the generated Gateway parses"),
                );
                httproute_targets(&route, |ns, name| {
                    (ns == item.namespace && name == GATEWAY).then(|| gw.clone())
                })
                .targets
            }
        }
    }
}

/// Suffix of the generated host names (resolved by nobody: the fixture scan
/// never connects, and the operator's target check is off).
pub const HOST_DOMAIN: &str = "lt.test";

/// Shape of the workload.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// The kind of the objects.
    pub source: Source,
    /// Number of objects (`--ingresses`, whatever the kind).
    pub count: usize,
    /// Number of namespaces they are spread over (round robin).
    pub namespaces: usize,
    /// About how many objects share one host name.
    pub per_host: usize,
}

/// One source object to create.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub source: Source,
    pub namespace: String,
    pub name: String,
    /// Rule hosts, in order.
    pub hosts: Vec<String>,
    /// Served over TLS: an Ingress lists its first host under `spec.tls`
    /// (an `https://` target); a route attaches to the HTTPS listener (every
    /// host `https://`).
    pub tls: bool,
    pub annotations: BTreeMap<String, String>,
    /// The operator must create a NucleiScan for it (not disabled by annotation).
    pub expect_scan: bool,
}

impl Item {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `namespace/<scan name>` of the NucleiScan the operator derives.
    pub fn scan_key(&self) -> String {
        format!(
            "{}/{}",
            self.namespace,
            scan_name(self.source.kind(), &self.name)
        )
    }
}

/// The annotation profile of item `i` (a fixed mix, see [`describe_mix`]).
fn annotations(i: usize) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        a.insert(k.to_string(), v.to_string());
    };
    if i % 20 == 7 {
        set(ann::ENABLED, "false");
        return a;
    }
    if i % 25 == 5 {
        // An invalid value: the scan is still created, with a Warning Event.
        set(ann::SEVERITY, "bogus");
        return a;
    }
    match i % 10 {
        1 => set(ann::SCHEDULE, "0 3 * * *"),
        2 => set(ann::SEVERITY, "medium,high,critical"),
        3 => {
            set(ann::TEMPLATES, "http/cves/,http/exposures/");
            set(ann::TAGS, "cve");
        }
        4 => {
            set(ann::TIMEOUT, "10m");
            set(ann::RATE_LIMIT, "50");
        }
        6 => set(ann::EXCLUDE_TAGS, "dos,fuzz"),
        8 => set(ann::SCHEDULE, "@every 12h"),
        _ => {}
    }
    a
}

/// A one-line description of the annotation and host mix, for the report.
pub fn describe_mix(shape: &Shape) -> String {
    format!(
        "{n} {kinds} in {} namespaces; ~{} {kinds} per host name ({} distinct primary hosts), \
         every 5th with a second host, every 3rd with TLS; annotations: 5% enabled=false (no scan), \
         4% an invalid severity (scan + Warning Event), ~10% each schedule cron, schedule @every, \
         severity, templates+tags, timeout+rate-limit, exclude-tags, rest none{gateway}",
        shape.namespaces,
        shape.per_host.max(1),
        host_count(shape),
        n = shape.count,
        kinds = shape.source.nouns(),
        gateway = match shape.source {
            Source::Ingress => "",
            Source::HttpRoute =>
                "; one Gateway per namespace (listeners http :80 and https :443, *.lt.test), \
                 TLS routes attached to https, the rest to http; each route's status \
                 (Accepted by the Gateway) written right after its create, as part of the create",
        }
    )
}

fn host_count(shape: &Shape) -> usize {
    shape.count.div_ceil(shape.per_host.max(1)).max(1)
}

/// The workload, in creation order. Namespace names are `{prefix}{k}`.
pub fn plan(shape: &Shape, prefix: &str) -> Vec<Item> {
    let hosts = host_count(shape);
    let namespaces = shape.namespaces.max(1);
    (0..shape.count)
        .map(|i| {
            let h = i % hosts;
            let mut rule_hosts = vec![format!("app-{h}.{HOST_DOMAIN}")];
            if i % 5 == 0 {
                rule_hosts.push(format!("www-{}.{HOST_DOMAIN}", h % hosts.div_ceil(2)));
            }
            let annotations = annotations(i);
            let expect_scan = annotations.get(ann::ENABLED).map(String::as_str) != Some("false");
            Item {
                source: shape.source,
                namespace: format!("{prefix}{}", i % namespaces),
                name: format!("web-{i:05}"),
                hosts: rule_hosts,
                tls: i % 3 == 0,
                annotations,
                expect_scan,
            }
        })
        .collect()
}

/// The namespaces of a plan, sorted and distinct.
pub fn namespaces(items: &[Item]) -> Vec<String> {
    let mut ns: Vec<String> = items.iter().map(|i| i.namespace.clone()).collect();
    ns.sort();
    ns.dedup();
    ns
}

/// The Ingress object of `item`.
pub fn ingress(item: &Item, run_id: &str) -> Ingress {
    let rules: Vec<serde_json::Value> = item
        .hosts
        .iter()
        .map(|h| {
            json!({"host": h, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}
            }]}})
        })
        .collect();
    let mut spec = json!({ "rules": rules });
    if item.tls {
        spec["tls"] = json!([{"hosts": [item.hosts[0]], "secretName": "web-tls"}]);
    }
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": item.name,
            "namespace": item.namespace,
            "labels": {RUN_LABEL: run_id},
            "annotations": item.annotations,
        },
        "spec": spec,
    }))
    .expect("a generated Ingress is valid")
}

/// The reference of `item`'s route to its parent: the namespace's Gateway,
/// at the listener of its scheme.
fn parent_ref(item: &Item) -> Value {
    json!({"name": GATEWAY, "sectionName": if item.tls { "https" } else { "http" }})
}

/// The HTTPRoute of `item`: its hosts, attached to [`GATEWAY`], every path
/// to the Service `web` (the real CRD wants at least one rule).
pub fn httproute(item: &Item, run_id: &str) -> Value {
    json!({
        "apiVersion": V1::API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {
            "name": item.name,
            "namespace": item.namespace,
            "labels": {RUN_LABEL: run_id},
            "annotations": item.annotations,
        },
        "spec": {
            "parentRefs": [parent_ref(item)],
            "hostnames": item.hosts,
            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}],
        },
    })
}

/// The status a Gateway controller writes when [`GATEWAY`] accepts the
/// route of `item` (a merge patch body).
pub fn route_status(item: &Item) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({"status": {"parents": [{
        "parentRef": parent_ref(item),
        "controllerName": GATEWAY_CONTROLLER,
        "conditions": [{
            "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
            "observedGeneration": 1, "lastTransitionTime": now,
        }],
    }]}})
}

/// The route of `item` as the operator reads it once accepted.
fn accepted_route(item: &Item) -> HttpRoute<V1> {
    let mut body = httproute(item, "targets");
    body["status"] = route_status(item)["status"].take();
    serde_json::from_value(body).expect("a generated HTTPRoute parses")
}

/// The Gateway [`GATEWAY`] of `namespace`: HTTP and HTTPS listeners for
/// every generated host (`*.lt.test`); routes of its own namespace only (the
/// default `allowedRoutes`), which is where the harness creates them.
pub fn gateway(namespace: &str) -> Value {
    let hostname = format!("*.{HOST_DOMAIN}");
    json!({
        "apiVersion": V1::API_VERSION,
        "kind": "Gateway",
        "metadata": {"name": GATEWAY, "namespace": namespace},
        "spec": {
            "gatewayClassName": "loadtest",
            "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP", "hostname": hostname},
                {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": hostname,
                 "tls": {"mode": "Terminate", "certificateRefs": [{"name": "web-tls"}]}},
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: usize) -> Shape {
        Shape {
            source: Source::Ingress,
            count: n,
            namespaces: 10,
            per_host: 4,
        }
    }

    #[test]
    fn the_plan_spreads_ingresses_over_namespaces_and_shares_hosts() {
        let items = plan(&shape(1000), "lt-");
        assert_eq!(items.len(), 1000);
        assert_eq!(namespaces(&items).len(), 10);
        let mut distinct: Vec<&str> = items.iter().map(|i| i.hosts[0].as_str()).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 250);
        let keys: std::collections::HashSet<String> = items.iter().map(Item::key).collect();
        assert_eq!(keys.len(), 1000, "names are unique");
    }

    #[test]
    fn about_five_percent_are_disabled_and_get_no_scan() {
        let items = plan(&shape(1000), "lt-");
        let disabled = items.iter().filter(|i| !i.expect_scan).count();
        assert_eq!(disabled, 50);
    }

    #[test]
    fn every_generated_ingress_parses_and_has_its_hosts_as_targets() {
        for item in plan(&shape(40), "lt-") {
            let ing = ingress(&item, "r1");
            let derived = nuclei_operator::sources::targets::ingress_targets(&ing);
            assert_eq!(derived.targets.len(), item.hosts.len(), "{item:?}");
            let scheme = if item.tls { "https://" } else { "http://" };
            let first = format!("{scheme}{}", item.hosts[0]);
            assert!(derived.targets.contains(&first), "{derived:?}");
        }
    }

    #[test]
    fn every_generated_route_accepted_by_its_gateway_has_its_hosts_as_targets() {
        let routes = Shape {
            source: Source::HttpRoute,
            ..shape(40)
        };
        for item in plan(&routes, "lt-") {
            let scheme = if item.tls { "https://" } else { "http://" };
            let mut expected: Vec<String> =
                item.hosts.iter().map(|h| format!("{scheme}{h}")).collect();
            let mut derived = Source::HttpRoute.targets(&item);
            expected.sort();
            derived.sort();
            assert_eq!(derived, expected, "{item:?}");
        }
    }

    #[test]
    fn both_kinds_of_generated_object_parse_at_their_resource() {
        for source in [Source::Ingress, Source::HttpRoute] {
            let item = &plan(&Shape { source, ..shape(3) }, "lt-")[0];
            let obj = source.object(item, "r1");
            let types = obj.types.clone().expect("apiVersion and kind");
            let resource = source.resource();
            assert_eq!(
                (types.api_version, types.kind),
                (resource.api_version, resource.kind)
            );
            assert_eq!(obj.metadata.labels.unwrap()[RUN_LABEL], "r1");
            assert_eq!(source.status(item).is_some(), source == Source::HttpRoute);
        }
    }

    #[test]
    fn scan_keys_follow_the_operator_naming() {
        let item = &plan(&shape(1), "lt-")[0];
        assert_eq!(item.scan_key(), "lt-0/web-00000-ingress");
        let routes = Shape {
            source: Source::HttpRoute,
            ..shape(1)
        };
        assert_eq!(
            plan(&routes, "lt-")[0].scan_key(),
            "lt-0/web-00000-httproute"
        );
    }
}
