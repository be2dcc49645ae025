//! Manifests through a deploy-key rotation, as an agent opens them.

use super::*;
use crate::deploy::keyset::Announcement;

fn manifest(generation: u64) -> Manifest {
    Manifest {
        version: 2,
        host: "web".into(),
        generation,
        store_path: "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-nixos-system-web".into(),
        commit: "0".repeat(40),
        branch: "main".into(),
        build_id: Some(3),
        created_at: 1_795_887_131,
        signer: None,
    }
}

fn announce(epoch: u64, keys: &[&SecretKey], retired: &[&SecretKey], signers: &[&SecretKey]) -> SignedAnnouncement {
    let nix = |ks: &[&SecretKey]| ks.iter().map(|k| k.public().to_nix_string()).collect();
    Announcement { epoch, keys: nix(keys), retired: nix(retired) }.sign(signers)
}

#[test]
fn an_agent_follows_a_rotation_and_an_old_agent_sees_nothing_new() {
    let old = SecretKey::generate("deploy-1").unwrap();
    let new = SecretKey::generate("deploy-2").unwrap();
    let plain = serde_json::to_value(manifest(5).sign(&old)).unwrap();
    let fields: Vec<&String> = plain.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["manifest", "signature"], "what an agent before rotation reads");

    let trust = TrustSet::configured(&[old.public()]);
    // Transition: signed by both, announcing both, the old key's signature where it always was.
    let rotating = manifest(5).sign_rotating(&old, &[&new], announce(3, &[&old, &new], &[], &[&old, &new]));
    assert_eq!(rotating.open(&old.public(), "web", Some(4)).unwrap(), manifest(5), "an old agent verifies it");
    let opened = rotating.open_trusted(&trust, "web", Some(4)).unwrap();
    let both = opened.trust.expect("the announcement is applied");
    assert!(both.header().contains(&new.public().to_nix_string()));
    // Retired: the new key signs alone.
    let retired = manifest(6).sign_rotating(&new, &[], announce(5, &[&new], &[&old], &[&new]));
    let after = retired.open_trusted(&both, "web", Some(5)).unwrap().trust.unwrap();
    assert_eq!(after.header(), new.public().to_nix_string());
    // Nothing more to apply: the same announcement again changes nothing.
    let next = manifest(7).sign_rotating(&new, &[], announce(5, &[&new], &[&old], &[&new]));
    assert_eq!(next.open_trusted(&after, "web", Some(6)).unwrap().trust, None);

    let cases: Vec<(&str, &TrustSet, SignedManifest, Option<u64>)> = vec![
        (
            "announcement signed only by the new key",
            &trust,
            manifest(5).sign_rotating(&new, &[], announce(3, &[&new], &[], &[&new])),
            Some(4),
        ),
        ("manifest signed by the new key, not announced", &trust, manifest(5).sign(&new), Some(4)),
        ("the retired key signs a newer manifest", &after, manifest(9).sign(&old), Some(7)),
        (
            "the retired key signs with an old announcement",
            &after,
            manifest(9).sign_rotating(&old, &[], announce(3, &[&old, &new], &[], &[&old])),
            Some(7),
        ),
        ("replay of the transition's manifest", &after, rotating.clone(), Some(7)),
    ];
    for (what, set, signed, applied) in cases {
        assert!(signed.open_trusted(set, "web", applied).is_err(), "{what}");
    }
    let mut forged = rotating.clone();
    forged.keys.as_mut().unwrap().announcement =
        forged.keys.as_ref().unwrap().announcement.replace("\"epoch\":3", "\"epoch\":30");
    assert_eq!(forged.open_trusted(&trust, "web", Some(4)), Err(ManifestError::Keys(KeySetError::Untrusted)));
    let mut piled = rotating;
    piled.cosignatures = vec![new.sign(b"x"); keyset::MAX_KEYS];
    assert!(matches!(piled.open_trusted(&trust, "web", Some(4)), Err(ManifestError::Malformed(_))));
}
