//! The real nuclei binary runs a template written in this repo against a local
//! HTTP server and reports the match.

use std::path::Path;

use devcluster::Tools;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A one-page HTTP server on loopback serving the canary the test templates match.
pub async fn canary_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let body = if req.starts_with("GET /canary") {
                    "CANARY-OK token=abc123\n"
                } else {
                    "hello\n"
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn nuclei_runs_a_repo_template_against_a_local_server_and_reports_the_match() {
    let tools = Tools::locate().unwrap();
    let nuclei = tools.require(&tools.nuclei).unwrap().to_owned();
    let port = canary_server().await;
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/templates/canary.yaml");
    let out = tokio::process::Command::new(nuclei)
        .args(["-jsonl", "-silent", "-nc", "-duc", "-or", "-ot", "-u"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("-t")
        .arg(&templates)
        .env("HOME", tempfile::tempdir().unwrap().keep())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "nuclei failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0]["template-id"], "nuclei-operator-canary");
    assert_eq!(
        lines[0]["matched-at"],
        format!("http://127.0.0.1:{port}/canary")
    );
    assert_eq!(lines[0]["extracted-results"], serde_json::json!(["abc123"]));
}
