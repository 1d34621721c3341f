//! The message of one run to one notifier, in the shape its endpoint takes.
//! Bounded: at most [`MAX_LISTED`] findings, each field cut, so a run with
//! thousands of findings sends a message of a few kilobytes.

use serde_json::{Value, json};

use super::news::{News, plural};
use super::notifier::{Kind, Notifier};
use crate::api::{Finding, NucleiScan};
use kube::ResourceExt;

/// Most findings listed in one message.
pub const MAX_LISTED: usize = 10;
/// Longest text kept of one field of a finding.
const MAX_FIELD: usize = 200;

/// The request body for `notifier` about `news` of `scan`.
pub fn body(notifier: &Notifier, scan: &NucleiScan, news: &News) -> Value {
    let listed: Vec<&Finding> = news.at_least(notifier.min_severity).collect();
    let shown = &listed[..listed.len().min(MAX_LISTED)];
    let text = summary(notifier, scan, news, listed.len());
    match notifier.kind {
        Kind::Webhook => webhook(scan, news, shown, listed.len(), notifier, text),
        Kind::Slack => slack(shown, listed.len(), text),
        Kind::Teams => teams(shown, listed.len(), text),
    }
}

/// "web/shop-ingress: 2 new findings (1 critical, 1 high), 1 resolved".
fn summary(notifier: &Notifier, scan: &NucleiScan, news: &News, new: usize) -> String {
    let mut parts = Vec::new();
    if new > 0 {
        parts.push(format!(
            "{} ({})",
            plural(new, "new finding"),
            News::by_severity(news.at_least(notifier.min_severity))
        ));
    }
    if notifier.resolved && news.resolved > 0 {
        parts.push(format!(
            "{} resolved",
            plural(news.resolved as usize, "finding")
        ));
    }
    format!(
        "nuclei: {}/{}: {} (kubectl describe nucleiscan {} -n {})",
        scan.namespace().unwrap_or_default(),
        scan.name_any(),
        parts.join(", "),
        scan.name_any(),
        scan.namespace().unwrap_or_default(),
    )
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_FIELD) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn severity(f: &Finding) -> &'static str {
    f.severity.map_or("unknown", |s| s.as_str())
}

/// One line per finding: "[high] canary-page: https://shop.test/x".
fn line(f: &Finding) -> String {
    format!(
        "[{}] {}: {}",
        severity(f),
        cut(&f.template_id),
        cut(&f.matched_at)
    )
}

fn more(shown: usize, total: usize) -> Option<String> {
    (total > shown).then(|| format!("… and {} more", total - shown))
}

