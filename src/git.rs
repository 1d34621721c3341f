//! Git template sources: a repository URL with an optional ref (branch, tag
//! or commit) and an optional directory inside it, as the operator's
//! `TEMPLATE_REPOSITORIES` and a scan's `templateURLs` name them, and the
//! commit a clone checked out.
//!
//! A `templateURLs` entry is `URL[#REF[:PATH]]`, the syntax `docker build`
//! uses for git contexts: `https://github.com/acme/templates.git#v2:http/cves`.
//! Git forbids `:` in ref names, so the first `:` after `#` ends the ref.

use std::fmt;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 2048;
/// Most TEMPLATE_REPOSITORIES entries (each is an init container of every
/// scanner pod).
pub const MAX_REPOSITORIES: usize = 16;
/// Longest accepted ref or path.
const MAX_PART_LEN: usize = 255;

/// One git repository to take templates from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// The repository: `https://`, `http://`, `ssh://`, `git://` or
    /// `user@host:path`.
    pub url: String,
    /// Branch, tag or full commit id; the remote's default branch when unset.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Directory inside the repository whose templates run; the whole
    /// repository when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl GitSource {
    /// Parses and checks a `templateURLs` entry, `URL[#REF[:PATH]]`.
    pub fn parse(entry: &str) -> Result<GitSource, String> {
        let entry = entry.trim();
        let (url, rest) = match entry.split_once('#') {
            Some((url, rest)) => (url, Some(rest)),
            None => (entry, None),
        };
        let (git_ref, path) = match rest {
            None => (None, None),
            Some(rest) => match rest.split_once(':') {
                Some((r, p)) => (Some(r), Some(p)),
                None => (Some(rest), None),
            },
        };
        GitSource::new(url, git_ref, path)
    }

    /// A checked source: `git_ref` and `path` empty mean unset, a leading
    /// `/` of `path` is the repository's root.
    pub fn new(url: &str, git_ref: Option<&str>, path: Option<&str>) -> Result<GitSource, String> {
        let url = url.trim();
        check_url(url)?;
        let git_ref = git_ref.map(str::trim).filter(|r| !r.is_empty());
        if let Some(r) = git_ref {
            check_ref(r).map_err(|e| format!("ref {r:?}: {e}"))?;
        }
        let path = path
            .map(|p| p.trim().trim_matches('/'))
            .filter(|p| !p.is_empty());
        if let Some(p) = path {
            check_path(p).map_err(|e| format!("path {p:?}: {e}"))?;
        }
        Ok(GitSource {
            url: url.to_owned(),
            git_ref: git_ref.map(str::to_owned),
            path: path.map(str::to_owned),
        })
    }

    /// Whether the ref is a full commit id (SHA-1 or SHA-256), which
    /// `git clone --branch` cannot take.
    pub fn pins_commit(&self) -> bool {
        self.git_ref.as_deref().is_some_and(is_commit_id)
    }
}

/// The `templateURLs` form, `URL[#REF[:PATH]]`.
impl fmt::Display for GitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)?;
        match (&self.git_ref, &self.path) {
            (None, None) => Ok(()),
            (r, None) => write!(f, "#{}", r.as_deref().unwrap_or_default()),
            (r, Some(p)) => write!(f, "#{}:{p}", r.as_deref().unwrap_or_default()),
        }
    }
}

/// A `TEMPLATE_REPOSITORIES` entry as the seed design's Helm values write it:
/// `{url, branch, path}`, where `branch` may also name a tag or a commit,
/// and `secret` the Secret with the credentials of a private repository.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryValue {
    url: String,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    secret: Option<String>,
}

/// A list of git sources (the scanner's and the publisher's
/// TEMPLATE_SOURCES).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repositories(pub Vec<GitSource>);

/// The operator's `TEMPLATE_REPOSITORIES`: the sources, and aligned with
/// them the Secret (in the operator's namespace) each is fetched with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateRepositories {
    pub sources: Vec<GitSource>,
    pub secrets: Vec<Option<String>>,
}

