//! Our minimal Gateway API types (src/api/gateway.rs) read fields by name
//! and rely on the API's defaults and enums. This holds them to the Gateway
//! API project's own published CRDs (the pinned version build.sh copies
//! from its Go module), at every version the operator reads.

use devcluster::Tools;
use serde_json::Value;

/// The OpenAPI schema of `plural` at `version`.
fn schema(plural: &str, version: &str) -> Value {
    let crds = Tools::locate().unwrap().gateway_api_crds().unwrap();
    let crd = crds
        .iter()
        .find(|c| c.spec.names.plural == plural)
        .unwrap_or_else(|| panic!("no {plural} CRD"));
    let v = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .unwrap_or_else(|| panic!("{plural} has no version {version}"));
    serde_json::to_value(
        v.schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// The schema at `path` (dot-separated; `[]` steps into array items).
fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut s = schema;
    for step in path.split('.') {
        let (name, items) = match step.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (step, false),
        };
        s = &s["properties"][name];
        assert!(!s.is_null(), "no field {path} (at {name})");
        if items {
            s = &s["items"];
            assert!(!s.is_null(), "{path}: {name} is not an array");
        }
    }
    s
}

#[test]
fn every_field_the_operator_reads_exists_with_the_defaults_and_enums_it_assumes() {
    for version in ["v1", "v1beta1"] {
        let route = schema("httproutes", version);
        for field in [
            "spec.hostnames",
            "spec.parentRefs[].group",
            "spec.parentRefs[].kind",
            "spec.parentRefs[].namespace",
            "spec.parentRefs[].name",
            "spec.parentRefs[].sectionName",
            "spec.parentRefs[].port",
            "status.parents[].parentRef.name",
            "status.parents[].parentRef.sectionName",
            "status.parents[].controllerName",
            "status.parents[].conditions[].type",
            "status.parents[].conditions[].status",
        ] {
            at(&route, field);
        }
        // Defaults our types fill in when a field is absent.
        assert_eq!(
            at(&route, "spec.parentRefs[].group")["default"],
            "gateway.networking.k8s.io"
        );
        assert_eq!(at(&route, "spec.parentRefs[].kind")["default"], "Gateway");
        let path = at(&route, "spec.rules[].matches[].path");
        assert_eq!(
            path["properties"]["type"]["default"], "PathPrefix",
            "{version}"
        );
        assert_eq!(path["properties"]["value"]["default"], "/", "{version}");
        let types: Vec<&str> = path["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["Exact", "PathPrefix", "RegularExpression"],
            "{version}"
        );

        let gateway = schema("gateways", version);
        for field in [
            "spec.listeners[].name",
            "spec.listeners[].hostname",
            "spec.listeners[].port",
            "spec.listeners[].protocol",
            "spec.listeners[].allowedRoutes.kinds[].group",
            "spec.listeners[].allowedRoutes.kinds[].kind",
        ] {
            at(&gateway, field);
        }
        let from = at(&gateway, "spec.listeners[].allowedRoutes.namespaces.from");
        assert_eq!(from["default"], "Same", "{version}");
        let froms: Vec<&str> = from["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(froms, ["All", "Selector", "Same"], "{version}");
    }
}
