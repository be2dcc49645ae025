//! A deploy-key rotation as one agent lives it: no configuration change, no refused manifest,
//! then the old key refused for good.

use super::*;
use crate::deploy::keyset::{Announcement, SignedAnnouncement};

fn announce(epoch: u64, keys: &[&SecretKey], retired: &[&SecretKey], signers: &[&SecretKey]) -> SignedAnnouncement {
    let nix = |ks: &[&SecretKey]| ks.iter().map(|k| k.public().to_nix_string()).collect();
    Announcement { epoch, keys: nix(keys), retired: nix(retired) }.sign(signers)
}

impl Host {
    /// Publishes generation `generation` of `path` with `envelope` around the old key's manifest.
    fn publish_rotating(
        &self,
        generation: u64,
        path: &str,
        primary: &SecretKey,
        cosigners: &[&SecretKey],
        keys: SignedAnnouncement,
    ) {
        let plain = self.publish_as("web", generation, path, &self.key);
        let manifest: Manifest = serde_json::from_str(&plain.manifest).unwrap();
        let mut fake = self.fake.lock().unwrap();
        fake.manifests.retain(|(g, _)| *g != generation);
        fake.manifests.push((generation, manifest.sign_rotating(primary, cosigners, keys)));
    }

    fn acknowledged(&self) -> Vec<String> {
        std::mem::take(&mut self.fake.lock().unwrap().acknowledged)
    }
}

#[tokio::test]
async fn an_agent_moves_to_the_next_deploy_key_and_refuses_the_retired_one() {
    let host = Host::new().await;
    let (old, new) = (host.key.clone(), SecretKey::generate("deploy-2").unwrap());
    let (old_pub, new_pub) = (old.public().to_nix_string(), new.public().to_nix_string());
    // Transition: signed by both keys, announcing both (the configuration names only the old).
    host.publish_rotating(1, &host.new, &old, &[&new], announce(3, &[&old, &new], &[], &[&old, &new]));
    assert_eq!(host.run("").await, Outcome::Confirmed { generation: 1 });
    assert_eq!(
        host.acknowledged(),
        std::slice::from_ref(&old_pub),
        "before the announcement it trusts the configured key"
    );
    let saved = host.state().deploy_keys.expect("the announced keys are kept in state.json");
    assert_eq!((saved.epoch, saved.keys.clone()), (3, vec![old_pub.clone(), new_pub.clone()]));
    // Acknowledged on the next poll; the retirement is signed by the new key alone.
    host.publish_rotating(2, &host.old, &new, &[], announce(5, &[&new], &[&old], &[&new]));
    assert_eq!(host.run("").await, Outcome::Confirmed { generation: 2 });
    assert_eq!(host.acknowledged(), [format!("{old_pub},{new_pub}")]);
    assert_eq!(host.state().deploy_keys.unwrap().retired, std::slice::from_ref(&old_pub));
    // The old key, though still configured, is retired: a newer manifest it signs is refused,
    // even carrying the old announcement that trusted it.
    host.publish_as("web", 3, &host.new, &old);
    assert!(matches!(host.run("").await, Outcome::Refused { reason } if reason.contains("signature")));
    host.publish_rotating(3, &host.new, &old, &[], announce(3, &[&old, &new], &[], &[&old]));
    assert!(matches!(host.run("").await, Outcome::Refused { reason } if reason.contains("not signed by a trusted")));
    assert_eq!(host.acknowledged(), [new_pub.clone(), new_pub.clone()]);
    host.publish_rotating(4, &host.new, &new, &[], announce(5, &[&new], &[&old], &[&new]));
    assert_eq!(host.run("").await, Outcome::Confirmed { generation: 4 });
}

#[tokio::test]
async fn an_announcement_signed_only_by_the_key_it_introduces_is_refused() {
    let host = Host::new().await;
    let new = SecretKey::generate("deploy-2").unwrap();
    host.publish_rotating(1, &host.new, &new, &[], announce(3, &[&new], &[], &[&new]));
    let outcome = host.run("").await;
    assert!(
        matches!(&outcome, Outcome::Refused { reason } if reason.contains("not signed by a trusted")),
        "{outcome:?}"
    );
    assert_eq!(host.state().deploy_keys, None);
    assert!(host.activations().is_empty());
}