/// Parses `TEMPLATE_REPOSITORIES`: a JSON list of `{url, branch, path,
/// secret}`.
pub fn parse_repositories(s: &str) -> Result<TemplateRepositories, String> {
    if s.trim().is_empty() {
        return Ok(TemplateRepositories::default());
    }
    let values: Vec<RepositoryValue> = serde_json::from_str(s)
        .map_err(|e| format!("expected a JSON list of {{url, branch, path, secret}}: {e}"))?;
    if values.len() > MAX_REPOSITORIES {
        return Err(format!(
            "{} repositories, at most {MAX_REPOSITORIES} are allowed",
            values.len()
        ));
    }
    let mut repositories = TemplateRepositories::default();
    for (i, v) in values.iter().enumerate() {
        let source = GitSource::new(&v.url, v.branch.as_deref(), v.path.as_deref())
            .map_err(|e| format!("[{i}]: {e}"))?;
        let secret = v.secret.as_deref().map(str::trim).filter(|s| !s.is_empty());
        if let Some(name) = secret
            && !(name.len() <= crate::names::MAX_DNS_SUBDOMAIN
                && crate::names::is_dns_subdomain(name))
        {
            return Err(format!(
                "[{i}].secret: {name:?} is not a Secret name (lower-case letters, digits, '-' and '.')"
            ));
        }
        repositories.sources.push(source);
        repositories.secrets.push(secret.map(str::to_owned));
    }
    Ok(repositories)
}

/// Accepts `https://`, `http://`, `ssh://` and `git://` URLs and scp-style
/// `user@host:path`; rejects everything git could read as an option, a local
/// path or a command transport (`ext::`).
fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("empty URL".to_owned());
    }
    if url.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} characters"));
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} contains {c:?}"));
    }
    let schemed = ["https://", "http://", "ssh://", "git://"].iter().any(|s| {
        url.len() > s.len()
            && url
                .get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s))
    });
    let scp_like = !url.starts_with('-')
        && !url.contains("://")
        && url
            .split_once(':')
            .is_some_and(|(user_host, path)| user_host.contains('@') && !path.is_empty());
    if schemed || scp_like {
        Ok(())
    } else {
        Err(format!(
            "{url:?} is not a git URL (use https://, http://, ssh://, git:// or user@host:path)"
        ))
    }
}

/// The rules of `git check-ref-format` that matter here, and no leading `-`
/// (it would be read as an option).
fn check_ref(r: &str) -> Result<(), String> {
    if r.len() > MAX_PART_LEN {
        return Err(format!("longer than {MAX_PART_LEN} characters"));
    }
    if r.starts_with('-') || r.starts_with('/') || r.ends_with('/') || r.ends_with('.') {
        return Err("may not start with - or /, or end with / or .".to_owned());
    }
    if r.contains("..") || r.contains("//") || r.contains("@{") || r.ends_with(".lock") {
        return Err("may not contain .., //, @{ or end with .lock".to_owned());
    }
    if let Some(c) = r
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(*c))
    {
        return Err(format!("may not contain {c:?}"));
    }
    Ok(())
}

/// A relative directory that stays inside the repository.
fn check_path(p: &str) -> Result<(), String> {
    if p.len() > MAX_PART_LEN {
        return Err(format!("longer than {MAX_PART_LEN} characters"));
    }
    if let Some(c) = p.chars().find(|c| c.is_control()) {
        return Err(format!("may not contain {c:?}"));
    }
    if p.split('/').any(|part| part == ".." || part == ".git") {
        return Err("may not contain .. or .git".to_owned());
    }
    Ok(())
}

