//! The reconcilers' error: one variant per step that can fail, so a log
//! line and the `nuclei_reconcile_errors_total` label say where.

/// Why a reconcile failed, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Scan controller: reading the run's Job or its pod from the API server.
    #[error("reading the scan's Job and pod: {0}")]
    ObserveJob(kube::Error),
    /// Scan controller: writing the scan's status (phase, conditions).
    #[error("writing the scan's status: {0}")]
    WriteStatus(kube::Error),
    /// Scan controller: deleting the Job of a scanner pod that never started.
    #[error("deleting the scan's stuck Job: {0}")]
    DeleteJob(kube::Error),
    /// Source controllers: the source object cannot be scanned as it is.
    #[error("invalid source object: {0}")]
    Invalid(String),
    /// Source controllers: deleting the scan of a source no longer scanned.
    #[error("deleting the source's NucleiScan: {0}")]
    DeleteScan(kube::Error),
    /// Source controllers: creating or updating the source's NucleiScan.
    #[error("applying the source's NucleiScan: {0}")]
    ApplyScan(kube::Error),
    /// Source controllers: adopting or retiring the Go operator's scan.
    #[error("migrating the Go operator's NucleiScan: {0}")]
    Migrate(kube::Error),
}

impl Error {
    /// The steps of the scan controller, as [`Error::step`] names them.
    pub const SCAN_STEPS: [&str; 3] = ["observe_job", "write_status", "delete_job"];
    /// The steps of the source controllers.
    pub const SOURCE_STEPS: [&str; 4] = ["invalid", "delete_scan", "apply_scan", "migrate"];

    /// The step that failed: the `error` label of the reconcile-error metric.
    pub fn step(&self) -> &'static str {
        match self {
            Error::ObserveJob(_) => "observe_job",
            Error::WriteStatus(_) => "write_status",
            Error::DeleteJob(_) => "delete_job",
            Error::Invalid(_) => "invalid",
            Error::DeleteScan(_) => "delete_scan",
            Error::ApplyScan(_) => "apply_scan",
            Error::Migrate(_) => "migrate",
        }
    }

    /// The API error behind it, if any.
    pub fn kube(&self) -> Option<&kube::Error> {
        match self {
            Error::ObserveJob(e)
            | Error::WriteStatus(e)
            | Error::DeleteJob(e)
            | Error::DeleteScan(e)
            | Error::ApplyScan(e)
            | Error::Migrate(e) => Some(e),
            Error::Invalid(_) => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("unavailable", "x")
                .with_code(503)
                .boxed(),
        )
    }

    #[test]
    fn every_error_names_a_step_its_controller_exports_and_keeps_its_cause() {
        let all = [
            Error::ObserveJob(api()),
            Error::WriteStatus(api()),
            Error::DeleteJob(api()),
            Error::Invalid("no namespace".into()),
            Error::DeleteScan(api()),
            Error::ApplyScan(api()),
            Error::Migrate(api()),
        ];
        let steps: Vec<&str> = all.iter().map(Error::step).collect();
        let mut exported: Vec<&str> = [&Error::SCAN_STEPS[..], &Error::SOURCE_STEPS[..]].concat();
        exported.sort();
        let mut named = steps.clone();
        named.sort();
        assert_eq!(named, exported, "each step once, each exported");
        for e in &all {
            let text = e.to_string();
            let cause = e
                .kube()
                .map_or("no namespace".to_owned(), |k| k.to_string());
            assert!(text.ends_with(&cause), "{text}");
        }
    }
}
