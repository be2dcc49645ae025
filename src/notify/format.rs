//! PURE: notifications as each receiver wants them. `json` is berth's own payload (the
//! event's envelope, as the event stream sends it) with `X-Berth-Signature: sha256=<hex>`,
//! an HMAC-SHA256 of the body; `matrix` a client-server `m.room.message`; `slack` an
//! incoming-webhook `{"text": …}`; `ntfy` a plain-text body with a `Title` header.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use reqwest::{
    header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE},
    Method,
};
use sha2::Sha256;

use crate::{
    config::{NotifyConfig, NotifyFormat},
    events::{Envelope, Event},
    outbound::Request,
};

/// The signature header of `json` notifications.
pub const SIGNATURE_HEADER: &str = "x-berth-signature";
/// The event-kind header of `json` notifications.
pub const EVENT_HEADER: &str = "x-berth-event";

/// `sha256=<hex>` of `body` keyed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// A title and one or more lines of text for people.
pub fn text(event: &Event) -> (String, String) {
    match event {
        Event::BuildStarted { build } => {
            (format!("build {} started", build.id), format!("{} {} at {}", build.repository, build.branch, short(&build.commit)))
        }
        Event::BuildSucceeded { build, summary } => (
            format!("build {} succeeded", build.id),
            format!("{} {} at {}: {summary}", build.repository, build.branch, short(&build.commit)),
        ),
        Event::BuildFailed { build, reason } => (
            format!("build {} failed", build.id),
            format!("{} {} at {}: {reason}", build.repository, build.branch, short(&build.commit)),
        ),
        Event::GenerationCreated { generation: g } => {
            (format!("{}: generation {} made", g.host, g.number), format!("{} at {}", g.branch, short(&g.commit)))
        }
        Event::GenerationActivating { generation: g, phase, message } => (
            format!("{}: generation {} {}", g.host, g.number, phase.as_str()),
            message.clone().unwrap_or_default(),
        ),
        Event::GenerationConfirmed { generation: g } => (
            format!("{}: generation {} confirmed", g.host, g.number),
            format!("{} at {}", g.branch, short(&g.commit)),
        ),
        Event::GenerationRolledBack { generation: g, reason } => (
            format!("{}: generation {} rolled back", g.host, g.number),
            reason.clone().unwrap_or_else(|| "no reason given".into()),
        ),
        Event::GenerationFailed { generation: g, reason } => (
            format!("{}: generation {} failed", g.host, g.number),
            reason.clone().unwrap_or_else(|| "no reason given".into()),
        ),
        Event::HostOffline { host, last_seen } => {
            (format!("{host} is offline"), format!("last seen at {last_seen} (Unix time)"))
        }
        Event::HostBack { host } => (format!("{host} is back"), format!("{host} asks for its manifest again")),
        Event::KeyExpiring { key, state, expires_at } => {
            let name = crate::nixfmt::key_name(key);
            let when = jiff::Timestamp::from_second(*expires_at)
                .map_or_else(|_| format!("{expires_at} (Unix time)"), |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string());
            (format!("deploy key {name} expires {when}"), format!("the {state} deploy key: rotate it with `berth keys rotate deploy`"))
        }
        Event::RolloutHalted { rollout: r, wave, host, reason } => (
            format!("rollout {} halted at wave {wave} by {host}", r.id),
            format!("{} {} at {}: {reason}", r.repository, r.branch, short(&r.commit)),
        ),
        Event::RolloutCompleted { rollout: r } => (
            format!("rollout {} completed", r.id),
            format!("{} {} at {}: every wave confirmed", r.repository, r.branch, short(&r.commit)),
        ),
        Event::CollectionFinished { generations_dropped, paths_deleted, bytes_freed } => (
            "garbage collection finished".into(),
            format!("{generations_dropped} generation(s) dropped, {paths_deleted} path(s) deleted, {bytes_freed} bytes freed"),
        ),
    }
}

/// A header value from any text: as is when it is printable ASCII, else RFC 2047
/// (`=?UTF-8?B?…?=`, which ntfy decodes); control characters are dropped.
fn header_text(text: &str) -> HeaderValue {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    let value = if clean.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        clean
    } else {
        format!("=?UTF-8?B?{}?=", STANDARD.encode(clean.as_bytes()))
    };
    HeaderValue::from_str(&value).expect("printable ASCII")
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

/// Why a notification cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The configured URL cannot take path segments.
    #[error("the notify url cannot be extended")]
    Url,
}

