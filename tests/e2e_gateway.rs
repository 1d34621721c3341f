//! End-to-end, issue #15: Gateway API HTTPRoutes are scan sources, with the
//! Gateway API project's own CRDs (v1.6.3, standard channel) installed into
//! a real API server while the operator runs. The test plays the Gateway
//! controller: it writes the routes' `status.parents`.

mod support;

use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nuclei_operator::api::gateway::{V1, V1Beta1};
use nuclei_operator::api::{NucleiScan, Severity};
use serde_json::{Value, json};
use support::gateway::{create, create_gateway, install_crds, route, set_accepted};
use support::{Operator, cluster, event, eventually, ingress, namespace};
use tokio::sync::OnceCell;

const P: &str = "nuclei.homelab.mortenolsen.pro/";
const GW: &str = "infra/public";

struct Env {
    cluster: devcluster::DevCluster,
    operator: Operator,
}

static ENV: OnceCell<Env> = OnceCell::const_new();

/// Listeners of the shared Gateway `infra/public`: HTTP and HTTPS for
/// `*.example.com`, HTTPS on 8443 for `alt.example.com`, HTTP on 8080 for
/// any name, TLS passthrough (no HTTPRoutes), and one that takes routes of
/// its own namespace only.
fn listeners() -> Value {
    let all = json!({"namespaces": {"from": "All"}});
    let tls = json!({"mode": "Terminate", "certificateRefs": [{"name": "cert"}]});
    json!([
        {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com", "allowedRoutes": all},
        {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com", "allowedRoutes": all, "tls": tls},
        {"name": "alt", "port": 8443, "protocol": "HTTPS", "hostname": "alt.example.com", "allowedRoutes": all, "tls": tls},
        {"name": "any", "port": 8080, "protocol": "HTTP", "allowedRoutes": all},
        {"name": "passthrough", "port": 9443, "protocol": "TLS", "hostname": "*.example.com",
         "allowedRoutes": all, "tls": {"mode": "Passthrough"}},
        {"name": "own", "port": 81, "protocol": "HTTP", "hostname": "own.example.com"}
    ])
}

/// One operator started before the Gateway API exists; the CRDs are
/// installed once it is ready, so every test here also shows the source
/// starting without a restart.
async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        let cluster = cluster(&[]).await;
        // Scans stay Pending: no scanner Jobs are admitted in these tests.
        let operator = Operator::start(
            &cluster,
            &[("MAX_CONCURRENT_SCANS", "1"), ("JOB_RATE_LIMIT", "1")],
        )
        .await;
        let client = cluster.client().await.unwrap();
        install_crds(&client, None).await;
        namespace(&client, "infra").await;
        create_gateway(&client, "infra", "public", listeners()).await;
        Env { cluster, operator }
    })
    .await
}

async fn scan(
    api: &Api<NucleiScan>,
    name: &str,
    what: &str,
    f: impl Fn(&NucleiScan) -> bool,
) -> NucleiScan {
    eventually(Duration::from_secs(30), what, || async {
        api.get_opt(name).await.ok()?.filter(|s| f(s))
    })
    .await
}

