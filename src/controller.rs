//! Controller mode: wires the reconcilers, the dispatcher, leader election
//! ([`crate::leader`]) and the HTTP server, with one shutdown signal shared
//! by every task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use dispatcher::{Config as DispatchConfig, Dispatcher, RateLimit};
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::events::Reporter;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::http::auth::{DataAuth, KubeReviewer};
use crate::http::{HttpState, data_router, health_router};
use crate::jobs::RunToken;
use crate::metrics::Metrics;
use crate::scan::launch::JobLauncher;
use crate::scan::reconcile::{self, ScanCtx};
use crate::scan::slots;
use crate::settings::{HttpAuth, ScannerMode, Settings};
use crate::sources::controller::{self as sources, SourceCtx};
use crate::sources::scope::NamespaceScope;
use crate::sources::triggers::Triggers;
use crate::sources::{gateway_api, istio};

/// Runs the operator until SIGTERM/SIGINT, or until this replica loses its
/// leadership (then it exits so it restarts as a follower).
pub async fn run(settings: Settings) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::default());
    let mut dconfig = DispatchConfig::new(
        std::num::NonZeroUsize::new(settings.max_concurrent_scans as usize)
            .unwrap_or(std::num::NonZeroUsize::MIN),
    );
    if let Some(per_minute) = settings.job_rate_per_minute() {
        dconfig = dconfig.with_rate_limit(RateLimit::per_minute(per_minute));
    }
    let (mut dispatcher, handle) = Dispatcher::<RunToken>::new(dconfig);
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            info!("shutting down");
            shutdown.cancel();
        });
    }
    let ready = Arc::new(AtomicBool::new(false));
    let leader = Arc::new(AtomicBool::new(false));
    let http = serve_http(
        &settings, &client, &shutdown, &ready, &leader, &handle, &metrics,
    )
    .await?;

    let identity = crate::leader::identity(&settings);
    let lease = if settings.leader_election {
        match crate::leader::acquire(&client, &settings, &identity, &ready, &shutdown).await? {
            Some(lease) => Some(lease),
            None => return Ok(()),
        }
    } else {
        None
    };
    leader.store(true, Ordering::Relaxed);
    info!(identity, "leading: starting controllers and the dispatcher");
    let lost = match lease {
        Some(lease) => lease.stop_on_loss(shutdown.clone()),
        None => Arc::new(AtomicBool::new(false)),
    };

    let reporter = Reporter {
        controller: "nuclei-operator".into(),
        instance: Some(identity.clone()),
    };
    let concurrency = settings.reconcile_concurrency;
    let triggers = Triggers::default();
    let (scan_controller, job_store) = reconcile::controller(
        client.clone(),
        concurrency,
        handle.clone(),
        triggers.clone(),
    );
    let scans = scan_controller.store();
    metrics.read_scans_from(scans.clone());
    let namespaces = NamespaceScope::start(
        client.clone(),
        settings.scan_namespace_selector.clone(),
        triggers.clone(),
        shutdown.clone(),
    );
    let source_ctx = Arc::new(SourceCtx {
        client: client.clone(),
        scans: scans.clone(),
        events: crate::events::NotedEvents::new(client.clone(), reporter.clone()),
        metrics: metrics.clone(),
        triggers,
        images: settings.image_policy(),
        targets: settings.target_policy(),
        ingress_classes: settings.ingress_classes.clone(),
        namespaces,
    });
    let (exceptions, exceptions_task) =
        crate::suppress::controller::start(&client, scans.clone(), &reporter, shutdown.clone());
    let (notify, notifier_task) = crate::notify::start(
        &client,
        &settings,
        &metrics,
        &reporter,
        exceptions.clone(),
        &shutdown,
    )?;
    let scan_ctx = Arc::new(ScanCtx::new(
        client.clone(),
        settings.clone(),
        handle.clone(),
        metrics.clone(),
        reporter,
        job_store,
        notify,
    ));
    let stop = || {
        let s = shutdown.clone();
        async move { s.cancelled_owned().await }
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(reconcile::run(scan_controller, scan_ctx.clone(), stop()));
    if let Some(task) = notifier_task {
        tasks.spawn(task);
    }
    tasks.spawn(exceptions_task);
    if let Some(cache) = scan_ctx.templates.clone() {
        tasks.spawn(crate::template_cache::refresh::run(
            client.clone(),
            settings.clone(),
            cache,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(sources::run::<Ingress>(
        source_ctx.clone(),
        (),
        sources::no_more,
        concurrency,
        stop(),
    ));
    tasks.spawn(istio::run(
        source_ctx.clone(),
        concurrency,
        shutdown.clone(),
    ));
    tasks.spawn(gateway_api::run(
        source_ctx.clone(),
        concurrency,
        shutdown.clone(),
    ));
    tasks.spawn(crate::reports::run(
        Arc::new(crate::reports::ReportCtx {
            client: client.clone(),
            scans: scans.clone(),
            setting: settings.reports_format,
            budget_bytes: crate::scanner::report::DEFAULT_BUDGET_BYTES,
            exceptions: exceptions.clone(),
        }),
        shutdown.clone(),
    ));
    {
        let (ctx, shutdown) = (scan_ctx.clone(), shutdown.clone());
        let mode = settings.scanner_mode;
        tasks.spawn(async move {
            // Jobs still running from an earlier process hold their slots
            // before anything new is admitted.
            tokio::select! {
                n = slots::adopt_live_jobs(&ctx, &scans) => info!(adopted = n, "scan caches ready: dispatching"),
                _ = shutdown.cancelled() => return,
            }
            let audit_stop = shutdown.clone().cancelled_owned();
            let stop = shutdown.cancelled_owned();
            match mode {
                ScannerMode::Pod => {
                    let audit = slots::audit_forever(ctx.clone(), audit_stop);
                    let launcher = JobLauncher::new(ctx);
                    tokio::join!(dispatcher.run(launcher, stop), audit);
                }
                ScannerMode::Sync => {
                    let launcher = crate::scan::launch::sync::SyncLauncher::new(ctx.clone());
                    let audit = crate::scan::launch::sync::audit_forever(
                        ctx,
                        launcher.runs(),
                        scans,
                        audit_stop,
                    );
                    tokio::join!(dispatcher.run(launcher, stop), audit);
                }
            }
        });
    }
    ready.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            error!("task failed: {e}");
            shutdown.cancel();
        }
        // One controller ending means shutdown: stop the rest with it.
        shutdown.cancel();
    }
    for server in http {
        let _ = server.await;
    }
    if lost.load(Ordering::Relaxed) {
        anyhow::bail!("lost leadership");
    }
    Ok(())
}

/// Binds the health and the data listeners (failing at start-up, naming the
/// setting, if either address is taken) and serves them until shutdown.
async fn serve_http(
    settings: &Settings,
    client: &kube::Client,
    shutdown: &CancellationToken,
    ready: &Arc<AtomicBool>,
    leader: &Arc<AtomicBool>,
    dispatch: &dispatcher::DispatcherHandle<RunToken>,
    metrics: &Arc<Metrics>,
) -> Result<[tokio::task::JoinHandle<std::io::Result<()>>; 2]> {
    let health = tokio::net::TcpListener::bind(settings.health_addr)
        .await
        .with_context(|| format!("binding HEALTH_ADDR {}", settings.health_addr))?;
    let data = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("binding HTTP_ADDR {}", settings.http_addr))?;
    let auth = match settings.http_auth {
        HttpAuth::Kubernetes => Some(Arc::new(DataAuth::new(KubeReviewer::new(client.clone())))),
        HttpAuth::None => {
            warn!(addr = %settings.http_addr, "HTTP_AUTH=none: /metrics and /queue answer anyone who reaches them");
            None
        }
    };
    info!(addr = %settings.health_addr, "serving /healthz /readyz");
    info!(addr = %settings.http_addr, auth = ?settings.http_auth, "serving /metrics /queue");
    let data_app = data_router(
        HttpState {
            dispatch: dispatch.clone(),
            metrics: metrics.clone(),
            leader: leader.clone(),
        },
        auth,
    );
    let serve = |listener, app| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        })
    };
    Ok([
        serve(health, health_router(ready.clone())),
        serve(data, data_app),
    ])
}
