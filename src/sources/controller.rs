//! Source reconcilers: every Ingress, and (when their APIs are installed)
//! every Istio VirtualService and Gateway API HTTPRoute, becomes a
//! `NucleiScan`, written with server-side apply.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, instrument, warn};

use super::annotations;
use super::apply::{Source, body_hash, describe_errors, desired_scan};
use super::httproute::{NOT_ACCEPTED, httproute_targets};
use super::migrate;
use super::scope::NamespaceScope;
use super::targets::{
    Derived, Skipped, apply_policy, ingress_class, ingress_targets, scan_name,
    virtual_service_targets,
};
use super::triggers::Triggers;
use crate::api::gateway::{Gateway, GatewayVersion, HttpRoute};
use crate::api::labels::{APPLIED_HASH, FIELD_MANAGER};
use crate::api::{NucleiScan, SourceKind, VirtualService};
use crate::cache;
use crate::error::{Error, Result, is_not_found};
use crate::settings::{ImagePolicy, NO_INGRESS_CLASS};
use crate::target_policy::TargetPolicy;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Shared by the source reconcilers.
pub struct SourceCtx {
    pub client: kube::Client,
    /// Every NucleiScan, as the scan controller sees them.
    pub scans: Store<NucleiScan>,
    /// Events on source objects (why a source has no scan, which annotations
    /// or targets were refused).
    pub events: crate::events::NotedEvents,
    /// Counts reconciles (`nuclei_reconciles_total`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Reconcile requests from the scan watch (a scan changed or vanished).
    pub triggers: Triggers,
    /// Which scanner images an annotation may ask for.
    pub images: ImagePolicy,
    /// Which hosts and addresses scans may reach.
    pub targets: TargetPolicy,
    /// INGRESS_CLASSES: empty scans every Ingress.
    pub ingress_classes: Vec<String>,
    /// SCAN_NAMESPACE_SELECTOR: `None` scans every namespace.
    pub namespaces: Option<NamespaceScope>,
}

/// A Kubernetes object that exposes web endpoints.
pub trait SourceObject:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The kind recorded in the scan's `sourceRef`.
    const KIND: SourceKind;
    /// API version recorded in `sourceRef` and the owner reference.
    const API_VERSION: &'static str;
    /// What target derivation reads besides the object (HTTPRoutes: the
    /// Gateways they attach to).
    type Env: Send + Sync + 'static;
    /// Targets of this object.
    fn derive(&self, env: &Self::Env) -> Derived;
    /// Whether INGRESS_CLASSES (`classes`) lets this object be scanned.
    fn in_classes(&self, _classes: &[String]) -> bool {
        true
    }
}

impl SourceObject for Ingress {
    const KIND: SourceKind = SourceKind::Ingress;
    const API_VERSION: &'static str = "networking.k8s.io/v1";
    type Env = ();
    fn derive(&self, _: &()) -> Derived {
        ingress_targets(self)
    }
    fn in_classes(&self, classes: &[String]) -> bool {
        let class = ingress_class(self).unwrap_or(NO_INGRESS_CLASS);
        classes.is_empty() || classes.iter().any(|c| c == class)
    }
}

impl SourceObject for VirtualService {
    const KIND: SourceKind = SourceKind::VirtualService;
    const API_VERSION: &'static str = "networking.istio.io/v1";
    type Env = ();
    fn derive(&self, _: &()) -> Derived {
        virtual_service_targets(self)
    }
}

impl<V: GatewayVersion + PartialEq> SourceObject for HttpRoute<V> {
    const KIND: SourceKind = SourceKind::HttpRoute;
    const API_VERSION: &'static str = V::API_VERSION;
    /// The Gateways, as the HTTPRoute source's own watch sees them.
    type Env = Store<Gateway<V>>;
    fn derive(&self, gateways: &Store<Gateway<V>>) -> Derived {
        httproute_targets(self, |namespace, name| {
            gateways.get(&ObjectRef::new(name).within(namespace))
        })
    }
}

/// What a source controller's reconciles share.
struct Runner<K: SourceObject> {
    ctx: Arc<SourceCtx>,
    env: K::Env,
}