/// Waits until the scan `name` no longer exists.
async fn gone(scans: &Api<NucleiScan>, name: &str, timeout: Duration) {
    eventually(timeout, &format!("{name} deleted"), || async {
        scans.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

async fn accepted_route(client: &kube::Client, ns: &str, body: Value) {
    create(client, ns, &body).await.unwrap();
    set_accepted::<V1>(client, ns, body["metadata"]["name"].as_str().unwrap(), true).await;
}

#[tokio::test]
async fn an_accepted_route_yields_a_scan_per_listener_hostname_with_ports_paths_owner_and_annotations()
 {
    let client = env().await.cluster.client().await.unwrap();
    let ns = namespace(&client, "gw-create").await;
    let body = route(
        "shop",
        GW,
        None,
        &["shop.example.com", "*.alt.example.com", "shop.other.org"],
        &["/", "/api"],
        json!({format!("{P}severity"): "high,critical"}),
    );
    accepted_route(&client, &ns, body).await;
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    let s = scan(&scans, "shop-httproute", "scan of the route", |_| true).await;
    // http and https for *.example.com (default ports), the any-name
    // listener on 8080 for both plain names; the wildcard route name stays
    // a wildcard and the TLS and own-namespace listeners take no route.
    assert_eq!(
        s.spec.targets,
        [
            "http://shop.example.com",
            "http://shop.example.com/api",
            "http://shop.example.com:8080",
            "http://shop.example.com:8080/api",
            "http://shop.other.org:8080",
            "http://shop.other.org:8080/api",
            "https://shop.example.com",
            "https://shop.example.com/api",
        ]
    );
    assert_eq!(s.spec.severity, [Severity::High, Severity::Critical]);
    assert_eq!(
        s.spec.source_ref.api_version,
        "gateway.networking.k8s.io/v1"
    );
    assert_eq!(s.spec.source_ref.kind.as_str(), "HTTPRoute");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.api_version.as_str(),
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.controller
        ),
        (
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            "shop",
            Some(true)
        )
    );
}

#[tokio::test]
async fn a_route_is_scanned_only_once_a_gateway_accepts_it_and_only_where_it_has_a_name() {
    let client = env().await.cluster.client().await.unwrap();
    let ns = namespace(&client, "gw-accept").await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let waiting = route(
        "waiting",
        GW,
        Some("https"),
        &["wait.example.com"],
        &[],
        json!({}),
    );
    create(&client, &ns, &waiting).await.unwrap();
    // Refused by the Gateway, and a route without hostnames on the
    // listener without one: neither has anything to scan.
    let refused = route(
        "refused",
        GW,
        Some("https"),
        &["no.example.com"],
        &[],
        json!({}),
    );
    create(&client, &ns, &refused).await.unwrap();
    set_accepted::<V1>(&client, &ns, "refused", false).await;
    accepted_route(
        &client,
        &ns,
        route("nameless", GW, Some("any"), &[], &[], json!({})),
    )
    .await;
    // Created after the others and scanned: the operator has reconciled
    // the others by then (one controller, in order of events).
    accepted_route(
        &client,
        &ns,
        route("marker", GW, Some("alt"), &[], &[], json!({})),
    )
    .await;
    let marker = scan(
        &scans,
        "marker-httproute",
        "the marker route's scan",
        |_| true,
    )
    .await;
    // No hostnames: the listener's, with its port.
    assert_eq!(marker.spec.targets, ["https://alt.example.com:8443"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["waiting", "refused", "nameless"] {
        let scan = format!("{name}-httproute");
        assert!(scans.get_opt(&scan).await.unwrap().is_none(), "{scan}");
    }
    // The nameless route says why on itself, where its owner looks; routes
    // waiting for their Gateway get no Event of ours (every new route waits
    // a moment, and the Gateway controller explains a refusal in status).
    event(
        &client,
        &ns,
        "nameless",
        "Normal",
        "NoTargets",
        "neither the listener nor the route names a host",
    )
    .await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let ours: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("NoTargets"))
        .filter_map(|e| e.involved_object.name)
        .collect();
    assert_eq!(ours, ["nameless"]);
    set_accepted::<V1>(&client, &ns, "waiting", true).await;
    let s = scan(&scans, "waiting-httproute", "scan once accepted", |_| true).await;
    assert_eq!(s.spec.targets, ["https://wait.example.com"]);
    // The Gateway withdraws its acceptance: the scan goes.
    set_accepted::<V1>(&client, &ns, "waiting", false).await;
    gone(&scans, "waiting-httproute", Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_changed_gateway_listener_updates_the_scans_of_its_routes() {
    let client = env().await.cluster.client().await.unwrap();
    let ns = namespace(&client, "gw-change").await;
    create_gateway(
        &client,
        &ns,
        "own",
        json!([{"name": "web", "port": 8000, "protocol": "HTTP", "hostname": "old.example.com"}]),
    )
    .await;
    let gw = format!("{ns}/own");
    accepted_route(
        &client,
        &ns,
        route("app", &gw, None, &[], &["/app"], json!({})),
    )
    .await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    scan(&scans, "app-httproute", "scan on the old listener", |s| {
        s.spec.targets == ["http://old.example.com:8000/app"]
    })
    .await;
    // The route does not change; only its Gateway does.
    let gateways = Api::<nuclei_operator::api::gateway::Gateway>::namespaced(client.clone(), &ns);
    gateways
        .patch(
            "own",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"listeners": [
                {"name": "web", "port": 443, "protocol": "HTTPS", "hostname": "new.example.com",
                 "tls": {"certificateRefs": [{"name": "cert"}]}}]}})),
        )
        .await
        .unwrap();
    scan(
        &scans,
        "app-httproute",
        "scan on the changed listener",
        |s| s.spec.targets == ["https://new.example.com/app"],
    )
    .await;
    // The Gateway goes: so do the route's targets, and its scan.
    gateways
        .delete("own", &DeleteParams::background())
        .await
        .unwrap();
    gone(&scans, "app-httproute", Duration::from_secs(30)).await;
}

