//! Leader election: one replica runs the controllers and the dispatcher
//! (the only writer of scan Jobs); the others wait, ready, serving an empty
//! `/queue`, and one takes over when the lease is free. A leader that loses
//! its lease stops, and restarts as a follower.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::settings::Settings;

/// This replica's name in the lease: its pod's name (POD_NAME, else
/// HOSTNAME), else one made of the process id.
pub fn identity(settings: &Settings) -> String {
    settings
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("nuclei-operator-{}", std::process::id()))
}

/// The lease, held.
pub struct Lease {
    held: watch::Receiver<bool>,
}

/// Waits until this replica holds the lease `settings.lease_name`, marking
/// it `ready` meanwhile (a follower is ready); `None` when `shutdown` came
/// first.
pub async fn acquire(
    client: &kube::Client,
    settings: &Settings,
    identity: &str,
    ready: &AtomicBool,
    shutdown: &CancellationToken,
) -> Result<Option<Lease>> {
    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
            .with_namespace(settings.lease_namespace())
            .with_identity(identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .context("setting up the leader-election lease")?;
    // The manager's task keeps renewing the lease after its handle is gone.
    let (mut held, _task) = manager.watch().await;
    ready.store(true, Ordering::Relaxed);
    info!(
        identity,
        lease = settings.lease_name,
        "waiting for leadership"
    );
    loop {
        if *held.borrow_and_update() {
            return Ok(Some(Lease { held }));
        }
        tokio::select! {
            r = held.changed() => r.context("leader election stopped")?,
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

impl Lease {
    /// Watches the lease from now on: when it is lost (not at shutdown),
    /// cancels `shutdown`. The flag returned says whether that happened.
    pub fn stop_on_loss(self, shutdown: CancellationToken) -> Arc<AtomicBool> {
        let lost = Arc::new(AtomicBool::new(false));
        let mut held = self.held;
        let flag = lost.clone();
        tokio::spawn(async move {
            while held.changed().await.is_ok() {
                if !*held.borrow() {
                    break;
                }
            }
            if !shutdown.is_cancelled() {
                error!("lost leadership; stopping");
                flag.store(true, Ordering::Relaxed);
                shutdown.cancel();
            }
        });
        lost
    }
}
