//! End-to-end through the Helm chart, issue #16: the seed design's values
//! file (testdata/helm/seed-values.yaml) installs unchanged, and its
//! `templates.repositories` entry (pointed at a local `git daemon`: the one
//! value a test must change, since tests reach loopback only) reaches every
//! scan through the template cache: one fetch Job clones it for all scans,
//! its templates run next to the image's default templates, the commit used
//! is recorded in each scan's status, a new commit is picked up by the next
//! refresh and used by the next run, and a repository that cannot be cloned
//! is reported (status entry with git's words, `TemplatesUnavailable`
//! condition and Event) without failing the scans.

mod support;

use std::time::Duration;

use devcluster::ImageMapping;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, ListParams, PostParams};
use nuclei_operator::api::{NucleiScan, Severity};
use nuclei_operator::jobs::job_finished;
use nuclei_operator::template_cache::{CACHE_LABEL, MANIFEST_KEY, Manifest, READER_ROLE};
use serde_json::json;
use support::chart::{Chart, RELEASE_NS, restricted_namespace};
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
/// One Ingress (and scan) per host, all served by the canary target.
const HOSTS: [&str; 3] = ["seed-a.test", "seed-b.test", "seed-c.test"];

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

/// Fetch Jobs of the template cache so far: (finished, all).
async fn fetch_jobs(client: &kube::Client) -> (usize, usize) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), RELEASE_NS);
    let lp = ListParams::default().labels("app.kubernetes.io/component=template-cache");
    let all = jobs.list(&lp).await.unwrap().items;
    let finished = all.iter().filter(|j| job_finished(j).is_some()).count();
    (finished, all.len())
}

/// The newest template cache manifest whose first repository is at `commit`.
async fn manifest_at(client: &kube::Client, commit: &str) -> Manifest {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), RELEASE_NS);
    let lp = ListParams::default().labels(&format!("{CACHE_LABEL}=manifest"));
    eventually(
        Duration::from_secs(120),
        "a cache manifest at the commit",
        || async {
            cms.list(&lp)
                .await
                .ok()?
                .items
                .iter()
                .filter_map(|cm| {
                    serde_json::from_str::<Manifest>(cm.data.as_ref()?.get(MANIFEST_KEY)?).ok()
                })
                .find(|m| m.sources[0].commit.as_deref() == Some(commit))
        },
    )
    .await
}

/// Waits until the operator lets scanners read `manifest`'s chunks, which
/// it does right before its Jobs start using them.
async fn in_use(client: &kube::Client, manifest: &Manifest) {
    let roles: Api<Role> = Api::namespaced(client.clone(), RELEASE_NS);
    let chunks: Vec<String> = manifest.chunk_names().map(str::to_owned).collect();
    eventually(Duration::from_secs(30), "the manifest in use", || async {
        let role = roles.get_opt(READER_ROLE).await.ok()??;
        let granted: Vec<String> = role
            .rules?
            .into_iter()
            .flat_map(|r| r.resource_names.unwrap_or_default())
            .collect();
        chunks.iter().all(|c| granted.contains(c)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_seed_designs_values_install_and_every_scan_runs_the_repository_fetched_once_at_its_latest_commit()
 {
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
    // The server's readiness probe counts as one.
    let before = git.upload_packs();
    let hosts: Vec<String> = HOSTS.iter().map(|h| format!("{h}={ip}")).collect();
    let chart = Chart::start("e2e_chart_templates", hosts).await;
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
            // The chart's 1h, shortened so the test sees a refresh.
            "--set",
            "templates.refreshInterval=20s",
        ])
        .await;
    chart.dump_logs_on_panic();

    let client = chart.client.clone();
    let first = git.head();
    // The operator fetches at once; the scans below read what it published.
    let manifest = manifest_at(&client, &first).await;
    in_use(&client, &manifest).await;
    let error = manifest.sources[1].error.clone().unwrap();
    assert!(
        error.contains("not cloned: ") && error.contains("missing.git"),
        "{error}"
    );
    chart.step("the first template cache manifest is published");

    let ns = "seed-templates";
    restricted_namespace(&client, ns).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    for host in HOSTS {
        let name = host.trim_end_matches(".test");
        ingresses
            .create(&PostParams::default(), &ingress(name, host, json!({})))
            .await
            .unwrap();
    }
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), ns);
    for host in HOSTS {
        let name = format!("{}-ingress", host.trim_end_matches(".test"));
        let scan = completed(&scans, &name, Duration::from_secs(180)).await;
        let st = scan.status.unwrap();
        // The image's templates the seed's defaults select, and the
        // repository's directory on top; nothing from elsewhere in it.
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
            ],
            "{name}"
        );
        // The repository that cannot be cloned did not fail the run; it
        // says why, in git's words.
        let recorded = json!([
            {"url": git.url, "ref": "main", "path": COMMUNITY, "commit": first},
            {"url": missing, "error": format!("{error} (the template cache's last fetch)")},
        ]);
        assert_eq!(
            serde_json::to_value(&st.template_sources).unwrap(),
            recorded,
            "{name}"
        );
    }
    chart.step("every scan ran the cached templates");
    // Where people look: a condition on the scan and a Warning Event.
    let name = "seed-a-ingress";
    let unavailable = eventually(Duration::from_secs(30), "TemplatesUnavailable", || async {
        let s = scans.get(name).await.ok()?;
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
        name,
        "Warning",
        "TemplatesUnavailable",
        &missing,
    )
    .await;

    // A new commit: the next refresh fetches it, the next run uses it.
    let second = git.commit(
        &[(
            &format!("{COMMUNITY}/git-canary-2.yaml"),
            &canary_template("nuclei-operator-git-canary-2", "medium", "git-e2e"),
        )],
        "a second template",
    );
    in_use(&client, &manifest_at(&client, &second).await).await;
    chart.step("a refresh fetched the new commit");
    let job = scans
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap()
        .job_ref
        .unwrap()
        .name;
    let (_, scan) = next_run(&scans, name, Some("new-commit"), Some(&job)).await;
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

    // Clones: one per fetch Job (git daemon refuses the missing repository
    // before its access hook runs, so only the served one is counted), none
    // for the four scan runs. Fetches run one at a time, so at most one has
    // not finished: without the cache there would be four more clones.
    let (finished, _) = fetch_jobs(&client).await;
    let clones = git.upload_packs() - before;
    let (_, created) = fetch_jobs(&client).await;
    assert!(
        finished >= 2 && (finished..=created).contains(&clones) && created <= finished + 1,
        "{clones} clones for {finished} finished and {created} created fetch Jobs"
    );
}
