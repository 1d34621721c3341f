//! End-to-end: the real control plane plus the process kubelet behave as the
//! Job, garbage-collector, TTL and Deployment controllers, RBAC and Pod Security
//! Admission expect.

mod common;

use std::time::Duration;

use common::{cluster, eventually, job_condition, namespace, shell_job};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn a_job_whose_pod_exits_zero_becomes_complete() {
    let client = cluster().await.client().await.unwrap();
    let ns = namespace(&client, "job-ok", json!({})).await;
    let jobs: Api<Job> = Api::namespaced(client, &ns);
    jobs.create(
        &PostParams::default(),
        &shell_job("ok", "echo hello; exit 0", json!({})),
    )
    .await
    .unwrap();
    let (cond, _) = eventually(Duration::from_secs(30), "job completes", || {
        job_condition(&jobs, "ok")
    })
    .await;
    assert_eq!(cond, "Complete");
}

#[tokio::test]
async fn a_job_whose_pod_exits_one_with_no_backoff_fails_with_the_termination_message() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let ns = namespace(&client, "job-fail", json!({})).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &shell_job(
            "fail",
            "echo 'nuclei: no templates' > /dev/termination-log; exit 1",
            json!({}),
        ),
    )
    .await
    .unwrap();
    let (cond, reason) = eventually(Duration::from_secs(30), "job fails", || {
        job_condition(&jobs, "fail")
    })
    .await;
    assert_eq!(
        (cond.as_str(), reason.as_str()),
        ("Failed", "BackoffLimitExceeded")
    );
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let pod = pods
        .list(&ListParams::default().labels("job-name=fail"))
        .await
        .unwrap()
        .items
        .remove(0);
    let term = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(term.exit_code, 1);
    assert_eq!(term.message.as_deref(), Some("nuclei: no templates"));
}

#[tokio::test]
async fn active_deadline_kills_a_long_running_pod_and_fails_the_job() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let ns = namespace(&client, "job-deadline", json!({})).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &shell_job(
            "slow",
            "echo $$ > /tmp/pid; exec sleep 300",
            json!({"spec": {"activeDeadlineSeconds": 2}}),
        ),
    )
    .await
    .unwrap();
    let (cond, reason) = eventually(Duration::from_secs(30), "job fails by deadline", || {
        job_condition(&jobs, "slow")
    })
    .await;
    assert_eq!(
        (cond.as_str(), reason.as_str()),
        ("Failed", "DeadlineExceeded")
    );
    // The pod is deleted by the Job controller; the kubelet must kill the process.
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    eventually(
        Duration::from_secs(30),
        "the deadline-exceeded pod to be gone",
        || async {
            pods.list(&ListParams::default().labels("job-name=slow"))
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let out = std::process::Command::new("pgrep")
        .args(["-f", "exec sleep 300"])
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "sleep process still alive: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn ttl_after_finished_deletes_a_finished_job() {
    let client = cluster().await.client().await.unwrap();
    let ns = namespace(&client, "job-ttl", json!({})).await;
    let jobs: Api<Job> = Api::namespaced(client, &ns);
    jobs.create(
        &PostParams::default(),
        &shell_job(
            "ttl",
            "true",
            json!({"spec": {"ttlSecondsAfterFinished": 1}}),
        ),
    )
    .await
    .unwrap();
    // On a busy machine the TTL controller may delete the Job before a poll
    // sees it finish; only finished Jobs are deleted, so "gone" also counts.
    let seen = eventually(Duration::from_secs(30), "job completes", || async {
        match jobs.get_opt("ttl").await.ok()? {
            None => Some(None),
            Some(_) => job_condition(&jobs, "ttl").await.map(Some),
        }
    })
    .await;
    if let Some((cond, _)) = seen {
        assert_eq!(cond, "Complete");
    }
    eventually(
        Duration::from_secs(30),
        "the TTL controller deletes the job",
        || async { jobs.get_opt("ttl").await.ok()?.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_job() {
    let client = cluster().await.client().await.unwrap();
    let ns = namespace(&client, "job-gc", json!({})).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(client, &ns);
    let extra = json!({"metadata": {"ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.unwrap(),
    }]}});
    jobs.create(
        &PostParams::default(),
        &shell_job("owned", "sleep 60", extra),
    )
    .await
    .unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the garbage collector deletes the owned job",
        || async { jobs.get_opt("owned").await.ok()?.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_pod_acts_with_its_own_service_account_and_may_not_read_secrets() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let ns = namespace(&client, "sa-rbac", json!({})).await;
    let apply = |v: serde_json::Value| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let obj: kube::api::DynamicObject = serde_json::from_value(v).unwrap();
            let gvk = kube::api::GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
            let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client, &ns, &ar);
            api.create(&PostParams::default(), &obj).await.unwrap();
        }
    };
    apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}))
        .await;
    apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}))
    .await;
    apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]}))
    .await;
    let script = r#"