fn is_commit_id(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit checked out in the clone at `dir` (`git rev-parse HEAD`
/// without git): a detached `HEAD`, or the branch it names as a loose ref or
/// in `packed-refs`. `None` when `dir` is not a clone.
pub fn head_commit(dir: &Path) -> Option<String> {
    let git = dir.join(".git");
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(name) = head.strip_prefix("ref:").map(str::trim) else {
        return is_commit_id(head).then(|| head.to_ascii_lowercase());
    };
    if let Ok(loose) = std::fs::read_to_string(git.join(name)) {
        let loose = loose.trim();
        return is_commit_id(loose).then(|| loose.to_ascii_lowercase());
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (id, r) = line.split_once(' ')?;
        (r == name && is_commit_id(id)).then(|| id.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_url_names_a_ref_and_a_directory_after_the_hash() {
        let s = GitSource::parse("https://github.com/acme/t.git#v2:http/cves/").unwrap();
        assert_eq!(s.url, "https://github.com/acme/t.git");
        assert_eq!(s.git_ref.as_deref(), Some("v2"));
        assert_eq!(s.path.as_deref(), Some("http/cves"));
        assert_eq!(s.to_string(), "https://github.com/acme/t.git#v2:http/cves");

        let plain = GitSource::parse(" git://127.0.0.1:9418/t.git ").unwrap();
        assert_eq!((plain.git_ref, plain.path), (None, None));
        // The default branch with a directory, and a ref alone.
        let path_only = GitSource::parse("https://h/t#:/community").unwrap();
        assert_eq!(path_only.git_ref, None);
        assert_eq!(path_only.path.as_deref(), Some("community"));
        assert_eq!(path_only.to_string(), "https://h/t#:community");
        let ref_only = GitSource::parse("https://h/t#release/2026").unwrap();
        assert_eq!(ref_only.git_ref.as_deref(), Some("release/2026"));
        assert_eq!(ref_only.to_string(), "https://h/t#release/2026");
        // Every form reads back as itself.
        for s in [path_only, ref_only] {
            assert_eq!(GitSource::parse(&s.to_string()).unwrap(), s);
        }
    }

    #[test]
    fn urls_refs_and_paths_git_could_misread_are_refused() {
        for (entry, why) in [
            ("", "empty URL"),
            ("/etc/passwd", "not a git URL"),
            ("file:///etc", "not a git URL"),
            ("ext::sh -c id", "contains ' '"),
            ("--upload-pack=x", "not a git URL"),
            ("https://h/t#--upload-pack=x", "may not start with -"),
            ("https://h/t#a..b", "may not contain .."),
            ("https://h/t#a b", "may not contain ' '"),
            ("https://h/t#main:../../etc", "may not contain .."),
            (
                "https://h/t#main:a/.git/hooks",
                "may not contain .. or .git",
            ),
        ] {
            let e = GitSource::parse(entry).unwrap_err();
            assert!(e.contains(why), "{entry:?}: {e}");
        }
        assert!(GitSource::parse("git@github.com:acme/t.git#main").is_ok());
    }

    #[test]
    fn a_full_commit_id_pins_a_commit_and_a_branch_does_not() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert!(
            GitSource::parse(&format!("https://h/t#{sha}"))
                .unwrap()
                .pins_commit()
        );
        assert!(!GitSource::parse("https://h/t#main").unwrap().pins_commit());
        assert!(
            !GitSource::parse("https://h/t#0123456")
                .unwrap()
                .pins_commit()
        );
        assert!(!GitSource::parse("https://h/t").unwrap().pins_commit());
    }

    #[test]
    fn repositories_take_the_seed_designs_helm_values() {
        let TemplateRepositories { sources: r, .. } = parse_repositories(
            r#"[{"url": "https://github.com/projectdiscovery/nuclei-templates", "branch": "main", "path": "/templates/community"},
                {"url": "git://127.0.0.1/t.git"}]"#,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].git_ref.as_deref(), Some("main"));
        assert_eq!(r[0].path.as_deref(), Some("templates/community"));
        assert_eq!(r[1], GitSource::parse("git://127.0.0.1/t.git").unwrap());
        assert_eq!(
            parse_repositories(" ").unwrap(),
            TemplateRepositories::default()
        );
        // A private repository names the Secret it is fetched with.
        let with = parse_repositories(
            r#"[{"url": "https://h/a"}, {"url": "https://h/private", "secret": " git-creds "}]"#,
        )
        .unwrap();
        assert_eq!(with.secrets, [None, Some("git-creds".to_owned())]);
        let e =
            parse_repositories(r#"[{"url": "https://h/t", "secret": "Not_A_Name"}]"#).unwrap_err();
        assert!(e.starts_with("[0].secret: "), "{e}");
        let e = parse_repositories(r#"[{"url": "https://h/t"}, {"url": "/local"}]"#).unwrap_err();
        assert!(e.starts_with("[1]: "), "{e}");
        let e = parse_repositories(r#"[{"url": "https://h/t", "brnch": "x"}]"#).unwrap_err();
        assert!(e.contains("brnch"), "{e}");
    }

    #[test]
    fn the_head_commit_is_read_from_a_detached_head_a_loose_ref_or_packed_refs() {
        let sha = "89abcdef0123456789abcdef0123456789abcdef";
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path().join(".git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        assert_eq!(head_commit(dir.path()), None);
        std::fs::write(git.join("HEAD"), format!("{}\n", sha.to_uppercase())).unwrap();
        assert_eq!(head_commit(dir.path()).as_deref(), Some(sha));
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted\n{sha} refs/heads/main\n"),
        )
        .unwrap();
        assert_eq!(head_commit(dir.path()).as_deref(), Some(sha));
        let loose = "fedcba9876543210fedcba9876543210fedcba98";
        std::fs::write(git.join("refs/heads/main"), format!("{loose}\n")).unwrap();
        assert_eq!(head_commit(dir.path()).as_deref(), Some(loose));
    }
}
