//! The operator's error type; each variant has a short label for metrics.

/// Errors of reconcilers and the launcher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object was not as the operator expects (missing namespace, bad field).
    #[error("invalid object: {0}")]
    Invalid(String),
}

impl Error {
    /// Every value of [`Error::metric_label`].
    pub const METRIC_LABELS: [&str; 2] = ["kube", "invalid"];

    /// A stable, low-cardinality label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Invalid(_) => "invalid",
        }
    }
}

/// Result alias for the operator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a kube error is the API's 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether a kube error is the API's 409 (conflict or already exists).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
