//! Fenced status writes: a run writes its scan only while the scan still
//! expects that run.
//!
//! A run is named by its token ([`crate::jobs::run_token`] of the scan as it
//! stood when the run was queued) and the scan's uid. [`check_run`] says
//! whether a scan, as read now, is waiting for that run to start, is being
//! scanned by it, or has moved on (deleted, re-created under the same name,
//! its spec changed, another run started or this one ended). [`write_if`]
//! reads, checks and writes with the read `resourceVersion`, so nothing can
//! slip in between the check and the write; a conflict reads again.

use kube::ResourceExt;
use kube::api::Api;
use serde_json::Value;

use super::status::patch_status;
use crate::api::{NucleiScan, ScanPhase};
use crate::error::is_conflict;
use crate::jobs::{job_name, run_token};

/// Where a scan stands with respect to one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunCheck {
    /// The scan waits for this run to start: it is unchanged since the run
    /// was queued.
    NotStarted,
    /// The scan is Running this run.
    Current,
    /// The scan no longer expects this run; why, for the log.
    MovedOn(String),
}

/// Where `scan` stands with respect to run `run` of the scan with `uid`.
pub fn check_run(scan: &NucleiScan, uid: &str, run: &str) -> RunCheck {
    if scan.metadata.uid.as_deref() != Some(uid) {
        return RunCheck::MovedOn("the scan was deleted and created again".into());
    }
    if scan.metadata.deletion_timestamp.is_some() {
        return RunCheck::MovedOn("the scan is being deleted".into());
    }
    let status = scan.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    let recorded = match status.and_then(|s| s.run_token.as_deref()) {
        Some(token) => token == run,
        // Written before run tokens were recorded: the Job name tells.
        None => status
            .and_then(|s| s.job_ref.as_ref())
            .is_some_and(|j| j.name == job_name(&scan.name_any(), run)),
    };
    if recorded {
        return match phase {
            Some(ScanPhase::Running) => RunCheck::Current,
            other => RunCheck::MovedOn(format!(
                "the run has already ended (phase {})",
                other.map_or("unset", ScanPhase::as_str)
            )),
        };
    }
    if run_token(scan).as_str() == run && phase != Some(ScanPhase::Running) {
        RunCheck::NotStarted
    } else {
        RunCheck::MovedOn("the scan has moved on to another run".into())
    }
}

/// Most conflicts [`write_if`] reads through before giving up with the last.
const MAX_CONFLICTS: usize = 10;