/// The request that tells `to` of `envelope`; `txn_prefix` makes Matrix transaction ids
/// unique to this server run (a retry reuses its id, so Matrix keeps one message).
pub fn request(to: &NotifyConfig, envelope: &Envelope, txn_prefix: &str) -> Result<Request, FormatError> {
    let (title, body) = text(&envelope.event);
    let kind = envelope.event.kind().as_str();
    let label = format!("{kind} #{} to {}", envelope.id, to.url.host_str().unwrap_or("?"));
    let (method, url, headers, payload) = match &to.format {
        NotifyFormat::Json { secret } => {
            let payload = serde_json::to_vec(envelope).expect("events serialize");
            let mut headers = json_headers();
            headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(&signature(&secret.0, &payload)).expect("hex"));
            headers.insert(EVENT_HEADER, HeaderValue::from_static(kind));
            (Method::POST, to.url.clone(), headers, payload)
        }
        NotifyFormat::Matrix { room_id, token } => {
            let mut url = to.url.clone();
            let txn = format!("{txn_prefix}-{}", envelope.id);
            url.path_segments_mut().map_err(|()| FormatError::Url)?.pop_if_empty().extend([
                "_matrix",
                "client",
                "v3",
                "rooms",
                room_id,
                "send",
                "m.room.message",
                &txn,
            ]);
            let mut headers = json_headers();
            let mut auth =
                HeaderValue::from_bytes(&[b"Bearer ", &token.0[..]].concat()).map_err(|_| FormatError::Url)?;
            auth.set_sensitive(true);
            headers.insert(AUTHORIZATION, auth);
            let payload = serde_json::json!({"msgtype": "m.text", "body": format!("{title}\n{body}")});
            (Method::PUT, url, headers, payload.to_string().into_bytes())
        }
        NotifyFormat::Slack => {
            let payload = serde_json::json!({"text": format!("*{title}*\n{body}")});
            (Method::POST, to.url.clone(), json_headers(), payload.to_string().into_bytes())
        }
        NotifyFormat::Ntfy => {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            headers.insert("title", header_text(&title));
            headers.insert("tags", HeaderValue::from_static(kind));
            (Method::POST, to.url.clone(), headers, body.into_bytes())
        }
    };
    Ok(Request { method, url, headers, body: Bytes::from(payload), label })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Duration};

    use super::*;
    use crate::{
        config::{NotifyConfig, Secret},
        events::GenerationRef,
    };

    fn to(format: NotifyFormat, url: &str) -> NotifyConfig {
        NotifyConfig {
            url: url::Url::parse(url).unwrap(),
            events: BTreeSet::new(),
            format,
            timeout: Duration::from_secs(1),
        }
    }

    fn rolled_back() -> Envelope {
        let generation = GenerationRef {
            host: "beta".into(),
            number: 3,
            commit: "c".repeat(40),
            branch: "main".into(),
            build_id: Some(7),
        };
        Envelope {
            id: 9,
            at: 100,
            event: Event::GenerationRolledBack { generation, reason: Some("héalth failed".into()) },
        }
    }

    #[track_caller]
    fn check(format: NotifyFormat, url: &str, expected: &str) {
        let r = request(&to(format, url), &rolled_back(), "run1").unwrap();
        let mut headers: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", if v.is_sensitive() { "<sensitive>" } else { v.to_str().unwrap() }))
            .collect();
        headers.sort();
        let got = format!("{} {}\n{}\n{}", r.method, r.url, headers.join("\n"), String::from_utf8_lossy(&r.body));
        assert_eq!(got, expected);
    }

    #[test]
    fn each_format() {
        let body = r#"{"id":9,"at":100,"kind":"generation_rolled_back","generation":{"host":"beta","number":3,"commit":"cccccccccccccccccccccccccccccccccccccccc","branch":"main","build_id":7},"reason":"héalth failed"}"#;
        let sig = signature(b"k", body.as_bytes());
        check(
            NotifyFormat::Json { secret: Secret(b"k".to_vec()) },
            "https://hooks.example/berth",
            &format!("POST https://hooks.example/berth\ncontent-type: application/json\nx-berth-event: generation_rolled_back\nx-berth-signature: {sig}\n{body}"),
        );
        check(
            NotifyFormat::Matrix { room_id: "!room:example.org".into(), token: Secret(b"t".to_vec()) },
            "https://matrix.example.org",
            "PUT https://matrix.example.org/_matrix/client/v3/rooms/!room:example.org/send/m.room.message/run1-9\nauthorization: <sensitive>\ncontent-type: application/json\n{\"body\":\"beta: generation 3 rolled back\\nhéalth failed\",\"msgtype\":\"m.text\"}",
        );
        check(
            NotifyFormat::Slack,
            "https://hooks.slack.example/T/B/x",
            "POST https://hooks.slack.example/T/B/x\ncontent-type: application/json\n{\"text\":\"*beta: generation 3 rolled back*\\nhéalth failed\"}",
        );
        check(
            NotifyFormat::Ntfy,
            "https://ntfy.example/fleet",
            "POST https://ntfy.example/fleet\ncontent-type: text/plain; charset=utf-8\ntags: generation_rolled_back\ntitle: beta: generation 3 rolled back\nhéalth failed",
        );
    }

    #[test]
    fn signatures_and_header_text() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(header_text("plain title"), "plain title");
        assert_eq!(header_text("bad\nline"), "badline");
        assert_eq!(header_text("€"), "=?UTF-8?B?4oKs?=");
    }
}