#[tokio::test]
async fn an_httproute_and_an_ingress_of_one_name_get_two_scans_and_each_goes_with_its_source() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "gw-names").await;
    Api::<Ingress>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &ingress("web", "web.example.com", json!({})),
        )
        .await
        .unwrap();
    accepted_route(
        &client,
        &ns,
        route(
            "web",
            GW,
            Some("https"),
            &["web.example.com"],
            &[],
            json!({}),
        ),
    )
    .await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let r = scan(&scans, "web-httproute", "route scan", |_| true).await;
    let i = scan(&scans, "web-ingress", "Ingress scan", |_| true).await;
    assert_eq!(r.spec.targets, ["https://web.example.com"]);
    assert_eq!(i.spec.targets, ["http://web.example.com"]);
    let routes = Api::<nuclei_operator::api::gateway::HttpRoute>::namespaced(client.clone(), &ns);
    routes
        .delete("web", &DeleteParams::background())
        .await
        .unwrap();
    gone(&scans, "web-httproute", Duration::from_secs(30)).await;
    assert!(scans.get_opt("web-ingress").await.unwrap().is_some());
    assert!(
        e.operator.log_text().contains("Gateway API found"),
        "the source started when the CRDs appeared"
    );
}

/// A cluster whose Gateway API serves only `v1beta1` (as installs before
/// Gateway API 1.0 do), then also `v1`, then none.
#[tokio::test]
async fn a_cluster_serving_only_v1beta1_is_read_at_v1beta1_then_at_v1_and_losing_the_api_stops_nothing_else()
 {
    let cluster = cluster(&[]).await;
    let client = cluster.client().await.unwrap();
    install_crds(&client, Some(&["v1beta1"])).await;
    let operator = Operator::start(
        &cluster,
        &[("MAX_CONCURRENT_SCANS", "1"), ("JOB_RATE_LIMIT", "1")],
    )
    .await;
    let ns = namespace(&client, "beta").await;
    let gw = json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "Gateway",
        "metadata": {"name": "gw"},
        "spec": {"gatewayClassName": "e2e", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "beta.example.com"}]}
    });
    create(&client, &ns, &gw).await.unwrap();
    let mut body = route("app", &format!("{ns}/gw"), None, &[], &[], json!({}));
    body["apiVersion"] = json!("gateway.networking.k8s.io/v1beta1");
    create(&client, &ns, &body).await.unwrap();
    set_accepted::<V1Beta1>(&client, &ns, "app", true).await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let s = scan(&scans, "app-httproute", "scan read at v1beta1", |_| true).await;
    assert_eq!(s.spec.targets, ["http://beta.example.com"]);
    assert_eq!(
        s.spec.source_ref.api_version,
        "gateway.networking.k8s.io/v1beta1"
    );
    assert_eq!(
        s.metadata.owner_references.as_ref().unwrap()[0].api_version,
        "gateway.networking.k8s.io/v1beta1"
    );

    // The project's own CRDs, serving both: the operator moves to v1.
    install_crds(&client, None).await;
    scan(&scans, "app-httproute", "scan read at v1", |s| {
        s.spec.source_ref.api_version == "gateway.networking.k8s.io/v1"
    })
    .await;

    // The Gateway API is uninstalled: routes and scans go, the operator
    // stays up and keeps scanning Ingresses. The garbage collector is
    // stopped, as it may or may not delete the scans before the kind that
    // owns them is gone (after that it never does): the operator must.
    cluster
        .stop_component(devcluster::ComponentName::KubeControllerManager)
        .await
        .unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for name in ["httproutes", "gateways", "gatewayclasses"] {
        crds.delete(
            &format!("{name}.gateway.networking.k8s.io"),
            &DeleteParams::background(),
        )
        .await
        .unwrap();
    }
    gone(&scans, "app-httproute", Duration::from_secs(60)).await;
    Api::<Ingress>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &ingress("after", "after.example.com", json!({})),
        )
        .await
        .unwrap();
    scan(
        &scans,
        "after-ingress",
        "Ingress scan after the API went",
        |_| true,
    )
    .await;
    assert_eq!(operator.health("/readyz").await.as_deref(), Some("ok"));
    let log = operator.log_text();
    assert!(log.contains("Gateway API gone or changed"), "{log}");
}
