//! The identity of a scan run: its token and the name of its Job.

use kube::ResourceExt;

use crate::api::NucleiScan;
use crate::api::labels::rescan_request;

use super::*;

/// The token of one run of a scan ([`run_token`]): what the scan's
/// `status.runToken`, its Job's name and run label, the dispatcher's payload
/// and the scanner's `SCAN_RUN` agree on, so each side can tell whether a
/// run is still the one the scan expects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunToken(String);

impl RunToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for RunToken {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for RunToken {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<&str> for RunToken {
    fn from(s: &str) -> Self {
        RunToken(s.to_owned())
    }
}

impl From<String> for RunToken {
    fn from(s: String) -> Self {
        RunToken(s)
    }
}

/// The run token a scanner Job is labelled with.
pub fn run_of(job: &k8s_openapi::api::batch::v1::Job) -> Option<&str> {
    job.labels().get(RUN_LABEL).map(String::as_str)
}

/// A deterministic token for the next run of `scan`.
///
/// Derived only from stored state: the scan's uid, `metadata.generation`,
/// `status.lastScanTime` (whole seconds, as the apiserver keeps it, or
/// `never`), `status.retryCount` (unset counts as 0), the manual-rescan
/// annotation and `status.runToken`, the token of the run before. The same
/// state gives the same token; starting a run records its token, so the run
/// after it always gets another one (even two runs started within one
/// second). 16 hex digits of FNV-1a 64, stable across Rust releases and
/// operator restarts.
pub fn run_token(scan: &NucleiScan) -> RunToken {
    let status = scan.status.as_ref();
    let uid = scan.metadata.uid.as_deref().unwrap_or("");
    let generation = scan
        .metadata
        .generation
        .map_or_else(|| "none".to_owned(), |g| g.to_string());
    // Seconds: the apiserver stores times to the second, so sub-second
    // precision in memory would give a different token after a round trip.
    let last_scan = status
        .and_then(|s| s.last_scan_time.as_ref())
        .map_or_else(|| "never".to_owned(), |t| t.0.as_second().to_string());
    let retries = status.and_then(|s| s.retry_count).unwrap_or(0).to_string();
    let rescan = rescan_request(scan.annotations()).unwrap_or("");

    RunToken(match status.and_then(|s| s.run_token.as_deref()) {
        Some(previous) => stable_hash(&[
            "v1",
            uid,
            &generation,
            &last_scan,
            &retries,
            rescan,
            previous,
        ]),
        // As before run tokens were recorded, so a Job made then is found.
        None => stable_hash(&["v1", uid, &generation, &last_scan, &retries, rescan]),
    })
}

/// The Job name of a run: the scan name (lower-cased, other characters than
/// `a-z0-9-` made `-`, cut to 52 characters) + `-` + 10 hex digits hashed from
/// the scan name and `token`.
///
/// Deterministic, a DNS-1123 label of at most 63 characters that never starts
/// or ends with `-`, so it is also a valid label value for the pods' `job-name`
/// label.
pub fn job_name(scan_name: &str, token: &str) -> String {
    let hash = stable_hash(&[scan_name, token]);
    let hash = &hash[..NAME_HASH_LEN];

    let keep = MAX_NAME_LEN - NAME_HASH_LEN - 1;
    let sanitized: String = scan_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .take(keep)
        .collect();
    let prefix = sanitized.trim_matches('-');
    if prefix.is_empty() {
        format!("scan-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

// FNV-1a 64 (stable across Rust releases, unlike std's DefaultHasher, which
// would rename the Job of a run in flight across an upgrade) over
// length-prefixed fields, so ("ab", "c") and ("a", "bc") differ.
fn stable_hash(fields: &[&str]) -> String {
    let mut bytes = Vec::new();
    for f in fields {
        bytes.extend_from_slice(&(f.len() as u64).to_le_bytes());
        bytes.extend_from_slice(f.as_bytes());
    }
    crate::hash::fnv1a_64_hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::labels::RESCAN;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::super::fixtures::*;

    // ---- run tokens --------------------------------------------------------

    #[test]
    fn the_same_state_gives_the_same_token() {
        assert_eq!(run_token(&scan()), run_token(&scan()));
        let t = run_token(&scan());
        assert_eq!(t.len(), 16);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn run_tokens_are_stable_across_releases() {
        // A changed value here renames the Job of a run in flight across an
        // upgrade, which would then start a second Job; change it knowingly.
        // Computed outside Rust: FNV-1a 64 over fields each prefixed with its
        // length as a little-endian u64.
        assert_eq!(run_token(&scan()), "f8c025a80d6976fa");
        assert_eq!(
            job_name("shop-ingress", "f8c025a80d6976fa"),
            "shop-ingress-36b2e60c39"
        );
    }

    #[test]
    fn every_input_of_the_token_changes_it() {
        let base = run_token(&scan());
        let mut other_uid = scan();
        other_uid.metadata.uid = Some("other".into());
        let mut other_generation = scan();
        other_generation.metadata.generation = Some(4);
        let started = with_status(scan(), |s| s.last_scan_time = Some(at(1_700_000_000)));
        let retried = with_status(scan(), |s| s.retry_count = Some(1));
        let mut rescan = scan();
        rescan
            .annotations_mut()
            .insert(RESCAN.into(), "2025-06-01T10:00:00Z".into());

        let tokens = [
            base,
            run_token(&other_uid),
            run_token(&other_generation),
            run_token(&started),
            run_token(&retried),
            run_token(&rescan),
        ];
        for (i, a) in tokens.iter().enumerate() {
            for b in &tokens[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn starting_a_run_gives_the_next_run_a_new_token() {
        let first = with_status(scan(), |s| s.last_scan_time = Some(at(1_700_000_000)));
        let second = with_status(first.clone(), |s| {
            s.last_scan_time = Some(at(1_700_086_400));
        });
        assert_ne!(run_token(&first), run_token(&second));
    }

    #[test]
    fn state_that_does_not_define_a_run_leaves_the_token_alone() {
        let base = run_token(&scan());
        let busy = with_status(scan(), |s| {
            s.phase = Some(crate::api::ScanPhase::Pending);
            s.next_scheduled_time = Some(at(1_800_000_000));
            s.last_error = Some("boom".into());
            s.observed_generation = Some(2);
            s.retry_count = Some(0);
        });
        assert_eq!(run_token(&busy), base, "retryCount 0 is the same as unset");

        let mut labelled = scan();
        labelled.labels_mut().insert("team".into(), "web".into());
        labelled.metadata.resource_version = Some("12345".into());
        labelled
            .annotations_mut()
            .insert(RESCAN.into(), "   ".into());
        assert_eq!(run_token(&labelled), base, "an empty rescan value is none");
    }

    #[test]
    fn sub_second_times_give_the_token_the_apiserver_round_trip_gives() {
        let precise = with_status(scan(), |s| {
            s.last_scan_time = Some(Time(Timestamp::new(1_700_000_000, 123_456_789).unwrap()));
        });
        let json = serde_json::to_value(&precise).unwrap();
        let stored: NucleiScan = serde_json::from_value(json).unwrap();
        assert_eq!(run_token(&precise), run_token(&stored));
    }

    // ---- job names ---------------------------------------------------------

    #[test]
    fn job_names_are_the_scan_name_and_ten_hex_digits() {
        let token = run_token(&scan());
        let name = job_name("shop-ingress", &token);
        assert_eq!(name, job_name("shop-ingress", &token));
        let (prefix, hash) = name.rsplit_once('-').unwrap();
        assert_eq!(prefix, "shop-ingress");
        assert_eq!(hash.len(), 10);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(name, job_name("shop-ingress", "another-token"));
        assert_ne!(name, job_name("shop2-ingress", &token));
    }

    #[test]
    fn job_names_are_always_dns_labels() {
        let long = "a".repeat(300);
        let cut_on_dash = format!("{}-{}", "a".repeat(51), "b".repeat(20));
        for scan_name in [
            "shop-ingress",
            long.as_str(),
            cut_on_dash.as_str(),
            "my.dotted.scan",
            "UPPER-case",
            "-",
            "---",
            "",
            "a",
            "0",
        ] {
            let name = job_name(scan_name, "t");
            assert!(is_dns_label(&name), "{scan_name:?} → {name:?}");
        }
        assert_eq!(
            job_name(&cut_on_dash, "t").len(),
            51 + 1 + 10,
            "the cut lands on a '-', which is trimmed"
        );
        assert_eq!(job_name(&long, "t").len(), 63);
        assert!(job_name("---", "t").starts_with("scan-"));
    }

    #[test]
    fn long_scan_names_that_share_a_prefix_get_distinct_job_names() {
        let a = format!("{}-one", "x".repeat(60));
        let b = format!("{}-two", "x".repeat(60));
        assert_ne!(job_name(&a, "t"), job_name(&b, "t"));
    }
}
