//! A local webhook receiver for notification tests, and notifier Secrets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::Value;

/// Records every POST to `/{name}` as (name, JSON body); a name given
/// failures answers 500 that many times first; `/gone` always answers 404.
#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    got: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Receiver {
    /// Starts on 127.0.0.1 (its own thread and runtime, so it outlives the
    /// test that started it).
    pub fn start(failures: &[(&str, usize)]) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let failures: Arc<Mutex<HashMap<String, usize>>> = Arc::new(Mutex::new(
            failures.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        ));
        let app = axum::Router::new().route(
            "/{name}",
            axum::routing::post({
                let got = got.clone();
                move |axum::extract::Path(name): axum::extract::Path<String>, body: String| async move {
                    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
                    got.lock().unwrap().push((name.clone(), value));
                    let mut failures = failures.lock().unwrap();
                    if name == "gone" {
                        return axum::http::StatusCode::NOT_FOUND;
                    }
                    match failures.get_mut(&name) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR
                        }
                        _ => axum::http::StatusCode::OK,
                    }
                }
            }),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver { port, got }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Bodies posted to `/{name}` so far, in order.
    pub fn got(&self, name: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Creates a notifier Secret of `kind` in `ns` posting to `url`, with the
/// given annotations.
pub async fn notifier(
    client: &kube::Client,
    ns: &str,
    name: &str,
    kind: &str,
    url: &str,
    annotations: Value,
) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {"nuclei.homelab.mortenolsen.pro/notifier": kind},
            "annotations": annotations,
        },
        "stringData": {"url": url},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}