/// Runs the source controller for `K` until `shutdown` resolves, with at
/// most `concurrency` reconciles at once. Besides its own objects' changes
/// and its scans' triggers, it reconciles what `more` asks for (given the
/// controller's cache of `K`).
pub async fn run<K: SourceObject>(
    ctx: Arc<SourceCtx>,
    env: K::Env,
    more: impl FnOnce(Store<K>) -> BoxStream<'static, ObjectRef<K>>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Until the scan store has listed every scan, the applied-hash check
    // skips nothing: every source would be applied again at each start.
    let mut shutdown = Box::pin(shutdown);
    tokio::select! {
        ready = cache::ready(&ctx.scans) => if !ready { return },
        _ = &mut shutdown => return,
    }
    if let Some(scope) = &ctx.namespaces {
        tokio::select! {
            ready = scope.ready() => if !ready { return },
            _ = &mut shutdown => return,
        }
    }
    let (sources, events) = cache::reflect(
        Api::<K>::all(ctx.client.clone()),
        watcher::Config::default().any_semantic(),
        |o: &mut K| {
            // A second copy of the object, kept by `kubectl apply`.
            if let Some(a) = o.meta_mut().annotations.as_mut() {
                a.remove(LAST_APPLIED);
            }
        },
    );
    let triggers = ctx.triggers.subscribe::<K>(sources.clone());
    let more = more(sources.clone());
    Controller::for_stream(events.applied_objects(), sources)
        .reconcile_on(futures::stream::select(triggers, more))
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile::<K>,
            error_policy::<K>,
            Arc::new(Runner { ctx, env }),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                debug!("source reconcile: {e}");
            }
        })
        .await;
}