fn webhook(
    scan: &NucleiScan,
    news: &News,
    shown: &[&Finding],
    listed: usize,
    notifier: &Notifier,
    text: String,
) -> Value {
    let source = &scan.spec.source_ref;
    json!({
        "kind": "NucleiScanNews",
        "text": text,
        "scan": {
            "namespace": scan.namespace(),
            "name": scan.name_any(),
            "uid": scan.uid(),
        },
        "source": {"kind": source.kind.as_str(), "name": source.name, "namespace": source.namespace},
        "run": news.run.to_rfc3339(),
        "minSeverity": notifier.min_severity.as_str(),
        "newFindings": news.new_total,
        "newAtMinSeverity": listed,
        "unchangedFindings": news.unchanged,
        "resolvedFindings": news.resolved,
        "findings": shown.iter().map(|f| json!({
            "templateId": cut(&f.template_id),
            "name": cut(&f.template_name),
            "severity": severity(f),
            "host": cut(&f.host),
            "matchedAt": cut(&f.matched_at),
            "fingerprint": f.fingerprint,
            "cveIds": f.cve_ids.iter().take(5).map(|c| cut(c)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "findingsOmitted": listed - shown.len(),
    })
}

fn slack(shown: &[&Finding], listed: usize, text: String) -> Value {
    let mut lines: Vec<String> = shown.iter().map(|f| format!("• {}", line(f))).collect();
    lines.extend(more(shown.len(), listed));
    let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})];
    if !lines.is_empty() {
        blocks
            .push(json!({"type": "section", "text": {"type": "mrkdwn", "text": lines.join("\n")}}));
    }
    json!({"text": text, "blocks": blocks})
}

fn teams(shown: &[&Finding], listed: usize, text: String) -> Value {
    let mut facts: Vec<Value> = shown
        .iter()
        .map(|f| json!({"title": severity(f), "value": format!("{}: {}", cut(&f.template_id), cut(&f.matched_at))}))
        .collect();
    facts.extend(more(shown.len(), listed).map(|m| json!({"title": "", "value": m})));
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": text, "wrap": true, "weight": "Bolder"},
                    {"type": "FactSet", "facts": facts},
                ],
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Severity;
    use crate::notify::news::tests::{finding, scan};

    fn notifier(kind: Kind, resolved: bool) -> Notifier {
        Notifier {
            namespace: "ops".into(),
            name: "n".into(),
            kind,
            url: "https://h.test/x".into(),
            min_severity: Severity::High,
            resolved,
            since: None,
        }
    }

    fn news_of(n: usize) -> (NucleiScan, News) {
        let mut findings = vec![finding("low", Severity::Low, 1001)];
        for i in 0..n {
            let mut f = finding(&format!("t{i}"), Severity::High, 1001);
            f.matched_at = format!("https://shop.test/{}", "x".repeat(5000));
            findings.insert(0, f);
        }
        let s = scan(findings, (n as i64 + 1, 0, 3));
        let news = News::of(&s).unwrap();
        (s, news)
    }

    const TEXT: &str = "nuclei: web/shop-ingress: 2 new findings (2 high), 3 findings resolved \
                        (kubectl describe nucleiscan shop-ingress -n web)";

    #[test]
    fn the_generic_webhook_gets_counts_and_the_findings_at_its_severity() {
        let (s, news) = news_of(2);
        let b = body(&notifier(Kind::Webhook, true), &s, &news);
        assert_eq!(b["text"], TEXT);
        assert_eq!(b["scan"]["name"], "shop-ingress");
        assert_eq!(b["scan"]["namespace"], "web");
        assert_eq!(
            (
                &b["newFindings"],
                &b["newAtMinSeverity"],
                &b["resolvedFindings"],
                &b["unchangedFindings"]
            ),
            (&json!(3), &json!(2), &json!(3), &json!(0))
        );
        let findings = b["findings"].as_array().unwrap();
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0]["templateId"], "t1");
        assert_eq!(findings[0]["severity"], "high");
        assert_eq!(b["findingsOmitted"], 0);
        assert_eq!(b["run"], "1970-01-01T00:16:50+00:00");
    }

    #[test]
    fn slack_and_teams_get_their_own_shapes() {
        let (s, news) = news_of(2);
        let b = body(&notifier(Kind::Slack, true), &s, &news);
        assert_eq!(b["text"], TEXT);
        let list = b["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(
            list.starts_with("• [high] t1: https://shop.test/xxx"),
            "{list}"
        );
        assert_eq!(list.lines().count(), 2, "{list}");
        let b = body(&notifier(Kind::Teams, true), &s, &news);
        assert_eq!(b["type"], "message");
        let card = &b["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["body"][0]["text"], TEXT);
        assert_eq!(card["body"][1]["facts"].as_array().unwrap().len(), 2);
        // Resolved findings are not mentioned unless asked for.
        let b = body(&notifier(Kind::Slack, false), &s, &news);
        assert!(!b["text"].as_str().unwrap().contains("resolved"), "{b}");
    }

    #[test]
    fn a_run_with_thousands_of_findings_sends_a_small_message() {
        let (s, news) = news_of(3000);
        for kind in Kind::ALL {
            let b = body(&notifier(kind, true), &s, &news).to_string();
            assert!(b.len() < 8 * 1024, "{kind:?}: {} bytes", b.len());
            assert!(
                b.contains("and 2990 more") || kind == Kind::Webhook,
                "{kind:?}"
            );
        }
        let b = body(&notifier(Kind::Webhook, true), &s, &news);
        assert_eq!(
            (&b["findingsOmitted"], &b["newAtMinSeverity"]),
            (&json!(2990), &json!(3000))
        );
    }
}
