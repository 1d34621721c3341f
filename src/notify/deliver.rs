//! Posting a message to a webhook: one HTTP client for every notifier,
//! retries with exponential backoff on what may pass (connection errors,
//! timeouts, 408, 429 and 5xx), none on what will not (other 4xx).

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How often and how patiently a message is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each next one.
    pub first: Duration,
    /// Longest wait between two attempts (also for a `Retry-After`).
    pub max: Duration,
    /// Time allowed to one attempt.
    pub timeout: Duration,
}

impl Default for Retry {
    /// Six attempts over about a minute.
    fn default() -> Self {
        Retry {
            attempts: 6,
            first: Duration::from_secs(2),
            max: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// The wait after failed attempt `n` (1-based), or the endpoint's own
    /// `Retry-After` when it gave one, both capped at `max`.
    pub fn wait(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or_else(|| crate::duration::doubling(self.first, n, self.max))
            .min(self.max)
    }
}

/// Why an attempt failed, and whether another may pass.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt (after the endpoint's `Retry-After`, if any).
    Transient(String, Option<Duration>),
    /// Another attempt would fail the same way.
    Permanent(String),
}

/// What an HTTP status says of an attempt.
pub fn classify(status: u16, retry_after: Option<Duration>) -> Result<(), Failure> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(Failure::Transient(format!("HTTP {status}"), retry_after)),
        _ => Err(Failure::Permanent(format!("HTTP {status}"))),
    }
}

/// An HTTP(S) client for webhooks (the system's CA certificates).
#[derive(Clone)]
pub struct Poster {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    pub retry: Retry,
}

impl Poster {
    pub fn new(retry: Retry) -> std::io::Result<Poster> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Poster {
            client: Client::builder(TokioExecutor::new()).build(https),
            retry,
        })
    }

    /// One POST of `body` (JSON) to `url`.
    async fn once(&self, url: &str, body: Bytes) -> Result<(), Failure> {
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("nuclei-operator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            // The URL was checked when the notifier was read.
            .map_err(|_| Failure::Permanent("the URL cannot be used".into()))?;
        let response = tokio::time::timeout(self.retry.timeout, self.client.request(request))
            .await
            .map_err(|_| Failure::Transient("timed out".into(), None))?
            // The error says what failed (connect, TLS), never the URL.
            .map_err(|e| Failure::Transient(error_chain(&e), None))?;
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        classify(response.status().as_u16(), retry_after)
    }

    /// Posts `body` to `url` until it is taken, a permanent failure, or the
    /// last attempt; `retrying` is called before each retry. The error is
    /// the last attempt's.
    pub async fn post(&self, url: &str, body: Bytes, retrying: impl Fn()) -> Result<(), String> {
        let mut n = 0;
        loop {
            n += 1;
            match self.once(url, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(Failure::Permanent(e)) => return Err(e),
                Err(Failure::Transient(e, after)) => {
                    if n >= self.retry.attempts {
                        return Err(format!("{e} after {n} attempts"));
                    }
                    retrying();
                    tokio::time::sleep(self.retry.wait(n, after)).await;
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_follow_retry_after() {
        let r = Retry::default();
        let waits: Vec<u64> = (1..=6).map(|n| r.wait(n, None).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 30, 30]);
        assert_eq!(r.wait(1, Some(Duration::from_secs(7))).as_secs(), 7);
        assert_eq!(r.wait(1, Some(Duration::from_secs(3600))).as_secs(), 30);
        assert_eq!(r.wait(u32::MAX, None).as_secs(), 30);
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        assert_eq!(classify(204, None), Ok(()));
        for s in [408, 429, 500, 502, 503] {
            assert!(
                matches!(classify(s, None), Err(Failure::Transient(..))),
                "{s}"
            );
        }
        for s in [301, 400, 401, 403, 404, 410] {
            assert!(
                matches!(classify(s, None), Err(Failure::Permanent(..))),
                "{s}"
            );
        }
    }

    /// A local endpoint answering with `statuses` in turn (then 200);
    /// returns its address and the bodies it got.
    async fn endpoint(
        statuses: Vec<u16>,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::sync::{Arc, Mutex};
        let got = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let statuses = Arc::new(Mutex::new(statuses.into_iter()));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post({
                let got = got.clone();
                move |body: String| async move {
                    got.lock().unwrap().push(body);
                    let s = statuses.lock().unwrap().next().unwrap_or(200);
                    axum::http::StatusCode::from_u16(s).unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/hook"), got)
    }

    fn quick() -> Retry {
        Retry {
            attempts: 3,
            first: Duration::from_millis(10),
            max: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_message_is_retried_until_taken_and_not_after_a_permanent_failure() {
        let poster = Poster::new(quick()).unwrap();
        let (url, got) = endpoint(vec![500, 503]).await;
        let retries = std::sync::atomic::AtomicU32::new(0);
        let sent = poster
            .post(&url, Bytes::from_static(b"{\"a\":1}"), || {
                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .await;
        assert_eq!(sent, Ok(()));
        assert_eq!(retries.into_inner(), 2);
        assert_eq!(got.lock().unwrap().as_slice(), ["{\"a\":1}"; 3]);

        let (url, got) = endpoint(vec![500, 500, 500, 500]).await;
        assert_eq!(
            poster.post(&url, Bytes::new(), || {}).await,
            Err("HTTP 500 after 3 attempts".into())
        );
        assert_eq!(got.lock().unwrap().len(), 3);

        let (url, got) = endpoint(vec![404]).await;
        assert_eq!(
            poster.post(&url, Bytes::new(), || {}).await,
            Err("HTTP 404".into())
        );
        assert_eq!(got.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_endpoint_that_is_not_there_fails_without_naming_its_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/secret-path", listener.local_addr().unwrap());
        drop(listener);
        let e = Poster::new(quick())
            .unwrap()
            .post(&url, Bytes::new(), || {})
            .await
            .unwrap_err();
        assert!(e.ends_with("after 3 attempts"), "{e}");
        assert!(!e.contains("secret-path"), "{e}");
    }
}
