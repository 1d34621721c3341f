//! The cluster under test (a devcluster, or any cluster from a kubeconfig),
//! the scan fixture, and the tight create loop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use devcluster::{Config, DevCluster, ImageMapping};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde::Serialize;

use nuclei_operator::api::NucleiScan;

use crate::workload::{self, Item, Source};

/// Field manager of everything the harness applies.
const FIELD_MANAGER: &str = "nuclei-loadtest";

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
    /// ClusterRole, and the operator's CRDs, waiting until each is established.
    pub async fn install_crd(&self) -> Result<()> {
        let role = nuclei_operator::jobs::scanner_cluster_role(
            nuclei_operator::jobs::SCANNER_CLUSTER_ROLE,
        );
        Api::<ClusterRole>::all(self.client.clone())
            .patch(
                nuclei_operator::jobs::SCANNER_CLUSTER_ROLE,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&role),
            )
            .await
            .context("applying the scanner ClusterRole")?;
        for (_, crd) in nuclei_operator::api::crds() {
            self.apply_crd(crd).await?;
        }
        Ok(())
    }

    /// Installs (server-side applies) the Gateway API project's own CRDs
    /// (GatewayClass, Gateway, HTTPRoute) from the devcluster tools, waiting
    /// until each is established. Updates installed ones: on a `--kubeconfig`
    /// cluster that needs the permission to write CRDs, and replaces an
    /// install of another Gateway API version.
    pub async fn install_gateway_crds(&self) -> Result<()> {
        let crds = devcluster::Tools::locate()?
            .gateway_api_crds()
            .context("reading the Gateway API CRDs")?;
        for mut crd in crds {
            crd.metadata.managed_fields = None;
            self.apply_crd(crd).await?;
        }
        Ok(())
    }

    /// Server-side applies `crd` and waits (at most 30 s) until it is established.
    async fn apply_crd(&self, crd: CustomResourceDefinition) -> Result<()> {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying the CRD {name}"))?;
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
                bail!("the CRD {name} was not established within 30s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates the Gateway [`workload::GATEWAY`] in each namespace (existing
    /// ones are fine), retrying for a while: the API server may take a
    /// moment to serve a kind whose CRD was just established.
    pub async fn create_gateways(&self, namespaces: &[String]) -> Result<()> {
        use nuclei_operator::api::gateway::{Gateway, V1};
        let resource = kube::api::ApiResource::erase::<Gateway<V1>>(&());
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in namespaces {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), n, &resource);
            let body: DynamicObject = serde_json::from_value(workload::gateway(n))?;
            loop {
                match api.create(&PostParams::default(), &body).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(e)) if e.code == 409 => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(e).with_context(|| format!("creating the Gateway in {n}"));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(())
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

    /// Deletes the run's `source` objects in `namespaces` (one
    /// delete-collection each).
    pub async fn delete_sources(
        &self,
        source: Source,
        namespaces: &[String],
        run_id: &str,
    ) -> Result<()> {
        for n in namespaces {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), n, &source.resource());
            api.delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&format!("{}={run_id}", workload::RUN_LABEL)),
            )
            .await
            .with_context(|| format!("deleting the ceiling {} in {n}", source.nouns()))?;
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

/// Creates the objects of `items` from a tight client loop with
/// `concurrency` requests in flight. One record per object covers its create
/// and, for a kind that has one, the status a controller writes right after
/// ([`Source::status`]): both are part of making the object.
pub async fn create_sources(
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
                let mut rec = CreateRec {
                    key: item.key(),
                    start: epoch.elapsed().as_secs_f64(),
                    ..Default::default()
                };
                let result = create_source(client, item, run_id, &mut rec, deadline).await;
                rec.ok = result.is_ok();
                rec.error = result.as_ref().err().map(ToString::to_string);
                rec.uid = result.unwrap_or_default();
                rec.end = epoch.elapsed().as_secs_f64();
                rec
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// Creates the object of `item`, then writes its status if the kind has
/// one; returns its uid. Every request sent counts in `rec.attempts`.
async fn create_source(
    client: kube::Client,
    item: &Item,
    run_id: &str,
    rec: &mut CreateRec,
    deadline: Instant,
) -> kube::Result<String> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, &item.namespace, &item.source.resource());
    let body = item.source.object(item, run_id);
    let (post, patch_params) = (PostParams::default(), PatchParams::default());
    let created = retried(rec, deadline, || api.create(&post, &body)).await?;
    if let Some(status) = item.source.status(item) {
        let patch = Patch::Merge(&status);
        retried(rec, deadline, || {
            api.patch_status(&item.name, &patch_params, &patch)
        })
        .await?;
    }
    Ok(created.metadata.uid.unwrap_or_default())
}

/// Sends `request` until it succeeds, retrying transient failures with
/// back-off: at most 5 attempts in all of `rec`, never past `deadline`, and
/// never a conflict (409: the object exists, a retry cannot help).
async fn retried<T, F, Fut>(
    rec: &mut CreateRec,
    deadline: Instant,
    mut request: F,
) -> kube::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        rec.attempts += 1;
        match request().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let conflict = matches!(&e, kube::Error::Api(s) if s.code == 409);
                if conflict || rec.attempts >= 5 || Instant::now() + delay > deadline {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// The writes the operator must make for one source object, done from a
/// tight client loop: server-side apply of its NucleiScan (the operator's own
/// body and field manager, its targets as the operator derives them) and the
/// `Pending` status patch. Owned by the ceiling object `uids[key]`.
pub async fn apply_scans(
    client: &kube::Client,
    items: &[Item],
    uids: &std::collections::HashMap<String, String>,
    concurrency: usize,
    epoch: Instant,
) -> Vec<CreateRec> {
    use nuclei_operator::api::labels::FIELD_MANAGER;
    use nuclei_operator::sources::apply::{self, desired_scan};
    use nuclei_operator::sources::targets::scan_name;
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
                let source = apply::Source {
                    kind: item.source.kind(),
                    api_version: item.source.resource().api_version,
                    name: item.name.clone(),
                    namespace: item.namespace.clone(),
                    uid: uids.get(&item.key()).cloned().unwrap_or_default(),
                };
                let name = scan_name(source.kind, &item.name);
                let targets = item.source.targets(item);
                let parsed = nuclei_operator::sources::annotations::parse(&item.annotations);
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
