//! A minimal, read-only view of Istio's `VirtualService`
//! (`networking.istio.io/v1`): only what target derivation needs.
//!
//! We never install Istio's CRD from this type; unknown fields are ignored when
//! reading, and the derived schema keeps them (`x-kubernetes-preserve-unknown-fields`)
//! so tests can install it as a stand-in CRD.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The parts of a VirtualService spec that decide which URLs it exposes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    plural = "virtualservices",
    shortname = "vs",
    namespaced,
    derive = "PartialEq",
    doc = "Minimal stand-in for Istio's VirtualService: hosts, gateways and HTTP route matches."
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct VirtualServiceSpec {
    /// Destination hosts the routes apply to: DNS names, possibly wildcards
    /// (`*.example.com`) or short mesh-internal service names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,

    /// Gateways the routes are bound to (`namespace/name`), or the reserved
    /// word `mesh` for sidecars. Absent means `mesh` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,

    /// HTTP routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,

    /// TLS routes (passthrough); only their presence matters here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<OpaqueRoute>,

    /// TCP routes; only their presence matters here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<OpaqueRoute>,
}

/// One HTTP route of a VirtualService.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct HttpRoute {
    /// Conditions of the route; any one matching selects it. Empty matches
    /// everything.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
}

/// One match condition of an HTTP route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct HttpMatchRequest {
    /// Condition on the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,

    /// Restricts this match to these gateways; empty means the
    /// VirtualService's own gateways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

/// A string condition: exactly one of `exact`, `prefix` or `regex` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct StringMatch {
    /// Matches this exact value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Matches values starting with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Matches values against this RE2 regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A route whose contents we do not read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct OpaqueRoute {}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn a_full_istio_virtual_service_reads_with_unknown_fields_ignored() {
        let vs: VirtualService = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": { "name": "web", "namespace": "prod" },
            "spec": {
                "hosts": ["web.example.com"],
                "gateways": ["istio-system/public"],
                "exportTo": ["."],
                "http": [{
                    "name": "api",
                    "match": [
                        { "uri": { "prefix": "/api" }, "headers": { "x": { "exact": "y" } } },
                        { "uri": { "regex": "^/v[0-9]+/" }, "gateways": ["mesh"] }
                    ],
                    "route": [{ "destination": { "host": "web", "port": { "number": 80 } } }],
                    "retries": { "attempts": 3 }
                }],
                "tcp": [{ "route": [{ "destination": { "host": "db" } }] }]
            }
        }))
        .unwrap();
        assert_eq!(vs.spec.hosts, ["web.example.com"]);
        assert_eq!(vs.spec.http[0].matches.len(), 2);
        assert_eq!(
            vs.spec.http[0].matches[0]
                .uri
                .as_ref()
                .unwrap()
                .prefix
                .as_deref(),
            Some("/api")
        );
        assert_eq!(vs.spec.http[0].matches[1].gateways, ["mesh"]);
        assert_eq!(vs.spec.tcp.len(), 1);
    }

    #[test]
    fn the_stand_in_crd_keeps_unknown_fields() {
        let crd = VirtualService::crd();
        assert_eq!(crd.spec.group, "networking.istio.io");
        assert_eq!(crd.spec.names.kind, "VirtualService");
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(
            spec["properties"]["http"]["items"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }
}