SA=/var/run/secrets/kubernetes.io/serviceaccount
get() { curl -s -o /dev/null -w '%{http_code}' --cacert $SA/ca.crt -H "Authorization: Bearer $(cat $SA/token)" \
  "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$(cat $SA/namespace)/$1"; }
echo "configmaps=$(get configmaps) secrets=$(get secrets)" > /dev/termination-log
"#;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let extra = json!({"spec": {"template": {"spec": {"serviceAccountName": "reader",
        "securityContext": {"runAsUser": 65532, "runAsNonRoot": true}}}}});
    jobs.create(&PostParams::default(), &shell_job("whoami", script, extra))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "job finishes", || {
        job_condition(&jobs, "whoami")
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let pod = pods
        .list(&ListParams::default().labels("job-name=whoami"))
        .await
        .unwrap()
        .items
        .remove(0);
    let msg = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap()
        .message
        .unwrap_or_default();
    assert_eq!(msg, "configmaps=200 secrets=403");
}

#[tokio::test]
async fn a_privileged_pod_is_rejected_in_a_restricted_namespace() {
    let client = cluster().await.client().await.unwrap();
    let ns = namespace(
        &client,
        "restricted",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "priv"},
        "spec": {"containers": [{"name": "c", "image": "local/sh", "securityContext": {"privileged": true}}]}
    }))
    .unwrap();
    let err = pods.create(&PostParams::default(), &pod).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("violates PodSecurity \"restricted"), "{text}");
    assert!(text.contains("privileged"), "{text}");
}

#[tokio::test]
async fn a_deployment_pod_runs_as_a_local_process_and_stops_when_deleted() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let ns = namespace(&client, "deploy", json!({})).await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "web", "image": "local/sh",
                    "args": ["-c", "echo serving as $(id -u) in $POD_NS; exec sleep 3600"],
                    "env": [{"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}]}}}
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = eventually(
        Duration::from_secs(30),
        "deployment pod running and ready",
        || async {
            let p = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?
                .items
                .pop()?;
            let st = p.status.as_ref()?;
            (st.phase.as_deref() == Some("Running")
                && st
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True"))
            .then_some(p)
        },
    )
    .await;
    let name = pod.metadata.name.unwrap();
    let log = c.container_log(&ns, &name, "web");
    eventually(Duration::from_secs(10), "container output", || async {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("serving as 0 in deploy")
            .then_some(())
    })
    .await;
    deploys
        .delete("web", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "deployment pod deleted",
        || async {
            pods.list(&ListParams::default().labels("app=web"))
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_unmapped_image_is_reported_as_err_image_pull() {
    let client = cluster().await.client().await.unwrap();
    let ns = namespace(&client, "unmapped", json!({})).await;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "nope"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/nothing:1"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let waiting = eventually(Duration::from_secs(30), "waiting reason", || async {
        let p = pods.get("nope").await.ok()?;
        p.status?
            .container_statuses?
            .pop()?
            .state?
            .waiting
            .filter(|w| w.reason.as_deref() == Some("ErrImagePull"))
    })
    .await;
    assert!(
        waiting
            .message
            .unwrap()
            .contains("example.invalid/nothing:1")
    );
}

#[tokio::test]
async fn pods_resolve_test_host_names_to_loopback() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let ns = namespace(&client, "hosts", json!({})).await;
    let jobs: Api<Job> = Api::namespaced(client, &ns);
    jobs.create(
        &PostParams::default(),
        &shell_job(
            "hosts",
            "getent hosts canary.devcluster.test > /dev/termination-log",
            json!({}),
        ),
    )
    .await
    .unwrap();
    let (cond, _) = eventually(Duration::from_secs(30), "job finishes", || {
        job_condition(&jobs, "hosts")
    })
    .await;
    assert_eq!(cond, "Complete");
    assert!(
        !std::fs::read_to_string("/etc/hosts")
            .unwrap()
            .contains("canary.devcluster.test"),
        "the machine's /etc/hosts must not be edited"
    );
}
