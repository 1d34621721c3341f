//! The generated workload: N Ingresses across namespaces, with a deterministic
//! mix of annotations and host names shared between Ingresses.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::Ingress;
use nuclei_operator::annotations as ann;
use nuclei_operator::api::SourceKind;
use nuclei_operator::sources::targets::scan_name;
use serde_json::json;

/// Label on every Ingress the harness creates (value: the run id), so its
/// watches and clean-up select only its own objects.
pub const RUN_LABEL: &str = "loadtest.nuclei-operator/run";

/// Suffix of the generated host names (resolved by nobody: the fixture scan
/// never connects, and the operator's target check is off).
pub const HOST_DOMAIN: &str = "lt.test";

/// Shape of the workload.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Number of Ingresses.
    pub ingresses: usize,
    /// Number of namespaces they are spread over (round robin).
    pub namespaces: usize,
    /// About how many Ingresses share one host name.
    pub per_host: usize,
}

/// One Ingress to create.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub namespace: String,
    pub name: String,
    /// Rule hosts, in order.
    pub hosts: Vec<String>,
    /// The first host is listed under `spec.tls` (an `https://` target).
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
            scan_name(SourceKind::Ingress, &self.name)
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
        "{} Ingresses in {} namespaces; ~{} Ingresses per host name ({} distinct primary hosts), \
         every 5th with a second host, every 3rd with TLS; annotations: 5% enabled=false (no scan), \
         4% an invalid severity (scan + Warning Event), ~10% each schedule cron, schedule @every, \
         severity, templates+tags, timeout+rate-limit, exclude-tags, rest none",
        shape.ingresses,
        shape.namespaces,
        shape.per_host.max(1),
        host_count(shape)
    )
}

fn host_count(shape: &Shape) -> usize {
    shape.ingresses.div_ceil(shape.per_host.max(1)).max(1)
}

/// The workload, in creation order. Namespace names are `{prefix}{k}`.
pub fn plan(shape: &Shape, prefix: &str) -> Vec<Item> {
    let hosts = host_count(shape);
    let namespaces = shape.namespaces.max(1);
    (0..shape.ingresses)
        .map(|i| {
            let h = i % hosts;
            let mut rule_hosts = vec![format!("app-{h}.{HOST_DOMAIN}")];
            if i % 5 == 0 {
                rule_hosts.push(format!("www-{}.{HOST_DOMAIN}", h % hosts.div_ceil(2)));
            }
            let annotations = annotations(i);
            let expect_scan = annotations.get(ann::ENABLED).map(String::as_str) != Some("false");
            Item {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: usize) -> Shape {
        Shape {
            ingresses: n,
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
    fn scan_keys_follow_the_operator_naming() {
        let item = &plan(&shape(1), "lt-")[0];
        assert_eq!(item.scan_key(), "lt-0/web-00000-ingress");
    }
}
