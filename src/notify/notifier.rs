//! A notification target, read from a Secret labelled
//! `nuclei.homelab.mortenolsen.pro/notifier=<type>`: its `url` key holds the
//! webhook address (never logged), its annotations the options.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::news::News;
use crate::api::Severity;
use crate::api::labels::{NOTIFIER_LABEL, NOTIFY_MIN_SEVERITY, NOTIFY_RESOLVED};
use crate::scan::status::chrono;

/// The Secret key holding the webhook URL.
pub const URL_KEY: &str = "url";

/// The shape of the message a notifier's endpoint accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat).
    Slack,
    /// A Microsoft Teams Workflows webhook (an Adaptive Card message).
    Teams,
    /// Our own JSON document (see the README).
    Webhook,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Slack, Kind::Teams, Kind::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Slack => "slack",
            Kind::Teams => "teams",
            Kind::Webhook => "webhook",
        }
    }
}

/// One notification target.
#[derive(Clone, PartialEq)]
pub struct Notifier {
    pub namespace: String,
    pub name: String,
    pub kind: Kind,
    pub url: String,
    pub min_severity: Severity,
    pub resolved: bool,
    /// When the Secret was created: runs that finished before are not
    /// sent to it (a new notifier does not replay history).
    pub since: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Notifier {
    /// Everything but the URL, which often holds the webhook's credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("min_severity", &self.min_severity)
            .field("resolved", &self.resolved)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Reads a labelled Secret; the error says what to fix (and never
    /// quotes the URL).
    pub fn from_secret(secret: &Secret) -> Result<Notifier, String> {
        let kind = secret
            .labels()
            .get(NOTIFIER_LABEL)
            .map(String::as_str)
            .unwrap_or("");
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| {
                format!("label {NOTIFIER_LABEL}={kind:?}: expected slack, teams or webhook")
            })?;
        let url = secret
            .data
            .as_ref()
            .and_then(|d| d.get(URL_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(URL_KEY))
                    .map(|s| s.trim().to_string())
            })
            .filter(|u| !u.is_empty())
            .ok_or_else(|| format!("the Secret has no {URL_KEY:?} key with the webhook URL"))?;
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.parse::<http::Uri>().is_err()
        {
            return Err(format!(
                "the {URL_KEY:?} key is not an http(s) URL (its value is not shown)"
            ));
        }
        let annotations = secret.annotations();
        let min_severity = match annotations.get(NOTIFY_MIN_SEVERITY) {
            Some(s) => s
                .parse()
                .map_err(|e| format!("{NOTIFY_MIN_SEVERITY}: {e}"))?,
            None => Severity::High,
        };
        let resolved = match annotations.get(NOTIFY_RESOLVED).map(|s| s.trim()) {
            None => false,
            Some(s) if s.eq_ignore_ascii_case("true") => true,
            Some(s) if s.eq_ignore_ascii_case("false") => false,
            Some(s) => return Err(format!("{NOTIFY_RESOLVED}: {s:?} is not true or false")),
        };
        Ok(Notifier {
            namespace: secret.namespace().unwrap_or_default(),
            name: secret.name_any(),
            kind,
            url,
            min_severity,
            resolved,
            since: secret.metadata.creation_timestamp.as_ref().map(chrono),
        })
    }

    /// Whether this notifier hears of scans in `namespace`: its own, or
    /// every namespace when it lives in the operator's.
    pub fn covers(&self, namespace: &str, operator_namespace: &str) -> bool {
        self.namespace == namespace || self.namespace == operator_namespace
    }

    /// Whether `news` is worth a message to this notifier.
    pub fn wants(&self, news: &News) -> bool {
        if self.since.is_some_and(|since| news.run < since) {
            return false;
        }
        news.at_least(self.min_severity).next().is_some() || (self.resolved && news.resolved > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::news::tests::{at, finding, scan};
    use k8s_openapi::ByteString;

    fn secret(kind: &str, url: &str, annotations: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("ops-slack".into());
        s.metadata.namespace = Some("ops".into());
        s.metadata.labels = Some([(NOTIFIER_LABEL.to_string(), kind.to_string())].into());
        s.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        s.metadata.creation_timestamp = Some(at(900));
        s.data = Some([(URL_KEY.to_string(), ByteString(url.as_bytes().to_vec()))].into());
        s
    }

    #[test]
    fn a_labelled_secret_is_a_notifier_and_its_url_is_never_shown() {
        let n =
            Notifier::from_secret(&secret("slack", "https://hooks.test/T0/B0/xyz\n", &[])).unwrap();
        assert_eq!(
            (n.kind, n.url.as_str(), n.min_severity, n.resolved),
            (
                Kind::Slack,
                "https://hooks.test/T0/B0/xyz",
                Severity::High,
                false
            )
        );
        assert!(!format!("{n:?}").contains("xyz"), "{n:?}");
        let n = Notifier::from_secret(&secret(
            "teams",
            "http://127.0.0.1:9/x",
            &[(NOTIFY_MIN_SEVERITY, "Medium"), (NOTIFY_RESOLVED, "true")],
        ))
        .unwrap();
        assert_eq!(
            (n.kind, n.min_severity, n.resolved),
            (Kind::Teams, Severity::Medium, true)
        );
    }

    #[test]
    fn a_bad_notifier_secret_says_what_to_fix_without_the_url() {
        for (s, want) in [
            (
                secret("discord", "https://h.test/secret", &[]),
                "expected slack, teams or webhook",
            ),
            (secret("slack", "  ", &[]), "has no \"url\" key"),
            (
                secret("slack", "ftp://h.test/secret", &[]),
                "not an http(s) URL",
            ),
            (
                secret("slack", "https://h.test/sec ret", &[]),
                "not an http(s) URL",
            ),
            (
                secret(
                    "slack",
                    "https://h.test/secret",
                    &[(NOTIFY_MIN_SEVERITY, "severe")],
                ),
                "unknown severity \"severe\"",
            ),
            (
                secret(
                    "slack",
                    "https://h.test/secret",
                    &[(NOTIFY_RESOLVED, "yes")],
                ),
                "\"yes\" is not true or false",
            ),
        ] {
            let e = Notifier::from_secret(&s).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn a_notifier_wants_new_findings_at_its_severity_and_only_runs_after_it_was_made() {
        let n = Notifier::from_secret(&secret("webhook", "https://h.test/x", &[])).unwrap();
        let news = |f, counts| News::of(&scan(f, counts)).unwrap();
        assert!(n.wants(&news(vec![finding("a", Severity::High, 1001)], (1, 0, 0))));
        assert!(!n.wants(&news(vec![finding("a", Severity::Medium, 1001)], (1, 0, 0))));
        assert!(!n.wants(&news(vec![finding("a", Severity::High, 500)], (0, 1, 0))));
        // Resolved findings only when asked for.
        let resolved = news(vec![], (0, 0, 2));
        assert!(!n.wants(&resolved));
        let mut r = n.clone();
        r.resolved = true;
        assert!(r.wants(&resolved));
        // A notifier made after the run does not hear of it.
        let mut late = n.clone();
        late.since = Some(chrono(&at(2000)));
        assert!(!late.wants(&news(vec![finding("a", Severity::High, 1001)], (1, 0, 0))));
        // Its own namespace, or all from the operator's.
        assert!(n.covers("ops", "nuclei-system") && !n.covers("web", "nuclei-system"));
        assert!(n.covers("web", "ops"));
    }
}
