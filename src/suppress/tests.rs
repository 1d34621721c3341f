use kube::ResourceExt;
use proptest::prelude::*;

use super::*;
use crate::api::NucleiFindingExceptionSpec;
use crate::scan::status::time;

fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap()
}

fn exception(name: &str, template_id: &str, target: &str) -> NucleiFindingException {
    let mut ex = NucleiFindingException::new(
        name,
        NucleiFindingExceptionSpec {
            template_id: template_id.into(),
            target: target.into(),
            reason: "accepted risk".into(),
            accepted_by: "alice@example.com".into(),
            expires: None,
        },
    );
    ex.metadata.namespace = Some("shop".into());
    ex
}

fn finding(id: &str, severity: Severity, matched_at: &str) -> Finding {
    Finding {
        template_id: id.into(),
        severity: Some(severity),
        host: "shop.example.com".into(),
        matched_at: matched_at.into(),
        ..Default::default()
    }
}

fn rule(template_id: &str, target: &str) -> Rule {
    match State::of(&exception("x", template_id, target), at(0)) {
        State::Active(rule, _) => rule,
        other => panic!("not active: {other:?}"),
    }
}

#[test]
fn a_star_stands_for_any_run_of_characters_and_nothing_else_is_special() {
    assert!(glob("abc", "abc"));
    assert!(!glob("abc", "abcd"));
    assert!(!glob("abc", "ab"));
    assert!(glob("*", ""));
    assert!(glob("a*", "a"));
    assert!(glob("*.example.com", "shop.example.com"));
    assert!(!glob("*.example.com", "example.com"));
    assert!(glob(
        "https://shop.example.com/admin*",
        "https://shop.example.com/admin/x?y"
    ));
    assert!(glob("*a*b*c", "xxaybbzc"));
    assert!(!glob("*a*b*c", "xxaybbzcd"));
    assert!(glob("a?c", "a?c"));
    assert!(!glob("a?c", "abc"));
    assert!(glob("a**b", "ab"));
}

#[test]
fn hosts_are_read_from_urls_and_host_port_pairs() {
    assert_eq!(
        host_of("https://shop.example.com/x"),
        Some("shop.example.com")
    );
    assert_eq!(
        host_of("http://u:p@shop.example.com:8080?q"),
        Some("shop.example.com")
    );
    assert_eq!(host_of("shop.example.com:443"), Some("shop.example.com"));
    assert_eq!(host_of("shop.example.com"), Some("shop.example.com"));
    assert_eq!(host_of("http://[::1]:80/"), Some("::1"));
    assert_eq!(host_of("2001:db8::1"), Some("2001:db8::1"));
    // A URL inside the query is not the scheme.
    assert_eq!(host_of("shop.test/x?u=http://evil.test"), Some("shop.test"));
    assert_eq!(host_of(""), None);
    assert_eq!(crate::url::scheme_end("https://a"), Some(5));
    assert_eq!(crate::url::scheme_end("shop.test/x?u=http://evil"), None);
}

#[test]
fn a_rule_matches_its_template_anywhere_or_anything_at_its_target() {
    let git = finding(
        "git-config",
        Severity::Medium,
        "https://shop.example.com/.git/config",
    );
    let admin = finding(
        "admin-panel",
        Severity::High,
        "https://shop.example.com/admin",
    );
    let other_host = Finding {
        host: "api.example.com".into(),
        ..finding(
            "git-config",
            Severity::Medium,
            "https://api.example.com/.git/config",
        )
    };

    let by_template = rule("git-config", "");
    assert!(by_template.matches(&git));
    assert!(by_template.matches(&other_host));
    assert!(!by_template.matches(&admin));

    let by_host = rule("", "shop.example.com");
    assert!(by_host.matches(&git) && by_host.matches(&admin));
    assert!(!by_host.matches(&other_host));

    let both = rule("git-config", "*.example.com");
    assert!(both.matches(&git) && both.matches(&other_host));
    assert!(!both.matches(&admin));

    let by_url = rule("", "HTTPS://Shop.Example.com/admin*");
    assert!(by_url.matches(&admin), "ASCII case is ignored");
    assert!(!by_url.matches(&git));

    // A host pattern never matches a URL on another host that mentions it.
    let redirect = Finding {
        host: "other.test".into(),
        ..finding(
            "open-redirect",
            Severity::Medium,
            "https://other.test/r?to=https://a.example.com",
        )
    };
    assert!(!rule("", "*.example.com").matches(&redirect));
    assert!(!rule("", "*example.com*").matches(&redirect));
    assert!(rule("", "https://other.test/*").matches(&redirect));
    let v6 = Finding {
        host: "http://[::1]:80".into(),
        ..finding("x", Severity::Low, "http://[::1]:80/x")
    };
    assert!(rule("", "::1").matches(&v6));
}

