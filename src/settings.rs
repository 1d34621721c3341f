//! Operator-wide defaults, read from flags or environment variables (the Helm
//! chart sets the variables). Each value is checked at start-up and a bad one
//! stops the operator with an error naming the variable, e.g.
//!
//! ```text
//! error: invalid value 'abc' for '--max-concurrent-scans <MAX_CONCURRENT_SCANS>': expected an integer 1..=1000
//! ```
//!
//! Every flag's value name is its environment variable, so the message names the
//! variable whichever of the two the value came from. Checks that involve two
//! settings are in [`Settings::validate`]. [`env_table`] lists every variable
//! with its description and default, for the README's configuration table.
//!
//! These are the lowest layer of configuration: a NucleiScan's spec overrides
//! them, and Ingress/VirtualService annotations override the spec.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, FromArgMatches, ValueEnum};
use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::api::Severity;
use crate::duration::{format_duration, parse_duration};
use crate::names;
use crate::target_policy::{Cidr, TargetPolicy, parse_host_suffix};

/// How scans are executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScannerMode {
    /// Each scan runs as a Kubernetes Job whose pod runs the scanner.
    Pod,
    /// Scans run inside the operator process, under the same dispatcher limits
    /// (the rollback path from the design).
    Sync,
}

/// Which policy-report API findings are also written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportsFormat {
    /// OpenReports when its CRD is installed, else the Policy WG's
    /// PolicyReport when that one is, else none.
    Auto,
    /// Only OpenReports `Report`s (`openreports.io/v1alpha1`).
    Openreports,
    /// Only `PolicyReport`s (`wgpolicyk8s.io/v1alpha2`).
    Wgpolicy,
    /// No reports.
    None,
}

/// Where the operator looks for notifier Secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NotifierScope {
    /// Only in the operator's namespace (notifiers for every scan).
    Operator,
    /// In every namespace (a notifier outside the operator's namespace
    /// hears of its own namespace's scans); needs cluster-wide read access
    /// to Secrets.
    All,
    /// No notifications.
    Off,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for log collectors (the Helm chart's choice).
    Json,
}

impl LogFormat {
    /// The value LOG_FORMAT takes for it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Who may read the data endpoints (`/metrics`, `/queue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HttpAuth {
    /// A bearer token that the API server authenticates (TokenReview) and
    /// authorizes for `get` on the request path (SubjectAccessReview).
    Kubernetes,
    /// No check: anyone who reaches the port.
    None,
}

