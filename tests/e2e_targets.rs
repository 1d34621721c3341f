//! End-to-end, issue #11 finding 4: where a namespace user can send the
//! scanner. Through the chart with its defaults (the operator in a pod, the
//! target check on), except that loopback is allowed, where the test targets
//! listen, and INGRESS_CLASSES and SCAN_NAMESPACE_SELECTOR are set. Each test is named after the attack it
//! stops.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nuclei_operator::api::{NucleiScan, ScanPhase};
use serde_json::{Value, json};
use support::chart::{Chart, restricted_namespace};
use support::{canary_annotations, canary_target, completed, eventually, ingress, target_ip};
use tokio::sync::OnceCell;

static ENV: OnceCell<Chart> = OnceCell::const_new();

/// `ok.test` reaches the canary target; `zero.test` resolves to 0.0.0.0,
/// which the default TARGET_DENY_CIDRS refuse (nothing ever connects there).
async fn env() -> (&'static Chart, kube::Client) {
    let chart = ENV
        .get_or_init(|| async {
            let ip = target_ip(1);
            canary_target(ip).await;
            let hosts = vec![format!("ok.test={ip}"), "zero.test=0.0.0.0".to_owned()];
            let chart = Chart::start("e2e_targets", hosts).await;
            chart
                .install(&[
                    "--set-json",
                    r#"templates.defaults=["canary.yaml"]"#,
                    "--set-json",
                    r#"targets.ingressClasses=["public","-"]"#,
                    "--set-json",
                    r#"targets.namespaceSelector=["nuclei-scan!=off"]"#,
                ])
                .await;
            chart
        })
        .await;
    (chart, chart.cluster.client().await.unwrap())
}

fn with_rules(name: &str, hosts: &[&str], class: Option<&str>) -> Ingress {
    let mut ing = serde_json::to_value(ingress(name, hosts[0], canary_annotations())).unwrap();
    let rule = ing["spec"]["rules"][0].clone();
    ing["spec"]["rules"] = Value::Array(
        hosts
            .iter()
            .map(|h| {
                let mut r = rule.clone();
                r["host"] = json!(h);
                r
            })
            .collect(),
    );
    if let Some(class) = class {
        ing["spec"]["ingressClassName"] = json!(class);
    }
    serde_json::from_value(ing).unwrap()
}

/// The message of the Warning Event `reason` on Ingress `name`, once there.
async fn warning(client: &kube::Client, ns: &str, name: &str, reason: &str) -> String {
    support::event(client, ns, name, "Warning", reason, "").await
}

#[tokio::test]
async fn an_ingress_cannot_send_the_scanner_to_cluster_internal_names() {
    let (env, client) = env().await;
    env.dump_logs_on_panic();
    let ns = "internal";
    restricted_namespace(&client, ns).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    ingresses
        .create(
            &pp,
            &with_rules(
                "mixed",
                &["ok.test", "web.internal.svc.cluster.local"],
                None,
            ),
        )
        .await
        .unwrap();
    ingresses
        .create(
            &pp,
            &with_rules("inside", &["kubernetes.default.svc"], None),
        )
        .await
        .unwrap();
    // The refused host is left out and named on its Ingress; the rest is
    // scanned.
    let note = warning(&client, ns, "mixed", "TargetRefused").await;
    assert!(
        note.contains("web.internal.svc.cluster.local")
            && note.contains("TARGET_DENY_HOST_SUFFIXES"),
        "{note}"
    );
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), ns);
    let scan = completed(&scans, "mixed-ingress", Duration::from_secs(120)).await;
    assert_eq!(scan.spec.targets, ["http://ok.test"]);
    // An Ingress of only refused hosts gets no scan at all.
    let note = warning(&client, ns, "inside", "TargetRefused").await;
    assert!(note.contains("kubernetes.default.svc"), "{note}");
    assert!(scans.get_opt("inside-ingress").await.unwrap().is_none());
    env.step("cluster-internal names refused");
}

