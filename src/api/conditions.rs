//! The condition types and reasons the operator writes into the status of
//! its resources, each spelled once.

/// NucleiScan: the source's annotations all parsed.
pub const ANNOTATIONS_VALID: &str = "AnnotationsValid";
/// NucleiScan: no target answered the availability check; retrying.
pub const WAITING_FOR_TARGETS: &str = "WaitingForTargets";
/// NucleiScan: the scanner pod has not started (image pull, config error).
pub const POD_NOT_STARTED: &str = "PodNotStarted";
/// NucleiScan: the last run went without templates of a repository that
/// could not be cloned (only present while true).
pub const TEMPLATES_UNAVAILABLE: &str = "TemplatesUnavailable";
/// NucleiScan: `spec.schedule` does not parse (only present while false).
pub const SCHEDULE_VALID: &str = "ScheduleValid";

/// NucleiFindingException: whether it accepts findings now; also the
/// reason while it does.
pub const EXCEPTION_ACTIVE: &str = "Active";
/// NucleiFindingException reason: past `spec.expires`.
pub const EXCEPTION_EXPIRED: &str = "Expired";
/// NucleiFindingException reason: it cannot apply (see its message).
pub const EXCEPTION_INVALID: &str = "Invalid";
