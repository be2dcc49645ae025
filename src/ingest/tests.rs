//! Ingest against the in-memory store and each database: the publication rules.

use bytes::Bytes;
use futures::stream;
use nix_archive::nar::{encode_tree, Node};
use sha2::{Digest, Sha256};

use super::*;
use crate::db::testing::for_each_backend;
use crate::nixfmt::{PathClaim, PublicKey};

const A: &str = "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-a";
const B: &str = "/nix/store/3n58xw4373jp0ljirf06d8077j15pc4j-b";

struct TestCache {
    store: Store,
    db: Db,
    key: SecretKey,
    gate: PublishGate,
    decoders: DecoderBudget,
    published: crate::published::PublishedSet,
}

fn cache(db: Db) -> TestCache {
    TestCache {
        store: Store::open("memory://").unwrap(),
        gate: PublishGate::new(&db),
        db,
        key: SecretKey::generate("t-1").unwrap(),
        decoders: DecoderBudget::new(32, 128),
        published: crate::published::PublishedSet::new(false),
    }
}

fn nar(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_tree(&mut out, &Node::Regular { executable: false, contents }).unwrap();
    out
}

fn claim(path: &str, nar: &[u8], references: &[&str]) -> PathClaim {
    PathClaim {
        path: path.into(),
        nar_hash: sha256_nix_string(&Sha256::digest(nar).into()),
        nar_size: nar.len() as u64,
        references: references.iter().map(|r| r.to_string()).collect(),
        deriver: None,
        ca: None,
        signatures: vec![],
    }
}

fn body(bytes: Vec<u8>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    // Several chunks, to exercise the channel.
    let chunks: Vec<_> = bytes.chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    stream::iter(chunks)
}

impl TestCache {
    fn target(&self) -> Cache<'_> {
        Cache {
            store: &self.store,
            db: &self.db,
            key: &self.key,
            gate: &self.gate,
            decoders: &self.decoders,
            published: &self.published,
        }
    }

    async fn push(&self, claim: &PathClaim, nar: &[u8]) -> Result<Published, IngestError> {
        let zst = zstd::encode_all(nar, 3).unwrap();
        ingest_claimed(self.target(), claim, body(zst), Compression::Zstd).await
    }

    async fn visible(&self, path: &str) -> Option<String> {
        self.db.narinfo(&path["/nix/store/".len()..][..32]).await.unwrap()
    }
}

for_each_backend! {
    async fn a_closure_is_published_dependencies_first(db: Db) {
        let c = cache(db);
        let (nar_a, nar_b) = (nar(b"a"), nar(b"b"));
        let err = c.push(&claim(A, &nar_a, &[B]), &nar_a).await.unwrap_err();
        assert!(matches!(err, IngestError::MissingReferences(ref m) if m.len() == 1), "{err}");
        assert_eq!(c.visible(A).await, None);
        assert_eq!(c.push(&claim(B, &nar_b, &[]), &nar_b).await.unwrap(), Published::New);
        assert_eq!(c.push(&claim(A, &nar_a, &[B, A]), &nar_a).await.unwrap(), Published::New);
        assert_eq!(c.push(&claim(A, &nar_a, &[B, A]), &nar_a).await.unwrap(), Published::AlreadyPresent);
        let text = c.visible(A).await.unwrap();
        let info = PathInfo::parse(text.as_bytes()).unwrap();
        assert!(info.has_valid_signature(&[c.key.public()]));
        let other: PublicKey = SecretKey::generate("t-1").unwrap().public();
        assert!(!info.has_valid_signature(&[other]));
        let object = c.store.get_bytes(&ObjectKey::NarInfo(info.hash())).await.unwrap().unwrap();
        assert_eq!(object, text.as_bytes(), "the bucket holds the same narinfo the index serves");
    }

    async fn a_lying_claim_publishes_nothing(db: Db) {
        let c = cache(db);
        let real = nar(b"real");
        let mut lie = claim(A, &real, &[]);
        lie.nar_size += 1;
        assert!(matches!(c.push(&lie, &real).await.unwrap_err(), IngestError::Mismatch { field: "narSize", .. }));
        let lie = claim(A, &nar(b"other"), &[]);
        assert!(matches!(c.push(&lie, &real).await.unwrap_err(), IngestError::Mismatch { field: "narHash", .. }));
        assert_eq!(c.visible(A).await, None);
        // Nor is the NAR kept: it is checked before it is committed.
        let name = NarFileName::for_file_hash(&Sha256::digest(zstd::encode_all(&real[..], 3).unwrap()).into(), Compression::Zstd);
        assert!(c.store.head(&ObjectKey::Nar(name.clone())).await.unwrap().is_none());
        assert!(c.db.nar_file(name.as_str()).await.unwrap().is_none());
        assert_eq!(c.store.sweep_staging().await.unwrap(), 0);
    }

    async fn a_corrupt_or_truncated_nar_leaves_nothing(db: Db) {
        let c = cache(db);
        let real = nar(b"payload");
        let zst = zstd::encode_all(&real[..], 3).unwrap();
        let cut = zst[..zst.len() - 3].to_vec();
        let err = receive_nar(c.target(), body(cut), Compression::Zstd, Expected::default()).await.unwrap_err();
        assert!(matches!(err, IngestError::Verify(_)), "{err}");
        let mut flipped = real.clone();
        flipped[10] ^= 0xff;
        assert!(receive_nar(c.target(), body(flipped), Compression::None, Expected::default()).await.is_err());
        assert_eq!(c.store.sweep_staging().await.unwrap(), 0, "no staging object is left behind");
    }

    async fn a_nix_upload_must_match_its_name(db: Db) {
        let c = cache(db);
        let real = nar(b"x");
        let wrong = NarFileName::for_file_hash(&[9; 32], Compression::None);
        let err = receive_nar(c.target(), body(real.clone()), Compression::None, Expected { name: Some(&wrong), nar: None }).await.unwrap_err();
        assert!(matches!(err, IngestError::NameMismatch { .. }));
        let right = NarFileName::for_file_hash(&Sha256::digest(&real).into(), Compression::None);
        let row = receive_nar(c.target(), body(real), Compression::None, Expected { name: Some(&right), nar: None }).await.unwrap();
        assert_eq!(row.name, right.as_str());
        assert!(c.store.head(&ObjectKey::Nar(right)).await.unwrap().is_some());
    }
}

#[test]
fn refusals_map_to_a_few_reasons() {
    let check = |e: IngestError, expected: Rejection| assert_eq!(e.rejection(), expected, "{e}");
    check(IngestError::TooLarge("big".into()), Rejection::TooLarge);
    check(IngestError::Body("cut".into()), Rejection::Body);
    check(IngestError::Verify(VerifyError::Read(std::io::Error::other("reset"))), Rejection::Body);
    check(IngestError::NameMismatch { name: "a".into(), actual: "b".into() }, Rejection::Mismatch);
    check(IngestError::Mismatch { field: "NarHash", claimed: "a".into(), actual: "b".into() }, Rejection::Mismatch);
    check(IngestError::NarMissing("n".into()), Rejection::Missing);
    check(IngestError::MissingReferences(vec!["r".into()]), Rejection::Missing);
    check(IngestError::NotInCache("p".into()), Rejection::Missing);
    check(IngestError::NarInfo(PathInfo::parse(b"junk").unwrap_err()), Rejection::Malformed);
}
