//! The Gateway API in tests: the project's own published CRDs (copied from
//! its Go module by devcluster/tools/build.sh), Gateways and HTTPRoutes, and
//! the status a Gateway controller would write.

use std::time::Duration;

use devcluster::{Tools, eventually};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use nuclei_operator::api::gateway::{GatewayVersion, HttpRoute};
use serde_json::{Value, json};

/// Installs the Gateway API CRDs (GatewayClass, Gateway, HTTPRoute) serving
/// the versions in `served` (all that the project serves when `None`), and
/// waits until the API server serves them. Also updates installed ones.
pub async fn install_crds(client: &kube::Client, served: Option<&[&str]>) {
    for mut crd in Tools::locate().unwrap().gateway_api_crds().unwrap() {
        if let Some(served) = served {
            for v in &mut crd.spec.versions {
                v.served = served.contains(&v.name.as_str());
            }
        }
        super::install_crd(client, crd).await;
    }
}

/// Creates the Gateway `name` in `ns` with `listeners` (JSON), retrying
/// while the API server does not serve the kind yet.
pub async fn create_gateway(client: &kube::Client, ns: &str, name: &str, listeners: Value) {
    let body = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {"gatewayClassName": "e2e", "listeners": listeners}
    });
    eventually(Duration::from_secs(20), "Gateway API served", || async {
        create(client, ns, &body)
            .await
            .map_err(|e| eprintln!("creating Gateway {name}: {e}"))
            .ok()
    })
    .await;
}

/// An HTTPRoute `name` attached to the Gateway `gw` (`namespace/name`),
/// listener `section` if given, with `hostnames`, path prefixes `paths` (one
/// rule without matches when empty) and `annotations`.
pub fn route(
    name: &str,
    gw: &str,
    section: Option<&str>,
    hostnames: &[&str],
    paths: &[&str],
    annotations: Value,
) -> Value {
    let backend = json!([{"name": "web", "port": 80}]);
    let mut rules: Vec<Value> = paths
        .iter()
        .map(|p| json!({"matches": [{"path": {"type": "PathPrefix", "value": p}}], "backendRefs": backend}))
        .collect();
    if rules.is_empty() {
        // A rule without matches: every path.
        rules.push(json!({"backendRefs": backend}));
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"parentRefs": [parent_ref(gw, section)], "hostnames": hostnames, "rules": rules}
    })
}

/// Creates a Gateway API object from JSON, at the version its `apiVersion`
/// names.
pub async fn create(client: &kube::Client, ns: &str, body: &Value) -> kube::Result<()> {
    let obj: DynamicObject = serde_json::from_value(body.clone()).unwrap();
    let api_version = body["apiVersion"].as_str().unwrap();
    let kind = body["kind"].as_str().unwrap();
    let gvk = GroupVersionKind::try_from(&obj.types.clone().unwrap()).unwrap();
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    assert_eq!(ar.api_version, api_version);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.create(&PostParams::default(), &obj).await.map(|_| ())
}

/// Writes the status a Gateway controller writes when it accepts the route
/// `name` for each of its parent references (`accepted` false: refuses it).
/// Reads and writes at version `V`.
pub async fn set_accepted<V: GatewayVersion>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    accepted: bool,
) {
    let api: Api<HttpRoute<V>> = Api::namespaced(client.clone(), ns);
    let route = api.get(name).await.unwrap();
    let (status, reason) = if accepted {
        ("True", "Accepted")
    } else {
        ("False", "NotAllowedByListeners")
    };
    let parents: Vec<Value> = route
        .spec
        .parent_refs
        .iter()
        .map(|p| {
            json!({"parentRef": p, "controllerName": "example.com/e2e-gateway-controller",
                   "conditions": [{"type": "Accepted", "status": status, "reason": reason,
                                   "message": "set by the test", "observedGeneration": route.metadata.generation,
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
        })
        .collect();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"parents": parents}})),
    )
    .await
    .unwrap();
}

/// A parent reference to the Gateway `gw` (`namespace/name`).
fn parent_ref(gw: &str, section: Option<&str>) -> Value {
    let (ns, name) = gw.split_once('/').unwrap();
    let mut p = json!({"name": name, "namespace": ns});
    if let Some(s) = section {
        p["sectionName"] = json!(s);
    }
    p
}
