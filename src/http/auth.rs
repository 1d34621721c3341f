//! Kubernetes authentication and authorization of the data endpoints
//! (`/metrics`, `/queue`, `/queue/{namespace}/{name}`), as controller-runtime's
//! secured metrics filter and kube-rbac-proxy do it:
//!
//! ```text
//! Authorization: Bearer <token> ─▶ TokenReview (who is it?) ─▶ SubjectAccessReview
//!   missing/garbled: 401             not authenticated: 401       (may they `get` this path?)
//!                                                                  no: 403, yes: the endpoint
//! the API server cannot be asked (error, timeout, too many reviews at once): 503
//! ```
//!
//! The SubjectAccessReview asks for verb `get` on the request's path as a
//! non-resource URL, so RBAC rules with `nonResourceURLs: ["/metrics",
//! "/queue", "/queue/*"]` grant it (the chart's `<release>-data-reader`), and
//! `"/queue/<namespace>/*"` grants one namespace's single-scan lookups.
//!
//! What a request costs is bounded: results, positive and negative, are
//! cached briefly under the SHA-256 of the token (never the token), so a
//! scraper costs two API calls a minute, not two per scrape; the caches hold
//! a fixed number of entries each, so a flood of random tokens cannot grow
//! memory nor push out the decisions of tokens that were allowed; at most
//! [`REVIEWS_IN_FLIGHT`] reviews are in flight at once.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Longest bearer token looked at; longer ones are refused (401) without
/// asking the API server. Service account tokens are about 1 KiB.
pub const TOKEN_MAX_BYTES: usize = 8 * 1024;
/// Longest path reviewed; no endpoint has a longer one (a scan key is at
/// most 63 + 1 + 253 bytes), so a longer path is 404 without a review.
pub const PATH_MAX_BYTES: usize = 512;
/// How long an allowed decision (and the user a token names) is reused.
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refusal (401 for a token, 403 for a token and path) is reused.
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// Entries each refusal cache and the allowed-decision cache hold at most.
pub const CACHE_ENTRIES: usize = 1024;
/// Authenticated tokens remembered at most.
pub const USER_ENTRIES: usize = 256;
/// Reviews in flight to the API server at most; a request waits for a turn
/// within [`REVIEW_DEADLINE`].
pub const REVIEWS_IN_FLIGHT: usize = 16;
/// Time a request may spend on its reviews (waiting for a turn included)
/// before it is answered 503.
pub const REVIEW_DEADLINE: Duration = Duration::from_secs(5);
/// Retry-After of a 503.
const RETRY_AFTER_SECONDS: &str = "5";
/// Least time between two warnings about failing reviews.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Who a token belongs to, as the TokenReview says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// User name, e.g. `system:serviceaccount:monitoring:prometheus`.
    pub name: String,
    /// The user's uid, if any.
    pub uid: Option<String>,
    /// Groups, e.g. `system:serviceaccounts`.
    pub groups: Vec<String>,
    /// Extra attributes (a bound token's pod name, …), passed on to the
    /// SubjectAccessReview as authorizers may use them.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The API server could not be asked, or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReviewError(pub String);

/// Asks the API server who a token is and what it may do. [`KubeReviewer`]
/// is the real one.
pub trait Reviewer: Send + Sync + 'static {
    /// The token's user; `None` when the API server does not authenticate it.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, ReviewError>>;

    /// Whether `user` may `get` the non-resource URL `path`.
    fn authorize<'a>(
        &'a self,
        user: &'a User,
        path: &'a str,
    ) -> BoxFuture<'a, Result<bool, ReviewError>>;
}

/// Reviews by TokenReview (authentication.k8s.io/v1) and SubjectAccessReview
/// (authorization.k8s.io/v1); the operator's ServiceAccount needs `create` on
/// both.
#[derive(Clone)]
pub struct KubeReviewer {
    client: kube::Client,
}

