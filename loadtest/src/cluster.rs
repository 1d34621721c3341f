//! The cluster under test (a devcluster, or any cluster from a kubeconfig),
//! the scan fixture, and the tight create loop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use devcluster::{Config, DevCluster, ImageMapping};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde::Serialize;

use nuclei_operator::api::{NucleiScan, SourceKind};

use crate::workload::{self, Item};

/// Image the scanner Jobs use in load runs on a devcluster; the process
/// kubelet maps it to the [`FIXTURE`].
pub const FIXTURE_IMAGE: &str = "loadtest.local/noop-scan:1";

/// The scan fixture, as printed with every result.
pub const FIXTURE: &str = "fixture: noop-scan — each scanner Job runs the operator's real scanner mode \
(`nuclei-operator scanner`: reads its NucleiScan, writes scanStartTime, runs `nuclei`, writes the \
Completed result into the status) with `nuclei` replaced by a stub that exits 0 at once with no \
findings: 0 templates, no target traffic. Scan time is pod start + 3 API calls, so the numbers \
measure orchestration, not nuclei.";

/// The stub that stands in for nuclei in the fixture image.
pub const NUCLEI_STUB: &str = "#!/bin/sh\n\
# nuclei-operator loadtest fixture \"noop-scan\": stands in for nuclei so that load\n\
# runs measure orchestration. Loads no templates, contacts no target, finds nothing.\n\
exit 0\n";

/// The process kubelet's mapping of [`FIXTURE_IMAGE`]: the operator binary as
/// entrypoint, the nuclei stub on `PATH`, an empty templates directory.
pub fn fixture_mapping(dir: &Path, operator_bin: &Path) -> Result<ImageMapping> {
    use std::os::unix::fs::PermissionsExt;
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates)?;
    let stub = dir.join("nuclei");
    std::fs::write(&stub, NUCLEI_STUB)?;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&templates, std::fs::Permissions::from_mode(0o755))?;
    Ok(ImageMapping {
        image: devcluster::kubelet::image_repository(FIXTURE_IMAGE).to_string(),
        entrypoint: vec!["/opt/nuclei-operator/bin/nuclei-operator".into()],
        path: vec!["/opt/nuclei-operator/bin".into()],
        env: [(
            "NUCLEI_TEMPLATES_PATH".to_string(),
            "/nuclei-templates".to_string(),
        )]
        .into(),
        files: [
            (
                "/opt/nuclei-operator/bin/nuclei-operator".to_string(),
                operator_bin.to_owned(),
            ),
            ("/opt/nuclei-operator/bin/nuclei".to_string(), stub),
            ("/nuclei-templates".to_string(), templates),
        ]
        .into(),
    })
}

/// The cluster a run talks to.
pub struct Cluster {
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
    /// Set when the harness started the cluster.
    pub dev: Option<DevCluster>,
}

impl Cluster {
    /// Starts a devcluster whose kubelet maps [`FIXTURE_IMAGE`].
    pub async fn start_dev(dir: &Path, operator_bin: &Path) -> Result<Cluster> {
        let fixture = fixture_mapping(&dir.join("fixture"), operator_bin)?;
        let dev = DevCluster::start(Config {
            images: vec![fixture],
            state_dir: Some(dir.join("cluster")),
            ..Default::default()
        })
        .await
        .context("starting the devcluster (build its tools with devcluster/tools/build.sh)")?;
        let client = dev.client().await?;
        Ok(Cluster {
            client,
            kubeconfig: dev.kubeconfig().to_owned(),
            dev: Some(dev),
        })
    }

    /// Uses the cluster of `kubeconfig` (its current context).
    pub async fn external(kubeconfig: &Path) -> Result<Cluster> {
        let client = devcluster::admin_client(kubeconfig).await?;
        Ok(Cluster {
            client,
            kubeconfig: kubeconfig.to_owned(),
            dev: None,
        })
    }

    /// Errors if a devcluster component died.
    pub fn check(&self) -> Result<()> {
        match &self.dev {
            Some(d) => d.check(),
            None => Ok(()),
        }
    }

    /// Installs (server-side applies) what the chart would: the scanner
    /// ClusterRole, and the NucleiScan CRD, waiting until it is established.
    pub async fn install_crd(&self) -> Result<()> {
        let role = nuclei_operator::jobs::scanner_cluster_role(
            nuclei_operator::jobs::SCANNER_CLUSTER_ROLE,
        );
        Api::<ClusterRole>::all(self.client.clone())
            .patch(
                nuclei_operator::jobs::SCANNER_CLUSTER_ROLE,
                &PatchParams::apply("nuclei-loadtest").force(),
                &Patch::Apply(&role),
            )
            .await
            .context("applying the scanner ClusterRole")?;
        let crd: CustomResourceDefinition = nuclei_operator::api::crd();
        let name = crd.metadata.name.clone().unwrap_or_default();
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        crds.patch(
            &name,
            &PatchParams::apply("nuclei-loadtest").force(),
            &Patch::Apply(&crd),
        )
        .await
        .context("applying the NucleiScan CRD")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = crds.get(&name).await.ok().and_then(|c| {
                c.status?.conditions.map(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
            });
            if established == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the NucleiScan CRD was not established within 30s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates the namespaces (existing ones are fine).
    pub async fn create_namespaces(&self, names: &[String]) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        for n in names {
            let ns: Namespace = serde_json::from_value(serde_json::json!({
                "metadata": {"name": n, "labels": {workload::RUN_LABEL: "namespace"}}
            }))?;
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("creating namespace {n}")),
            }
        }
        Ok(())
    }

    /// Deletes the run's Ingresses in `namespaces` (one delete-collection each).
    pub async fn delete_ingresses(&self, namespaces: &[String], run_id: &str) -> Result<()> {
        for n in namespaces {
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), n);
            api.delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&format!("{}={run_id}", workload::RUN_LABEL)),
            )
            .await
            .with_context(|| format!("deleting the ceiling Ingresses in {n}"))?;
        }
        Ok(())
    }

    /// Deletes the namespaces (clean-up on an external cluster).
    pub async fn delete_namespaces(&self, names: &[String]) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        for n in names {
            let _ = api.delete(n, &DeleteParams::default()).await;
        }
    }
}

