//! HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, `/queue` and
//! `/queue/{namespace}/{name}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use dispatcher::{DispatcherHandle, Reason, Snapshot};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::metrics::{Metrics, ReasonLabel};

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub dispatch: DispatcherHandle<String>,
    pub metrics: Arc<Metrics>,
    /// Controllers started (this replica leads) or standing by as a follower.
    pub ready: Arc<AtomicBool>,
    /// This replica is the leader (runs the controllers and the dispatcher).
    pub leader: Arc<AtomicBool>,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/queue", get(queue))
        .route("/queue/{namespace}/{name}", get(queue_item))
        .with_state(state)
}

async fn readyz(State(s): State<HttpState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let stats = s.dispatch.stats();
    s.metrics.active_jobs.set(stats.slots_used as i64);
    for (reason, n) in stats.pending.iter() {
        s.metrics
            .queue_depth
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().into(),
            })
            .set(n as i64);
    }
    s.metrics
        .queue_scheduled
        .set(stats.scheduled.total() as i64);
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// Paging of `/queue`.
#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn reason(r: Reason) -> Value {
    json!(r.as_str())
}

/// The `/queue` document (documented in the README).
pub fn queue_json(snap: &Snapshot<String>, leader: bool) -> Value {
    json!({
        "takenAt": rfc3339(snap.taken_at),
        "leader": leader,
        "limits": {
            "maxConcurrent": snap.limits.max_concurrent,
            "jobsPerMinute": snap.limits.rate_limit.map(|r| r.per_minute.get()),
            "burst": snap.limits.rate_limit.map(|r| r.burst.get()),
            "slotsUsed": snap.slots_used,
        },
        "pendingTotal": snap.pending_total,
        "pending": snap.pending.iter().map(|p| json!({
            "position": p.position,
            "scan": p.key,
            "reason": reason(p.reason),
            "priority": p.priority,
            "hosts": p.hosts,
            "enqueuedAt": rfc3339(p.enqueued_at),
            "waitSeconds": secs(p.waited),
            "blocked": p.blocked,
        })).collect::<Vec<_>>(),
        "scheduledTotal": snap.scheduled_total,
        "scheduled": snap.scheduled.iter().map(|s| json!({
            "scan": s.key,
            "reason": reason(s.reason),
            "dueAt": rfc3339(s.due_at),
            "dueInSeconds": secs(s.due_in),
        })).collect::<Vec<_>>(),
        "running": snap.running.iter().map(|r| json!({
            "scan": r.key,
            "reason": r.reason.map(reason),
            "hosts": r.hosts,
            "startedAt": rfc3339(r.started_at),
            "runningSeconds": secs(r.running_for),
            "launching": r.launching,
        })).collect::<Vec<_>>(),
    })
}

async fn queue(State(s): State<HttpState>, Query(page): Query<Page>) -> Json<Value> {
    let limit = page.limit.unwrap_or(100).min(10_000);
    let snap = s.dispatch.snapshot(limit, page.offset.unwrap_or(0));
    Json(queue_json(&snap, s.leader.load(Ordering::Relaxed)))
}

async fn queue_item(
    State(s): State<HttpState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let key = format!("{namespace}/{name}");
    let snap = s.dispatch.snapshot(usize::MAX, 0);
    let doc = queue_json(&snap, s.leader.load(Ordering::Relaxed));
    for (state, list) in [
        ("pending", "pending"),
        ("scheduled", "scheduled"),
        ("running", "running"),
    ] {
        if let Some(item) = doc[list]
            .as_array()
            .and_then(|l| l.iter().find(|i| i["scan"] == key.as_str()))
        {
            let mut item = item.clone();
            item["state"] = json!(state);
            return Json(item).into_response();
        }
    }
    (
        StatusCode::NOT_FOUND,
        Json(json!({"scan": key, "state": "absent"})),
    )
        .into_response()
}