/// Operator-wide settings. Flatten into a clap command with
/// `#[command(flatten)]`, then call [`Settings::validate`].
#[derive(Clone, Debug, PartialEq, Args)]
pub struct Settings {
    /// Where scans run: `pod` (a Kubernetes Job per scan) or `sync` (inside the
    /// operator process; the rollback path).
    #[arg(
        long,
        env = "SCANNER_MODE",
        value_name = "SCANNER_MODE",
        value_enum,
        ignore_case = true,
        default_value = "pod"
    )]
    pub scanner_mode: ScannerMode,

    /// Default scanner image (a NucleiScan's `scannerConfig.image` or the
    /// `scanner-image` annotation override it). It must be this operator's image,
    /// which carries nuclei and the scanner mode; the Helm chart sets it to the
    /// image the operator itself runs from.
    #[arg(long, env = "SCANNER_IMAGE", value_name = "SCANNER_IMAGE", default_value = "nuclei-operator:latest", value_parser = parse_image)]
    pub scanner_image: String,

    /// More images scanner pods may run, comma-separated: exact references, or
    /// prefixes ending in `*` (`registry.example.com/sec/*`). Empty: only
    /// SCANNER_IMAGE. A `scanner-image` annotation or `scannerConfig.image`
    /// naming another image is refused: scanner pods hold a token that writes
    /// scan results.
    #[arg(long, env = "ALLOWED_SCANNER_IMAGES", value_name = "ALLOWED_SCANNER_IMAGES", value_delimiter = ',', value_parser = parse_image_pattern)]
    pub allowed_scanner_images: Vec<String>,

    /// Default resources of the scanner container, as JSON such as
    /// `{"requests":{"cpu":"100m","memory":"256Mi"},"limits":{"memory":"1Gi"}}`;
    /// a NucleiScan's `scannerConfig.resources` replaces it. Unset means none.
    #[arg(long, env = "SCANNER_RESOURCES", value_name = "SCANNER_RESOURCES", value_parser = parse_resources)]
    pub scanner_resources: Option<ResourceRequirements>,

    /// Default scan timeout, a Go duration; becomes the Job's
    /// `activeDeadlineSeconds` and nuclei's own time limit.
    #[arg(long, env = "SCANNER_TIMEOUT", value_name = "SCANNER_TIMEOUT", default_value = "30m", value_parser = parse_positive_duration)]
    pub scanner_timeout: Duration,

    /// Most scans running at once across the cluster (1 to 1000).
    #[arg(long, env = "MAX_CONCURRENT_SCANS", value_name = "MAX_CONCURRENT_SCANS", default_value = "5", value_parser = parse_max_concurrent_scans)]
    pub max_concurrent_scans: u32,

    /// Seconds a finished scan Job is kept before Kubernetes deletes it
    /// (`ttlSecondsAfterFinished`); a Go duration such as `1h` is accepted too.
    #[arg(long, env = "JOB_TTL_AFTER_FINISHED", value_name = "JOB_TTL_AFTER_FINISHED", default_value = "3600", value_parser = parse_ttl_seconds)]
    pub job_ttl_after_finished: i32,

    /// Pod retries inside one scan Job (`backoffLimit`, 0 to 10). Keep 0: the
    /// operator retries failed scans itself, with backoff, up to MAX_RETRIES;
    /// Job-level retries would multiply those attempts and share one deadline.
    #[arg(long, env = "JOB_BACKOFF_LIMIT", value_name = "JOB_BACKOFF_LIMIT", default_value = "0", value_parser = parse_job_backoff_limit)]
    pub job_backoff_limit: i32,

    /// Directory in the scanner image holding the built-in nuclei templates.
    #[arg(long, env = "NUCLEI_TEMPLATES_PATH", value_name = "NUCLEI_TEMPLATES_PATH", default_value = "/nuclei-templates", value_parser = parse_absolute_path)]
    pub nuclei_templates_path: PathBuf,

    /// Rescan a scan without a schedule when its last result is older than
    /// this Go duration; `0` disables such rescans.
    #[arg(long, env = "RESCAN_AGE", value_name = "RESCAN_AGE", default_value = "168h", value_parser = parse_duration_setting)]
    pub rescan_age: Duration,

    /// First retry delay after a failed scan, a Go duration.
    #[arg(long, env = "BACKOFF_INITIAL", value_name = "BACKOFF_INITIAL", default_value = "10s", value_parser = parse_positive_duration)]
    pub backoff_initial: Duration,

    /// Longest retry delay after repeated failures, a Go duration (at least
    /// BACKOFF_INITIAL).
    #[arg(long, env = "BACKOFF_MAX", value_name = "BACKOFF_MAX", default_value = "10m", value_parser = parse_positive_duration)]
    pub backoff_max: Duration,

    /// Factor the retry delay grows by after each failure (at least 1, at most
    /// 100).
    #[arg(long, env = "BACKOFF_MULTIPLIER", value_name = "BACKOFF_MULTIPLIER", default_value = "2.0", value_parser = parse_backoff_multiplier)]
    pub backoff_multiplier: f64,

    /// Most scan Jobs started per minute across the cluster; `0` means no
    /// limit.
    #[arg(long, env = "JOB_RATE_LIMIT", value_name = "JOB_RATE_LIMIT", default_value = "60", value_parser = parse_job_rate_limit)]
    pub job_rate_limit: u32,

    /// Most reconciles running at once in each controller (sources, scans),
    /// 1 to 1000: bounds the operator's API connections and memory when
    /// thousands of objects change at once, as at start-up.
    #[arg(long, env = "RECONCILE_CONCURRENCY", value_name = "RECONCILE_CONCURRENCY", default_value = "32", value_parser = parse_reconcile_concurrency)]
    pub reconcile_concurrency: u16,

    /// Retries of a failed scan (0 to 100) before it stays Failed until its
    /// spec changes or a rescan is requested.
    #[arg(long, env = "MAX_RETRIES", value_name = "MAX_RETRIES", default_value = "5", value_parser = parse_max_retries)]
    pub max_retries: u32,

    /// Most requests per second a scan may send (nuclei `-rate-limit`): a
    /// scan's `rateLimit` or `rate-limit` annotation above it is cut to it,
    /// a scan without one gets it; `0` leaves nuclei's default (150) and lets
    /// scans ask up to 10000.
    #[arg(long, env = "MAX_RATE_LIMIT", value_name = "MAX_RATE_LIMIT", default_value = "150", value_parser = parse_max_rate_limit)]
    pub max_rate_limit: u32,

    /// Interactsh server (URL) for templates that detect out-of-band
    /// interactions. Unset: interactsh is off (`-ni`), so no scan calls out
    /// to the public interactsh servers; OAST templates then find nothing.
    #[arg(long, env = "INTERACTSH_URL", value_name = "INTERACTSH_URL", value_parser = parse_interactsh_url)]
    pub interactsh_url: Option<String>,

    /// Networks scans may not reach, comma-separated CIDRs: a target whose
    /// host is, or resolves to, an address in one (and in no
    /// TARGET_ALLOW_CIDRS network) is refused. The default covers loopback,
    /// link-local (cloud metadata) and `0.0.0.0/8`.
    #[arg(long, env = "TARGET_DENY_CIDRS", value_name = "TARGET_DENY_CIDRS", value_delimiter = ',', default_value = crate::target_policy::DEFAULT_DENY_CIDRS, value_parser = parse_cidr)]
    pub target_deny_cidrs: Vec<Cidr>,

    /// Exceptions to TARGET_DENY_CIDRS, comma-separated CIDRs
    /// (`0.0.0.0/0,::/0` allows every address).
    #[arg(long, env = "TARGET_ALLOW_CIDRS", value_name = "TARGET_ALLOW_CIDRS", value_delimiter = ',', value_parser = parse_cidr)]
    pub target_allow_cidrs: Vec<Cidr>,

    /// Host-name suffixes scans may not reach, comma-separated, matched on
    /// label boundaries (`cluster.local` matches `web.ns.svc.cluster.local`):
    /// cluster-internal names by default.
    #[arg(long, env = "TARGET_DENY_HOST_SUFFIXES", value_name = "TARGET_DENY_HOST_SUFFIXES", value_delimiter = ',', default_value = crate::target_policy::DEFAULT_DENY_HOST_SUFFIXES, value_parser = parse_host_suffix)]
    pub target_deny_host_suffixes: Vec<String>,

    /// Exceptions to TARGET_DENY_HOST_SUFFIXES, comma-separated suffixes.
    #[arg(long, env = "TARGET_ALLOW_HOST_SUFFIXES", value_name = "TARGET_ALLOW_HOST_SUFFIXES", value_delimiter = ',', value_parser = parse_host_suffix)]
    pub target_allow_host_suffixes: Vec<String>,

    /// IngressClasses whose Ingresses are scanned, comma-separated (the
    /// class is `spec.ingressClassName`, else the `kubernetes.io/ingress.class`
    /// annotation); empty scans every Ingress. An Ingress without a class is
    /// scanned only when the list holds `-`.
    #[arg(long, env = "INGRESS_CLASSES", value_name = "INGRESS_CLASSES", value_delimiter = ',', value_parser = parse_ingress_class)]
    pub ingress_classes: Vec<String>,

    /// Namespaces whose Ingresses and VirtualServices are scanned, as an
    /// equality-based label selector on the Namespace, comma-separated
    /// requirements: `key=value`, `key!=value`, `key` (has the label), `!key`
    /// (has not). Empty: every namespace. A source elsewhere gets no scan.
    #[arg(long, env = "SCAN_NAMESPACE_SELECTOR", value_name = "SCAN_NAMESPACE_SELECTOR", value_delimiter = ',', value_parser = crate::sources::scope::parse_label_requirement)]
    pub scan_namespace_selector: Vec<crate::sources::scope::LabelRequirement>,

    /// Time allowed for the reachability check (a TCP connect to each target)
    /// before a scan, a Go duration; `0` skips the check.
    #[arg(long, env = "TARGET_CHECK_TIMEOUT", value_name = "TARGET_CHECK_TIMEOUT", default_value = "5s", value_parser = parse_duration_setting)]
    pub target_check_timeout: Duration,

    /// How long a scanner pod may take to start (image pull, scheduling)
    /// before its run is ended as Failed, its Job deleted and its slot freed;
    /// a Go duration.
    #[arg(long, env = "POD_START_TIMEOUT", value_name = "POD_START_TIMEOUT", default_value = "5m", value_parser = parse_positive_duration)]
    pub pod_start_timeout: Duration,

    /// Git repositories of templates every scan runs on top of its own, as a
    /// JSON list of `{url, branch, path, secret}` (the Helm value
    /// `templates.repositories`): `branch` may name a branch, a tag or a full
    /// commit id (default: the remote's default branch), `path` a directory
    /// inside the repository (default: all of it), `secret` a Secret in the
    /// operator's namespace with `username` and `password` (or token) for a
    /// private repository. Fetched once into the
    /// template cache (TEMPLATE_REFRESH_INTERVAL); scans record the commits
    /// they used in `status.templateSources`. Empty: only the image's
    /// templates.
    #[arg(long, env = "TEMPLATE_REPOSITORIES", value_name = "TEMPLATE_REPOSITORIES", default_value = "", value_parser = crate::git::parse_repositories)]
    pub template_repositories: crate::git::TemplateRepositories,

    /// How often TEMPLATE_REPOSITORIES are fetched again into the template
    /// cache (ConfigMaps in the operator's namespace that scanner pods read),
    /// a Go duration; `0` turns the cache off: each scanner pod clones them.
    #[arg(long, env = "TEMPLATE_REFRESH_INTERVAL", value_name = "TEMPLATE_REFRESH_INTERVAL", default_value = "1h", value_parser = parse_duration_setting)]
    pub template_refresh_interval: Duration,

    /// Image of the init containers that clone TEMPLATE_REPOSITORIES and
    /// `templateURLs` (needs `git`, and `sh` for TEMPLATE_REPOSITORIES); pin
    /// a version or digest in production.
    #[arg(long, env = "GIT_IMAGE", value_name = "GIT_IMAGE", default_value = "alpine/git:latest", value_parser = parse_image)]
    pub git_image: String,

    /// Log format of the operator and its scanner pods: `text` (coloured
    /// only on a terminal) or `json` (the Helm chart sets `json`). The level
    /// comes from RUST_LOG.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        value_enum,
        ignore_case = true,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Policy reports of each scan's findings, for Kyverno's Policy Reporter
    /// and the tools it feeds: `auto` (OpenReports `Report`s when that CRD is
    /// installed, else `wgpolicyk8s.io` `PolicyReport`s when that one is),
    /// `openreports`, `wgpolicy` or `none`. The CRD is found at run time.
    #[arg(
        long,
        env = "REPORTS_FORMAT",
        value_name = "REPORTS_FORMAT",
        value_enum,
        ignore_case = true,
        default_value = "auto"
    )]
    pub reports_format: ReportsFormat,

    /// Address of the data endpoints /metrics, /queue and
    /// /queue/{namespace}/{name}; HTTP_AUTH guards them.
    #[arg(long, env = "HTTP_ADDR", value_name = "HTTP_ADDR", default_value = "0.0.0.0:8080", value_parser = parse_socket_addr)]
    pub http_addr: SocketAddr,

    /// Address of the probe endpoints /healthz and /readyz, which answer
    /// anyone (the kubelet probes them) and tell nothing else; another
    /// port than HTTP_ADDR.
    #[arg(long, env = "HEALTH_ADDR", value_name = "HEALTH_ADDR", default_value = "0.0.0.0:8081", value_parser = parse_socket_addr)]
    pub health_addr: SocketAddr,

    /// Who may read the data endpoints: `kubernetes` (a bearer token the API
    /// server authenticates, by TokenReview, and authorizes to `get` the
    /// path, by SubjectAccessReview; the chart's `<release>-data-reader`
    /// ClusterRole grants it) or `none` (anyone who reaches the port).
    #[arg(
        long,
        env = "HTTP_AUTH",
        value_name = "HTTP_AUTH",
        value_enum,
        ignore_case = true,
        default_value = "kubernetes"
    )]
    pub http_auth: HttpAuth,

    /// Elect one active replica through a Lease (`true` or `false`); only the
    /// leader starts scans.
    #[arg(long, env = "LEADER_ELECTION", value_name = "LEADER_ELECTION", default_value = "true", action = ArgAction::Set, value_parser = parse_bool)]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", value_name = "LEASE_NAME", default_value = "nuclei-operator-leader", value_parser = parse_dns_subdomain)]
    pub lease_name: String,

    /// Namespace of the operator pod (Helm sets it from the downward API).
    #[arg(long, env = "POD_NAMESPACE", value_name = "POD_NAMESPACE", value_parser = parse_dns_label)]
    pub pod_namespace: Option<String>,

    /// Name of the operator pod, the leader-election identity (Helm sets it
    /// from the downward API; the host name is used when unset).
    #[arg(long, env = "POD_NAME", value_name = "POD_NAME", value_parser = parse_dns_subdomain)]
    pub pod_name: Option<String>,

    /// Namespace for the operator's own objects such as the Lease; defaults
    /// to POD_NAMESPACE, then `default`.
    #[arg(long, env = "OPERATOR_NAMESPACE", value_name = "OPERATOR_NAMESPACE", value_parser = parse_dns_label)]
    pub operator_namespace: Option<String>,

    /// ServiceAccount scanner pods run as; the operator ensures it, with a
    /// RoleBinding to SCANNER_CLUSTER_ROLE, in each namespace that has scans.
    #[arg(long, env = "SCANNER_SERVICE_ACCOUNT", value_name = "SCANNER_SERVICE_ACCOUNT", default_value = "nuclei-scanner", value_parser = parse_dns_subdomain)]
    pub scanner_service_account: String,

    /// ClusterRole granting scanner pods what they need (read their scan,
    /// write its status); the Helm chart ships it as `<release>-scanner`. The
    /// operator binds it in each namespace with scans and creates no Roles.
    #[arg(long, env = "SCANNER_CLUSTER_ROLE", value_name = "SCANNER_CLUSTER_ROLE", default_value = "nuclei-scanner", value_parser = parse_dns_subdomain)]
    pub scanner_cluster_role: String,

    /// Comma-separated templates or template directories used when neither
    /// the NucleiScan nor an annotation names any; empty means nuclei's own
    /// default set.
    #[arg(long, env = "DEFAULT_TEMPLATES", value_name = "DEFAULT_TEMPLATES", value_delimiter = ',', value_parser = parse_list_item)]
    pub default_templates: Vec<String>,

    /// Comma-separated severities (info, low, medium, high, critical,
    /// unknown) used when neither the NucleiScan nor an annotation names any;
    /// empty means all.
    #[arg(long, env = "DEFAULT_SEVERITY", value_name = "DEFAULT_SEVERITY", value_delimiter = ',', value_parser = parse_severity)]
    pub default_severity: Vec<Severity>,

    /// The least severe new finding that raises a `NewFindings` Event on
    /// the scan and its source (info, low, medium, high, critical).
    #[arg(long, env = "NEW_FINDINGS_SEVERITY", value_name = "NEW_FINDINGS_SEVERITY", default_value = "high", value_parser = parse_severity)]
    pub new_findings_severity: Severity,

    /// Where notifier Secrets (labelled `nuclei.homelab.mortenolsen.pro/notifier`)
    /// are read from: `operator` (the operator's namespace; they hear of
    /// every scan), `all` (also each namespace's own, for its scans; needs
    /// read access to Secrets cluster-wide) or `off`.
    #[arg(
        long,
        env = "NOTIFIERS",
        value_name = "NOTIFIERS",
        value_enum,
        ignore_case = true,
        default_value = "operator"
    )]
    pub notifiers: NotifierScope,
}

