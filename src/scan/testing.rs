//! Fixtures shared by the scan modules' tests.

use std::time::Duration;

use serde_json::{Map, Value};

use super::phase::{Backoff, Policy};
use crate::api::{NucleiScan, NucleiScanStatus, ScanPhase};

/// MAX_RETRIES 3, backoff 10 s × 2 up to 10 min, rescan age 1 h, pod start
/// timeout 5 min.
pub fn policy() -> Policy {
    Policy {
        max_retries: 3,
        backoff: Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(600),
            multiplier: 2.0,
        },
        rescan_age: Some(Duration::from_secs(3600)),
        pod_start_timeout: Duration::from_secs(300),
    }
}

/// `ns/web` with `uid`, generation 1, Pending.
pub fn pending_scan(uid: &str) -> NucleiScan {
    let mut s = NucleiScan::new("web", Default::default());
    s.metadata.namespace = Some("ns".into());
    s.metadata.uid = Some(uid.into());
    s.metadata.generation = Some(1);
    s.status = Some(NucleiScanStatus {
        phase: Some(ScanPhase::Pending),
        ..Default::default()
    });
    s
}

/// Applies a status merge patch to the scan, as the API server does (a null
/// removes a field; objects merge field by field).
pub fn merge_status(scan: &mut NucleiScan, patch: Map<String, Value>) {
    let mut status = serde_json::to_value(scan.status.clone().unwrap_or_default()).unwrap();
    merge(&mut status, Value::Object(patch));
    scan.status = Some(serde_json::from_value(status).unwrap());
}

fn merge(target: &mut Value, patch: Value) {
    match (target.as_object_mut(), patch) {
        (Some(fields), Value::Object(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    fields.remove(&k);
                } else {
                    merge(fields.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (_, patch) => *target = patch,
    }
}