impl KubeReviewer {
    /// Reviews with `client`'s credentials.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Reviewer for KubeReviewer {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<User>, ReviewError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    ..Default::default()
                },
                ..Default::default()
            };
            let review = Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| ReviewError(format!("TokenReview: {e}")))?;
            let Some(status) = review.status else {
                return Err(ReviewError("TokenReview without a status".into()));
            };
            if status.authenticated != Some(true) {
                debug!(
                    error = status.error.unwrap_or_default(),
                    "token not authenticated"
                );
                return Ok(None);
            }
            let info = status.user.unwrap_or_default();
            match info.username {
                Some(name) if !name.is_empty() => Ok(Some(User {
                    name,
                    uid: info.uid,
                    groups: info.groups.unwrap_or_default(),
                    extra: info.extra.unwrap_or_default(),
                })),
                _ => Ok(None),
            }
        })
    }

    fn authorize<'a>(
        &'a self,
        user: &'a User,
        path: &'a str,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.name.clone()),
                    uid: user.uid.clone(),
                    groups: Some(user.groups.clone()),
                    extra: Some(user.extra.clone()),
                    non_resource_attributes: Some(NonResourceAttributes {
                        path: Some(path.to_owned()),
                        verb: Some("get".into()),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let review = Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| ReviewError(format!("SubjectAccessReview: {e}")))?;
            Ok(review.status.is_some_and(|s| s.allowed))
        })
    }
}

/// Why a request was refused; each is one HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no usable bearer token, or the API server does not know it.
    Unauthenticated(&'static str),
    /// 403: the token's user may not `get` the path.
    Forbidden {
        /// The token's user.
        user: String,
        /// The path asked for.
        path: String,
    },
    /// 404: a path longer than any endpoint's (not reviewed).
    NotFound,
    /// 503: the API server could not be asked in time.
    Unavailable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthenticated(why) => (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, r#"Bearer realm="nuclei-operator""#)],
                format!(
                    "401 Unauthorized: {why}. Send `Authorization: Bearer <token>` with a \
                     Kubernetes token, e.g. from `kubectl create token`.\n"
                ),
            )
                .into_response(),
            Refusal::Forbidden { user, path } => (
                StatusCode::FORBIDDEN,
                format!(
                    "403 Forbidden: {user:?} may not get {path}; bind a ClusterRole granting \
                     nonResourceURLs get on it, such as the chart's <release>-data-reader.\n"
                ),
            )
                .into_response(),
            Refusal::NotFound => StatusCode::NOT_FOUND.into_response(),
            Refusal::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(RETRY_AFTER, RETRY_AFTER_SECONDS)],
                "503 Service Unavailable: the Kubernetes API server could not review this \
                 request; try again.\n",
            )
                .into_response(),
        }
    }
}