#[test]
fn an_exception_is_active_until_it_expires_and_invalid_when_it_would_accept_everything() {
    let mut ex = exception("x", "git-config", "");
    ex.spec.expires = Some(time(at(100)));
    assert!(matches!(State::of(&ex, at(99)), State::Active(_, Some(t)) if t == at(100)));
    assert_eq!(State::of(&ex, at(100)), State::Expired(at(100)));

    for (template, target) in [("", ""), ("", "*"), (" ", "**")] {
        let ex = exception("x", template, target);
        assert!(
            matches!(State::of(&ex, at(0)), State::Invalid(ref m) if m.contains("every finding")),
            "{template:?} {target:?}"
        );
    }
    let mut blank = exception("x", "git-config", "");
    blank.spec.reason = "  ".into();
    assert!(matches!(State::of(&blank, at(0)), State::Invalid(m) if m.contains("spec.reason")));
    let mut nobody = exception("x", "git-config", "");
    nobody.spec.accepted_by = String::new();
    assert!(
        matches!(State::of(&nobody, at(0)), State::Invalid(m) if m.contains("spec.acceptedBy"))
    );
    let mut unreadable = exception("x", "git-config", "");
    unreadable.metadata.annotations = Some(
        [(
            crate::cache::UNREADABLE.to_owned(),
            "spec.expires: bad date".to_owned(),
        )]
        .into(),
    );
    assert!(
        matches!(State::of(&unreadable, at(0)), State::Invalid(m) if m.contains("spec.expires: bad date"))
    );
    let long = exception("x", "", &"a".repeat(MAX_PATTERN_LEN + 1));
    assert!(matches!(State::of(&long, at(0)), State::Invalid(m) if m.contains("longer")));
}

#[test]
fn marks_name_the_first_exception_by_name_and_count_by_severity() {
    let mut expired = exception("a-expired", "git-config", "");
    expired.spec.expires = Some(time(at(10)));
    let exceptions = [
        exception("z-host", "", "shop.example.com"),
        exception("m-git", "git-config", ""),
        expired,
        exception("bad", "", "*"),
    ];
    let rules = Rules::of(&exceptions, at(20));
    let mut findings = vec![
        finding(
            "git-config",
            Severity::Medium,
            "https://shop.example.com/.git/config",
        ),
        finding(
            "admin-panel",
            Severity::High,
            "https://shop.example.com/admin",
        ),
        Finding {
            host: "api.example.com".into(),
            ..finding("tech", Severity::Info, "https://api.example.com/")
        },
    ];
    let marks = mark(&mut findings, &rules);
    let by: Vec<&str> = findings.iter().map(|f| f.suppressed_by.as_str()).collect();
    assert_eq!(by, ["m-git", "z-host", ""]);
    assert!(marks.changed);
    assert_eq!(marks.total(), 2);
    assert_eq!(marks.by_severity["medium"], 1);
    assert_eq!(marks.by_severity["high"], 1);
    assert_eq!(marks.by_severity.len(), Severity::ALL.len());
    assert_eq!(
        marks.by_exception,
        BTreeMap::from([("m-git".to_owned(), 1), ("z-host".to_owned(), 1)])
    );

    // Marking again changes nothing; without the rules the marks go.
    assert!(!mark(&mut findings, &rules).changed);
    let gone = mark(&mut findings, &Rules::default());
    assert!(gone.changed && gone.total() == 0);
    assert!(findings.iter().all(|f| f.suppressed_by.is_empty()));
}

proptest! {
    /// Marking is a function of the findings and the rules: whatever the
    /// marks were before, a finding is marked exactly when a rule accepts
    /// it, the counts add up, and a second marking changes nothing.
    #[test]
    fn marks_depend_only_on_the_findings_and_the_rules(
        findings in prop::collection::vec(
            (0..4usize, 0..3usize, 0..6usize, prop::option::of("[a-z]{1,3}")),
            0..30,
        ),
        exceptions in prop::collection::vec((0..5usize, 0..5usize, 0..200i64), 0..5),
        now in 0..200i64,
    ) {
        let ids = ["git-config", "admin-panel", "tech", "cve-1"];
        let hosts = ["shop.example.com", "api.example.com", "x.test"];
        let targets = ["", "*.example.com", "shop.example.com", "https://*/admin*", "x.test"];
        let mut findings: Vec<Finding> = findings
            .into_iter()
            .map(|(id, host, sev, old)| Finding {
                template_id: ids[id].into(),
                severity: Some(Severity::ALL[sev]),
                host: hosts[host].into(),
                matched_at: format!("https://{}/{}", hosts[host], if id == 1 { "admin" } else { "x" }),
                suppressed_by: old.unwrap_or_default(),
                ..Default::default()
            })
            .collect();
        let exceptions: Vec<NucleiFindingException> = exceptions
            .into_iter()
            .enumerate()
            .map(|(i, (id, target, expires))| {
                let mut ex = exception(
                    &format!("ex-{i}"),
                    if id == 4 { "" } else { ids[id] },
                    targets[target],
                );
                ex.spec.expires = (expires % 2 == 0).then(|| time(at(expires)));
                ex
            })
            .collect();
        let rules = Rules::of(&exceptions, at(now));
        let marks = mark(&mut findings, &rules);
        let mut total = 0;
        for f in &findings {
            let accepting: Vec<&NucleiFindingException> = exceptions
                .iter()
                .filter(|ex| matches!(State::of(ex, at(now)), State::Active(ref r, _) if r.matches(f)))
                .collect();
            prop_assert_eq!(f.suppressed_by.is_empty(), accepting.is_empty());
            if !accepting.is_empty() {
                total += 1;
                let first = accepting.iter().map(|ex| ex.name_any()).min().unwrap();
                prop_assert_eq!(&f.suppressed_by, &first);
            }
        }
        prop_assert_eq!(marks.total(), total);
        prop_assert_eq!(marks.by_severity.values().sum::<i64>(), total);
        prop_assert!(!mark(&mut findings, &rules).changed);
    }
}
