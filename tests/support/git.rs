//! A git repository served read-only on loopback by `git daemon`, which
//! counts the clones made from it, and the helper processes that outlive a
//! test (git daemon, an operator started by hand).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A long-lived helper process, killed when this test binary exits: it is
/// started with a parent-death signal from a thread that lives as long as the
/// process (a test's own thread ends with the test, and the signal follows
/// the thread).
pub struct Daemon {
    pub pid: u32,
}

impl Daemon {
    pub fn spawn(mut cmd: std::process::Command) -> Daemon {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                tx.send(Ok(child.id())).unwrap();
                let _ = child.wait();
            }
            Err(e) => tx.send(Err(e)).unwrap(),
        });
        let pid = rx
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("spawning a helper process: {e}"));
        Daemon { pid }
    }
}

/// A command run under `setpriv --pdeathsig KILL`.
pub fn guarded(program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--", program])
        .stdin(Stdio::null());
    cmd
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bare repository `templates.git` with branch `main`, served over
/// `git://127.0.0.1:<port>/templates.git`, and the working copy its commits
/// are made in.
pub struct GitServer {
    dir: tempfile::TempDir,
    _daemon: Daemon,
    pub url: String,
}

impl GitServer {
    /// Serves a repository whose first commit holds `files` (path, content).
    pub fn start(files: &[(&str, &str)]) -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        write_files(&work, files);
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "e2e templates"]);
        git(
            dir.path(),
            &["clone", "-q", "--bare", "work", "templates.git"],
        );
        // Run before every request: one line per upload-pack (clone/fetch).
        let hook = dir.path().join("access-hook");
        let log = dir.path().join("access.log");
        std::fs::write(
            &hook,
            format!("#!/bin/sh\necho \"$1 $2\" >> '{}'\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();

        let port = free_port();
        // git-daemon itself, not `git daemon`: that runs it as a child, which
        // would outlive the parent-death signal.
        let exec_path = std::process::Command::new("git")
            .arg("--exec-path")
            .output()
            .unwrap();
        let exec_path = String::from_utf8(exec_path.stdout).unwrap();
        let daemon_bin = Path::new(exec_path.trim()).join("git-daemon");
        let mut cmd = guarded(daemon_bin.to_str().unwrap());
        cmd.arg("--reuseaddr")
            .arg("--export-all")
            .arg("--informative-errors")
            .arg(format!("--access-hook={}", hook.display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", dir.path().display()))
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let daemon = Daemon::spawn(cmd);
        let url = format!("git://127.0.0.1:{port}/templates.git");
        // Ready once it serves the repository.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = std::process::Command::new("git")
                .args(["ls-remote", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "git daemon never served {url}");
            std::thread::sleep(Duration::from_millis(100));
        }
        GitServer {
            dir,
            _daemon: daemon,
            url,
        }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Commits `files` on `main` and pushes to the served repository; returns
    /// the new commit.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        let work = self.work();
        write_files(&work, files);
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", message]);
        let bare = self.dir.path().join("templates.git");
        git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        self.head()
    }

    /// The commit `main` is at.
    pub fn head(&self) -> String {
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    /// How many clones or fetches were served (upload-pack requests, the
    /// readiness probe's `ls-remote` included).
    pub fn upload_packs(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("upload-pack "))
            .count()
    }
}

fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// Runs git in `cwd`; its trimmed stdout.
fn git(cwd: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(cwd)
        .args([
            "-c",
            "user.name=e2e",
            "-c",
            "user.email=e2e@example.invalid",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A template matching the canary page, extracting its token.
pub fn canary_template(id: &str, severity: &str, tags: &str) -> String {
    format!(
        r#"id: {id}

info:
  name: {id} (e2e)
  author: nuclei-operator
  severity: {severity}
  description: Matches the canary page of the end-to-end target.
  tags: {tags}

http:
  - method: GET
    path:
      - "{{{{BaseURL}}}}/canary"
    matchers:
      - type: word
        name: canary-page
        words:
          - "CANARY-OK"
    extractors:
      - type: regex
        group: 1
        regex:
          - "token=([a-z0-9]+)"
"#
    )
}