/// One create request of the tight loop.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CreateRec {
    pub key: String,
    /// Request sent (first attempt), seconds since the epoch.
    pub start: f64,
    /// Response received (success or final failure).
    pub end: f64,
    pub attempts: u32,
    pub ok: bool,
    pub error: Option<String>,
    /// uid of the created object.
    #[serde(skip)]
    pub uid: String,
}

/// Creates the Ingresses of `items` from a tight client loop with
/// `concurrency` requests in flight. Transient failures are retried (at most
/// 5 attempts, never past `deadline`).
pub async fn create_ingresses(
    client: &kube::Client,
    items: &[Item],
    run_id: &str,
    concurrency: usize,
    epoch: Instant,
    deadline: Instant,
) -> Vec<CreateRec> {
    futures::stream::iter(items)
        .map(|item| {
            let client = client.clone();
            async move {
                let api: Api<Ingress> = Api::namespaced(client, &item.namespace);
                let body = workload::ingress(item, run_id);
                let mut rec = CreateRec {
                    key: item.key(),
                    start: epoch.elapsed().as_secs_f64(),
                    ..Default::default()
                };
                let mut delay = Duration::from_millis(100);
                loop {
                    rec.attempts += 1;
                    match api.create(&PostParams::default(), &body).await {
                        Ok(created) => {
                            rec.uid = created.metadata.uid.unwrap_or_default();
                            rec.ok = true;
                            rec.error = None;
                            break;
                        }
                        Err(e) => {
                            let conflict = matches!(&e, kube::Error::Api(s) if s.code == 409);
                            rec.error = Some(e.to_string());
                            if conflict || rec.attempts >= 5 || Instant::now() + delay > deadline {
                                break;
                            }
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                        }
                    }
                }
                rec.end = epoch.elapsed().as_secs_f64();
                rec
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// The writes the operator must make for one Ingress, done from a tight
/// client loop: server-side apply of its NucleiScan (the operator's own body
/// and field manager) and the `Pending` status patch. Owned by the ceiling
/// Ingress `uids[key]`.
pub async fn apply_scans(
    client: &kube::Client,
    items: &[Item],
    uids: &std::collections::HashMap<String, String>,
    concurrency: usize,
    epoch: Instant,
) -> Vec<CreateRec> {
    use nuclei_operator::sources::apply::{FIELD_MANAGER, Source, desired_scan};
    use nuclei_operator::sources::targets::{ingress_targets, scan_name};
    futures::stream::iter(items.iter().filter(|i| i.expect_scan))
        .map(|item| {
            let client = client.clone();
            async move {
                let api: Api<NucleiScan> = Api::namespaced(client, &item.namespace);
                let mut rec = CreateRec {
                    key: item.scan_key(),
                    start: epoch.elapsed().as_secs_f64(),
                    attempts: 1,
                    ..Default::default()
                };
                let source = Source {
                    kind: SourceKind::Ingress,
                    api_version: "networking.k8s.io/v1".into(),
                    name: item.name.clone(),
                    namespace: item.namespace.clone(),
                    uid: uids.get(&item.key()).cloned().unwrap_or_default(),
                };
                let name = scan_name(SourceKind::Ingress, &item.name);
                let targets = ingress_targets(&workload::ingress(item, "ceiling")).targets;
                let parsed = nuclei_operator::annotations::parse(&item.annotations);
                let body = desired_scan(&source, &name, targets, &parsed);
                let status = serde_json::json!({"status": {
                    "phase": "Pending",
                    "conditions": [{
                        "type": "AnnotationsValid", "status": "True", "reason": "Valid",
                        "message": "all annotations parsed", "observedGeneration": 1,
                        "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    }],
                }});
                let result = async {
                    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
                        .await?;
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                }
                .await;
                rec.ok = result.is_ok();
                rec.error = result.err().map(|e| e.to_string());
                rec.end = epoch.elapsed().as_secs_f64();
                rec
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// Deletes every NucleiScan in `namespaces` and waits (at most 60 s) until they are gone.
pub async fn delete_scans(client: &kube::Client, namespaces: &[String]) -> Result<()> {
    for n in namespaces {
        let api: Api<NucleiScan> = Api::namespaced(client.clone(), n);
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .with_context(|| format!("deleting the ceiling NucleiScans in {n}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in namespaces {
        let api: Api<NucleiScan> = Api::namespaced(client.clone(), n);
        while !api
            .list(&ListParams::default().limit(1))
            .await?
            .items
            .is_empty()
        {
            if Instant::now() > deadline {
                bail!("the ceiling NucleiScans in {n} were not deleted within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
