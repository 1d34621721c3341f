//! End-to-end through the Helm chart, issue #16: the seed design's values
//! file (testdata/helm/seed-values.yaml) installs unchanged, and its
//! `templates.repositories` entry (pointed at a local `git daemon`: the one
//! value a test must change, since tests reach loopback only) reaches every
//! scan: its templates run next to the image's default templates, the commit
//! used is recorded in the scan's status, a new commit is used by the next
//! run, and a repository that cannot be cloned is reported (status entry,
//! `TemplatesUnavailable` condition and Event) without failing the scan.
//!
//! What it also measures, and what #16 part 1 is still to change: each run
//! clones the repository in its own pod (one upload-pack per run).

mod support;

use std::time::Duration;

use devcluster::ImageMapping;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, PostParams};
use nuclei_operator::api::{NucleiScan, Severity};
use serde_json::json;
use support::chart::{Chart, restricted_namespace};
use support::git::{GitServer, canary_template};
use support::{
    canary_target, completed, event, eventually, ingress, next_run, operator_image, repo, target_ip,
};

/// The seed's scanner image (`scanner.image`), which the process kubelet
/// maps to the operator binary with the image's templates below.
const SEED_IMAGE: &str = "ghcr.io/morten-olsen/homelab-nuclei-operator";
/// The chart's default git image, mapped to the host's git.
const GIT_IMAGE: &str = "alpine/git";
/// The repository's directory the seed's values name.
const COMMUNITY: &str = "templates/community";

/// The image's templates, laid out as the seed's `templates.defaults`
/// (`cves/`, `vulnerabilities/`) expect.
fn image_templates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = repo().join("testdata/templates");
    for (sub, file) in [
        ("cves", "canary.yaml"),
        ("vulnerabilities", "low-severity.yaml"),
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        std::fs::copy(from.join(file), dir.path().join(sub).join(file)).unwrap();
    }
    dir
}

#[tokio::test]
async fn the_seed_designs_values_install_and_every_scan_runs_the_repository_at_its_latest_commit() {
    let ip = target_ip(1);
    canary_target(ip).await;
    let git = GitServer::start(&[(
        &format!("{COMMUNITY}/git-canary.yaml"),
        &canary_template("nuclei-operator-git-canary", "medium", "git-e2e"),
    )]);
    // Outside the served directory: must not run.
    git.commit(
        &[(
            "elsewhere/other.yaml",
            &canary_template("nuclei-operator-elsewhere", "critical", "git-e2e"),
        )],
        "a template outside the path",
    );
    let chart = Chart::start("e2e_chart_templates", vec![format!("seed.test={ip}")]).await;
    let templates = image_templates();
    chart.cluster.add_image(ImageMapping {
        image: SEED_IMAGE.into(),
        ..operator_image(templates.path())
    });
    chart.cluster.add_image(ImageMapping {
        image: GIT_IMAGE.into(),
        entrypoint: vec!["git".into()],
        ..ImageMapping::default()
    });
    let seed = repo().join("testdata/helm/seed-values.yaml");
    // The seed's repository, served locally, and one that cannot be cloned.
    let missing = git.url.replace("templates.git", "missing.git");
    let local = json!([
        {"url": git.url, "branch": "main", "path": format!("/{COMMUNITY}")},
        {"url": missing},
    ]);
    chart
        .install(&[
            "-f",
            seed.to_str().unwrap(),
            "--set-json",
            &format!("templates.repositories={local}"),
        ])
        .await;
    chart.dump_logs_on_panic();

    let client = chart.client.clone();
    let ns = "seed-templates";
    restricted_namespace(&client, ns).await;
    Api::<Ingress>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &ingress("seed", "seed.test", json!({})),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), ns);
    let first = git.head();
    let clones = git.upload_packs();
    let scan = completed(&scans, "seed-ingress", Duration::from_secs(180)).await;
    let st = scan.status.unwrap();
    // The image's templates the seed's defaults select, and the repository's
    // directory on top; nothing from elsewhere in the repository.
    let found: Vec<(&str, Option<Severity>)> = st
        .findings
        .iter()
        .map(|f| (f.template_id.as_str(), f.severity))
        .collect();
    assert_eq!(
        found,
        [
            ("nuclei-operator-canary", Some(Severity::High)),
            ("nuclei-operator-git-canary", Some(Severity::Medium)),
            ("nuclei-operator-canary-low", Some(Severity::Low)),
        ]
    );
    // The repository that cannot be cloned did not fail the run; it says so.
    let recorded = json!([
        {"url": git.url, "ref": "main", "path": COMMUNITY, "commit": first},
        {"url": missing, "error": "not cloned: this run went without it (the log of init container git-clone-1 says why)"},
    ]);
    assert_eq!(
        serde_json::to_value(&st.template_sources).unwrap(),
        recorded
    );
    // Where people look: a condition on the scan and a Warning Event.
    let unavailable = eventually(Duration::from_secs(30), "TemplatesUnavailable", || async {
        let s = scans.get("seed-ingress").await.ok()?;
        s.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "TemplatesUnavailable")
    })
    .await;
    assert_eq!(unavailable.status, "True");
    assert!(
        unavailable.message.contains(&missing),
        "{}",
        unavailable.message
    );
    event(
        &client,
        ns,
        "seed-ingress",
        "Warning",
        "TemplatesUnavailable",
        &missing,
    )
    .await;
    // git daemon refuses the missing repository before its access hook runs,
    // so only the served one is counted.
    assert_eq!(git.upload_packs(), clones + 1, "one clone for the run");

    // A new commit: the next run uses it.
    let second = git.commit(
        &[(
            &format!("{COMMUNITY}/git-canary-2.yaml"),
            &canary_template("nuclei-operator-git-canary-2", "medium", "git-e2e"),
        )],
        "a second template",
    );
    let job = st.job_ref.unwrap().name;
    let (_, scan) = next_run(&scans, "seed-ingress", Some("new-commit"), Some(&job)).await;
    let st = scan.status.unwrap();
    assert_eq!(
        st.template_sources[0].commit.as_deref(),
        Some(second.as_str())
    );
    assert!(
        st.findings
            .iter()
            .any(|f| f.template_id == "nuclei-operator-git-canary-2"),
        "{:?}",
        st.findings
    );
    assert_eq!(git.upload_packs(), clones + 2, "one clone per run");
}
