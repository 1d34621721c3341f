//! Istio VirtualServices as a source, while Istio's CRD serves `v1`: the
//! operator works without Istio, picks VirtualServices up without a restart
//! when the CRD appears, and deletes their scans when it goes.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::controller::{self, SourceCtx, no_more};
use super::discovery::{Served, while_served};
use crate::api::{SourceKind, VirtualService};

const ISTIO_CRD: &str = "virtualservices.networking.istio.io";

/// The Istio version we read: VirtualServices at `networking.istio.io/v1`.
fn istio_v1(served: &Served) -> Option<()> {
    served
        .get(ISTIO_CRD)
        .is_some_and(|v| v.iter().any(|v| v == "v1"))
        .then_some(())
}

/// Runs the VirtualService controller (at most `concurrency` reconciles at
/// once) whenever Istio's CRD serves `v1`, until `shutdown`.
pub async fn run(ctx: Arc<SourceCtx>, concurrency: u16, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let for_removed = ctx.clone();
    let removed = move |_: &'static str| {
        tokio::spawn(controller::delete_orphans(
            for_removed.clone(),
            SourceKind::VirtualService,
        ));
    };
    let start = move |(): (), stop: CancellationToken| {
        tokio::spawn(controller::run::<VirtualService>(
            ctx.clone(),
            (),
            no_more,
            concurrency,
            stop.cancelled_owned(),
        ));
    };
    while_served(
        client,
        &[ISTIO_CRD],
        "Istio VirtualService API",
        istio_v1,
        start,
        removed,
        shutdown,
    )
    .await;
}
