//! Host reports with text that is not ASCII, in every field.

use super::*;

/// A host reports what `switch-to-configuration` and its health checks printed, which is
/// often not ASCII: every text field of a report, long enough to be clipped at a byte that
/// falls inside a character, is stored (clipped at a character boundary), never a panic.
#[test]
fn host_reports_with_multi_byte_text_are_clipped_not_panicked_on() {
    use crate::{builds::build_host, fleet::Signing};
    let b = build_host(&["alpha"], "");
    let commit = b.fleet.commit("main", "one", Signing::Trusted);
    assert!(b.submit_wait(&commit, "main").0, "generation 1 is built");
    let alpha = b.server.token("host:alpha");
    let client = http();
    // 3-byte "€" and 4-byte "😀", each over its field's limit by an amount that is not a
    // multiple of the character's size.
    let texts = ["€".repeat(400), "😀".repeat(301), format!("a{}", "€".repeat(30_000)), "ü😀€".repeat(8_000)];
    for (field, text) in
        [("message", &texts[0]), ("message", &texts[1]), ("log_tail", &texts[2]), ("log_tail", &texts[3])]
    {
        let body = serde_json::json!({"generation": 1, "phase": "failed", field: text});
        let r = client.post(b.api("hosts/alpha/reports")).bearer_auth(&alpha).json(&body).send().unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{field} of {} bytes: {}", text.len(), r.text().unwrap());
        let reports: Vec<serde_json::Value> =
            client.get(b.api("hosts/alpha/reports")).bearer_auth(&alpha).send().unwrap().json().unwrap();
        let stored = reports[0][field].as_str().unwrap_or_else(|| panic!("{field} stored: {:?}", reports[0]));
        assert!(!stored.is_empty() && stored.len() < text.len(), "{field} is clipped");
        match field {
            "message" => assert!(text.starts_with(stored), "a message keeps its beginning"),
            _ => assert!(text.ends_with(stored), "a log tail keeps its end"),
        }
    }
    // The other text a report carries: its phase (one of a few words) and the host name.
    let body = serde_json::json!({"generation": 1, "phase": "fäiled€", "message": "ü"});
    let r = client.post(b.api("hosts/alpha/reports")).bearer_auth(&alpha).json(&body).send().unwrap();
    assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", "a multi-byte phase");
    let body = serde_json::json!({"generation": 1, "phase": "failed"});
    let r = client.post(b.api("hosts/%C3%A5lpha%E2%82%AC/reports")).bearer_auth(&alpha).json(&body).send().unwrap();
    assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", "a multi-byte host name");
    let nul = serde_json::json!({"generation": 1, "phase": "failed", "message": "a\u{0}€", "log_tail": "€\u{0}b"});
    let r = client.post(b.api("hosts/alpha/reports")).bearer_auth(&alpha).json(&nul).send().unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "NUL is dropped, not stored");
    let reports: Vec<serde_json::Value> =
        client.get(b.api("hosts/alpha/reports")).bearer_auth(&alpha).send().unwrap().json().unwrap();
    assert_eq!((reports[0]["message"].as_str(), reports[0]["log_tail"].as_str()), (Some("a€"), Some("€b")));
}
