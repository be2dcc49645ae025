use super::*;
use crate::nixfmt::SecretKey;

struct Keys {
    old: SecretKey,
    new: SecretKey,
    stranger: SecretKey,
}

fn keys() -> Keys {
    Keys {
        old: SecretKey::generate("deploy-1").unwrap(),
        new: SecretKey::generate("deploy-2").unwrap(),
        stranger: SecretKey::generate("deploy-1").unwrap(),
    }
}

fn announce(epoch: u64, keys: &[&SecretKey], retired: &[&SecretKey], signers: &[&SecretKey]) -> SignedAnnouncement {
    Announcement {
        epoch,
        keys: keys.iter().map(|k| k.public().to_nix_string()).collect(),
        retired: retired.iter().map(|k| k.public().to_nix_string()).collect(),
    }
    .sign(signers)
}

fn updated(set: &TrustSet, a: &SignedAnnouncement) -> TrustSet {
    match set.apply(a) {
        Ok(Applied::Updated(s)) => s,
        other => panic!("expected an update, got {other:?}"),
    }
}

fn names(set: &TrustSet) -> Vec<String> {
    set.trusted().map(|k| k.to_nix_string()).collect()
}

#[test]
fn a_rotation_moves_the_agent_from_the_old_key_to_the_new_one() {
    let k = keys();
    let start = TrustSet::configured(&[k.old.public()]);
    assert_eq!(names(&start), [k.old.public().to_nix_string()]);
    let both = updated(&start, &announce(3, &[&k.old, &k.new], &[], &[&k.old, &k.new]));
    assert_eq!(names(&both), [k.old.public().to_nix_string(), k.new.public().to_nix_string()]);
    assert_eq!(both.header(), format!("{},{}", k.old.public().to_nix_string(), k.new.public().to_nix_string()));
    // The retirement is signed by the new key alone, which the agent now trusts.
    let after = updated(&both, &announce(5, &[&k.new], &[&k.old], &[&k.new]));
    assert_eq!(names(&after), [k.new.public().to_nix_string()]);
    assert_eq!(after.epoch(), 5);
    // The configured old key stays retired after a restart.
    let restored = TrustSet::restore(&[k.old.public()], &after.to_file()).unwrap();
    assert_eq!(names(&restored), [k.new.public().to_nix_string()]);
    assert!(restored.verifies(b"m", &[&k.old.sign(b"m")]).is_none());
    assert!(restored.verifies(b"m", &[&k.old.sign(b"m"), &k.new.sign(b"m")]).is_some());
}

