//! The key cache against a real issuer on loopback: discovery, rotation, rate limit, an
//! issuer that is down or slow, oversize documents.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex as StdMutex,
    },
    time::Duration,
};

use axum::{extract::State, routing::get, Json, Router};

use super::*;
use crate::oidc::verify::tests::es256_key;

#[derive(Default)]
struct Issuer {
    url: StdMutex<String>,
    keys: StdMutex<Vec<Jwk>>,
    delay: StdMutex<Duration>,
    down: AtomicBool,
    padding: AtomicUsize,
    fetches: AtomicUsize,
}

async fn discovery(State(i): State<Arc<Issuer>>) -> Result<Json<serde_json::Value>, axum::http::StatusCode> {
    if i.down.load(Ordering::SeqCst) {
        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    }
    let delay = *i.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let url = i.url.lock().unwrap().clone();
    Ok(Json(serde_json::json!({"issuer": url, "jwks_uri": format!("{url}/jwks")})))
}

async fn jwks(State(i): State<Arc<Issuer>>) -> Json<serde_json::Value> {
    i.fetches.fetch_add(1, Ordering::SeqCst);
    let keys = i.keys.lock().unwrap().clone();
    let pad = "x".repeat(i.padding.load(Ordering::SeqCst));
    Json(serde_json::json!({"keys": keys, "padding": pad}))
}

async fn start() -> Arc<Issuer> {
    let issuer = Arc::new(Issuer::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    *issuer.url.lock().unwrap() = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .with_state(issuer.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    issuer
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_millis(500),
        max_bytes: 16 * 1024,
        refresh: Duration::from_secs(3600),
        min_refetch: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn fetches_rotates_and_survives_the_issuer() {
    let issuer = start().await;
    let url = issuer.url.lock().unwrap().clone();
    let (_, k1) = es256_key("k1");
    issuer.keys.lock().unwrap().push(k1);
    let cache = JwksCache::new(limits());

    assert!(cache.key(&url, "k1").await.is_ok());
    assert!(cache.key(&url, "k1").await.is_ok());
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1, "a fresh set is not refetched");

    // Rotation: a new kid appears at the issuer; the first token with it refetches.
    let (_, k2) = es256_key("k2");
    issuer.keys.lock().unwrap().push(k2);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(cache.key(&url, "k2").await.is_ok());
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2);

    // Unknown kids refetch at most once per min_refetch.
    for _ in 0..5 {
        assert!(matches!(cache.key(&url, "nope").await, Err(JwksError::UnknownKey(_))));
    }
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 2, "rate-limited: within min_refetch of the last fetch");

    // Down: the cached set keeps serving its keys; unknown kids are refused.
    issuer.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(cache.key(&url, "k3").await, Err(JwksError::Fetch(_))));
    assert!(cache.key(&url, "k1").await.is_ok());

    // Slow: bounded by the timeout, the cached keys still work.
    issuer.down.store(false, Ordering::SeqCst);
    *issuer.delay.lock().unwrap() = Duration::from_secs(30);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let started = std::time::Instant::now();
    assert!(matches!(cache.key(&url, "k4").await, Err(JwksError::Fetch(_))));
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    // A fresh cache with a slow issuer: a timeout, not a hang.
    let empty = JwksCache::new(limits());
    let started = std::time::Instant::now();
    assert!(matches!(empty.key(&url, "k1").await, Err(JwksError::Fetch(_))));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn refuses_oversize_and_foreign_documents() {
    let issuer = start().await;
    let url = issuer.url.lock().unwrap().clone();
    let (_, k1) = es256_key("k1");
    issuer.keys.lock().unwrap().push(k1);
    issuer.padding.store(20 * 1024, Ordering::SeqCst);
    let cache = JwksCache::new(limits());
    let e = cache.key(&url, "k1").await.unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
    // The discovery document must name the configured issuer exactly.
    let other = JwksCache::new(limits());
    assert!(matches!(other.key(&format!("{url}/"), "k1").await, Err(JwksError::Fetch(_))));
    // Nothing listening: refused quickly.
    let none = JwksCache::new(limits());
    assert!(matches!(none.key("http://127.0.0.1:9", "k1").await, Err(JwksError::Fetch(_))));
}

#[test]
fn urls() {
    for (url, ok) in [
        ("https://token.actions.githubusercontent.com/.well-known/jwks", true),
        ("http://127.0.0.1:8080/jwks", true),
        ("http://[::1]/jwks", true),
        ("http://localhost/jwks", true),
        ("http://example.com/jwks", false),
        ("http://10.0.0.1/jwks", false),
        ("file:///etc/passwd", false),
        ("ftp://x/y", false),
        ("not a url", false),
    ] {
        assert_eq!(allowed_url(url), ok, "{url}");
    }
}
