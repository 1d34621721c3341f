//! The nuclei command line for one scan, and what its exit means.
//!
//! Flags, as defined in nuclei v3's `cmd/nuclei/main.go`:
//!
//! | flag | meaning |
//! |---|---|
//! | `-jsonl` (`-j`) | one JSON result per line on stdout |
//! | `-silent` | findings only; `[FTL]` fatal messages still reach stderr |
//! | `-nc` (`-no-color`) | no ANSI colours |
//! | `-or` (`-omit-raw`) | no `request`/`response` in results |
//! | `-ot` (`-omit-template`) | no base64 `template-encoded` in results |
//! | `-duc` (`-disable-update-check`) | no engine/template update check or download |
//! | `-no-stdin` | never wait for targets on stdin |
//! | `-l` (`-list`) | file of targets, one per line |
//! | `-t` (`-templates`) | template file or directory; repeatable, comma-separated |
//! | `-tags`, `-exclude-tags` (`-etags`) | tag filters, comma-separated |
//! | `-exclude-templates` (`-et`) | template files or directories to skip |
//! | `-severity` (`-s`) | severity filter, comma-separated |
//! | `-rate-limit` (`-rl`) | requests per second (nuclei's default 150; 0 = unlimited) |
//! | `-timeout` | seconds to wait for *one request* (default 10) |
//!
//! nuclei has no whole-scan deadline flag: [`ScanOptions::timeout`] is enforced
//! by the caller (the Job's `activeDeadlineSeconds`, or killing the process).
//!
//! Template paths: `-t` with a directory runs every template below it,
//! recursively. A relative `-t` path is looked up in the working directory
//! first, then in nuclei's templates directory (`$NUCLEI_TEMPLATES_DIR`, see
//! [`nuclei_env`]); an absolute one is used as is. Without any `-t`, nuclei runs
//! its whole templates directory. Either way the tags in that directory's
//! `.nuclei-ignore` (`dos`, `fuzz`, …) stay excluded, and code, headless, file
//! and DAST templates only run with their own opt-in flags, which we never pass.
//! The list flags also accept a path to a file of values: a value that happens
//! to name an existing file is read as such, so run nuclei in a directory
//! without stray files.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::Severity;

/// The environment variable nuclei reads its templates directory from.
pub const NUCLEI_TEMPLATES_DIR_ENV: &str = "NUCLEI_TEMPLATES_DIR";

/// What to scan and with which templates: the effective configuration of one
/// scan run, after defaults, spec and annotations are merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// File with the targets, one URL per line (`-l`).
    pub targets_file: PathBuf,
    /// Templates selected by the scan (`spec.templates`): files, directories
    /// or globs, relative to the templates directory or absolute. When set,
    /// only these run.
    pub templates: Vec<String>,
    /// Directories to run in full when [`ScanOptions::templates`] is empty:
    /// the built-in templates path.
    pub template_dirs: Vec<PathBuf>,
    /// Directories the scan asked for by name (ConfigMap-mounted and
    /// git-cloned templates): always run in full, on top of
    /// [`ScanOptions::templates`] or [`ScanOptions::template_dirs`]. The
    /// filters still apply to them.
    pub extra_template_dirs: Vec<PathBuf>,
    /// nuclei's templates directory, against which relative
    /// [`ScanOptions::templates`] resolve; exported by [`nuclei_env`].
    pub templates_root: Option<PathBuf>,
    /// Run only templates with one of these tags (`-tags`).
    pub tags: Vec<String>,
    /// Skip templates with one of these tags (`-exclude-tags`).
    pub exclude_tags: Vec<String>,
    /// Skip these template files or directories (`-exclude-templates`).
    pub exclude_templates: Vec<String>,
    /// Run only templates of these severities (`-severity`); empty runs all.
    pub severity: Vec<Severity>,
    /// Requests per second (`-rate-limit`); `None` keeps nuclei's default.
    pub rate_limit: Option<u32>,
    /// Interactsh server for out-of-band (OAST) templates (`-iserver`);
    /// `None` turns interactsh off (`-ni`), so no scan calls out to the
    /// public interactsh servers.
    pub interactsh_url: Option<String>,
    /// Deadline for the whole scan. Not a nuclei flag: the caller enforces it.
    pub timeout: Option<Duration>,
    /// Timeout of a single request (`-timeout`, whole seconds, rounded up).
    pub request_timeout: Option<Duration>,
}