#[test]
fn hostile_announcements_are_refused_or_ignored() {
    let k = keys();
    let start = TrustSet::configured(&[k.old.public()]);
    let both = updated(&start, &announce(3, &[&k.old, &k.new], &[], &[&k.old]));
    let after = updated(&both, &announce(5, &[&k.new], &[&k.old], &[&k.new]));
    let mut tampered = announce(3, &[&k.old, &k.stranger], &[], &[&k.old]);
    tampered.announcement = tampered.announcement.replace("\"epoch\":3", "\"epoch\":4");
    let oversize = SignedAnnouncement { announcement: "x".repeat(MAX_ANNOUNCEMENT_BYTES + 1), signatures: vec![] };
    let many: Vec<&SecretKey> = std::iter::repeat_n(&k.old, MAX_KEYS + 1).collect();
    let not_json = {
        let text = "{\"epoch\":9,\"keys\":[\"é\"]".to_owned();
        SignedAnnouncement { signatures: vec![k.old.sign(text.as_bytes())], announcement: text }
    };
    let cases: Vec<(&str, &TrustSet, SignedAnnouncement, Result<Applied, KeySetError>)> = vec![
        (
            "signed only by the key it introduces",
            &start,
            announce(3, &[&k.new], &[], &[&k.new]),
            Err(KeySetError::Untrusted),
        ),
        (
            "signed by a stranger with the same name",
            &start,
            announce(3, &[&k.stranger], &[], &[&k.stranger]),
            Err(KeySetError::Untrusted),
        ),
        ("forged: text changed after signing", &start, tampered, Err(KeySetError::Untrusted)),
        (
            "no signature",
            &start,
            SignedAnnouncement { signatures: vec![], ..announce(3, &[&k.new], &[], &[]) },
            Err(KeySetError::Untrusted),
        ),
        ("signed by a retired key", &after, announce(9, &[&k.old], &[], &[&k.old]), Err(KeySetError::Untrusted)),
        (
            "replay of the older announcement",
            &after,
            announce(3, &[&k.old, &k.new], &[], &[&k.new]),
            Ok(Applied::Unchanged),
        ),
        ("the same epoch again", &both, announce(3, &[&k.old, &k.new], &[], &[&k.old]), Ok(Applied::Unchanged)),
        (
            "brings a retired key back",
            &after,
            announce(7, &[&k.new, &k.old], &[], &[&k.new]),
            Err(KeySetError::Revived(k.old.public().to_nix_string())),
        ),
        (
            "announces no key",
            &start,
            announce(3, &[], &[], &[&k.old]),
            Err(KeySetError::Malformed("announces no key".into())),
        ),
        ("oversize", &start, oversize, Err(KeySetError::TooLarge(format!("{} bytes", MAX_ANNOUNCEMENT_BYTES + 1)))),
        (
            "too many keys",
            &start,
            announce(3, &many, &[], &[&k.old]),
            Err(KeySetError::TooLarge(format!("{} keys, at most {MAX_KEYS}", MAX_KEYS + 1))),
        ),
    ];
    for (what, set, a, want) in cases {
        assert_eq!(set.apply(&a), want, "{what}");
    }
    assert!(matches!(start.apply(&not_json), Err(KeySetError::Malformed(_))), "truncated JSON with multi-byte text");
    let sigs: Vec<String> = (0..=MAX_KEYS).map(|_| k.old.sign(b"x")).collect();
    let too_many_sigs = SignedAnnouncement { signatures: sigs, ..announce(3, &[&k.new], &[], &[]) };
    assert!(matches!(start.apply(&too_many_sigs), Err(KeySetError::TooLarge(_))));
    // A refused or ignored announcement leaves nothing changed: the old key still verifies.
    assert!(start.verifies(b"m", &[&k.old.sign(b"m")]).is_some());
    assert!(start.verifies(b"m", &[&k.new.sign(b"m")]).is_none());
}

#[test]
fn the_acknowledgement_header_is_bounded_and_parsed_strictly() {
    let k = keys();
    let both = updated(&TrustSet::configured(&[k.old.public()]), &announce(3, &[&k.old, &k.new], &[], &[&k.old]));
    assert_eq!(parse_header(&both.header()).unwrap(), vec![k.old.public(), k.new.public()]);
    assert_eq!(parse_header("").unwrap(), vec![]);
    assert!(matches!(parse_header("deploy-1:nope"), Err(KeySetError::Malformed(_))));
    assert!(matches!(parse_header("../../etc/passwd"), Err(KeySetError::Malformed(_))));
    assert!(matches!(parse_header("дeploy:AAAA"), Err(KeySetError::Malformed(_))));
    assert!(matches!(parse_header(&"a,".repeat(MAX_HEADER_BYTES)), Err(KeySetError::TooLarge(_))));
    let nine = vec![k.old.public().to_nix_string(); MAX_KEYS + 1].join(",");
    assert!(nine.len() <= MAX_HEADER_BYTES);
    assert!(matches!(parse_header(&nine), Err(KeySetError::TooLarge(_))));
}

#[test]
fn a_persisted_set_is_checked_on_restore() {
    let k = keys();
    let bad = TrustFile { epoch: 3, keys: vec!["not a key".into()], retired: vec![] };
    assert!(matches!(TrustSet::restore(&[k.old.public()], &bad), Err(KeySetError::Malformed(_))));
    let empty = TrustSet::restore(&[k.old.public()], &TrustFile::default()).unwrap();
    assert_eq!(empty, TrustSet::configured(&[k.old.public()]));
}
