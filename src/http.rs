//! HTTP endpoints, on two listeners:
//!
//! - health (HEALTH_ADDR): `/healthz` and `/readyz`, for the kubelet's probes;
//!   they answer anyone and tell nothing but "ok".
//! - data (HTTP_ADDR): `/metrics`, `/queue` and `/queue/{namespace}/{name}`;
//!   with HTTP_AUTH=kubernetes every request on it, whatever its path, needs
//!   a bearer token the API server authenticates and authorizes ([`auth`]).
//!
//! Neither listener serves the other's paths (404 there).

pub mod auth;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use dispatcher::{
    DispatcherHandle, Lookup, PendingItem, Reason, RunningItem, ScheduledItem, Snapshot,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::ScanKey;
use crate::metrics::{Metrics, ReasonLabel};

use self::auth::DataAuth;
use crate::jobs::RunToken;

/// Default number of items per list on `/queue`.
pub const DEFAULT_PAGE: usize = 100;
/// Most items per list on `/queue`, whatever `limit` asks.
pub const MAX_PAGE: usize = 1000;

/// What the data handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub dispatch: DispatcherHandle<RunToken>,
    pub metrics: Arc<Metrics>,
    /// This replica is the leader (runs the controllers and the dispatcher).
    pub leader: Arc<AtomicBool>,
}

/// The health listener's router: `/healthz`, and `/readyz` from `ready`
/// (controllers started, or standing by as a follower).
pub fn health_router(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

/// The data listener's router; every request passes `auth` first when
/// given (HTTP_AUTH=kubernetes).
pub fn data_router(state: HttpState, auth: Option<Arc<DataAuth>>) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/queue", get(queue))
        .route("/queue/{namespace}/{name}", get(queue_item))
        .with_state(state);
    match auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth, auth::require)),
        None => router,
    }
}

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> Response {
    if ready.load(Ordering::Relaxed) {
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

fn pending_json(p: &PendingItem<RunToken>) -> Value {
    json!({
        "position": p.position,
        "scan": p.key,
        "reason": reason(p.reason),
        "priority": p.priority,
        "hosts": p.hosts,
        "enqueuedAt": rfc3339(p.enqueued_at),
        "waitSeconds": secs(p.waited),
        "blocked": p.blocked,
    })
}

fn scheduled_json(s: &ScheduledItem<RunToken>) -> Value {
    json!({
        "scan": s.key,
        "reason": reason(s.reason),
        "dueAt": rfc3339(s.due_at),
        "dueInSeconds": secs(s.due_in),
    })
}

fn running_json(r: &RunningItem<RunToken>) -> Value {
    json!({
        "scan": r.key,
        "reason": r.reason.map(reason),
        "hosts": r.hosts,
        "startedAt": rfc3339(r.started_at),
        "runningSeconds": secs(r.running_for),
        "launching": r.launching,
    })
}

/// The `/queue` document (documented in the README).
pub fn queue_json(snap: &Snapshot<RunToken>, leader: bool) -> Value {
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
        "pending": snap.pending.iter().map(pending_json).collect::<Vec<_>>(),
        "scheduledTotal": snap.scheduled_total,
        "scheduled": snap.scheduled.iter().map(scheduled_json).collect::<Vec<_>>(),
        "running": snap.running.iter().map(running_json).collect::<Vec<_>>(),
    })
}

/// The `/queue/{namespace}/{name}` document: the item as `/queue` lists it,
/// with its `state`.
pub fn item_json(item: &Lookup<RunToken>) -> Value {
    let (mut doc, state) = match item {
        Lookup::Pending(p) => (pending_json(p), "pending"),
        Lookup::Scheduled(s) => (scheduled_json(s), "scheduled"),
        Lookup::Running(r) => (running_json(r), "running"),
    };
    doc["state"] = json!(state);
    doc
}

async fn queue(State(s): State<HttpState>, Query(page): Query<Page>) -> Json<Value> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
    let snap = s.dispatch.snapshot(limit, page.offset.unwrap_or(0));
    Json(queue_json(&snap, s.leader.load(Ordering::Relaxed)))
}

