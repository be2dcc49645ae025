//! Hostile input against the real `berth serve`: decompression bombs, multi-byte text,
//! odd names and headers, refusals before authentication. Each story says what an attacker
//! (or bad luck) sends and what berth must answer; memory is read from the server's
//! `/proc/<pid>/status`.

use std::io::Write;

use berth::nixfmt::nixbase32;
use reqwest::{blocking::Client, StatusCode};
use sha2::{Digest, Sha256};

use crate::harness::{for_each_client, *};

mod bombs;
mod connections;
mod depth;
mod grammar;
mod protocol;
mod push;
mod reports;

/// The peak RSS the issue allows the server under hostile input.
const RSS_BOUND_KIB: u64 = 100 * 1024;

struct Fixture {
    s: Scratch,
    server: Server,
    push: String,
    client: Client,
}

fn fixture(args: &[&str]) -> Fixture {
    let s = Scratch::new();
    let server = Server::start(&s.path("data"), args);
    let push = server.token("push");
    Fixture { s, server, push, client: http() }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.server.url)
    }
}

/// Writes the NAR of a single regular file of `size` zero bytes into `w`, a MiB at a time:
/// the most compressible content there is, so a few hundred KiB expand without end.
fn write_zero_nar(w: &mut impl Write, size: u64) {
    fn token(w: &mut impl Write, s: &[u8]) {
        w.write_all(&(s.len() as u64).to_le_bytes()).unwrap();
        w.write_all(s).unwrap();
        w.write_all(&[0; 8][..(8 - s.len() % 8) % 8]).unwrap();
    }
    for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
        token(w, t.as_bytes());
    }
    w.write_all(&size.to_le_bytes()).unwrap();
    let mib = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(mib.len() as u64) as usize;
        w.write_all(&mib[..n]).unwrap();
        left -= n as u64;
    }
    w.write_all(&[0; 8][..((8 - size % 8) % 8) as usize]).unwrap();
    token(w, b")");
}

fn nar_file_name(file: &[u8], ext: &str) -> String {
    format!("{}.nar{ext}", nixbase32(&Sha256::digest(file)))
}

/// A plain NAR of `size` zeros, uploaded under its own name; returns (name, bytes).
fn upload_plain_nar(f: &Fixture, size: u64) -> (String, Vec<u8>) {
    let mut nar = Vec::new();
    write_zero_nar(&mut nar, size);
    let name = nar_file_name(&nar, "");
    let r = f.client.put(f.url(&format!("nar/{name}"))).bearer_auth(&f.push).body(nar.clone()).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().unwrap());
    (name, nar)
}

#[track_caller]
fn assert_json_refusal(r: reqwest::blocking::Response, status: StatusCode, code: &str, what: &str) -> String {
    assert_eq!(r.status(), status, "{what}");
    let kind = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = r.text().unwrap();
    assert!(kind.starts_with("application/json"), "{what}: a JSON body, not {kind:?}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(json["code"], code, "{what}: {body}");
    let message = json["message"].as_str().unwrap_or_else(|| panic!("{what}: a message: {body}"));
    assert!(!message.is_empty() && !message.contains('\n'), "{what}: a one-line message: {body}");
    message.to_owned()
}
