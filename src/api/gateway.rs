//! Minimal, read-only views of the Kubernetes Gateway API's `HTTPRoute` and
//! `Gateway` (`gateway.networking.k8s.io`): only the fields that decide
//! which URLs a route exposes. Unknown fields are ignored when reading.
//!
//! Clusters serve these kinds at `v1` (Gateway API ≥ 1.0) or only at
//! `v1beta1` (older installs); the fields read here are the same in both.
//! The version is a type parameter ([`V1`], [`V1Beta1`]), so each object
//! knows the API version it was read at, and the owner reference of its
//! scan names a version the garbage collector can resolve.
//!
//! We never install these CRDs: tests install the Gateway API project's own
//! published definitions, and a test reads objects shaped by them.

use std::borrow::Cow;
use std::fmt::Debug;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::Resource;
use kube::core::NamespaceResourceScope;
use serde::{Deserialize, Serialize};

/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// An API version of the Gateway API group.
pub trait GatewayVersion: Clone + Debug + Default + PartialEq + Send + Sync + 'static {
    /// `v1` or `v1beta1`.
    const VERSION: &'static str;
    /// `gateway.networking.k8s.io/<VERSION>`.
    const API_VERSION: &'static str;
}

/// `gateway.networking.k8s.io/v1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V1;
impl GatewayVersion for V1 {
    const VERSION: &'static str = "v1";
    const API_VERSION: &'static str = "gateway.networking.k8s.io/v1";
}

/// `gateway.networking.k8s.io/v1beta1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V1Beta1;
impl GatewayVersion for V1Beta1 {
    const VERSION: &'static str = "v1beta1";
    const API_VERSION: &'static str = "gateway.networking.k8s.io/v1beta1";
}

/// A Gateway API object read at version `V`.
macro_rules! gateway_object {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $plural:literal, $spec:ty, $status:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(bound = "")]
        pub struct $name<V: GatewayVersion = V1> {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: $spec,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<$status>,
            #[serde(skip)]
            pub version: PhantomData<V>,
        }

        impl<V: GatewayVersion> Resource for $name<V> {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                GATEWAY_GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                V::VERSION.into()
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                V::API_VERSION.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

gateway_object!(
    /// An `HTTPRoute`: host names, the Gateways it attaches to, path matches,
    /// and which Gateways accepted it.
    HttpRoute,
    "HTTPRoute",
    "httproutes",
    HttpRouteSpec,
    RouteStatus
);

gateway_object!(
    /// A `Gateway`: its listeners.
    Gateway,
    "Gateway",
    "gateways",
    GatewaySpec,
    serde_json::Value
);

/// The parts of an HTTPRoute spec that decide which URLs it exposes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Gateways (or listeners of them) the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names the route matches; may be wildcards (`*.example.com`).
    /// Empty means every host name of the listeners it attaches to.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Routing rules.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// A reference from a route to a parent (a Gateway, or one of its listeners).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// API group of the parent; default `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the parent; default `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace of the parent; default the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the parent.
    #[serde(default)]
    pub name: String,
    /// Listener name: attach to this listener only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Listener port: attach to the listeners on this port only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

impl ParentRef {
    /// Whether this refers to a Gateway (the only parent kind read here).
    pub fn is_gateway(&self) -> bool {
        self.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
            && self.kind.as_deref().unwrap_or("Gateway") == "Gateway"
    }

    /// The namespace of the parent, for a route in `route_namespace`.
    pub fn namespace_or<'a>(&'a self, route_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(route_namespace)
    }

    /// Whether `self` and `other` name the same parent, once defaults are
    /// filled in (a Gateway controller may write the defaults out).
    pub fn same_as(&self, other: &ParentRef, route_namespace: &str) -> bool {
        let group = |p: &ParentRef| p.group.clone().unwrap_or_else(|| GATEWAY_GROUP.into());
        let kind = |p: &ParentRef| p.kind.clone().unwrap_or_else(|| "Gateway".into());
        group(self) == group(other)
            && kind(self) == kind(other)
            && self.namespace_or(route_namespace) == other.namespace_or(route_namespace)
            && self.name == other.name
            && self.section_name == other.section_name
            && self.port == other.port
    }
}

/// One rule of an HTTPRoute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Conditions; any one selects the rule. Absent means one match of
    /// `PathPrefix /`.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
}

/// One match condition of an HTTPRoute rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Condition on the request path; absent means `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
}

/// A path condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The path; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The status of a route: one entry per parent that has considered it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// What one parent (Gateway) says of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    #[serde(default)]
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl RouteParentStatus {
    /// Whether the parent's `Accepted` condition is `True`.
    pub fn accepted(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
    }
}

/// The parts of a Gateway spec that decide which URLs its routes expose.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// One listener of a Gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// The listener's name (a route's `sectionName`).
    #[serde(default)]
    pub name: String,
    /// The host name it serves; may be a wildcard. Absent: every name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The port it listens on.
    #[serde(default)]
    pub port: i32,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP` or an implementation's own.
    #[serde(default)]
    pub protocol: String,
    /// Which routes may attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// Which routes may attach to a listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    /// Route kinds; empty means those of the listener's protocol.
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

/// Namespaces whose routes may attach.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// A route kind a listener allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_httproute_reads_at_either_version_with_unknown_fields_ignored() {
        let body = json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {
                "parentRefs": [{"name": "public", "namespace": "infra", "sectionName": "https"}],
                "hostnames": ["web.example.com"],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                                        "headers": [{"name": "x", "value": "y"}]}],
                           "backendRefs": [{"name": "web", "port": 80}]}]
            },
            "status": {"parents": [{"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                                   "name": "public", "namespace": "infra", "sectionName": "https"},
                                    "controllerName": "example.com/gw",
                                    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]}
        });
        let beta: HttpRoute<V1Beta1> = serde_json::from_value(body.clone()).unwrap();
        let v1: HttpRoute<V1> = serde_json::from_value(body).unwrap();
        assert_eq!(beta.spec, v1.spec);
        assert_eq!(
            beta.spec.rules[0].matches[0]
                .path
                .as_ref()
                .unwrap()
                .value
                .as_deref(),
            Some("/api")
        );
        let parent = &v1.status.as_ref().unwrap().parents[0];
        assert!(parent.accepted());
        assert!(parent.parent_ref.same_as(&v1.spec.parent_refs[0], "prod"));
        assert_eq!(
            HttpRoute::<V1Beta1>::api_version(&()),
            "gateway.networking.k8s.io/v1beta1"
        );
        assert_eq!(Gateway::<V1>::plural(&()), "gateways");
    }

    #[test]
    fn parent_refs_compare_with_defaults_filled_in() {
        let short = ParentRef {
            name: "gw".into(),
            ..Default::default()
        };
        let full = ParentRef {
            group: Some(GATEWAY_GROUP.into()),
            kind: Some("Gateway".into()),
            namespace: Some("apps".into()),
            name: "gw".into(),
            ..Default::default()
        };
        assert!(short.same_as(&full, "apps"));
        assert!(!short.same_as(&full, "other"));
        let listener = ParentRef {
            section_name: Some("https".into()),
            ..short.clone()
        };
        assert!(!listener.same_as(&short, "apps"));
        let service = ParentRef {
            group: Some(String::new()),
            kind: Some("Service".into()),
            ..short.clone()
        };
        assert!(!service.is_gateway() && short.is_gateway());
    }
}