/// The arguments (without the program name) to run nuclei for `opts`.
pub fn nuclei_args(opts: &ScanOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-jsonl",
        "-silent",
        "-nc",
        "-or",
        "-ot",
        "-duc",
        "-no-stdin",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push("-l".into());
    args.push(opts.targets_file.clone().into_os_string());

    let templates = clean(&opts.templates);
    if templates.is_empty() {
        for dir in &opts.template_dirs {
            args.push("-t".into());
            args.push(dir.clone().into_os_string());
        }
    } else {
        // The full directories would widen the selection back to everything.
        for t in templates {
            args.push("-t".into());
            args.push(t.into());
        }
    }
    for dir in &opts.extra_template_dirs {
        args.push("-t".into());
        args.push(dir.clone().into_os_string());
    }

    push_list(&mut args, "-tags", &opts.tags);
    push_list(&mut args, "-exclude-tags", &opts.exclude_tags);
    push_list(&mut args, "-exclude-templates", &opts.exclude_templates);

    let mut severities: Vec<&str> = Vec::new();
    for s in &opts.severity {
        if !severities.contains(&s.as_str()) {
            severities.push(s.as_str());
        }
    }
    if !severities.is_empty() {
        args.push("-severity".into());
        args.push(severities.join(",").into());
    }
    if let Some(rl) = opts.rate_limit {
        args.push("-rate-limit".into());
        args.push(rl.to_string().into());
    }
    match &opts.interactsh_url {
        Some(url) => {
            args.push("-iserver".into());
            args.push(url.into());
        }
        None => args.push("-ni".into()),
    }
    if let Some(t) = opts.request_timeout {
        let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
        args.push("-timeout".into());
        args.push(secs.max(1).to_string().into());
    }
    args
}

/// Environment for the nuclei process: `NUCLEI_TEMPLATES_DIR` when
/// [`ScanOptions::templates_root`] is set, so relative templates resolve there
/// and nuclei never looks for `~/nuclei-templates`.
pub fn nuclei_env(opts: &ScanOptions) -> Vec<(OsString, OsString)> {
    opts.templates_root
        .iter()
        .map(|root| {
            (
                NUCLEI_TEMPLATES_DIR_ENV.into(),
                root.clone().into_os_string(),
            )
        })
        .collect()
}

fn clean(values: &[String]) -> Vec<&str> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect()
}

fn push_list(args: &mut Vec<OsString>, flag: &str, values: &[String]) {
    let values = clean(values);
    if !values.is_empty() {
        args.push(flag.into());
        args.push(values.join(",").into());
    }
}

/// How a nuclei run ended, from its exit status and the end of its stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0 and templates ran: the findings are complete (maybe none).
    Completed,
    /// No template was loaded (a bad path or filters that match nothing), so
    /// nothing was scanned. nuclei v3 exits 1 with `[FTL] Could not run
    /// nuclei: no templates provided for scan`; some versions only warn and
    /// exit 0. Either way this is a failed scan, not a clean one.
    NoTemplates,
    /// Non-zero exit: a fatal error (nuclei exits 1 on every `[FTL]`).
    Failed {
        /// The exit code.
        code: i32,
        /// The `[FTL]` message, else the last stderr line, else the code.
        reason: String,
    },
    /// No exit code: killed by a signal (deadline, OOM killer, eviction).
    Killed,
}

impl Outcome {
    /// True only for [`Outcome::Completed`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Completed)
    }
}

/// Longest `reason` [`classify_exit`] returns, in bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// Classifies a finished nuclei process from its exit code (`None` when it
/// was killed by a signal) and the last part of its stderr.
pub fn classify_exit(status_code: Option<i32>, stderr_tail: &str) -> Outcome {
    let Some(code) = status_code else {
        return Outcome::Killed;
    };
    let lines: Vec<String> = stderr_tail
        .lines()
        .map(strip_ansi)
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let no_templates = lines.iter().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("no templates provided for scan") || l.contains("no templates were found")
    });
    if no_templates {
        return Outcome::NoTemplates;
    }
    if code == 0 {
        return Outcome::Completed;
    }
    let reason = lines
        .iter()
        .rev()
        .find_map(|l| l.split_once("[FTL]").map(|(_, msg)| msg.trim().to_owned()))
        .or_else(|| lines.last().cloned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| format!("nuclei exited with code {code}"));
    Outcome::Failed {
        code,
        reason: shorten(reason, MAX_REASON_BYTES),
    }
}

