//! The seed design's command line, `--mode=controller` and `--mode=scanner
//! --scan-id=NAMESPACE/NAME`, still accepted: rewritten into this binary's
//! subcommands before parsing.

/// `args` (the program name first) in subcommand form when they use
/// `--mode`: `--mode=controller` becomes `controller`, `--mode=scanner
/// --scan-id=ID` becomes `scanner --scan NAMESPACE/NAME`, where an `ID`
/// without a namespace takes `scan_namespace` (SCAN_NAMESPACE). Both
/// `--flag=value` and `--flag value` forms; the other arguments follow
/// unchanged. `Ok(None)` when there is no `--mode`.
pub fn legacy_args(
    args: &[String],
    scan_namespace: Option<&str>,
) -> Result<Option<Vec<String>>, String> {
    let mut mode = None;
    let mut scan_id = None;
    let mut rest = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let slot = match flag {
            "--mode" => &mut mode,
            "--scan-id" => &mut scan_id,
            _ => {
                rest.push(arg.clone());
                continue;
            }
        };
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or(format!("{flag} needs a value"))?,
        };
        *slot = Some(value);
    }
    let Some(mode) = mode else {
        return Ok(None);
    };
    let program = args
        .first()
        .cloned()
        .unwrap_or_else(|| "nuclei-operator".into());
    let mut out = vec![program];
    match mode.as_str() {
        "controller" => out.push("controller".into()),
        "scanner" => {
            let id = scan_id.ok_or("--mode=scanner needs --scan-id=NAMESPACE/NAME")?;
            let key = if id.contains('/') {
                id
            } else {
                let ns = scan_namespace
                    .filter(|ns| !ns.is_empty())
                    .ok_or("--scan-id without a namespace needs SCAN_NAMESPACE")?;
                format!("{ns}/{id}")
            };
            out.extend(["scanner".into(), "--scan".into(), key]);
        }
        other => return Err(format!("unknown --mode={other} (controller or scanner)")),
    }
    out.extend(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn rewrite(s: &str, ns: Option<&str>) -> Result<Option<String>, String> {
        legacy_args(&args(s), ns).map(|a| a.map(|a| a.join(" ")))
    }

    #[test]
    fn the_seed_designs_scanner_form_becomes_the_scanner_subcommand() {
        for form in [
            "op --mode=scanner --scan-id=shop/web --nuclei=/bin/nuclei",
            "op --mode scanner --scan-id shop/web --nuclei=/bin/nuclei",
            "op --scan-id=shop/web --nuclei=/bin/nuclei --mode=scanner",
        ] {
            assert_eq!(
                rewrite(form, None).unwrap().as_deref(),
                Some("op scanner --scan shop/web --nuclei=/bin/nuclei"),
                "{form}"
            );
        }
        assert_eq!(
            rewrite("op --mode=scanner --scan-id=web", Some("shop"))
                .unwrap()
                .as_deref(),
            Some("op scanner --scan shop/web")
        );
    }

    #[test]
    fn the_controller_form_and_plain_arguments() {
        assert_eq!(
            rewrite("op --mode=controller --max-concurrent-scans=3", None)
                .unwrap()
                .as_deref(),
            Some("op controller --max-concurrent-scans=3")
        );
        assert_eq!(
            rewrite("op controller --max-concurrent-scans=3", None),
            Ok(None)
        );
        assert_eq!(rewrite("op", None), Ok(None));
    }

    #[test]
    fn what_cannot_be_rewritten_says_why() {
        let err = |s: &str, ns| rewrite(s, ns).unwrap_err();
        assert!(err("op --mode=scanner", None).contains("needs --scan-id"));
        assert!(err("op --mode=scanner --scan-id=web", None).contains("SCAN_NAMESPACE"));
        assert!(err("op --mode=scanner --scan-id=web", Some("")).contains("SCAN_NAMESPACE"));
        assert!(err("op --mode=audit", None).contains("unknown --mode=audit"));
        assert!(err("op --mode", None).contains("--mode needs a value"));
    }
}
