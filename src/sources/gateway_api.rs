//! The Gateway API source: HTTPRoutes, read together with the Gateways
//! they attach to, at the newest version the cluster serves for both.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::controller::{self as sources, SourceCtx};
use super::discovery::{Served, while_served};
use crate::api::SourceKind;
use crate::api::gateway::{Gateway, GatewayVersion, HttpRoute, V1, V1Beta1};
use crate::cache;

/// The CRDs the HTTPRoute source needs.
pub const CRDS: &[&str] = &[
    "httproutes.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
];

/// The Gateway API version to read: the newest both CRDs serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V1Beta1,
}

/// The version of [`CRDS`] to read, if both serve one we know.
pub fn pick(served: &Served) -> Option<Version> {
    let both = |v: &str| {
        CRDS.iter()
            .all(|c| served.get(c).is_some_and(|vs| vs.iter().any(|s| s == v)))
    };
    if both("v1") {
        Some(Version::V1)
    } else if both("v1beta1") {
        Some(Version::V1Beta1)
    } else {
        None
    }
}

/// Runs the HTTPRoute source while the Gateway API is installed.
pub async fn run(ctx: Arc<SourceCtx>, concurrency: u16, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let for_removed = ctx.clone();
    let start = move |version: Version, stop: CancellationToken| {
        let ctx = ctx.clone();
        match version {
            Version::V1 => tokio::spawn(routes::<V1>(ctx, concurrency, stop)),
            Version::V1Beta1 => tokio::spawn(routes::<V1Beta1>(ctx, concurrency, stop)),
        };
    };
    let removed = move |crd: &'static str| {
        if crd == CRDS[0] {
            tokio::spawn(sources::delete_orphans(
                for_removed.clone(),
                SourceKind::HttpRoute,
            ));
        }
    };
    while_served(client, CRDS, "Gateway API", pick, start, removed, shutdown).await;
}

/// The HTTPRoute source controller at version `V`: a watch of the Gateways
/// (whose listeners decide the targets) and the source controller of the
/// routes, which reconciles the routes of a Gateway whose spec changed.
async fn routes<V: GatewayVersion>(ctx: Arc<SourceCtx>, concurrency: u16, stop: CancellationToken) {
    let (gateways, events) = cache::reflect(
        Api::<Gateway<V>>::all(ctx.client.clone()),
        watcher::Config::default().any_semantic(),
        |g: &mut Gateway<V>| {
            // The controller's status changes often; no target depends on it.
            g.status = None;
            g.metadata.annotations = None;
        },
    );
    let (tx, rx) = unbounded_channel();
    let poll = async move {
        // A Gateway's routes are reconciled when its spec changes
        // (generation), or it goes.
        let mut seen: HashMap<(String, String), Option<i64>> = HashMap::new();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let (gw, gone) = match event {
                Ok(watcher::Event::Apply(g)) => (g, false),
                Ok(watcher::Event::Delete(g)) => (g, true),
                Ok(_) => continue,
                Err(e) => {
                    warn!("watching Gateways: {e}");
                    continue;
                }
            };
            let key = (gw.namespace().unwrap_or_default(), gw.name_any());
            let generation = gw.meta().generation;
            let changed = if gone {
                seen.remove(&key);
                true
            } else {
                seen.insert(key.clone(), generation) != Some(generation)
            };
            if changed && tx.send(key).is_err() {
                return;
            }
        }
    };
    let stopped = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = poll => {},
            _ = stopped.cancelled() => {},
        }
    });
    tokio::select! {
        ready = cache::ready(&gateways) => if !ready { return },
        _ = stop.cancelled() => return,
    }
    sources::run::<HttpRoute<V>>(
        ctx,
        gateways,
        move |routes| routes_of_changed_gateways(rx, routes),
        concurrency,
        stop.cancelled_owned(),
    )
    .await;
}

/// The routes attached to each Gateway (`namespace`, `name`) received.
fn routes_of_changed_gateways<V: GatewayVersion>(
    mut rx: UnboundedReceiver<(String, String)>,
    routes: Store<HttpRoute<V>>,
) -> BoxStream<'static, ObjectRef<HttpRoute<V>>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .flat_map(move |(namespace, name)| {
            let refs: Vec<_> = routes
                .state()
                .iter()
                .filter(|r| {
                    let route_ns = r.namespace().unwrap_or_default();
                    r.spec.parent_refs.iter().any(|p| {
                        p.is_gateway() && p.name == name && p.namespace_or(&route_ns) == namespace
                    })
                })
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect();
            futures::stream::iter(refs)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_version_both_crds_serve_is_read() {
        let served = |routes: &[&str], gateways: &[&str]| -> Served {
            let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
            let mut s = Served::new();
            if !routes.is_empty() {
                s.insert(CRDS[0], own(routes));
            }
            if !gateways.is_empty() {
                s.insert(CRDS[1], own(gateways));
            }
            s
        };
        assert_eq!(
            pick(&served(&["v1", "v1beta1"], &["v1", "v1beta1"])),
            Some(Version::V1)
        );
        assert_eq!(
            pick(&served(&["v1beta1"], &["v1", "v1beta1"])),
            Some(Version::V1Beta1)
        );
        assert_eq!(pick(&served(&["v1"], &["v1beta1"])), None);
        assert_eq!(pick(&served(&["v1"], &[])), None);
        assert_eq!(pick(&served(&[], &[])), None);
    }
}