// Removes CSI escape sequences (`ESC [ … letter`), in case colours slipped
// through despite `-nc`.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.clone().next() == Some('[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn shorten(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    fn base() -> ScanOptions {
        ScanOptions {
            targets_file: "/tmp/scan/targets.txt".into(),
            template_dirs: vec![
                "/opt/nuclei-templates".into(),
                "/templates/configmap".into(),
            ],
            templates_root: Some("/opt/nuclei-templates".into()),
            ..ScanOptions::default()
        }
    }

    #[test]
    fn a_plain_scan_runs_every_template_directory_with_the_fixed_flags() {
        let args = nuclei_args(&base());
        assert_eq!(
            strings(&args),
            [
                "-jsonl",
                "-silent",
                "-nc",
                "-or",
                "-ot",
                "-duc",
                "-no-stdin",
                "-l",
                "/tmp/scan/targets.txt",
                "-t",
                "/opt/nuclei-templates",
                "-t",
                "/templates/configmap",
                "-ni",
            ]
        );
    }

    #[test]
    fn interactsh_is_off_unless_a_server_is_given() {
        let args = nuclei_args(&base());
        let s = strings(&args);
        assert!(s.contains(&"-ni") && !s.contains(&"-iserver"), "{s:?}");
        let opts = ScanOptions {
            interactsh_url: Some("https://oast.example.internal".into()),
            ..base()
        };
        let args = nuclei_args(&opts);
        let s = strings(&args);
        assert!(!s.contains(&"-ni"), "{s:?}");
        let at = s.iter().position(|a| *a == "-iserver").unwrap();
        assert_eq!(s[at + 1], "https://oast.example.internal");
    }

    #[test]
    fn selected_templates_replace_the_full_directories() {
        let opts = ScanOptions {
            templates: vec![
                "http/cves/".into(),
                " ".into(),
                "dns/caa-fingerprint.yaml".into(),
            ],
            ..base()
        };
        let args = nuclei_args(&opts);
        let s = strings(&args);
        assert_eq!(
            &s[9..],
            ["-t", "http/cves/", "-t", "dns/caa-fingerprint.yaml", "-ni"]
        );
    }

    #[test]
    fn extra_template_directories_run_with_selected_templates_and_without() {
        let extra = |templates: Vec<String>| ScanOptions {
            templates,
            template_dirs: vec!["/opt/nuclei-templates".into()],
            extra_template_dirs: vec!["/templates/git/0".into(), "/templates/configmaps/t".into()],
            ..base()
        };
        let args = nuclei_args(&extra(vec!["http/cves/".into()]));
        assert_eq!(
            &strings(&args)[9..],
            [
                "-t",
                "http/cves/",
                "-t",
                "/templates/git/0",
                "-t",
                "/templates/configmaps/t",
                "-ni"
            ]
        );
        let args = nuclei_args(&extra(Vec::new()));
        assert_eq!(
            &strings(&args)[9..],
            [
                "-t",
                "/opt/nuclei-templates",
                "-t",
                "/templates/git/0",
                "-t",
                "/templates/configmaps/t",
                "-ni"
            ]
        );
    }

    #[test]
    fn filters_rate_limit_and_request_timeout_become_flags() {
        let opts = ScanOptions {
            tags: vec!["cve".into(), " exposure ".into(), "".into()],
            exclude_tags: vec!["dos".into(), "intrusive".into()],
            exclude_templates: vec!["http/fuzzing/".into()],
            severity: vec![Severity::Critical, Severity::High, Severity::Critical],
            rate_limit: Some(20),
            timeout: Some(Duration::from_secs(1800)),
            request_timeout: Some(Duration::from_millis(2500)),
            ..base()
        };
        let args = nuclei_args(&opts);
        let s = strings(&args);
        let tail = &s[s.iter().position(|a| *a == "-tags").unwrap()..];
        assert_eq!(
            tail,
            [
                "-tags",
                "cve,exposure",
                "-exclude-tags",
                "dos,intrusive",
                "-exclude-templates",
                "http/fuzzing/",
                "-severity",
                "critical,high",
                "-rate-limit",
                "20",
                "-ni",
                "-timeout",
                "3",
            ]
        );
        assert!(
            !s.contains(&"1800"),
            "the scan deadline is not a nuclei flag"
        );
    }

    #[test]
    fn empty_filters_add_no_flags() {
        let opts = ScanOptions {
            tags: vec![" ".into()],
            request_timeout: Some(Duration::ZERO),
            ..base()
        };
        let s: Vec<String> = nuclei_args(&opts)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(!s.contains(&"-tags".to_owned()));
        assert!(!s.contains(&"-severity".to_owned()));
        assert_eq!(s[s.len() - 2..], ["-timeout", "1"], "never -timeout 0");
    }

    #[test]
    fn the_templates_root_is_exported_as_nuclei_templates_dir() {
        assert_eq!(
            nuclei_env(&base()),
            [(
                OsString::from("NUCLEI_TEMPLATES_DIR"),
                OsString::from("/opt/nuclei-templates")
            )]
        );
        assert!(nuclei_env(&ScanOptions::default()).is_empty());
    }

    #[test]
    fn exit_zero_is_a_completed_scan() {
        assert_eq!(classify_exit(Some(0), ""), Outcome::Completed);
        assert!(classify_exit(Some(0), "[WRN] some template had a syntax warning\n").is_success());
    }

    #[test]
    fn no_templates_is_a_failure_whatever_the_exit_code() {
        let fatal = "[INF] Scan completed in 314µs. No results found.\n\
                     [FTL] Could not run nuclei: no templates provided for scan\n";
        assert_eq!(classify_exit(Some(1), fatal), Outcome::NoTemplates);
        let warned = "\u{1b}[33mWRN\u{1b}[0m] no templates provided for scan\n";
        assert_eq!(classify_exit(Some(0), warned), Outcome::NoTemplates);
        assert!(!Outcome::NoTemplates.is_success());
    }

    #[test]
    fn a_fatal_error_reports_its_message() {
        let stderr =
            "[ERR] something minor\n[FTL] Could not create runner: could not read list file\n\n";
        assert_eq!(
            classify_exit(Some(1), stderr),
            Outcome::Failed {
                code: 1,
                reason: "Could not create runner: could not read list file".into()
            }
        );
    }

    #[test]
    fn real_nuclei_v3_10_fatal_errors_are_classified() {
        // Both captured from nuclei v3.10.0 with -silent: a -tags filter that
        // matches nothing, and a missing -l file. Both exit 1.
        assert_eq!(
            classify_exit(
                Some(1),
                "[FTL] Could not run nuclei: no templates provided for scan\n"
            ),
            Outcome::NoTemplates
        );
        let missing_list = "[FTL] Could not create runner: could not create input provider: \
                            could not open targets file: open /work/missing.txt: no such file or directory\n";
        assert!(matches!(
            classify_exit(Some(1), missing_list),
            Outcome::Failed { code: 1, reason } if reason.starts_with("Could not create runner:") && reason.ends_with("no such file or directory")
        ));
    }

    #[test]
    fn a_failure_without_ftl_uses_the_last_line_or_the_code() {
        assert_eq!(
            classify_exit(Some(2), "panic: runtime error\ngoroutine 1 [running]:\n"),
            Outcome::Failed {
                code: 2,
                reason: "goroutine 1 [running]:".into()
            }
        );
        assert_eq!(
            classify_exit(Some(1), "  \n"),
            Outcome::Failed {
                code: 1,
                reason: "nuclei exited with code 1".into()
            }
        );
        let Outcome::Failed { reason, .. } =
            classify_exit(Some(1), &format!("[FTL] {}", "é".repeat(1000)))
        else {
            panic!("failed expected");
        };
        assert!(reason.len() <= MAX_REASON_BYTES + '…'.len_utf8());
    }

    #[test]
    fn a_process_killed_by_a_signal_is_killed() {
        assert_eq!(classify_exit(None, "[FTL] whatever"), Outcome::Killed);
    }
}
