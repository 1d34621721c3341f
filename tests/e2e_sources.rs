//! End-to-end, issue #3: every Ingress and VirtualService becomes a NucleiScan
//! (real kube-apiserver, operator binary running against it).

mod support;

use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nuclei_operator::api::{NucleiScan, Severity, VirtualService};
use serde_json::json;
use support::{Operator, cluster, eventually, ingress, namespace};
use tokio::sync::OnceCell;

const P: &str = "nuclei.homelab.mortenolsen.pro/";

struct Env {
    cluster: devcluster::DevCluster,
    _operator: Operator,
}

static ENV: OnceCell<Env> = OnceCell::const_new();

async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        let cluster = cluster(&[]).await;
        // One scan at a time and one Job a minute: these tests read the
        // scans the sources write, not their runs.
        let operator = Operator::start(
            &cluster,
            &[("MAX_CONCURRENT_SCANS", "1"), ("JOB_RATE_LIMIT", "1")],
        )
        .await;
        Env {
            cluster,
            _operator: operator,
        }
    })
    .await
}

async fn scan(
    api: &Api<NucleiScan>,
    name: &str,
    what: &str,
    f: impl Fn(&NucleiScan) -> bool,
) -> NucleiScan {
    eventually(Duration::from_secs(20), what, || async {
        api.get_opt(name).await.ok()?.filter(|s| f(s))
    })
    .await
}

#[tokio::test]
async fn an_ingress_yields_a_scan_with_its_targets_owner_and_annotations() {
    let client = env().await.cluster.client().await.unwrap();
    let ns = namespace(&client, "src-create").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let mut ing: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "shop", "annotations": {
            format!("{P}severity"): "high,critical",
            format!("{P}schedule"): "0 3 * * *",
        }},
        "spec": {
            "tls": [{"hosts": ["*.shop.example.com"]}],
            "rules": [
                {"host": "www.shop.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "w", "port": {"number": 80}}}},
                    {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "w", "port": {"number": 80}}}}]}},
                {"host": "plain.example.com"},
                {"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "w", "port": {"number": 80}}}}]}}
            ]
        }
    }))
    .unwrap();
    ing = ingresses
        .create(&PostParams::default(), &ing)
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    let s = scan(&scans, "shop-ingress", "scan of the Ingress", |_| true).await;
    assert_eq!(
        s.spec.targets,
        [
            "http://plain.example.com",
            "https://www.shop.example.com",
            "https://www.shop.example.com/api"
        ]
    );
    assert_eq!(s.spec.severity, [Severity::High, Severity::Critical]);
    assert_eq!(s.spec.schedule.as_deref(), Some("0 3 * * *"));
    assert_eq!(s.spec.source_ref.uid, ing.metadata.uid.clone().unwrap());
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Ingress", "shop", Some(true))
    );
}

#[tokio::test]
async fn editing_removing_and_adding_annotations_updates_the_spec_and_keeps_hand_set_fields() {
    let client = env().await.cluster.client().await.unwrap();
    let ns = namespace(&client, "src-annotations").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    ingresses
        .create(
            &PostParams::default(),
            &ingress("app", "app.example.com", json!({format!("{P}tags"): "cve"})),
        )
        .await
        .unwrap();
    scan(&scans, "app-ingress", "scan with tags", |s| {
        s.spec.tags == ["cve"]
    })
    .await;
    // A field set by hand with another field manager survives reconciles.
    scans
        .patch(
            "app-ingress",
            &PatchParams::apply("someone"),
            &Patch::Apply(json!({
                "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1", "kind": "NucleiScan",
                "spec": {"excludeTags": ["dos"]}
            })),
        )
        .await
        .unwrap();
    let patch = |a: serde_json::Value| Patch::Merge(json!({"metadata": {"annotations": a}}));
    ingresses
        .patch(
            "app",
            &PatchParams::default(),
            &patch(json!({format!("{P}tags"): "xss,sqli", format!("{P}rate-limit"): "20"})),
        )
        .await
        .unwrap();
    scan(&scans, "app-ingress", "edited annotations", |s| {
        s.spec.tags == ["xss", "sqli"] && s.spec.rate_limit == Some(20)
    })
    .await;
    ingresses
        .patch(
            "app",
            &PatchParams::default(),
            &patch(json!({format!("{P}tags"): null})),
        )
        .await
        .unwrap();
    let s = scan(&scans, "app-ingress", "removed annotation", |s| {
        s.spec.tags.is_empty()
    })
    .await;
    assert_eq!(s.spec.rate_limit, Some(20));
    assert_eq!(s.spec.exclude_tags, ["dos"], "the hand-set field was lost");
}