/// A setting that is wrong in relation to another one, found by
/// [`Settings::validate`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable}: {message}")]
pub struct SettingsError {
    /// The environment variable to fix.
    pub variable: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl Settings {
    /// Parses settings from command-line flags only, ignoring the environment:
    /// for tests, and for tools that must not pick up an operator's variables.
    /// `args` starts with the program name.
    pub fn from_flags<I, T>(args: I) -> Result<Settings, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let command = Settings::augment_args(clap::Command::new("nuclei-operator"))
            .mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(args)?;
        let settings = Settings::from_arg_matches(&matches)?;
        settings.validate().map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        })?;
        Ok(settings)
    }

    /// Checks the rules that involve more than one setting; each value on its
    /// own was already checked while parsing. Call it once after parsing.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self
            .template_repositories
            .secrets
            .iter()
            .any(Option::is_some)
            && self.template_refresh_interval.is_zero()
        {
            return Err(SettingsError {
                variable: "TEMPLATE_REFRESH_INTERVAL",
                message: "0 turns the template cache off, but a TEMPLATE_REPOSITORIES entry names a Secret, which only the cache's fetch Job reads".into(),
            });
        }
        if self.backoff_max < self.backoff_initial {
            return Err(SettingsError {
                variable: "BACKOFF_MAX",
                message: format!(
                    "{} is shorter than BACKOFF_INITIAL ({})",
                    format_duration(self.backoff_max),
                    format_duration(self.backoff_initial)
                ),
            });
        }
        if shares_a_port(self.health_addr, self.http_addr) {
            return Err(SettingsError {
                variable: "HEALTH_ADDR",
                message: format!(
                    "{} takes the port of HTTP_ADDR ({}): the probes and the data endpoints need a port each",
                    self.health_addr, self.http_addr
                ),
            });
        }
        Ok(())
    }

    /// Which images scanner pods may run.
    pub fn image_policy(&self) -> ImagePolicy {
        ImagePolicy {
            default: self.scanner_image.clone(),
            allowed: self.allowed_scanner_images.clone(),
        }
    }

    /// RESCAN_AGE as an option: `None` when rescans by age are disabled.
    pub fn effective_rescan_age(&self) -> Option<Duration> {
        (!self.rescan_age.is_zero()).then_some(self.rescan_age)
    }

    /// JOB_RATE_LIMIT as jobs per minute: `None` when unlimited.
    pub fn job_rate_per_minute(&self) -> Option<NonZeroU32> {
        NonZeroU32::new(self.job_rate_limit)
    }

    /// Namespace of the leader-election Lease: OPERATOR_NAMESPACE, else
    /// POD_NAMESPACE, else `default`.
    pub fn lease_namespace(&self) -> &str {
        self.operator_namespace
            .as_deref()
            .or(self.pod_namespace.as_deref())
            .unwrap_or("default")
    }

    /// Whether TEMPLATE_REPOSITORIES go through the template cache: there
    /// are some, TEMPLATE_REFRESH_INTERVAL is not `0`, and scans run in pods.
    pub fn template_cache_enabled(&self) -> bool {
        !self.template_repositories.sources.is_empty()
            && !self.template_refresh_interval.is_zero()
            && self.scanner_mode == ScannerMode::Pod
    }
}

