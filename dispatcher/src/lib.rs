//! Scan queue and admission for the nuclei operator. No Kubernetes types.
//!
//! ```text
//!  reconcilers ── enqueue(Intent) ──▶ pending: one per key, by Reason then age
//!              ── enqueue_at(due) ──▶ scheduled: a delay queue ── due ──▶ pending
//!                                         │
//!        Dispatcher::run admits the first pending intent while a slot is
//!        free, a rate token is left and no running scan has its host
//!                                         ▼
//!        Launcher::launch ──▶ running: holds its slot ── finished(key) ──▶ freed
//!                     └─ Err(LaunchError) ──▶ scheduled again as a Retry
//! ```
//!
//! Reconcilers turn scans into [`Intent`]s and hand them to a
//! [`DispatcherHandle`]. The queue keeps one intent per scan key, ordered by
//! [`Reason`] and then age; scheduled rescans and retries wait in a delay
//! queue until due. One run loop ([`Dispatcher::run`]) admits pending intents
//! under a global concurrency limit (launches in flight count), an optional
//! launch rate limit and per-host exclusivity, and starts them through a
//! [`Launcher`]. A scan holds its slot until the operator reports it
//! [finished](DispatcherHandle::finished); the next intent is admitted at
//! once.
//!
//! ```no_run
//! use std::num::NonZeroUsize;
//! use dispatcher::{Admitted, Config, Dispatcher, Intent, LaunchError, Launched, Launcher, Reason};
//!
//! struct Jobs;
//!
//! impl Launcher<u64> for Jobs {
//!     async fn launch(&self, scan: &Admitted<u64>) -> Result<Launched, LaunchError> {
//!         // create the Job for scan.intent.key, run id scan.intent.payload
//!         Ok(Launched::Running)
//!     }
//! }
//!
//! # async fn example(shutdown: impl std::future::Future<Output = ()>) {
//! let (mut dispatcher, handle) = Dispatcher::new(Config::new(NonZeroUsize::new(5).unwrap()));
//! handle.enqueue(Intent::new("default/web", Reason::NewScan, 1).with_hosts(["web.example.com"]));
//! dispatcher.run(Jobs, shutdown).await;
//! // elsewhere, when the Job completes:
//! handle.finished("default/web");
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admission;
mod dispatch;
mod queue;

pub use admission::{Config, RateLimit};
pub use dispatch::{
    Admitted, Dispatcher, DispatcherHandle, LaunchError, Launched, Launcher, Limits, Lookup,
    MIN_RETRY_DELAY, PendingItem, RunningItem, ScheduledItem, Snapshot, Stats,
};
pub use queue::{Enqueued, Intent, Reason, ReasonCounts};

/// The queue on its own, for the queue benchmark; not part of the API.
#[doc(hidden)]
pub mod bench_internals {
    pub use crate::queue::{Blocker, Queued, ScanQueue};
}
