//! End-to-end, issue #16: the template cache with the operator as a host
//! process. A private repository (smart HTTP with Basic auth, served on
//! loopback) is fetched with the credentials of its Secret and read by
//! every scan without a clone; a wrong Secret is reported with git's words;
//! a restarted operator (kill -9) adopts the cache instead of fetching
//! again; a scan whose cached archive is gone still runs and says so.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use devcluster::ImageMapping;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use nuclei_operator::api::NucleiScan;
use nuclei_operator::template_cache::{CACHE_LABEL, MANIFEST_KEY, Manifest, READER_ROLE};
use serde_json::json;
use support::git::{GitServer, canary_template};
use support::{
    Operator, canary_target, cluster, completed, create_scan, eventually, namespace, next_run,
    target_ip,
};

/// The git image the operator is told to use, mapped to the host's git.
const GIT_IMAGE: &str = "e2e.local/git:test";

async fn secret(client: &kube::Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

async fn fetch_jobs(client: &kube::Client, ns: &str) -> usize {
    let lp = ListParams::default().labels("app.kubernetes.io/component=template-cache");
    Api::<Job>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap()
        .items
        .len()
}

/// The manifest in use: published, and its chunks granted to scanners.
async fn manifest_in_use(client: &kube::Client, ns: &str) -> Manifest {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{CACHE_LABEL}=manifest"));
    eventually(Duration::from_secs(120), "a manifest in use", || async {
        let manifest = cms.list(&lp).await.ok()?.items.iter().find_map(|cm| {
            serde_json::from_str::<Manifest>(cm.data.as_ref()?.get(MANIFEST_KEY)?).ok()
        })?;
        let granted: Vec<String> = roles
            .get_opt(READER_ROLE)
            .await
            .ok()??
            .rules?
            .into_iter()
            .flat_map(|r| r.resource_names.unwrap_or_default())
            .collect();
        let in_use = manifest
            .chunk_names()
            .all(|c| granted.iter().any(|g| g == c));
        in_use.then_some(manifest)
    })
    .await
}

#[tokio::test]
async fn a_private_repository_is_fetched_once_with_its_secret_and_scans_outlive_a_restart_and_a_lost_archive()
 {
    let ip = target_ip(1);
    canary_target(ip).await;
    let git = GitServer::start(&[(
        "community/private-canary.yaml",
        &canary_template("nuclei-operator-private-canary", "medium", "git-e2e"),
    )]);
    let url = git.serve_http("e2e", "s3cret");
    let cluster = cluster(&[("cache.test", ip)]).await;
    cluster.add_image(ImageMapping {
        image: GIT_IMAGE.split(':').next().unwrap().into(),
        entrypoint: vec!["git".into()],
        ..ImageMapping::default()
    });
    let client = cluster.client().await.unwrap();
    let ops = namespace(&client, "cache-ops").await;
    secret(
        &client,
        &ops,
        "git-creds",
        &[("username", "e2e"), ("password", "s3cret")],
    )
    .await;
    secret(&client, &ops, "wrong-creds", &[("password", "guess")]).await;
    let repositories = json!([
        {"url": url, "branch": "main", "path": "/community", "secret": "git-creds"},
        {"url": url, "secret": "wrong-creds"},
    ])
    .to_string();
    let env = [
        ("OPERATOR_NAMESPACE", ops.as_str()),
        ("TEMPLATE_REPOSITORIES", repositories.as_str()),
        ("GIT_IMAGE", GIT_IMAGE),
        ("DEFAULT_TEMPLATES", ""),
    ];
    let mut operator = Operator::start(&cluster, &env).await;

    let manifest = manifest_in_use(&client, &ops).await;
    assert_eq!(
        manifest.sources[0].commit.as_deref(),
        Some(git.head().as_str())
    );
    let refused = manifest.sources[1].error.clone().unwrap();
    assert!(refused.contains("Authentication failed"), "{refused}");
    // What an alert reads: one fetch published, one repository missing.
    eventually(Duration::from_secs(10), "the cache's metrics", || async {
        let m = operator.get("/metrics").await?;
        let has = |line: &str| m.lines().any(|l| l == line);
        (has(r#"nuclei_template_fetches_total{result="published"} 1"#)
            && has(r#"nuclei_template_fetches_total{result="failed"} 0"#)
            && has("nuclei_template_repositories_unavailable 1")
            && has(&format!(
                "nuclei_template_cache_published_timestamp_seconds {}",
                manifest.fetched_at.timestamp()
            )))
        .then_some(())
    })
    .await;

    let ns = namespace(&client, "cache-scans").await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    create_scan(&client, &ns, "private", "http://cache.test", json!({})).await;
    let st = completed(&scans, "private", Duration::from_secs(180))
        .await
        .status
        .unwrap();
    let ids: Vec<&str> = st.findings.iter().map(|f| f.template_id.as_str()).collect();
    assert!(ids.contains(&"nuclei-operator-private-canary"), "{ids:?}");
    assert!(ids.contains(&"nuclei-operator-canary"), "{ids:?}");
    assert_eq!(
        serde_json::to_value(&st.template_sources).unwrap(),
        json!([
            {"url": url, "ref": "main", "path": "community", "commit": git.head()},
            {"url": url, "error": format!("{refused} (the template cache's last fetch)")},
        ])
    );
    // Read from the cache: the scan's pod clones nothing, and its namespace
    // never sees the Secret.
    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let pod = jobs[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.init_containers.as_ref().map_or(0, Vec::len), 0);
    assert_eq!(fetch_jobs(&client, &ops).await, 1);

    // kill -9: the next operator adopts the manifest, fetches nothing, and
    // its scans read the same archive.
    operator.kill().await;
    let _operator = Operator::start(&cluster, &env).await;
    let job = st.job_ref.unwrap().name;
    let (job, scan) = next_run(&scans, "private", Some("after-restart"), Some(&job)).await;
    let st = scan.status.unwrap();
    assert_eq!(
        st.template_sources[0].commit.as_deref(),
        Some(git.head().as_str())
    );
    assert_eq!(st.template_sources[0].error, None);
    assert_eq!(fetch_jobs(&client, &ops).await, 1, "no second fetch");

    // The archive's ConfigMaps deleted behind the operator's back: the run
    // goes on with the image's templates and says what it went without.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ops);
    for chunk in &manifest.sources[0].chunks {
        cms.delete(chunk, &DeleteParams::default()).await.unwrap();
    }
    let (_, scan) = next_run(&scans, "private", Some("lost-archive"), Some(&job)).await;
    let st = scan.status.unwrap();
    let error = st.template_sources[0].error.clone().unwrap();
    assert!(
        error.starts_with("not read from the template cache: ConfigMap nuclei-templates-"),
        "{error}"
    );
    let ids: Vec<&str> = st.findings.iter().map(|f| f.template_id.as_str()).collect();
    assert!(ids.contains(&"nuclei-operator-canary"), "{ids:?}");
    assert!(!ids.contains(&"nuclei-operator-private-canary"), "{ids:?}");
}

/// `TEMPLATE_REFRESH_INTERVAL=0`: no cache, every scanner pod clones the
/// operator's repositories itself, and one that cannot be cloned leaves the
/// run without it with git's own words (kept by the optional clone's shell
/// wrapper, run here by a real `sh`).
#[tokio::test]
async fn without_the_cache_each_pod_clones_and_a_failed_clone_says_what_git_said() {
    let ip = target_ip(2);
    canary_target(ip).await;
    let git = GitServer::start(&[(
        "community/git-canary.yaml",
        &canary_template("nuclei-operator-git-canary", "medium", "git-e2e"),
    )]);
    let cluster = cluster(&[("nocache.test", ip)]).await;
    cluster.add_image(ImageMapping {
        image: GIT_IMAGE.split(':').next().unwrap().into(),
        entrypoint: vec!["git".into()],
        ..ImageMapping::default()
    });
    let client = cluster.client().await.unwrap();
    let missing = git.url.replace("templates.git", "missing.git");
    let repositories = json!([
        {"url": git.url, "path": "/community"},
        {"url": missing},
    ])
    .to_string();
    let _operator = Operator::start(
        &cluster,
        &[
            ("TEMPLATE_REPOSITORIES", repositories.as_str()),
            ("TEMPLATE_REFRESH_INTERVAL", "0"),
            ("GIT_IMAGE", GIT_IMAGE),
            ("DEFAULT_TEMPLATES", ""),
        ],
    )
    .await;
    let before = git.upload_packs();
    let ns = namespace(&client, "nocache-scans").await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let tags = json!({"tags": ["git-e2e"]});
    create_scan(&client, &ns, "nocache", "http://nocache.test", tags).await;
    let st = completed(&scans, "nocache", Duration::from_secs(180))
        .await
        .status
        .unwrap();
    let ids: Vec<&str> = st.findings.iter().map(|f| f.template_id.as_str()).collect();
    assert_eq!(ids, ["nuclei-operator-git-canary"]);
    assert_eq!(
        serde_json::to_value(&st.template_sources).unwrap(),
        json!([
            {"url": git.url, "path": "community", "commit": git.head()},
            {"url": missing, "error": "not cloned: fatal: remote error: no such repository: /missing.git"},
        ])
    );
    assert_eq!(git.upload_packs(), before + 1, "the pod's own clone");
    // No cache: no fetch Job, nothing in the operator's namespace.
    assert_eq!(fetch_jobs(&client, "default").await, 0);
}