#[tokio::test]
async fn a_bad_annotation_is_reported_and_the_other_keys_still_apply() {
    let client = env().await.cluster.client().await.unwrap();
    let ns = namespace(&client, "src-bad").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let ann = json!({format!("{P}schedule"): "every tuesday", format!("{P}tags"): "cve"});
    ingresses
        .create(
            &PostParams::default(),
            &ingress("bad", "bad.example.com", ann),
        )
        .await
        .unwrap();
    let s = scan(&scans, "bad-ingress", "condition naming the bad key", |s| {
        s.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "AnnotationsValid" && c.status == "False")
        })
    })
    .await;
    assert_eq!(s.spec.tags, ["cve"]);
    assert_eq!(s.spec.schedule, None);
    let cond = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "AnnotationsValid")
        .unwrap();
    assert!(
        cond.message.contains(&format!("{P}schedule")),
        "{}",
        cond.message
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, &ns);
    eventually(
        Duration::from_secs(20),
        "Warning event on the Ingress",
        || async {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("InvalidAnnotation")
                        && e.involved_object.kind.as_deref() == Some("Ingress")
                })
        },
    )
    .await;
}

#[tokio::test]
async fn enabled_false_removes_the_scan_and_deleting_the_ingress_garbage_collects_it() {
    let client = env().await.cluster.client().await.unwrap();
    let ns = namespace(&client, "src-delete").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    for name in ["off", "gone"] {
        ingresses
            .create(
                &PostParams::default(),
                &ingress(name, &format!("{name}.example.com"), json!({})),
            )
            .await
            .unwrap();
        scan(&scans, &format!("{name}-ingress"), "scan", |_| true).await;
    }
    ingresses
        .patch(
            "off",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {format!("{P}enabled"): "false"}}})),
        )
        .await
        .unwrap();
    ingresses
        .delete("gone", &DeleteParams::background())
        .await
        .unwrap();
    for name in ["off-ingress", "gone-ingress"] {
        eventually(Duration::from_secs(30), name, || async {
            scans.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn an_ingress_and_a_virtual_service_of_one_name_get_two_scans_once_istio_appears() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "src-istio").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    ingresses
        .create(
            &PostParams::default(),
            &ingress("web", "web.example.com", json!({})),
        )
        .await
        .unwrap();
    scan(
        &scans,
        "web-ingress",
        "Ingress scan without Istio installed",
        |_| true,
    )
    .await;
    // Istio's CRD arrives while the operator runs.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &VirtualService::crd())
        .await
        .unwrap();
    let vss: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    let vs: VirtualService = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "web"},
        "spec": {"hosts": ["web.example.com", "web", "*.example.com"], "gateways": ["istio-system/public"],
                 "http": [{"match": [{"uri": {"prefix": "/shop"}}]}]}
    }))
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "VirtualService API served",
        || async { vss.create(&PostParams::default(), &vs).await.ok() },
    )
    .await;
    let s = scan(&scans, "web-vs", "VirtualService scan", |_| true).await;
    assert_eq!(s.spec.targets, ["https://web.example.com/shop"]);
    assert!(scans.get_opt("web-ingress").await.unwrap().is_some());
}

#[tokio::test]
async fn the_api_server_rejects_invalid_scans_with_a_clear_message() {
    let client = env().await.cluster.client().await.unwrap();
    let ns = namespace(&client, "src-invalid").await;
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    let make = |targets: serde_json::Value, severity: serde_json::Value| -> serde_json::Value {
        json!({
            "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1", "kind": "NucleiScan",
            "metadata": {"name": "x"},
            "spec": {"sourceRef": {"apiVersion": "v1", "kind": "Ingress", "name": "a", "namespace": "b", "uid": "c"},
                     "targets": targets, "severity": severity}
        })
    };
    let create = |body: serde_json::Value| {
        let scans = scans.clone();
        async move {
            let obj: kube::api::DynamicObject = serde_json::from_value(body).unwrap();
            let raw = serde_json::to_vec(&obj).unwrap();
            let req = http::Request::post(format!(
                "/apis/nuclei.homelab.mortenolsen.pro/v1alpha1/namespaces/{}/nucleiscans",
                "src-invalid"
            ))
            .header("content-type", "application/json")
            .body(raw)
            .unwrap();
            let _ = &scans;
            scans
                .clone()
                .into_client()
                .request_text(req)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let bad_severity = create(make(json!(["https://a.example.com"]), json!(["severe"]))).await;
    assert!(
        bad_severity.contains("spec.severity[0]") && bad_severity.contains("Unsupported value"),
        "{bad_severity}"
    );
    let no_targets = create(make(json!([]), json!([]))).await;
    assert!(no_targets.contains("spec.targets"), "{no_targets}");
    let bad_url = create(make(json!(["ftp://a.example.com"]), json!([]))).await;
    assert!(bad_url.contains("http:// or https://"), "{bad_url}");
    // Template paths that would read the scanner pod's own files.
    for (field, path) in [
        (
            "templates",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ),
        ("excludeTemplates", "http/../../etc/passwd"),
    ] {
        let mut body = make(json!(["https://a.example.com"]), json!([]));
        body["spec"][field] = json!(["http/cves/", path]);
        let refused = create(body).await;
        assert!(
            refused.contains(&format!("spec.{field}[1]")) && refused.contains("no '..'"),
            "{refused}"
        );
    }
}