#[tokio::test]
async fn a_name_resolving_to_a_denied_address_is_not_scanned() {
    let (env, client) = env().await;
    env.dump_logs_on_panic();
    let ns = "resolved";
    restricted_namespace(&client, ns).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    ingresses
        .create(&pp, &with_rules("zero", &["zero.test"], None))
        .await
        .unwrap();
    ingresses
        .create(&pp, &with_rules("both", &["ok.test", "zero.test"], None))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), ns);
    // Every target refused: the run fails saying why (the operator's target
    // check let it through without connecting, so the reason is recorded).
    let failed = eventually(Duration::from_secs(120), "zero-ingress Failed", || async {
        let s = scans.get_opt("zero-ingress").await.ok()??;
        (s.status.as_ref()?.phase? == ScanPhase::Failed).then_some(s)
    })
    .await;
    let error = failed.status.unwrap().last_error.unwrap_or_default();
    assert!(
        error.contains("every target (1) was refused")
            && error.contains("zero.test resolves to 0.0.0.0")
            && error.contains("TARGET_DENY_CIDRS"),
        "{error}"
    );
    // One target refused: the others are scanned, the refusal is recorded.
    let scan = completed(&scans, "both-ingress", Duration::from_secs(120)).await;
    let summary = scan.status.unwrap().summary.unwrap();
    assert_eq!(summary.targets_scanned, 1);
    assert_eq!(
        summary.refused_targets.len(),
        1,
        "{:?}",
        summary.refused_targets
    );
    assert!(
        summary.refused_targets[0].starts_with("http://zero.test: zero.test resolves to 0.0.0.0"),
        "{:?}",
        summary.refused_targets
    );
    env.step("resolved addresses refused");
}

#[tokio::test]
async fn only_ingresses_of_the_listed_classes_are_scanned() {
    let (env, client) = env().await;
    env.dump_logs_on_panic();
    let ns = "classes";
    restricted_namespace(&client, ns).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    for (name, class) in [
        ("internal", Some("internal")),
        ("public", Some("public")),
        ("classless", None),
    ] {
        ingresses
            .create(&pp, &with_rules(name, &["ok.test"], class))
            .await
            .unwrap();
    }
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), ns);
    completed(&scans, "public-ingress", Duration::from_secs(120)).await;
    completed(&scans, "classless-ingress", Duration::from_secs(120)).await;
    // Sources are reconciled in no set order, but by the time the other two
    // completed the third has long been seen.
    assert!(scans.get_opt("internal-ingress").await.unwrap().is_none());
    // Moving an Ingress out of the listed classes removes its scan.
    let mut public = ingresses.get("public").await.unwrap();
    public.spec.as_mut().unwrap().ingress_class_name = Some("internal".into());
    ingresses.replace("public", &pp, &public).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "public-ingress deleted",
        || async {
            scans
                .get_opt("public-ingress")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    env.step("IngressClass filter");
}

#[tokio::test]
async fn a_namespace_that_opted_out_is_not_scanned_until_it_opts_back_in() {
    let (env, client) = env().await;
    env.dump_logs_on_panic();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label =
        |value: Option<&str>| Patch::Merge(json!({"metadata": {"labels": {"nuclei-scan": value}}}));
    let pp = PostParams::default();
    for ns in ["opted-out", "opted-in"] {
        restricted_namespace(&client, ns).await;
    }
    namespaces
        .patch("opted-out", &PatchParams::default(), &label(Some("off")))
        .await
        .unwrap();
    for ns in ["opted-out", "opted-in"] {
        Api::<Ingress>::namespaced(client.clone(), ns)
            .create(&pp, &with_rules("web", &["ok.test"], None))
            .await
            .unwrap();
    }
    let out: Api<NucleiScan> = Api::namespaced(client.clone(), "opted-out");
    let inside: Api<NucleiScan> = Api::namespaced(client.clone(), "opted-in");
    completed(&inside, "web-ingress", Duration::from_secs(120)).await;
    // Created at the same time as the scanned one, which has since run.
    assert!(out.get_opt("web-ingress").await.unwrap().is_none());
    // Removing the label brings the namespace in at once…
    namespaces
        .patch("opted-out", &PatchParams::default(), &label(None))
        .await
        .unwrap();
    completed(&out, "web-ingress", Duration::from_secs(120)).await;
    // …and setting it again takes it out.
    namespaces
        .patch("opted-out", &PatchParams::default(), &label(Some("off")))
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "web-ingress deleted", || async {
        out.get_opt("web-ingress")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    env.step("namespace selector");
}