impl Default for Settings {
    /// Every setting at its documented default, whatever the environment says.
    fn default() -> Self {
        Settings::from_flags(["nuclei-operator"]).expect("the defaults are valid")
    }
}

/// Whether two listen addresses would take the same port: the same port on
/// the same IP, or with either on all interfaces (port 0 picks a free one).
fn shares_a_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Makes `cmd` (and its subcommands) treat an environment variable that is set
/// but empty as unset, so the setting takes its default, as the Go operator
/// did; clap on its own would parse the empty string and reject it. Helm
/// charts often render an empty list as `""`. Apply it to the operator's
/// command before parsing:
/// `Cli::from_arg_matches(&treat_empty_env_as_unset(Cli::command()).get_matches())`.
pub fn treat_empty_env_as_unset(cmd: clap::Command) -> clap::Command {
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    let mut cmd = cmd.mut_args(|arg| {
        let empty = arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|value| value.is_empty());
        if empty { arg.env(None) } else { arg }
    });
    for name in subcommands {
        cmd = cmd.mut_subcommand(name, treat_empty_env_as_unset);
    }
    cmd
}

/// Which images scanner pods may run: SCANNER_IMAGE, and the entries of
/// ALLOWED_SCANNER_IMAGES (exact, or prefixes ending in `*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImagePolicy {
    /// SCANNER_IMAGE, always allowed.
    pub default: String,
    /// ALLOWED_SCANNER_IMAGES.
    pub allowed: Vec<String>,
}

impl ImagePolicy {
    /// Whether a scanner pod may run `image`.
    pub fn allows(&self, image: &str) -> bool {
        image == self.default
            || self
                .allowed
                .iter()
                .any(|entry| match entry.strip_suffix('*') {
                    Some(prefix) => image.starts_with(prefix),
                    None => image == entry,
                })
    }

    /// Why `image` is refused, naming the setting that would allow it.
    pub fn refusal(&self, image: &str) -> String {
        let allowed = if self.allowed.is_empty() {
            String::new()
        } else {
            format!(" and {}", self.allowed.join(", "))
        };
        format!(
            "scanner image {image:?} is not allowed: ALLOWED_SCANNER_IMAGES permits only the operator's scanner image ({}){allowed}",
            self.default
        )
    }
}

impl Settings {
    /// TARGET_DENY_CIDRS, TARGET_ALLOW_CIDRS, TARGET_DENY_HOST_SUFFIXES and
    /// TARGET_ALLOW_HOST_SUFFIXES as one policy.
    pub fn target_policy(&self) -> TargetPolicy {
        TargetPolicy {
            deny_cidrs: self.target_deny_cidrs.clone(),
            allow_cidrs: self.target_allow_cidrs.clone(),
            deny_host_suffixes: self.target_deny_host_suffixes.clone(),
            allow_host_suffixes: self.target_allow_host_suffixes.clone(),
        }
    }
}

/// The INGRESS_CLASSES entry for Ingresses without a class.
pub const NO_INGRESS_CLASS: &str = "-";

/// One row of the configuration table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingDoc {
    /// Environment variable, e.g. `MAX_CONCURRENT_SCANS`.
    pub env: String,
    /// Equivalent flag, e.g. `--max-concurrent-scans`.
    pub flag: String,
    /// First paragraph of the setting's documentation.
    pub description: String,
    /// Default value as written in the environment; empty when unset.
    pub default: String,
}

/// Every setting, in declaration order, read from the clap definitions so it
/// cannot drift from the code.
pub fn env_table() -> Vec<SettingDoc> {
    let command = Settings::augment_args(clap::Command::new("nuclei-operator"));
    command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            Some(SettingDoc {
                env,
                flag: format!("--{}", arg.get_long().unwrap_or_default()),
                description: arg
                    .get_help()
                    .map(|h| {
                        h.to_string()
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
                default: arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(","),
            })
        })
        .collect()
}

/// [`env_table`] as a Markdown table (Variable, Default, Description), the
/// form the README uses.
pub fn env_table_markdown() -> String {
    let mut out = String::from("| Variable | Default | Description |\n|---|---|---|\n");
    for row in env_table() {
        let default = if row.default.is_empty() {
            "—".to_owned()
        } else {
            format!("`{}`", row.default)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            row.env,
            default,
            row.description.replace('|', "\\|")
        ));
    }
    out
}

// Value parsers. clap prefixes their message with the value and the flag (whose
// value name is the variable), so messages say only what was expected.