/// The bearer token of the `Authorization` header. Refused without asking
/// anyone: no header, several, another scheme, an empty, spaced or
/// oversized token.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, Refusal> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or(Refusal::Unauthenticated("no bearer token"))?;
    if values.next().is_some() {
        return Err(Refusal::Unauthenticated(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| Refusal::Unauthenticated("an Authorization header that is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(Refusal::Unauthenticated("not a bearer token"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Unauthenticated("not a bearer token"));
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(Refusal::Unauthenticated("an empty bearer token"));
    }
    if token.len() > TOKEN_MAX_BYTES {
        return Err(Refusal::Unauthenticated("a bearer token too long"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::Unauthenticated("a bearer token with spaces"));
    }
    Ok(token)
}

/// SHA-256 of a token: the cache key, so the caches never hold tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `token`.
    pub fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

/// A map whose entries expire after `ttl` and that never holds more than
/// `capacity` of them: inserting into a full map first drops the expired
/// entries, then, if none had expired, the one closest to expiry.
#[derive(Debug)]
pub struct TtlMap<K, V> {
    entries: HashMap<K, (V, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V> TtlMap<K, V> {
    /// An empty map of at most `capacity` (≥ 1) entries, each kept for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The value for `key`, unless it has expired at `now`.
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .get(key)
            .and_then(|(v, expires)| (*expires > now).then_some(v))
    }

    /// Keeps `value` for `key` from `now` on.
    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= self.capacity {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (value, now + self.ttl));
    }

    /// Entries held, expired ones included until they are dropped.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the caches know about a token and path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    Allowed,
    Forbidden(Arc<str>),
    Unauthenticated,
    /// Authenticated, the path not yet decided.
    User(Arc<User>),
    Nothing,
}

/// The review caches: allowed decisions and refusals apart, so refusals (a
/// flood of random tokens) never push out what was allowed.
#[derive(Debug)]
struct Caches {
    users: TtlMap<TokenHash, Arc<User>>,
    unauthenticated: TtlMap<TokenHash, ()>,
    allowed: TtlMap<(TokenHash, String), ()>,
    forbidden: TtlMap<(TokenHash, String), Arc<str>>,
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            users: TtlMap::new(USER_ENTRIES, ALLOWED_TTL),
            unauthenticated: TtlMap::new(CACHE_ENTRIES, DENIED_TTL),
            allowed: TtlMap::new(CACHE_ENTRIES, ALLOWED_TTL),
            forbidden: TtlMap::new(CACHE_ENTRIES, DENIED_TTL),
        }
    }
}

impl Caches {
    fn known(&self, token: TokenHash, path: &str, now: Instant) -> Known {
        let key = (token, path.to_owned());
        if self.allowed.get(&key, now).is_some() {
            Known::Allowed
        } else if let Some(user) = self.forbidden.get(&key, now) {
            Known::Forbidden(user.clone())
        } else if self.unauthenticated.get(&token, now).is_some() {
            Known::Unauthenticated
        } else if let Some(user) = self.users.get(&token, now) {
            Known::User(user.clone())
        } else {
            Known::Nothing
        }
    }

    fn sizes(&self) -> [usize; 4] {
        [
            self.users.len(),
            self.unauthenticated.len(),
            self.allowed.len(),
            self.forbidden.len(),
        ]
    }
}

/// Checks data requests; shared by every request of the data listener.
pub struct DataAuth {
    reviewer: Box<dyn Reviewer>,
    caches: Mutex<Caches>,
    turns: Semaphore,
    last_warning: Mutex<Option<Instant>>,
    unavailable: AtomicU64,
}

impl DataAuth {
    /// Checks with `reviewer`.
    pub fn new(reviewer: impl Reviewer) -> Self {
        Self {
            reviewer: Box::new(reviewer),
            caches: Mutex::default(),
            turns: Semaphore::new(REVIEWS_IN_FLIGHT),
            last_warning: Mutex::new(None),
            unavailable: AtomicU64::new(0),
        }
    }

    /// Entries in the caches: users, unauthenticated tokens, allowed and
    /// forbidden (token, path) pairs.
    pub fn cache_sizes(&self) -> [usize; 4] {
        self.caches().sizes()
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        self.caches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the request with `headers` may `get` `path`.
    pub async fn check(&self, headers: &HeaderMap, path: &str) -> Result<(), Refusal> {
        let token = bearer_token(headers)?;
        if path.len() > PATH_MAX_BYTES {
            return Err(Refusal::NotFound);
        }
        let hash = TokenHash::of(token);
        let known = self.caches().known(hash, path, Instant::now());
        let user = match known {
            Known::Allowed => return Ok(()),
            Known::Forbidden(user) => return Err(forbidden(&user, path)),
            Known::Unauthenticated => return Err(rejected()),
            Known::User(user) => Some(user),
            Known::Nothing => None,
        };
        let reviewed = tokio::time::timeout(REVIEW_DEADLINE, async {
            let _turn = self
                .turns
                .acquire()
                .await
                .expect("the semaphore is never closed");
            self.review(token, hash, user, path).await
        })
        .await;
        match reviewed {
            Ok(Ok(decision)) => decision,
            Ok(Err(e)) => {
                self.warn_unavailable(&e.0);
                Err(Refusal::Unavailable)
            }
            Err(_) => {
                self.warn_unavailable("the reviews took longer than 5s");
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Asks what the caches did not know and caches the answers.
    async fn review(
        &self,
        token: &str,
        hash: TokenHash,
        user: Option<Arc<User>>,
        path: &str,
    ) -> Result<Result<(), Refusal>, ReviewError> {
        let user = match user {
            Some(user) => user,
            None => match self.reviewer.authenticate(token).await? {
                Some(user) => {
                    let user = Arc::new(user);
                    self.caches()
                        .users
                        .insert(hash, user.clone(), Instant::now());
                    user
                }
                None => {
                    self.caches()
                        .unauthenticated
                        .insert(hash, (), Instant::now());
                    return Ok(Err(rejected()));
                }
            },
        };
        let allowed = self.reviewer.authorize(&user, path).await?;
        let key = (hash, path.to_owned());
        let now = Instant::now();
        if allowed {
            self.caches().allowed.insert(key, (), now);
            Ok(Ok(()))
        } else {
            let name: Arc<str> = user.name.as_str().into();
            self.caches().forbidden.insert(key, name.clone(), now);
            Ok(Err(forbidden(&name, path)))
        }
    }

    /// Warns at most every [`WARN_EVERY`], with the count since the last one.
    fn warn_unavailable(&self, error: &str) {
        let n = self.unavailable.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            self.unavailable.store(0, Ordering::Relaxed);
            warn!(
                error,
                requests = n,
                "data endpoint requests answered 503: the API server could not review them"
            );
        }
    }
}

fn rejected() -> Refusal {
    Refusal::Unauthenticated("the API server did not authenticate the bearer token")
}

fn forbidden(user: &str, path: &str) -> Refusal {
    Refusal::Forbidden {
        user: user.to_owned(),
        path: path.to_owned(),
    }
}

/// Axum middleware: passes the request on only if [`DataAuth::check`]
/// allows it.
pub async fn require(State(auth): State<Arc<DataAuth>>, req: Request, next: Next) -> Response {
    match auth.check(req.headers(), req.uri().path()).await {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            debug!(path = req.uri().path(), ?refusal, "data request refused");
            refusal.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    /// A reviewer with fixed answers that counts the reviews it is asked.
    #[derive(Default)]
    struct Fake {
        users: HashMap<String, User>,
        grants: HashSet<(String, String)>,
        down: bool,
        hang: bool,
        authentications: AtomicUsize,
        authorizations: AtomicUsize,
    }

    impl Fake {
        fn with_user(mut self, token: &str, name: &str, paths: &[&str]) -> Self {
            let user = User {
                name: name.into(),
                ..Default::default()
            };
            self.users.insert(token.into(), user);
            for p in paths {
                self.grants.insert((name.into(), (*p).into()));
            }
            self
        }
    }

    impl Reviewer for Arc<Fake> {
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<User>, ReviewError>> {
            Box::pin(async move {
                self.authentications.fetch_add(1, Ordering::SeqCst);
                if self.hang {
                    std::future::pending::<()>().await;
                }
                if self.down {
                    return Err(ReviewError("connection refused".into()));
                }
                Ok(self.users.get(token).cloned())
            })
        }

        fn authorize<'a>(
            &'a self,
            user: &'a User,
            path: &'a str,
        ) -> BoxFuture<'a, Result<bool, ReviewError>> {
            Box::pin(async move {
                self.authorizations.fetch_add(1, Ordering::SeqCst);
                if self.down {
                    return Err(ReviewError("connection refused".into()));
                }
                Ok(self.grants.contains(&(user.name.clone(), path.to_owned())))
            })
        }
    }

    fn calls(fake: &Fake) -> (usize, usize) {
        (
            fake.authentications.load(Ordering::SeqCst),
            fake.authorizations.load(Ordering::SeqCst),
        )
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    fn auth(fake: Fake) -> (DataAuth, Arc<Fake>) {
        let fake = Arc::new(fake);
        (DataAuth::new(fake.clone()), fake)
    }

    #[test]
    fn only_one_well_formed_bearer_token_is_taken() {
        let header = |values: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
            }
            h
        };
        let long = format!("Bearer {}", "a".repeat(TOKEN_MAX_BYTES + 1));
        let refused: &[(&[&[u8]], &str)] = &[
            (&[], "no bearer token"),
            (&[b"Bearer a", b"Bearer b"], "more than one"),
            (&[b"Basic dXNlcjpwYXNz"], "not a bearer token"),
            (&[b"Bearer"], "not a bearer token"),
            (&[b"Bearer "], "empty"),
            (&[b"Bearer    "], "empty"),
            (&[b"Bearer a b"], "spaces"),
            (&[b"Bearer a\tb"], "spaces"),
            (&[b"Bearer \xffabc"], "not ASCII"),
            (&[long.as_bytes()], "too long"),
        ];
        for (values, says) in refused {
            match bearer_token(&header(values)) {
                Err(Refusal::Unauthenticated(why)) => {
                    assert!(why.contains(says), "{values:?}: {why}")
                }
                other => panic!("{values:?}: {other:?}"),
            }
        }
        assert_eq!(
            bearer_token(&header(&[b"Bearer abc.def-_~+/="])),
            Ok("abc.def-_~+/=")
        );
        assert_eq!(bearer_token(&header(&[b"bearer  tok "])), Ok("tok"));
        let longest = format!("Bearer {}", "a".repeat(TOKEN_MAX_BYTES));
        assert!(bearer_token(&header(&[longest.as_bytes()])).is_ok());
    }

    #[tokio::test]
    async fn a_request_without_a_usable_token_is_401_without_asking_the_api_server() {
        let (auth, fake) = auth(Fake::default());
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic YTpi"));
        for headers in [HeaderMap::new(), basic] {
            assert!(matches!(
                auth.check(&headers, "/queue").await,
                Err(Refusal::Unauthenticated(_))
            ));
        }
        assert_eq!(calls(&fake), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_decision_table_401_403_200_each_cached_for_its_time() {
        let (auth, fake) = auth(
            Fake::default()
                .with_user("reader", "prometheus", &["/metrics", "/queue"])
                .with_user("nobody", "someone", &[]),
        );
        // Unknown token: 401, one TokenReview, then from the cache.
        for _ in 0..3 {
            assert_eq!(
                auth.check(&bearer("random"), "/queue").await,
                Err(rejected())
            );
        }
        assert_eq!(calls(&fake), (1, 0));
        // Known user without the grant: 403, one SubjectAccessReview.
        for _ in 0..3 {
            assert_eq!(
                auth.check(&bearer("nobody"), "/queue").await,
                Err(forbidden("someone", "/queue"))
            );
        }
        assert_eq!(calls(&fake), (2, 1));
        // Allowed: the scraper costs one review of each kind per minute.
        for _ in 0..3 {
            assert_eq!(auth.check(&bearer("reader"), "/metrics").await, Ok(()));
        }
        assert_eq!(calls(&fake), (3, 2));
        // Another path of a known token: its user is cached, the path is not.
        assert_eq!(
            auth.check(&bearer("reader"), "/queue/web/scan").await,
            Err(forbidden("prometheus", "/queue/web/scan"))
        );
        assert_eq!(auth.check(&bearer("reader"), "/queue").await, Ok(()));
        assert_eq!(calls(&fake), (3, 4));
        // Refusals are forgotten after 30 s, decisions that allowed after 60 s.
        tokio::time::advance(DENIED_TTL).await;
        assert!(auth.check(&bearer("random"), "/queue").await.is_err());
        assert!(auth.check(&bearer("nobody"), "/queue").await.is_err());
        assert_eq!(auth.check(&bearer("reader"), "/metrics").await, Ok(()));
        assert_eq!(calls(&fake), (4, 5));
        tokio::time::advance(ALLOWED_TTL - DENIED_TTL).await;
        assert_eq!(auth.check(&bearer("reader"), "/metrics").await, Ok(()));
        assert_eq!(calls(&fake), (5, 6));
    }

    #[tokio::test]
    async fn an_api_server_that_cannot_be_asked_gives_503_never_access_and_nothing_cached() {
        let (auth, fake) = auth(Fake {
            down: true,
            ..Fake::default().with_user("reader", "prometheus", &["/queue"])
        });
        for _ in 0..2 {
            assert_eq!(
                auth.check(&bearer("reader"), "/queue").await,
                Err(Refusal::Unavailable)
            );
        }
        assert_eq!(calls(&fake), (2, 0), "every request asks again");
        assert_eq!(auth.cache_sizes(), [0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn a_failing_access_review_of_a_known_user_is_503_too() {
        let fake = Arc::new(Fake::default().with_user("reader", "prometheus", &["/queue"]));
        let auth = DataAuth::new(fake.clone());
        assert_eq!(auth.check(&bearer("reader"), "/queue").await, Ok(()));
        // The same user, the API server gone, a path not yet decided.
        let down = Arc::new(Fake {
            down: true,
            ..Fake::default()
        });
        let auth2 = DataAuth::new(down.clone());
        auth2.caches().users.insert(
            TokenHash::of("reader"),
            Arc::new(fake.users["reader"].clone()),
            Instant::now(),
        );
        assert_eq!(
            auth2.check(&bearer("reader"), "/queue").await,
            Err(Refusal::Unavailable)
        );
        assert_eq!(calls(&down), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_server_that_does_not_answer_gives_503_after_the_deadline() {
        let (auth, fake) = auth(Fake {
            hang: true,
            ..Fake::default()
        });
        let started = Instant::now();
        assert_eq!(
            auth.check(&bearer("any"), "/metrics").await,
            Err(Refusal::Unavailable)
        );
        assert_eq!(started.elapsed(), REVIEW_DEADLINE);
        assert_eq!(calls(&fake), (1, 0));
    }

    #[tokio::test]
    async fn a_path_longer_than_any_endpoints_is_404_without_a_review() {
        let (auth, fake) = auth(Fake::default());
        let path = format!("/queue/{}", "a".repeat(PATH_MAX_BYTES));
        assert_eq!(
            auth.check(&bearer("x"), &path).await,
            Err(Refusal::NotFound)
        );
        assert_eq!(
            auth.check(&HeaderMap::new(), &path).await,
            Err(Refusal::Unauthenticated("no bearer token")),
            "anonymous requests learn nothing about paths"
        );
        assert_eq!(calls(&fake), (0, 0));
    }

    #[tokio::test]
    async fn a_flood_of_random_tokens_keeps_the_caches_bounded_and_the_scrapers_decision() {
        let (auth, fake) = auth(Fake::default().with_user("reader", "prometheus", &["/metrics"]));
        assert_eq!(auth.check(&bearer("reader"), "/metrics").await, Ok(()));
        let flood = 5 * CACHE_ENTRIES;
        for i in 0..flood {
            let refused = auth
                .check(&bearer(&format!("random-{i}")), "/metrics")
                .await;
            assert_eq!(refused, Err(rejected()));
        }
        let [users, unauthenticated, allowed, forbidden] = auth.cache_sizes();
        assert_eq!((users, allowed, forbidden), (1, 1, 0));
        assert_eq!(unauthenticated, CACHE_ENTRIES);
        // The scraper is still answered from the cache.
        let before = calls(&fake);
        assert_eq!(auth.check(&bearer("reader"), "/metrics").await, Ok(()));
        assert_eq!(calls(&fake), before);
        assert_eq!(before, (1 + flood, 1));
    }

    #[test]
    fn a_full_ttl_map_drops_expired_entries_first_then_the_one_closest_to_expiry() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut map = TtlMap::new(3, ttl);
        map.insert("a", 1, t0);
        map.insert("b", 2, t0 + Duration::from_secs(10));
        map.insert("c", 3, t0 + Duration::from_secs(20));
        assert_eq!(map.len(), 3);
        // Updating a key does not evict.
        map.insert("c", 4, t0 + Duration::from_secs(20));
        assert_eq!((map.len(), map.get("a", t0)), (3, Some(&1)));
        // Full, none expired: "a", expiring first, goes.
        map.insert("d", 5, t0 + Duration::from_secs(25));
        assert_eq!(map.len(), 3);
        assert_eq!(map.get("a", t0 + Duration::from_secs(25)), None);
        assert_eq!(map.get("c", t0 + Duration::from_secs(25)), Some(&4));
        // Full, two expired by then ("b" at 40 s, "c" at 50 s): both go.
        let later = t0 + Duration::from_secs(52);
        assert_eq!(map.get("b", later), None, "expired");
        map.insert("e", 6, later);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("d", later), Some(&5));
        assert_eq!(map.get("e", later), Some(&6));
        assert_eq!(map.get("e", later + ttl), None);
        for i in 0..100 {
            map.insert(if i % 2 == 0 { "x" } else { "y" }, i, later);
        }
        assert!(map.len() <= 3);
    }

    #[test]
    fn the_cache_key_is_a_hash_not_the_token() {
        let a = TokenHash::of("secret-token");
        assert_eq!(a, TokenHash::of("secret-token"));
        assert_ne!(a, TokenHash::of("secret-tokeN"));
        assert!(!format!("{a:?}").contains("secret"));
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_503_through_the_real_client() {
        // A loopback port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let auth = DataAuth::new(KubeReviewer::new(client));
        assert_eq!(
            auth.check(&bearer("any"), "/queue").await,
            Err(Refusal::Unavailable)
        );
    }
}
