//! Connections that hold the server without a token: idle ones, ones that dribble their
//! headers a byte at a time, and more of them than the server may hold. Each is closed or
//! refused with a reason, and a normal request still gets through.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::harness::*;

fn address(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

fn config(s: &Scratch, text: &str) -> String {
    let file = s.path("server.toml");
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_owned()
}

/// Whether the server has closed `conn` (EOF or reset) within `within`.
fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => closed_within(conn, within), // an error response first, then the close
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

fn cache_info(server: &Server) -> reqwest::StatusCode {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{}/nix-cache-info", server.url))
        .send()
        .map(|r| r.status())
        .unwrap_or_else(|e| panic!("a normal request failed: {e}"))
}

/// 2,000 idle connections to a server started with systemd's default soft limit of 1,024
/// open files: it raises its limit and keeps answering; the header-read timeout then closes
/// every idle connection, a dribbling one and one left idle after a request.
#[test]
fn two_thousand_idle_connections_do_not_stop_a_normal_request() {
    let s = Scratch::new();
    let config = config(&s, "[server]\nheader_read_timeout_secs = 2\n");
    let server = Server::start_under(&["prlimit", "--nofile=1024:", "--"], &s.path("data"), &["--config", &config]);
    let mut idle: Vec<TcpStream> = (0..2000).map(|_| TcpStream::connect(address(&server)).unwrap()).collect();
    assert_eq!(cache_info(&server), 200, "with 2,000 idle connections open");

    let mut dribbler = TcpStream::connect(address(&server)).unwrap();
    let mut after_request = TcpStream::connect(address(&server)).unwrap();
    after_request.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let started = Instant::now();
    for byte in b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n" {
        if dribbler.write_all(&[*byte]).is_err() {
            break; // closed: what we wanted
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    assert!(closed_within(&mut dribbler, Duration::from_secs(3)), "a dribbling request head is cut");
    let mut response = vec![0u8; 512];
    let n = after_request.read(&mut response).unwrap();
    assert!(String::from_utf8_lossy(&response[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut after_request, Duration::from_secs(4)), "an idle keep-alive connection is closed");
    for conn in idle.iter_mut().step_by(97) {
        assert!(closed_within(conn, Duration::from_secs(4)), "an idle connection is closed");
    }
    assert_eq!(cache_info(&server), 200);
}

/// Over `[server] max_connections` a connection is answered 503 `too_many_connections` at
/// once; when the idle ones are gone, requests are served again.
#[test]
fn over_the_connection_cap_a_connection_is_told_why() {
    let s = Scratch::new();
    let config = config(&s, "[server]\nmax_connections = 20\nheader_read_timeout_secs = 2\n");
    let server = Server::start(&s.path("data"), &["--config", &config]);
    let _idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(address(&server)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(address(&server)).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    over.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"too_many_connections""#), "{answer}");
    std::thread::sleep(Duration::from_secs(3)); // the idle ones time out
    assert_eq!(cache_info(&server), 200);
}