/// Merge-patches the status of `name` with `patch(scan)` if the scan stands
/// at `want` for run `run` of `uid`. `Ok(Err(check))` when it does not
/// (nothing written); `Err` when the API failed.
///
/// `known`, the scan as the caller last read or wrote it, is checked and
/// written against first, which saves a read; if it is stale the write
/// conflicts, and the scan is read again.
pub async fn write_if(
    api: &Api<NucleiScan>,
    name: &str,
    uid: &str,
    run: &str,
    want: &RunCheck,
    known: Option<&NucleiScan>,
    patch: impl Fn(&NucleiScan) -> Value,
) -> Result<Result<NucleiScan, RunCheck>, kube::Error> {
    let mut attempt = 0;
    let mut known = known.cloned();
    loop {
        attempt += 1;
        let scan = match known.take() {
            Some(scan) => scan,
            None => match api.get_opt(name).await? {
                Some(scan) => scan,
                None => return Ok(Err(RunCheck::MovedOn("the scan was deleted".into()))),
            },
        };
        let check = check_run(&scan, uid, run);
        if check != *want {
            return Ok(Err(check));
        }
        let rv = scan.resource_version();
        match patch_status(api, name, rv.as_deref(), patch(&scan)).await {
            Ok(written) => return Ok(Ok(written)),
            Err(e) if is_conflict(&e) && attempt < MAX_CONFLICTS => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JobRef;
    use crate::scan::status::{Attempt, Transition};

    fn scan(uid: &str) -> NucleiScan {
        crate::scan::testing::pending_scan(uid)
    }

    /// Applies a transition's patch as the API server would.
    fn apply(scan: &mut NucleiScan, t: &Transition) {
        crate::scan::testing::merge_status(scan, t.patch());
    }

    fn running(run: &str) -> Transition {
        Transition::Running {
            run: run.into(),
            job: Some(JobRef {
                name: job_name("web", run),
                uid: "j".into(),
                ..Default::default()
            }),
            at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            attempt: Attempt::default(),
        }
    }

    #[test]
    fn a_queued_run_is_not_started_until_running_names_it_then_current_until_it_ends() {
        let mut s = scan("u1");
        let run = run_token(&s);
        assert_eq!(check_run(&s, "u1", &run), RunCheck::NotStarted);
        apply(&mut s, &running(&run));
        assert_eq!(check_run(&s, "u1", &run), RunCheck::Current);
        apply(
            &mut s,
            &Transition::Failed {
                message: "x".into(),
                retry_count: 1,
                at: chrono::Utc::now(),
                attempt: None,
            },
        );
        assert!(matches!(check_run(&s, "u1", &run), RunCheck::MovedOn(_)));
    }

    #[test]
    fn a_scan_created_again_under_the_same_name_is_not_the_runs_scan() {
        let mut s = scan("u1");
        let run = run_token(&s);
        apply(&mut s, &running(&run));
        let mut again = s.clone();
        again.metadata.uid = Some("u2".into());
        assert!(
            matches!(check_run(&again, "u1", &run), RunCheck::MovedOn(m) if m.contains("created again"))
        );
    }

    #[test]
    fn a_later_run_or_a_spec_change_moves_the_scan_on_from_an_earlier_run() {
        let mut s = scan("u1");
        let first = run_token(&s);
        apply(&mut s, &running(&first));
        apply(
            &mut s,
            &Transition::Completed {
                findings: Value::Array(vec![]),
                summary: serde_json::json!({}),
                fingerprints: None,
                at: chrono::Utc::now(),
            },
        );
        let second = run_token(&s);
        assert_ne!(first, second);
        apply(&mut s, &running(&second));
        assert!(matches!(check_run(&s, "u1", &first), RunCheck::MovedOn(_)));
        assert_eq!(check_run(&s, "u1", &second), RunCheck::Current);

        let mut queued = scan("u1");
        let run = run_token(&queued);
        queued.metadata.generation = Some(2);
        assert!(matches!(
            check_run(&queued, "u1", &run),
            RunCheck::MovedOn(_)
        ));
    }

    #[test]
    fn a_status_from_before_run_tokens_is_matched_by_its_job_name() {
        let mut s = scan("u1");
        let run = run_token(&s);
        apply(&mut s, &running(&run));
        s.status.as_mut().unwrap().run_token = None;
        assert_eq!(check_run(&s, "u1", &run), RunCheck::Current);
        assert!(matches!(check_run(&s, "u1", "other"), RunCheck::MovedOn(_)));
    }
}

/// The fence over arbitrary histories of a scan.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::api::JobRef;
    use crate::scan::status::{Attempt, Transition};
    use chrono::TimeZone;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        /// The launcher starts the run the scan waits for, at second `at`.
        Start(i64),
        Complete,
        Fail,
        /// Its spec changes.
        Edit,
        /// A rescan is requested.
        Rescan,
        /// It is deleted and created again under the same name.
        Recreate,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0i64..3).prop_map(Step::Start),
            2 => Just(Step::Complete),
            2 => Just(Step::Fail),
            1 => Just(Step::Edit),
            1 => Just(Step::Rescan),
            1 => Just(Step::Recreate),
        ]
    }

    fn fresh(uid: &str) -> NucleiScan {
        crate::scan::testing::pending_scan(uid)
    }

    fn write(scan: &mut NucleiScan, t: &Transition) {
        crate::scan::testing::merge_status(scan, t.patch());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// No run writes a scan that has moved on: after any history, only
        /// the run in progress is Current; every other run ever started is
        /// refused; and no two runs ever had the same token (so never the
        /// same Job), even when started within the same second.
        #[test]
        fn only_the_run_in_progress_may_write_and_no_two_runs_share_a_token(
            steps in prop::collection::vec(step(), 1..30)
        ) {
            let mut uid = 0;
            let mut scan = fresh("u0");
            let mut started: Vec<(String, String)> = Vec::new();
            let mut current: Option<usize> = None;
            let mut rescans = 0;
            for step in steps {
                let phase = scan.status.as_ref().and_then(|s| s.phase);
                match step {
                    Step::Start(at) if phase != Some(ScanPhase::Running) => {
                        let run = run_token(&scan).to_string();
                        prop_assert_eq!(check_run(&scan, &format!("u{uid}"), &run), RunCheck::NotStarted);
                        prop_assert!(
                            !started.iter().any(|(_, r)| *r == run),
                            "token {} used twice", run
                        );
                        let running = Transition::Running {
                            run: run.clone(),
                            job: Some(JobRef { name: job_name("web", &run), uid: "j".into(), ..Default::default() }),
                            at: chrono::Utc.timestamp_opt(1_800_000_000 + at, 0).unwrap(),
                            attempt: Attempt::of(&scan),
                        };
                        write(&mut scan, &running);
                        started.push((format!("u{uid}"), run));
                        current = Some(started.len() - 1);
                    }
                    Step::Complete | Step::Fail if phase == Some(ScanPhase::Running) => {
                        let t = if matches!(step, Step::Complete) {
                            Transition::Completed { findings: serde_json::json!([]), summary: serde_json::json!({}), fingerprints: None, at: chrono::Utc::now() }
                        } else {
                            Transition::Failed { message: "x".into(), retry_count: 1, at: chrono::Utc::now(), attempt: None }
                        };
                        write(&mut scan, &t);
                        current = None;
                    }
                    Step::Edit => {
                        *scan.metadata.generation.as_mut().unwrap() += 1;
                    }
                    Step::Rescan => {
                        rescans += 1;
                        scan.metadata.annotations = Some(
                            [(crate::api::labels::RESCAN.to_string(), rescans.to_string())].into(),
                        );
                    }
                    Step::Recreate => {
                        uid += 1;
                        scan = fresh(&format!("u{uid}"));
                        current = None;
                    }
                    _ => {}
                }
                for (i, (u, run)) in started.iter().enumerate() {
                    let check = check_run(&scan, u, run);
                    if Some(i) == current {
                        prop_assert_eq!(check, RunCheck::Current);
                    } else {
                        prop_assert!(matches!(check, RunCheck::MovedOn(_)), "run {} of {}: {:?}", i, u, check);
                    }
                }
            }
        }
    }
}
