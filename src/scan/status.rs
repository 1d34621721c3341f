//! Status writes and conditions of a `NucleiScan`.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::api::NucleiScan;

/// Condition: the source's annotations all parsed.
pub const ANNOTATIONS_VALID: &str = "AnnotationsValid";
/// Condition: no target answered the availability check; retrying.
pub const WAITING_FOR_TARGETS: &str = "WaitingForTargets";
/// Condition: the scanner pod has not started (image pull, config error).
pub const POD_NOT_STARTED: &str = "PodNotStarted";

/// Field manager of the operator's status writes.
pub const STATUS_MANAGER: &str = "nuclei-operator";

/// `Time` from chrono.
pub fn time(dt: DateTime<Utc>) -> Time {
    Time(
        Timestamp::new(dt.timestamp(), dt.timestamp_subsec_nanos() as i32)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// chrono from `Time`.
pub fn chrono(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// Sets a condition; `true` when anything changed (the transition time only
/// moves when the status does, per API conventions).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> bool {
    let status_s = if status { "True" } else { "False" };
    let message: String = message.chars().take(32 * 1024).collect();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status_s && c.reason == reason && c.message == message => false,
        Some(c) => {
            if c.status != status_s {
                c.last_transition_time = time(now);
            }
            c.status = status_s.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
            true
        }
        None => {
            conditions.push(Condition {
                type_: type_.into(),
                status: status_s.into(),
                reason: reason.into(),
                message,
                observed_generation: generation,
                last_transition_time: time(now),
            });
            true
        }
    }
}

/// Removes a condition; `true` when it was there.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

/// Merge-patches `status`. With `resource_version`, the write fails with 409
/// when the object changed since it was read, so a list such as `conditions`
/// is never overwritten from a stale copy.
pub async fn patch_status(
    api: &Api<NucleiScan>,
    name: &str,
    resource_version: Option<&str>,
    status: Value,
) -> Result<NucleiScan, kube::Error> {
    let mut body = json!({ "status": status });
    if let Some(rv) = resource_version {
        body["metadata"] = json!({ "resourceVersion": rv });
    }
    api.patch_status(
        name,
        &PatchParams {
            field_manager: Some(STATUS_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(&body),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_an_unchanged_condition_reports_no_change() {
        let now = Utc::now();
        let mut c = Vec::new();
        assert!(set_condition(&mut c, "A", true, "R", "m", Some(1), now));
        assert!(!set_condition(&mut c, "A", true, "R", "m", Some(1), now));
        assert!(set_condition(&mut c, "A", false, "R", "m", Some(1), now));
        assert_eq!(c.len(), 1);
        assert!(remove_condition(&mut c, "A"));
        assert!(!remove_condition(&mut c, "A"));
    }

    #[test]
    fn times_round_trip_between_chrono_and_kubernetes() {
        let dt = DateTime::from_timestamp(1_700_000_000, 123_000_000).unwrap();
        assert_eq!(chrono(&time(dt)), dt);
    }
}
