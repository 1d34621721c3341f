//! Scanner Jobs: the run token and Job name of a scan run, the effective pod
//! configuration, the Job itself, whether a Job has finished, and the
//! per-namespace ServiceAccount, Role and RoleBinding scanner pods run as.
//!
//! One file per concern: `run` (token and Job name), `params` (the
//! effective configuration), `build` (the Job), `outcome` (how a Job
//! ended), `rbac` (the scanner's ServiceAccount and RoleBinding). Everything
//! but [`ensure_scanner_rbac`] and [`RbacCache::ensure`] does no I/O.
//!
//! A run is identified by its [`run_token`], derived only from state stored in
//! the NucleiScan. The dispatcher creates the Job named by [`job_name`] and then
//! records the run (`status.lastScanTime`); if it crashes in between, the same
//! state gives the same token and name after a restart, so creating the Job
//! again fails with `AlreadyExists` and the existing Job is adopted instead of
//! a second one being started.
//!
//! Pod layout (see [`build_job`]):
//!
//! | path | volume | written by |
//! |---|---|---|
//! | `/tmp` (also `HOME`) | `tmp` emptyDir | nuclei, git |
//! | `/templates/git/<i>` | `git-templates` emptyDir | init container `git-clone-<i>` (scanner: read-only) |
//! | `/templates/configmaps/<name>` | ConfigMap `<name>` | read-only |
//!
//! The scanner learns the extra directories from [`EXTRA_TEMPLATE_DIRS_ENV`].

use std::time::Duration;

use crate::api::labels::{
    COMPONENT_LABEL, COMPONENT_SCANNER, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL,
    SCAN_KEY_ANNOTATION, SCAN_LABEL,
};

/// Pod annotation that keeps Istio from injecting a sidecar, which would keep
/// the pod (and so the Job) running after the scanner exits.
pub const ISTIO_INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";

/// Name of the scanner container.
pub const SCANNER_CONTAINER: &str = "scanner";
/// Environment variable of the scanner: the scan's uid (nothing is written
/// to a scan of another uid).
pub const SCAN_UID_ENV: &str = "SCAN_UID";
/// Environment variable of the scanner: the run's token (nothing is written
/// once the scan has moved on from it).
pub const SCAN_RUN_ENV: &str = "SCAN_RUN";
/// Environment variable of the scanner: its pod's name (downward API).
pub const POD_NAME_ENV: &str = "POD_NAME";
/// Environment variable of the scanner: the built-in templates directory.
pub const TEMPLATES_PATH_ENV: &str = "NUCLEI_TEMPLATES_PATH";
/// Environment variable of the scanner: the timeout of a scan that sets none.
pub const SCANNER_TIMEOUT_ENV: &str = "SCANNER_TIMEOUT";
/// Environment variable with the extra template directories of a run,
/// colon-separated: `/templates/git/<i>[/<path>]` per git source, then
/// `/templates/configmaps/<name>` per template ConfigMap. Absent when there
/// are none.
pub const EXTRA_TEMPLATE_DIRS_ENV: &str = "EXTRA_TEMPLATE_DIRS";
/// Environment variable of the scanner: the git sources cloned into
/// `/templates/git/<i>`, in that order, as a JSON list of
/// [`crate::git::GitSource`]; the scanner records the commit of each.
pub const TEMPLATE_SOURCES_ENV: &str = "TEMPLATE_SOURCES";
/// Environment variable of the scanner: templates for a scan that names none.
pub const DEFAULT_TEMPLATES_ENV: &str = "DEFAULT_TEMPLATES";
/// Environment variable of the scanner: severities for a scan that names none.
pub const DEFAULT_SEVERITY_ENV: &str = "DEFAULT_SEVERITY";
/// Environment variable of the scanner: the operator's rate-limit cap.
pub const MAX_RATE_LIMIT_ENV: &str = "MAX_RATE_LIMIT";
/// Environment variable of the scanner: the interactsh server, if any.
pub const INTERACTSH_URL_ENV: &str = "INTERACTSH_URL";
/// Environment variable of the scanner: `json` or `text`, as the operator.
pub const LOG_FORMAT_ENV: &str = "LOG_FORMAT";
/// The target policy, as JSON ([`crate::target_policy::TargetPolicy`]).
pub const TARGET_POLICY_ENV: &str = "TARGET_POLICY";
/// Where the `templateURLs` repositories are cloned, one numbered directory each.
pub const GIT_TEMPLATES_DIR: &str = "/templates/git";
/// Where template ConfigMaps are mounted, one directory per ConfigMap name.
pub const CONFIGMAP_TEMPLATES_DIR: &str = "/templates/configmaps";
/// The writable scratch directory (an emptyDir) and `HOME` of every container.
pub const TMP_DIR: &str = "/tmp";
/// User and group id of every container (distroless `nonroot`).
pub const SCANNER_UID: i64 = 65532;
/// `sizeLimit` of the scanner's `/tmp` (nuclei's home and work files): a
/// scan that fills it is evicted instead of filling the node's disk.
pub const TMP_SIZE_LIMIT: &str = "1Gi";
/// `sizeLimit` of the cloned template repositories.
pub const GIT_TEMPLATES_SIZE_LIMIT: &str = "2Gi";

/// Default name of the scanner ClusterRole (SCANNER_CLUSTER_ROLE) and of
/// its RoleBinding in each namespace with scans.
pub const SCANNER_CLUSTER_ROLE: &str = "nuclei-scanner";

/// Time the Job's active deadline allows beyond the scan timeout, for
/// scheduling, image pulls and writing the report, so the scanner's own timeout
/// fires first and the scan fails with a clear message rather than the Job's
/// bare `DeadlineExceeded`.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(60);
/// Extra deadline margin per git template source (TEMPLATE_REPOSITORIES and
/// `templateURLs`), whose clone runs before the scan and counts against the
/// Job's deadline.
pub const CLONE_DEADLINE_MARGIN: Duration = Duration::from_secs(60);
/// Most `templateURLs` a scan may list (one init container each).
pub const MAX_TEMPLATE_URLS: usize = 16;
/// Most `templateConfigMaps` a scan may list (one volume each).
pub const MAX_TEMPLATE_CONFIG_MAPS: usize = 16;

// Kubernetes limits: label values and DNS-1123 labels (Job names become the
// `job-name` label of their pods).
const MAX_LABEL_VALUE_LEN: usize = 63;
const MAX_NAME_LEN: usize = 63;
const NAME_HASH_LEN: usize = 10;

// Transports git may use for a clone. `ext::` would run a command and `file://`
// would read the pod's file system; git blocks `ext` by default, but say so
// explicitly in case the image's git is configured otherwise.
const GIT_ALLOW_PROTOCOL: &str = "https:http:ssh:git";

mod build;
mod fetch;
#[cfg(test)]
mod fixtures;
mod outcome;
mod params;
mod rbac;
mod run;

pub use build::*;
pub use fetch::*;
pub use outcome::*;
pub use params::*;
pub use rbac::*;
pub use run::*;