fn error_policy<K: SourceObject>(obj: Arc<K>, err: &Error, runner: Arc<Runner<K>>) -> Action {
    let controller = K::KIND.as_str().to_ascii_lowercase();
    runner.ctx.metrics.reconcile_failed(&controller, err);
    warn!(error = %err, kind = %K::KIND, namespace = obj.namespace().unwrap_or_default(), name = obj.name_any(), "source reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[instrument(skip_all, fields(kind = %K::KIND, namespace = obj.namespace().unwrap_or_default(), name = obj.name_any()))]
async fn reconcile<K: SourceObject>(obj: Arc<K>, runner: Arc<Runner<K>>) -> Result<Action> {
    let ctx = &runner.ctx;
    ctx.metrics
        .reconciled(&K::KIND.as_str().to_ascii_lowercase());
    let namespace = obj
        .namespace()
        .ok_or_else(|| Error::Invalid("source object without namespace".into()))?;
    let name = obj.name_any();
    let uid = obj.uid().unwrap_or_default();
    let scan = scan_name(K::KIND, &name);
    let api: Api<NucleiScan> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = ctx.scans.get(&ObjectRef::new(&scan).within(&namespace));
    let owner_uid = existing.as_ref().and_then(|s| {
        s.owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone())
    });
    let ours = owner_uid.as_deref() == Some(uid.as_str());
    // The scan the Go operator left for this source, if any.
    let legacy = migrate::find(&ctx.scans, K::KIND, &namespace, &name, &uid);

    if obj.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the scan.
        return Ok(Action::await_change());
    }
    let mut parsed = annotations::parse(obj.annotations());
    annotations::enforce_image_policy(&mut parsed, &ctx.images);
    let mut derived = obj.derive(&runner.env);
    let refused = apply_policy(&mut derived, &ctx.targets);
    let selected = obj.in_classes(&ctx.ingress_classes)
        && ctx
            .namespaces
            .as_ref()
            .is_none_or(|n| n.contains(&namespace));
    if !parsed.enabled || !selected || derived.targets.is_empty() {
        if ours {
            match api.delete(&scan, &DeleteParams::background()).await {
                Ok(_) => {
                    info!(
                        scan,
                        "deleted scan: {}",
                        if !parsed.enabled {
                            "scanning disabled by annotation"
                        } else if !selected {
                            "its IngressClass or namespace is not selected (INGRESS_CLASSES, SCAN_NAMESPACE_SELECTOR)"
                        } else {
                            "no scannable targets"
                        }
                    );
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(Error::DeleteScan(e)),
            }
        }
        if let Some(old) = &legacy {
            migrate::retire(&api, old).await.map_err(Error::Migrate)?;
            info!(
                scan = old.name_any(),
                "deleted the Go operator's scan: this source is not scanned"
            );
        }
        // A route waits for its Gateway's acceptance, which the Gateway
        // controller reports on the route: no Event for every new route.
        let awaiting =
            !derived.skipped.is_empty() && derived.skipped.iter().all(|s| s.reason == NOT_ACCEPTED);
        if parsed.enabled && selected && !awaiting {
            if refused.is_empty() {
                // Why this source has no scan, where its owner looks.
                let skipped: Vec<String> = derived.skipped.iter().map(|s| s.to_string()).collect();
                let note = format!("no scannable targets: {}", skipped.join("; "));
                debug!("{note}");
                event_on_source(ctx, obj.as_ref(), EventType::Normal, "NoTargets", &note).await;
            } else {
                report_refused(ctx, obj.as_ref(), &refused).await;
            }
        }
        return Ok(Action::await_change());
    }
    if owner_uid.is_some() && !ours {
        // A scan of a deleted namesake awaits garbage collection.
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let source = Source {
        kind: K::KIND,
        api_version: K::API_VERSION.to_string(),
        name: name.clone(),
        namespace: namespace.clone(),
        uid,
    };
    let body = desired_scan(&source, &scan, derived.targets, &parsed);
    let current = existing
        .as_ref()
        .and_then(|s| s.annotations().get(APPLIED_HASH).cloned());
    if current.as_deref() != body_hash(&body) {
        api.patch(
            &scan,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::ApplyScan)?;
        info!(scan, "applied scan");
        report_refused(ctx, obj.as_ref(), &refused).await;
        if !parsed.errors.is_empty() {
            let note = describe_errors(&parsed.errors);
            warn!(scan, "invalid annotations: {note}");
            event_on_source(
                ctx,
                obj.as_ref(),
                EventType::Warning,
                "InvalidAnnotation",
                &note,
            )
            .await;
        }
    }
    if let Some(old) = legacy
        && let Some(adopted) = migrate::adopt(&api, &old, &scan)
            .await
            .map_err(Error::Migrate)?
    {
        let note = format!(
            "Adopted the Go operator's scan {}: carried {} over to {scan}, and deleted {}.",
            old.name_any(),
            adopted.describe(),
            old.name_any()
        );
        info!(scan, "{note}");
        event_on_source(ctx, obj.as_ref(), EventType::Normal, "Migrated", &note).await;
    }
    Ok(Action::await_change())
}

/// No reconcile requests beyond a source's own (the `more` of [`run`] for
/// Ingresses and VirtualServices).
pub fn no_more<K: SourceObject>(_: Store<K>) -> BoxStream<'static, ObjectRef<K>> {
    futures::stream::empty().boxed()
}

/// Deletes the scans owned by sources of `kind`, whose API (CRD) was
/// deleted with every object of it: the garbage collector retries owner
/// references to a kind it cannot resolve forever, and never deletes them.
pub async fn delete_orphans(ctx: Arc<SourceCtx>, kind: SourceKind) {
    let orphans: Vec<Arc<NucleiScan>> = ctx
        .scans
        .state()
        .into_iter()
        .filter(|s| {
            s.spec.source_ref.kind == kind
                && s.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.kind == kind.as_str())
        })
        .collect();
    info!(kind = %kind, scans = orphans.len(), "the {kind} API was deleted: deleting the scans its objects owned");
    for scan in orphans {
        let api: Api<NucleiScan> =
            Api::namespaced(ctx.client.clone(), &scan.namespace().unwrap_or_default());
        match api
            .delete(&scan.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => warn!(
                scan = scan.name_any(),
                "deleting a scan whose source API is gone: {e}"
            ),
        }
    }
}

/// A Warning Event on the source naming the targets the target policy
/// refused, if any.
async fn report_refused<K: SourceObject>(ctx: &SourceCtx, obj: &K, refused: &[Skipped]) {
    if refused.is_empty() {
        return;
    }
    let list: Vec<String> = refused.iter().map(|s| s.to_string()).collect();
    let note = format!(
        "{} target(s) refused by the target policy: {}",
        refused.len(),
        list.join("; ")
    );
    warn!("{note}");
    event_on_source(ctx, obj, EventType::Warning, "TargetRefused", &note).await;
}

/// An Event on the source object (users look at their Ingress, not at our
/// scan).
async fn event_on_source<K: SourceObject>(
    ctx: &SourceCtx,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(crate::events::note(note)),
        action: "ApplyScan".into(),
        secondary: None,
    };
    if let Err(e) = ctx.events.publish(&event, &obj.object_ref(&())).await {
        warn!("event not recorded: {e}");
    }
}