fn parse_int_in<T>(s: &str, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let expected = || format!("expected an integer {}..={}", range.start(), range.end());
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    match t.parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(expected()),
    }
}

fn parse_max_concurrent_scans(s: &str) -> Result<u32, String> {
    parse_int_in(s, 1..=1000)
}

fn parse_reconcile_concurrency(s: &str) -> Result<u16, String> {
    parse_int_in(s, 1..=1000)
}

fn parse_job_backoff_limit(s: &str) -> Result<i32, String> {
    parse_int_in(s, 0..=10)
}

fn parse_job_rate_limit(s: &str) -> Result<u32, String> {
    parse_int_in(s, 0..=100_000).map_err(|e| format!("{e} jobs per minute (0 = unlimited)"))
}

fn parse_max_rate_limit(s: &str) -> Result<u32, String> {
    parse_int_in(s, 0..=10_000).map_err(|e| format!("{e} requests per second (0 = no cap)"))
}

fn parse_interactsh_url(s: &str) -> Result<String, String> {
    let t = s.trim();
    let ok = (t.starts_with("https://") || t.starts_with("http://"))
        && t.len() <= 2048
        && !t.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(t.to_owned())
    } else {
        Err("expected an http(s) URL of your own interactsh server".to_owned())
    }
}

fn parse_max_retries(s: &str) -> Result<u32, String> {
    parse_int_in(s, 0..=100)
}

fn parse_ttl_seconds(s: &str) -> Result<i32, String> {
    let t = s.trim();
    let seconds = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>().ok()
    } else {
        parse_duration(t).ok().map(|d| d.as_secs())
    };
    seconds.and_then(|n| i32::try_from(n).ok()).ok_or_else(|| {
        format!(
            "expected whole seconds 0..={} or a Go duration such as \"1h\"",
            i32::MAX
        )
    })
}

fn parse_duration_setting(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("expected a duration greater than zero".to_owned());
    }
    Ok(d)
}

fn parse_backoff_multiplier(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(m) if m.is_finite() && (1.0..=100.0).contains(&m) => Ok(m),
        _ => Err("expected a number from 1 to 100, such as 2.0".to_owned()),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected an IP address and port such as 0.0.0.0:8080".to_owned())
}

fn parse_absolute_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s.trim());
    if path.is_absolute() {
        Ok(path)
    } else {
        Err("expected an absolute path".to_owned())
    }
}

fn parse_resources(s: &str) -> Result<ResourceRequirements, String> {
    const EXAMPLE: &str = r#"such as {"requests":{"cpu":"100m"},"limits":{"memory":"1Gi"}}"#;
    let mut value: serde_json::Value =
        serde_json::from_str(s).map_err(|e| format!("expected JSON {EXAMPLE}: {e}"))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| format!("expected a JSON object {EXAMPLE}"))?;
    for (key, quantities) in obj {
        if key != "requests" && key != "limits" {
            return Err(format!("unknown key {key:?}: expected requests and limits"));
        }
        let quantities = quantities
            .as_object_mut()
            .ok_or_else(|| format!("{key}: expected an object of quantities {EXAMPLE}"))?;
        for (name, q) in quantities.iter_mut() {
            // `cpu: 1` in YAML arrives as a number.
            if let Some(n) = q.as_number() {
                *q = serde_json::Value::String(n.to_string());
            }
            let q = q
                .as_str()
                .ok_or_else(|| format!("{key}.{name}: expected a quantity such as \"500m\""))?;
            if !is_quantity(q) {
                return Err(format!(
                    "{key}.{name}: {q:?} is not a quantity (such as 500m, 2, 256Mi, 1G)"
                ));
            }
        }
    }
    serde_json::from_value(value).map_err(|e| format!("expected {EXAMPLE}: {e}"))
}

/// A Kubernetes quantity: a decimal number, then a binary (Ki..Ei) or
/// decimal (n, u, m, k, M..E) suffix or an exponent.
fn is_quantity(s: &str) -> bool {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let exponent = |e: &str| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    };
    number_ok
        && (matches!(
            suffix,
            "" | "n"
                | "u"
                | "m"
                | "k"
                | "M"
                | "G"
                | "T"
                | "P"
                | "E"
                | "Ki"
                | "Mi"
                | "Gi"
                | "Ti"
                | "Pi"
                | "Ei"
        ) || suffix.strip_prefix(['e', 'E']).is_some_and(exponent))
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

fn parse_ingress_class(s: &str) -> Result<String, String> {
    if s == NO_INGRESS_CLASS {
        return Ok(s.to_owned());
    }
    parse_dns_subdomain(s)
}

fn parse_image_pattern(s: &str) -> Result<String, String> {
    let t = s.trim();
    let image = t.strip_suffix('*').unwrap_or(t);
    if image.contains('*') {
        return Err("a `*` may only end an entry (a prefix such as registry/repo:*)".to_owned());
    }
    if image.is_empty() {
        return Err(
            "`*` alone would allow every image; list the registries or repositories to allow"
                .to_owned(),
        );
    }
    parse_image(image).map(|_| t.to_owned())
}

fn parse_image(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected an image reference such as registry/name:tag".to_owned());
    }
    Ok(t.to_owned())
}

fn parse_dns_label(s: &str) -> Result<String, String> {
    let t = s.trim();
    if names::is_dns_label(t) {
        Ok(t.to_owned())
    } else {
        Err("expected a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit".to_owned())
    }
}

fn parse_dns_subdomain(s: &str) -> Result<String, String> {
    let t = s.trim();
    if names::is_dns_subdomain(t) {
        Ok(t.to_owned())
    } else {
        Err("expected a DNS subdomain name: lowercase letters, digits, '-' and '.', at most 253 characters".to_owned())
    }
}

fn parse_list_item(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("expected a comma-separated list without empty items".to_owned());
    }
    Ok(t.to_owned())
}