/// One scan, found directly: what it costs does not grow with the queue
/// (beyond counting a pending scan's position).
async fn queue_item(
    State(s): State<HttpState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let key = ScanKey::new(namespace, name).to_string();
    match s.dispatch.lookup(&key) {
        Some(item) => Json(item_json(&item)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"scan": key, "state": "absent"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::auth::{Refusal, ReviewError, Reviewer, User};
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use dispatcher::{Config, Dispatcher, Intent};
    use futures::future::BoxFuture;
    use std::num::NonZeroUsize;
    use tower::ServiceExt;

    /// Token `reader` may get `paths`; `root` may get anything; any other
    /// token is unknown. `down`: every review fails.
    struct Static {
        paths: &'static [&'static str],
        down: bool,
    }

    impl Reviewer for Static {
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<User>, ReviewError>> {
            Box::pin(async move {
                if self.down {
                    return Err(ReviewError("connection refused".into()));
                }
                Ok(["reader", "root"].contains(&token).then(|| User {
                    name: token.into(),
                    ..Default::default()
                }))
            })
        }

        fn authorize<'a>(
            &'a self,
            user: &'a User,
            path: &'a str,
        ) -> BoxFuture<'a, Result<bool, ReviewError>> {
            Box::pin(async move { Ok(user.name == "root" || self.paths.contains(&path)) })
        }
    }

    fn state() -> HttpState {
        let (_dispatcher, handle) = Dispatcher::new(Config::new(NonZeroUsize::MIN));
        HttpState {
            dispatch: handle,
            metrics: Arc::new(Metrics::default()),
            leader: Arc::new(AtomicBool::new(true)),
        }
    }

    fn guarded(state: HttpState, paths: &'static [&'static str], down: bool) -> Router {
        data_router(state, Some(Arc::new(DataAuth::new(Static { paths, down }))))
    }

    /// Status, one header and the body of a GET.
    async fn get(
        router: &Router,
        path: &str,
        token: Option<&str>,
        header: &str,
    ) -> (StatusCode, Option<String>, String) {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let value = resp
            .headers()
            .get(header)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, value, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_health_port_answers_probes_without_a_token_and_serves_no_data() {
        let ready = Arc::new(AtomicBool::new(false));
        let health = health_router(ready.clone());
        assert_eq!(get(&health, "/healthz", None, "x").await.0, StatusCode::OK);
        assert_eq!(
            get(&health, "/readyz", None, "x").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&health, "/readyz", None, "x").await.2, "ok");
        for path in ["/metrics", "/queue", "/queue/web/scan"] {
            let (status, _, _) = get(&health, path, Some("root"), "x").await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn an_anonymous_or_unknown_caller_gets_401_on_every_data_port_path() {
        let data = guarded(state(), &["/queue"], false);
        for path in ["/metrics", "/queue", "/queue/web/scan", "/healthz", "/nope"] {
            for token in [None, Some("random")] {
                let (status, challenge, body) = get(&data, path, token, "www-authenticate").await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {token:?}");
                assert_eq!(
                    challenge.as_deref(),
                    Some(r#"Bearer realm="nuclei-operator""#)
                );
                assert!(body.contains("kubectl create token"), "{body}");
                assert!(!body.contains("pending"), "{body}");
            }
        }
    }

    #[tokio::test]
    async fn a_token_without_the_grant_gets_403_and_one_with_it_the_queue() {
        let s = state();
        s.dispatch.enqueue(Intent::new(
            "web/scan",
            Reason::NewScan,
            RunToken::default(),
        ));
        let data = guarded(s, &["/queue", "/queue/web/scan"], false);
        let (status, _, body) = get(&data, "/metrics", Some("reader"), "x").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains(r#""reader" may not get /metrics"#), "{body}");
        let (status, _, body) = get(&data, "/queue?limit=5", Some("reader"), "x").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["pending"][0]["scan"], "web/scan");
        let (status, _, body) = get(&data, "/queue/web/scan", Some("reader"), "x").await;
        assert_eq!(status, StatusCode::OK);
        let item: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&item["state"], &item["position"]),
            (&json!("pending"), &json!(1))
        );
        let (status, _, _) = get(&data, "/queue/web/other", Some("reader"), "x").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a path not granted");
        let (status, _, body) = get(&data, "/metrics", Some("root"), "x").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("nuclei_queue_depth"), "{body}");
    }

    #[tokio::test]
    async fn the_data_port_answers_no_health_path_even_to_a_caller_allowed_everything() {
        let data = guarded(state(), &[], false);
        for path in ["/healthz", "/readyz"] {
            assert_eq!(
                get(&data, path, Some("root"), "x").await.0,
                StatusCode::NOT_FOUND
            );
        }
    }

    #[tokio::test]
    async fn an_api_server_that_cannot_be_asked_gives_503_with_retry_after() {
        let data = guarded(state(), &["/queue"], true);
        let (status, retry, body) = get(&data, "/queue", Some("reader"), "retry-after").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("5"));
        assert!(!body.contains("pending"), "{body}");
        assert_eq!(
            Refusal::Unavailable.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn without_auth_the_data_port_is_open_as_before() {
        let data = data_router(state(), None);
        assert_eq!(get(&data, "/queue", None, "x").await.0, StatusCode::OK);
        assert_eq!(get(&data, "/metrics", None, "x").await.0, StatusCode::OK);
        let (status, _, body) = get(&data, "/queue/web/absent", None, "x").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"scan": "web/absent", "state": "absent"})
        );
    }

    #[tokio::test]
    async fn a_queue_page_holds_at_most_max_page_items_whatever_limit_asks() {
        let s = state();
        for i in 0..MAX_PAGE + 10 {
            s.dispatch.enqueue(Intent::new(
                format!("ns/s{i}"),
                Reason::NewScan,
                RunToken::default(),
            ));
        }
        let data = data_router(s, None);
        let (_, _, body) = get(&data, "/queue?limit=100000", None, "x").await;
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["pending"].as_array().unwrap().len(), MAX_PAGE);
        assert_eq!(doc["pendingTotal"], MAX_PAGE + 10);
        let (_, _, body) = get(&data, "/queue", None, "x").await;
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["pending"].as_array().unwrap().len(), DEFAULT_PAGE);
    }

    /// The README's `/queue` example, with each `"…"` it elides.
    fn readme_queue_example() -> Value {
        let readme = include_str!("../README.md");
        let start = readme
            .find("```json\n{\n  \"takenAt\"")
            .expect("the README shows a /queue document");
        let body = &readme[start + "```json\n".len()..];
        let end = body.find("```").expect("the example ends");
        serde_json::from_str(&body[..end]).expect("the README's example is JSON")
    }

    /// Sets every value of `got` that `want` shows as `"…"` to `"…"`.
    fn elide(want: &Value, got: &mut Value) {
        match (want, got) {
            (Value::String(s), got) if s == "…" => *got = json!("…"),
            (Value::Object(w), Value::Object(g)) => {
                for (k, w) in w {
                    if let Some(g) = g.get_mut(k) {
                        elide(w, g);
                    }
                }
            }
            (Value::Array(w), Value::Array(g)) => {
                for (w, g) in w.iter().zip(g) {
                    elide(w, g);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_queue_document_is_the_one_the_readme_shows() {
        let at = |s: &str| SystemTime::from(chrono::DateTime::parse_from_rfc3339(s).unwrap());
        let hosts = |h: &str| [h.to_owned()].into();
        let snap = Snapshot {
            taken_at: at("2026-11-27T11:24:47.652Z"),
            limits: dispatcher::Limits {
                max_concurrent: 2,
                rate_limit: Some(dispatcher::RateLimit::per_minute(
                    std::num::NonZeroU32::new(60).unwrap(),
                )),
            },
            slots_used: 2,
            pending_total: 6,
            pending: vec![PendingItem {
                position: 1,
                key: "default/web2-ingress".into(),
                reason: Reason::NewScan,
                priority: Reason::NewScan.priority(),
                hosts: hosts("h2.test"),
                payload: RunToken::default(),
                enqueued_at: at("2026-11-27T11:24:46.132Z"),
                waited: Duration::from_millis(1520),
                blocked: false,
            }],
            scheduled_total: 1,
            scheduled: vec![ScheduledItem {
                key: "default/canary-ingress".into(),
                reason: Reason::Scheduled,
                hosts: hosts("canary.test"),
                payload: RunToken::default(),
                due_at: at("2026-12-04T11:24:30.023Z"),
                due_in: Duration::from_millis(604_782_400),
            }],
            running: vec![RunningItem {
                key: "default/web0-ingress".into(),
                reason: Some(Reason::NewScan),
                hosts: hosts("h0.test"),
                payload: RunToken::default(),
                started_at: at("2026-11-27T11:24:44.552Z"),
                running_for: Duration::from_millis(3100),
                launching: false,
            }],
        };
        let want = readme_queue_example();
        let mut got = queue_json(&snap, true);
        // The README elides the absolute times of a pending and a running
        // scan; the rest, field by field, is what the operator serves.
        assert_eq!(got["pending"][0]["enqueuedAt"], "2026-11-27T11:24:46.132Z");
        assert_eq!(got["running"][0]["startedAt"], "2026-11-27T11:24:44.552Z");
        elide(&want, &mut got);
        assert_eq!(got, want);
        // An adopted scan has no reason, and a follower says so.
        let adopted = RunningItem {
            reason: None,
            ..snap.running[0].clone()
        };
        assert_eq!(running_json(&adopted)["reason"], Value::Null);
        assert_eq!(queue_json(&snap, false)["leader"], false);
    }
}
