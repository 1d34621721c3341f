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

impl GitServer {
    /// Also serves the repository over smart HTTP (`git http-backend`) at the
    /// returned URL, only to requests with HTTP Basic `user`:`password`
    /// (others get 401, as a private repository's host answers).
    pub fn serve_http(&self, user: &str, password: &str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let root = self.dir.path().to_path_buf();
        let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, expected) = (root.clone(), expected.clone());
                std::thread::spawn(move || {
                    let _ = serve_http_request(stream, &root, &expected);
                });
            }
        });
        format!("http://127.0.0.1:{port}/templates.git")
    }
}

/// One HTTP/1.1 request, answered and closed: 401 without the expected
/// Authorization, else whatever `git http-backend` (CGI) says.
fn serve_http_request(
    stream: std::net::TcpStream,
    root: &Path,
    expected: &str,
) -> std::io::Result<()> {
    use std::io::{BufRead, Read, Write};
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut out = stream;
    if headers.get("authorization").map(String::as_str) != Some(expected) {
        return out.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"e2e\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let mut body = Vec::new();
    if let Some(n) = headers
        .get("content-length")
        .and_then(|n| n.parse::<usize>().ok())
    {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut cgi = std::process::Command::new("git");
    cgi.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "e2e")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (header, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(v) = headers.get(header) {
            cgi.env(var, v);
        }
    }
    let mut child = cgi.spawn()?;
    child.stdin.take().unwrap().write_all(&body)?;
    let output = child.wait_with_output()?;
    let split = output
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            output
                .stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        });
    let Some((at, sep)) = split else {
        return out.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
    };
    let head = String::from_utf8_lossy(&output.stdout[..at]).into_owned();
    let payload = &output.stdout[at + sep..];
    let mut status = "200 OK".to_owned();
    let mut response_headers = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
            Some(_) => response_headers.push_str(&format!("{}\r\n", line.trim_end())),
            None => {}
        }
    }
    write!(
        out,
        "HTTP/1.1 {status}\r\n{response_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )?;
    out.write_all(payload)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