/// A severity name (info, low, medium, high, critical, unknown).
pub fn parse_severity(s: &str) -> Result<Severity, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// A stand-in for the operator's command line.
    #[derive(Debug, Parser)]
    #[command(name = "nuclei-operator")]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    /// A stand-in for a command line with the settings in a subcommand.
    #[derive(Debug, Parser)]
    #[command(name = "nuclei-operator")]
    enum Top {
        Controller(Cli),
    }

    fn flags(args: &[&str]) -> Result<Settings, String> {
        Settings::from_flags(std::iter::once("nuclei-operator").chain(args.iter().copied()))
            .map_err(|e| e.render().to_string())
    }

    fn rejected(args: &[&str]) -> String {
        match flags(args) {
            Ok(s) => panic!("{args:?} should be rejected, parsed as {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let s = Settings::default();
        assert_eq!(s.scanner_mode, ScannerMode::Pod);
        assert_eq!(s.new_findings_severity, Severity::High);
        assert_eq!(s.notifiers, NotifierScope::Operator);
        assert_eq!(s.scanner_image, "nuclei-operator:latest");
        assert_eq!(s.scanner_timeout, Duration::from_secs(30 * 60));
        assert_eq!(s.max_concurrent_scans, 5);
        assert_eq!(s.job_ttl_after_finished, 3600);
        assert_eq!(s.job_backoff_limit, 0);
        assert_eq!(s.nuclei_templates_path, PathBuf::from("/nuclei-templates"));
        assert_eq!(s.rescan_age, Duration::from_secs(168 * 3600));
        assert_eq!(
            s.effective_rescan_age(),
            Some(Duration::from_secs(168 * 3600))
        );
        assert_eq!(s.backoff_initial, Duration::from_secs(10));
        assert_eq!(s.backoff_max, Duration::from_secs(600));
        assert_eq!(s.backoff_multiplier, 2.0);
        assert_eq!(s.job_rate_limit, 60);
        assert_eq!(s.job_rate_per_minute(), NonZeroU32::new(60));
        assert_eq!(s.max_retries, 5);
        assert_eq!(s.target_check_timeout, Duration::from_secs(5));
        assert_eq!(s.git_image, "alpine/git:latest");
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.reports_format, ReportsFormat::Auto);
        assert_eq!(s.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.health_addr, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(s.http_auth, HttpAuth::Kubernetes);
        assert!(s.leader_election);
        assert_eq!(s.lease_name, "nuclei-operator-leader");
        assert_eq!(s.pod_namespace, None);
        assert_eq!(s.pod_name, None);
        assert_eq!(s.operator_namespace, None);
        assert_eq!(s.lease_namespace(), "default");
        assert_eq!(s.scanner_service_account, "nuclei-scanner");
        assert!(s.default_templates.is_empty());
        assert!(s.default_severity.is_empty());
    }

    #[test]
    fn every_flag_can_be_set_on_the_command_line() {
        let s = flags(&[
            "--scanner-mode=SYNC",
            "--scanner-image=registry.example/nuclei-operator:1.2.3",
            "--scanner-timeout=45m",
            "--max-concurrent-scans=3",
            "--job-ttl-after-finished=1h",
            "--job-backoff-limit=2",
            "--nuclei-templates-path=/templates",
            "--rescan-age=0",
            "--backoff-initial=1s",
            "--backoff-max=1m",
            "--backoff-multiplier=1.5",
            "--job-rate-limit=0",
            "--max-retries=0",
            "--target-check-timeout=500ms",
            "--git-image=alpine/git:v2.45.2",
            "--log-format=json",
            "--http-addr=127.0.0.1:9090",
            "--health-addr=127.0.0.1:9091",
            "--http-auth=None",
            "--leader-election=false",
            "--lease-name=nuclei",
            "--pod-namespace=nuclei-system",
            "--pod-name=nuclei-operator-7d9f-abcde",
            "--operator-namespace=ops",
            "--scanner-service-account=scanner",
            "--default-templates=http/cves/, http/exposures/",
            "--default-severity=High,critical",
        ])
        .unwrap();
        assert_eq!(s.scanner_mode, ScannerMode::Sync);
        assert_eq!(s.scanner_image, "registry.example/nuclei-operator:1.2.3");
        assert_eq!(s.scanner_timeout, Duration::from_secs(45 * 60));
        assert_eq!(s.max_concurrent_scans, 3);
        assert_eq!(s.job_ttl_after_finished, 3600);
        assert_eq!(s.job_backoff_limit, 2);
        assert_eq!(s.nuclei_templates_path, PathBuf::from("/templates"));
        assert_eq!(s.effective_rescan_age(), None);
        assert_eq!(s.backoff_initial, Duration::from_secs(1));
        assert_eq!(s.backoff_max, Duration::from_secs(60));
        assert_eq!(s.backoff_multiplier, 1.5);
        assert_eq!(s.job_rate_per_minute(), None);
        assert_eq!(s.max_retries, 0);
        assert_eq!(s.target_check_timeout, Duration::from_millis(500));
        assert_eq!(s.git_image, "alpine/git:v2.45.2");
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.http_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(s.health_addr, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(s.http_auth, HttpAuth::None);
        assert!(!s.leader_election);
        assert_eq!(s.lease_name, "nuclei");
        assert_eq!(s.pod_name.as_deref(), Some("nuclei-operator-7d9f-abcde"));
        assert_eq!(s.lease_namespace(), "ops");
        assert_eq!(s.scanner_service_account, "scanner");
        assert_eq!(s.default_templates, ["http/cves/", "http/exposures/"]);
        assert_eq!(s.default_severity, [Severity::High, Severity::Critical]);
    }

    #[test]
    fn the_lease_namespace_falls_back_to_the_pod_namespace() {
        let s = flags(&["--pod-namespace=nuclei-system"]).unwrap();
        assert_eq!(s.lease_namespace(), "nuclei-system");
    }

    #[test]
    fn a_bad_value_is_reported_with_the_variable_name_and_what_was_expected() {
        let e = rejected(&["--max-concurrent-scans", "abc"]);
        assert!(e.contains("invalid value 'abc'"), "{e}");
        assert!(e.contains("MAX_CONCURRENT_SCANS"), "{e}");
        assert!(e.contains("expected an integer 1..=1000"), "{e}");
    }

    #[test]
    fn each_setting_rejects_values_outside_its_range() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "--scanner-mode=job",
                "SCANNER_MODE",
                "possible values: pod, sync",
            ),
            ("--scanner-image=", "SCANNER_IMAGE", "image reference"),
            ("--scanner-image=a b", "SCANNER_IMAGE", "image reference"),
            (
                "--scanner-timeout=0",
                "SCANNER_TIMEOUT",
                "greater than zero",
            ),
            ("--scanner-timeout=30", "SCANNER_TIMEOUT", "missing unit"),
            (
                "--max-concurrent-scans=0",
                "MAX_CONCURRENT_SCANS",
                "1..=1000",
            ),
            (
                "--max-concurrent-scans=1001",
                "MAX_CONCURRENT_SCANS",
                "1..=1000",
            ),
            (
                "--max-concurrent-scans=-1",
                "MAX_CONCURRENT_SCANS",
                "1..=1000",
            ),
            (
                "--job-ttl-after-finished=-5",
                "JOB_TTL_AFTER_FINISHED",
                "whole seconds",
            ),
            (
                "--job-ttl-after-finished=99999999999",
                "JOB_TTL_AFTER_FINISHED",
                "whole seconds",
            ),
            ("--job-backoff-limit=11", "JOB_BACKOFF_LIMIT", "0..=10"),
            (
                "--nuclei-templates-path=templates",
                "NUCLEI_TEMPLATES_PATH",
                "absolute path",
            ),
            ("--rescan-age=7d", "RESCAN_AGE", "24h"),
            (
                "--backoff-initial=0s",
                "BACKOFF_INITIAL",
                "greater than zero",
            ),
            ("--backoff-max=fast", "BACKOFF_MAX", "expected a number"),
            (
                "--backoff-multiplier=0.5",
                "BACKOFF_MULTIPLIER",
                "from 1 to 100",
            ),
            (
                "--backoff-multiplier=NaN",
                "BACKOFF_MULTIPLIER",
                "from 1 to 100",
            ),
            (
                "--backoff-multiplier=inf",
                "BACKOFF_MULTIPLIER",
                "from 1 to 100",
            ),
            ("--job-rate-limit=lots", "JOB_RATE_LIMIT", "0 = unlimited"),
            ("--max-retries=101", "MAX_RETRIES", "0..=100"),
            (
                "--target-check-timeout=-1s",
                "TARGET_CHECK_TIMEOUT",
                "negative",
            ),
            ("--git-image= ", "GIT_IMAGE", "image reference"),
            (
                "--log-format=xml",
                "LOG_FORMAT",
                "possible values: text, json",
            ),
            ("--http-addr=8080", "HTTP_ADDR", "IP address and port"),
            ("--health-addr=:8081", "HEALTH_ADDR", "IP address and port"),
            (
                "--http-auth=token",
                "HTTP_AUTH",
                "possible values: kubernetes, none",
            ),
            (
                "--leader-election=maybe",
                "LEADER_ELECTION",
                "true or false",
            ),
            ("--lease-name=Leader", "LEASE_NAME", "DNS subdomain"),
            ("--pod-namespace=my_ns", "POD_NAMESPACE", "DNS label"),
            ("--pod-name=", "POD_NAME", "DNS subdomain"),
            (
                "--operator-namespace=a.b",
                "OPERATOR_NAMESPACE",
                "DNS label",
            ),
            (
                "--scanner-service-account=-x",
                "SCANNER_SERVICE_ACCOUNT",
                "DNS subdomain",
            ),
            (
                "--default-templates=a,,b",
                "DEFAULT_TEMPLATES",
                "without empty items",
            ),
            (
                "--default-severity=high,severe",
                "DEFAULT_SEVERITY",
                "unknown severity \"severe\"",
            ),
        ];
        for (arg, variable, expected) in cases {
            let e = rejected(&[arg]);
            assert!(e.contains(variable), "{arg}: {e}");
            assert!(e.contains(expected), "{arg}: {e}");
        }
    }

    #[test]
    fn scanner_resources_are_json_requests_and_limits_with_valid_quantities() {
        let s = flags(&[r#"--scanner-resources={"requests":{"cpu":"100m","memory":"256Mi"},"limits":{"memory":"1.5Gi"}}"#]).unwrap();
        let r = s.scanner_resources.unwrap();
        assert_eq!(r.requests.unwrap()["cpu"].0, "100m");
        assert_eq!(r.limits.unwrap()["memory"].0, "1.5Gi");
        let numeric =
            flags(&[r#"--scanner-resources={"requests":{"cpu":1,"memory":0.5}}"#]).unwrap();
        let requests = numeric.scanner_resources.unwrap().requests.unwrap();
        assert_eq!(
            (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
            ("1", "0.5")
        );
        assert_eq!(flags(&[]).unwrap().scanner_resources, None);
        for (bad, says) in [
            ("cpu=1", "expected JSON"),
            ("[]", "expected a JSON object"),
            (r#"{"request":{"cpu":"1"}}"#, r#"unknown key "request""#),
            (
                r#"{"limits":{"cpu":true}}"#,
                "limits.cpu: expected a quantity",
            ),
            (
                r#"{"limits":{"cpu":-1}}"#,
                r#"limits.cpu: "-1" is not a quantity"#,
            ),
            (
                r#"{"limits":{"memory":"1GB"}}"#,
                r#"limits.memory: "1GB" is not a quantity"#,
            ),
            (r#"{"limits":{"memory":"Gi"}}"#, r#""Gi" is not a quantity"#),
        ] {
            let e = rejected(&[&format!("--scanner-resources={bad}")]);
            assert!(
                e.contains("SCANNER_RESOURCES") && e.contains(says),
                "{bad}: {e}"
            );
        }
        for ok in [
            "1",
            "0.5",
            "500m",
            "2e3",
            "1E-2",
            "128974848",
            "129e6",
            "123Mi",
            "1k",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", ".", "1..2", "m", "1mi", "1e", "-1", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn a_backoff_max_below_the_initial_delay_names_both_variables() {
        let e = rejected(&["--backoff-initial=1m", "--backoff-max=30s"]);
        assert!(
            e.contains("invalid BACKOFF_MAX: 30s is shorter than BACKOFF_INITIAL (1m0s)"),
            "{e}"
        );
    }

    #[test]
    fn a_private_repository_needs_the_template_cache_that_reads_its_secret() {
        let private = r#"--template-repositories=[{"url":"https://h/p.git","secret":"creds"}]"#;
        let e = rejected(&[private, "--template-refresh-interval=0"]);
        assert!(
            e.contains("invalid TEMPLATE_REFRESH_INTERVAL") && e.contains("Secret"),
            "{e}"
        );
        let s = Settings::from_flags(["nuclei-operator", private]).unwrap();
        assert!(s.template_cache_enabled());
        assert_eq!(s.template_repositories.secrets, [Some("creds".to_owned())]);
    }

    #[test]
    fn the_probes_and_the_data_endpoints_cannot_share_a_port() {
        for (health, http) in [
            ("0.0.0.0:8080", "0.0.0.0:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("[::]:9000", "127.0.0.1:9000"),
        ] {
            let e = rejected(&[
                &format!("--health-addr={health}"),
                &format!("--http-addr={http}"),
            ]);
            assert!(
                e.contains("invalid HEALTH_ADDR") && e.contains("port of HTTP_ADDR"),
                "{health} {http}: {e}"
            );
        }
        for (health, http) in [
            ("0.0.0.0:8081", "0.0.0.0:8080"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            flags(&[
                &format!("--health-addr={health}"),
                &format!("--http-addr={http}"),
            ])
            .unwrap_or_else(|e| panic!("{health} {http}: {e}"));
        }
    }

    #[test]
    fn every_flag_is_named_after_its_environment_variable() {
        // clap's error quotes the flag with its value name; making that the
        // variable's name is what lets an error name the variable.
        let command = Cli::command();
        let mut count = 0;
        for arg in command
            .get_arguments()
            .filter(|a| a.get_long() != Some("help"))
        {
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("{} has no env", arg.get_id()));
            let value_names = arg.get_value_names().unwrap_or_default();
            assert_eq!(value_names.len(), 1, "{}", arg.get_id());
            assert_eq!(value_names[0].as_str(), env.to_str().unwrap());
            assert_eq!(
                arg.get_long().unwrap(),
                env.to_str().unwrap().to_ascii_lowercase().replace('_', "-")
            );
            count += 1;
        }
        assert_eq!(count, 45);
    }

    #[test]
    fn the_env_table_documents_every_variable_with_its_default() {
        let table = env_table();
        assert_eq!(table.len(), 45);
        let row = |env: &str| table.iter().find(|r| r.env == env).unwrap().clone();
        assert_eq!(row("MAX_CONCURRENT_SCANS").default, "5");
        assert_eq!(row("MAX_CONCURRENT_SCANS").flag, "--max-concurrent-scans");
        assert_eq!(row("RESCAN_AGE").default, "168h");
        assert_eq!(row("SCANNER_TIMEOUT").default, "30m");
        assert_eq!(row("POD_NAME").default, "");
        assert!(row("RESCAN_AGE").description.contains("`0` disables"));
        for r in &table {
            assert!(!r.description.is_empty(), "{} is undocumented", r.env);
            assert!(!r.description.contains('\n'), "{}", r.env);
        }
        let markdown = env_table_markdown();
        assert!(markdown.contains("| `JOB_TTL_AFTER_FINISHED` | `3600` | Seconds a finished"));
        assert!(markdown.contains("| `POD_NAME` | — |"));
    }

    #[test]
    fn every_setting_has_a_row_in_the_readme_with_its_default() {
        let readme = include_str!("../README.md");
        for row in env_table() {
            let default = if row.default.is_empty() {
                "—".to_owned()
            } else {
                format!("`{}`", row.default)
            };
            let start = format!("| `{}` | {default} |", row.env);
            assert!(readme.contains(&start), "README: no row starting {start}");
        }
    }

    #[test]
    fn the_scanner_image_policy_allows_the_default_exact_entries_and_prefixes_only() {
        let policy = ImagePolicy {
            default: "ghcr.io/acme/nuclei-operator:1.0".into(),
            allowed: vec![
                "registry.example.com/sec/*".into(),
                "mirror/nuclei:2".into(),
            ],
        };
        assert!(policy.allows("ghcr.io/acme/nuclei-operator:1.0"));
        assert!(policy.allows("registry.example.com/sec/scanner:3"));
        assert!(policy.allows("mirror/nuclei:2"));
        assert!(!policy.allows("mirror/nuclei:3"));
        assert!(!policy.allows("ghcr.io/acme/nuclei-operator:1.1"));
        assert!(!policy.allows("registry.example.com/other/x"));
        let why = policy.refusal("evil/image");
        assert!(
            why.contains("ALLOWED_SCANNER_IMAGES") && why.contains("evil/image"),
            "{why}"
        );
        assert!(ImagePolicy::default().refusal("x").contains("permits only"));
        assert_eq!(
            parse_image_pattern(" registry/repo:* "),
            Ok("registry/repo:*".into())
        );
        assert!(parse_image_pattern("*").is_err());
        assert!(parse_image_pattern("reg*istry/x").is_err());
    }

    #[test]
    fn value_parsers_accept_surrounding_space_and_mixed_case() {
        assert_eq!(parse_max_concurrent_scans(" 7 "), Ok(7));
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert_eq!(parse_ttl_seconds("0"), Ok(0));
        assert_eq!(parse_ttl_seconds("90m"), Ok(5400));
        assert_eq!(parse_backoff_multiplier("1"), Ok(1.0));
        assert_eq!(parse_list_item(" http/cves/ "), Ok("http/cves/".to_owned()));
        assert!(parse_dns_label("a").is_ok());
        assert!(parse_dns_label(&"a".repeat(64)).is_err());
        assert!(parse_dns_subdomain("nuclei-operator.v1").is_ok());
    }

    const PROBE: &str = "NUCLEI_OPERATOR_SETTINGS_ENV_PROBE";
    const PROBE_ARGS: &str = "NUCLEI_OPERATOR_SETTINGS_ENV_PROBE_ARGS";

    /// Runs this test binary again with only `env` set and returns what the
    /// probe below printed. A child process keeps environment changes away from
    /// tests running in parallel (and needs no `unsafe` `set_var`).
    fn probe_with_env(env: &[(&str, &str)]) -> String {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "settings::tests::env_probe",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env(PROBE, "1")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("PROBE:").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("probe printed nothing: {stdout}"));
        line.replace("\\n", "\n")
    }

    /// Not a test on its own (hence ignored): parses from the environment
    /// when `probe_with_env` runs it.
    #[test]
    #[ignore = "a probe that probe_with_env runs in a child process"]
    fn env_probe() {
        assert!(
            std::env::var_os(PROBE).is_some(),
            "run only by probe_with_env, which sets {PROBE}"
        );
        let args = std::env::var(PROBE_ARGS).unwrap_or_default();
        let argv = std::iter::once("nuclei-operator").chain(args.split_whitespace());
        let parsed = if args.starts_with("controller") {
            treat_empty_env_as_unset(Top::command())
                .try_get_matches_from(argv)
                .and_then(|m| Top::from_arg_matches(&m))
                .map(|Top::Controller(cli)| cli)
        } else {
            treat_empty_env_as_unset(Cli::command())
                .try_get_matches_from(argv)
                .and_then(|m| Cli::from_arg_matches(&m))
        };
        let result = match parsed {
            Ok(cli) => format!(
                "ok max={} severity={:?} templates={:?} leader={}",
                cli.settings.max_concurrent_scans,
                cli.settings.default_severity,
                cli.settings.default_templates,
                cli.settings.leader_election
            ),
            Err(e) => format!("err {}", e.render()),
        };
        println!("PROBE:{}", result.replace('\n', "\\n"));
    }

    #[test]
    fn settings_are_read_from_environment_variables() {
        let out = probe_with_env(&[
            ("MAX_CONCURRENT_SCANS", "3"),
            ("DEFAULT_SEVERITY", "high,critical"),
            ("DEFAULT_TEMPLATES", "http/cves/,dns/"),
            ("LEADER_ELECTION", "false"),
        ]);
        assert_eq!(
            out,
            r#"ok max=3 severity=[High, Critical] templates=["http/cves/", "dns/"] leader=false"#
        );
    }

    #[test]
    fn a_bad_environment_variable_is_named_in_the_error() {
        let out = probe_with_env(&[("MAX_CONCURRENT_SCANS", "abc")]);
        assert!(out.starts_with("err "), "{out}");
        assert!(out.contains("invalid value 'abc'"), "{out}");
        assert!(out.contains("MAX_CONCURRENT_SCANS"), "{out}");
        assert!(out.contains("expected an integer 1..=1000"), "{out}");
    }

    #[test]
    fn a_flag_overrides_the_environment() {
        let out = probe_with_env(&[
            ("MAX_CONCURRENT_SCANS", "abc"),
            (PROBE_ARGS, "--max-concurrent-scans=4"),
        ]);
        assert!(out.starts_with("ok max=4 "), "{out}");
    }

    #[test]
    fn an_empty_environment_variable_means_the_default() {
        let out = probe_with_env(&[
            ("DEFAULT_TEMPLATES", ""),
            ("DEFAULT_SEVERITY", ""),
            ("MAX_CONCURRENT_SCANS", ""),
            ("LEADER_ELECTION", ""),
            ("POD_NAME", ""),
        ]);
        assert_eq!(out, "ok max=5 severity=[] templates=[] leader=true");
    }

    #[test]
    fn empty_variables_are_ignored_in_subcommands_too() {
        let out = probe_with_env(&[
            ("MAX_CONCURRENT_SCANS", ""),
            (PROBE_ARGS, "controller --leader-election=false"),
        ]);
        assert_eq!(out, "ok max=5 severity=[] templates=[] leader=false");
    }
}
