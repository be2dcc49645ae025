//! One contract suite, run against every backend: what `ingest` and `http` rely on. The S3
//! cases run against the real SeaweedFS server the test support starts.

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{path::Path, PutMode, PutOptions};

use super::{Backend, ByteRange, ObjectKey, Store, StoreError};
use crate::nixfmt::{Compression, NarFileName, StorePathHash};
use crate::test_servers::Seaweed;

async fn read_all(store: &Store, key: &ObjectKey, range: Option<ByteRange>) -> Option<Vec<u8>> {
    let body = store.get(key, range).await.unwrap()?;
    let chunks: Vec<Bytes> = body.stream.try_collect().await.unwrap();
    Some(chunks.concat())
}

fn nar(n: u8) -> ObjectKey {
    ObjectKey::Nar(NarFileName::for_file_hash(&[n; 32], Compression::Zstd))
}

/// Objects under `tmp/`, including local multipart files that object_store's listing hides.
async fn staging_count(store: &Store) -> usize {
    if let Backend::Dir(root) = &store.backend {
        return std::fs::read_dir(root.join("tmp")).unwrap().count();
    }
    store.inner.list(Some(&Path::from("tmp"))).try_collect::<Vec<_>>().await.unwrap().len()
}

/// Bytes that differ from part to part, so a misordered multipart upload shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i / 4096 % 251) as u8 ^ (i % 256) as u8).collect()
}

async fn upload(store: &Store, target: Option<&ObjectKey>, bytes: &[u8]) -> super::Upload {
    let mut upload = store.start_upload(target).await.unwrap();
    for chunk in bytes.chunks(64 << 10) {
        upload.write(chunk).await.unwrap();
    }
    upload
}

async fn contract(store: Store) {
    small_objects(&store).await;
    staged_uploads(&store).await;
    direct_uploads(&store).await;
    large_uploads(&store).await;
    dropped_uploads(&store).await;
    create_only(&store).await;
    sweep(&store).await;
    listings(&store).await;
    assert_eq!(staging_count(&store).await, 0, "no staging objects remain");
}

/// Narinfos at the root and NARs under `nar/` are listed by kind, nothing else is.
async fn listings(store: &Store) {
    let hash = StorePathHash::parse("1c6kzph7l0dcbqmjknjmggwd3ggi7mrl").unwrap();
    store.put(&ObjectKey::NarInfo(hash.clone()), Bytes::from_static(b"x")).await.unwrap();
    store.put(&ObjectKey::Listing(hash.clone()), Bytes::from_static(b"{}")).await.unwrap();
    store.put(&nar(99), Bytes::from_static(b"nar")).await.unwrap();
    let staged = upload(store, None, b"staged").await;
    let narinfos: Vec<_> = store.list_narinfos().try_collect().await.unwrap();
    assert!(narinfos.iter().any(|(h, _)| *h == hash), "{narinfos:?}");
    let nars: Vec<_> = store.list_nars().try_collect().await.unwrap();
    let ObjectKey::Nar(name) = nar(99) else { unreachable!() };
    assert!(nars.iter().any(|(n, _)| *n == name), "{nars:?}");
    staged.abort().await;
    for key in [ObjectKey::NarInfo(hash.clone()), ObjectKey::Listing(hash), nar(99)] {
        store.delete(&key).await.unwrap();
    }
}

async fn small_objects(store: &Store) {
    let info = ObjectKey::NarInfo(StorePathHash::parse("0c6kzph7l0dcbqmjknjmggwd3ggi7mrl").unwrap());
    assert_eq!(store.head(&info).await.unwrap(), None, "missing object has no size");
    assert!(store.get(&info, None).await.unwrap().is_none(), "missing object reads as None");
    store.put(&info, Bytes::from_static(b"StorePath: x\n")).await.unwrap();
    assert_eq!(store.get_bytes(&info).await.unwrap().unwrap(), &b"StorePath: x\n"[..]);
    store.delete(&info).await.unwrap();
    store.delete(&info).await.unwrap();
    assert_eq!(store.head(&info).await.unwrap(), None);
}

async fn staged_uploads(store: &Store) {
    let nar = nar(3);
    let mut upload = store.start_upload(None).await.unwrap();
    upload.write(b"0123").await.unwrap();
    assert_eq!(store.head(&nar).await.unwrap(), None, "an upload is invisible before commit");
    upload.write(b"456789").await.unwrap();
    upload.commit(&nar).await.unwrap();
    assert_eq!(store.head(&nar).await.unwrap(), Some(10));
    let range = |start, end| Some(ByteRange::From { start, end });
    assert_eq!(read_all(store, &nar, range(2, Some(4))).await.unwrap(), b"234");
    assert_eq!(read_all(store, &nar, range(7, None)).await.unwrap(), b"789");
    assert_eq!(read_all(store, &nar, range(7, Some(100))).await.unwrap(), b"789", "an end past the object");
    assert_eq!(read_all(store, &nar, Some(ByteRange::Suffix(2))).await.unwrap(), b"89");
    let past = store.get(&nar, range(10, None)).await;
    assert!(matches!(past, Err(StoreError::Range)), "a start past the end: {:?}", past.err());

    // The same content committed twice keeps one object; an aborted upload leaves nothing.
    upload_and_commit(store, None, b"0123456789", &nar).await;
    assert_eq!(read_all(store, &nar, None).await.unwrap(), b"0123456789");
    let dropped = self::upload(store, None, b"junk").await;
    dropped.abort().await;
    assert_eq!(staging_count(store).await, 0, "an aborted staged upload leaves nothing");
    store.delete(&nar).await.unwrap();
}

async fn upload_and_commit(store: &Store, target: Option<&ObjectKey>, bytes: &[u8], key: &ObjectKey) {
    upload(store, target, bytes).await.commit(key).await.unwrap();
}

async fn direct_uploads(store: &Store) {
    let (kept, aborted, other) = (nar(5), nar(6), nar(7));
    let upload = self::upload(store, Some(&kept), b"direct").await;
    assert_eq!(store.head(&kept).await.unwrap(), None, "a direct upload is invisible before commit");
    upload.commit(&kept).await.unwrap();
    assert_eq!(read_all(store, &kept, None).await.unwrap(), b"direct");
    upload_and_commit(store, Some(&kept), b"direct", &kept).await;
    assert_eq!(read_all(store, &kept, None).await.unwrap(), b"direct", "the same content twice");

    self::upload(store, Some(&aborted), b"junk").await.abort().await;
    assert_eq!(store.head(&aborted).await.unwrap(), None, "an aborted upload leaves nothing");

    let mismatch = self::upload(store, Some(&aborted), b"junk").await.commit(&other).await;
    assert!(matches!(mismatch, Err(StoreError::TargetMismatch { .. })), "{mismatch:?}");
    assert_eq!(store.head(&aborted).await.unwrap(), None, "a refused commit publishes nothing");
    assert_eq!(store.head(&other).await.unwrap(), None);
    assert_eq!(staging_count(store).await, 0);
    store.delete(&kept).await.unwrap();
}

async fn large_uploads(store: &Store) {
    // Three parts (5 + 5 + 1 MiB): part order and the in-flight limit are exercised.
    let bytes = pattern(11 << 20);
    for (n, target) in [(8, false), (9, true)] {
        let key = nar(n);
        upload_and_commit(store, target.then_some(&key), &bytes, &key).await;
        assert_eq!(store.head(&key).await.unwrap(), Some(bytes.len() as u64));
        assert!(read_all(store, &key, None).await.unwrap() == bytes, "a multipart object reads back whole");
        store.delete(&key).await.unwrap();
    }
}

/// An upload dropped mid-stream (the request future cancelled when the client went away)
/// is aborted in the background.
async fn dropped_uploads(store: &Store) {
    let target = nar(10);
    drop(self::upload(store, Some(&target), b"half a NAR").await);
    drop(self::upload(store, None, b"half a NAR").await);
    for _ in 0..100 {
        if staging_count(store).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(staging_count(store).await, 0, "a dropped upload leaves nothing");
    assert_eq!(store.head(&target).await.unwrap(), None);
}

async fn create_only(store: &Store) {
    let log = ObjectKey::BuildLog(1);
    assert!(store.put_new(&log, Bytes::from_static(b"first")).await.unwrap());
    assert!(!store.put_new(&log, Bytes::from_static(b"second")).await.unwrap(), "put_new refuses to overwrite");
    assert_eq!(store.get_bytes(&log).await.unwrap().unwrap(), &b"first"[..]);
    store.delete(&log).await.unwrap();
}

async fn sweep(store: &Store) {
    let fresh = ObjectKey::Staging(uuid::Uuid::new_v4());
    store.put(&fresh, Bytes::from_static(b"in progress")).await.unwrap();
    let swept = store.sweep_staging().await.unwrap();
    if store.is_shared() {
        assert_eq!(swept, 0, "a shared bucket keeps a fresh staging object: another replica's upload");
        assert!(store.head(&fresh).await.unwrap().is_some());
        store.delete(&fresh).await.unwrap();
    } else {
        assert_eq!(swept, 1, "a store owned by this process sweeps all staging objects");
        assert_eq!(store.head(&fresh).await.unwrap(), None);
    }
}

#[tokio::test]
async fn in_memory_backend() {
    let store = Store::open("memory://").unwrap();
    assert_eq!(store.presigned_get(&ObjectKey::CacheInfo, Duration::from_secs(60)).await.unwrap(), None);
    contract(store).await;
}

#[tokio::test]
async fn local_directory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
    assert_eq!(store.presigned_get(&ObjectKey::CacheInfo, Duration::from_secs(60)).await.unwrap(), None);
    contract(store).await;
    assert!(dir.path().join("nar").is_dir(), "a local store is a binary-cache layout");
}

/// A fresh bucket on the test SeaweedFS with the cache under `cache/`; `extra` is appended
/// to the query. The directory holds the credentials file.
fn s3_url(extra: &str) -> (String, String, tempfile::TempDir) {
    let server = Seaweed::shared();
    let dir = tempfile::tempdir().unwrap();
    let credentials = server.credentials_file(dir.path());
    let bucket = server.new_bucket();
    let query = format!("endpoint={}&region=us-east-1&credentials_file={}", server.endpoint(), credentials.display());
    (format!("s3://{bucket}/cache?{query}{extra}"), format!("s3://{bucket}?{query}"), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend() {
    let (url, root_url, _dir) = s3_url("");
    let store = Store::open(&url).unwrap();
    assert_eq!((store.backend_name(), store.is_shared()), ("s3", true));
    contract(store.clone()).await;

    // The prefix holds the standard binary-cache layout: the bucket/prefix is a substituter.
    store.put(&ObjectKey::CacheInfo, Bytes::from_static(b"StoreDir: /nix/store\n")).await.unwrap();
    let root = Store::open(&root_url).unwrap();
    root.inner.head(&Path::from("cache/nix-cache-info")).await.expect("objects live under the prefix");
    assert_eq!(root.head(&ObjectKey::CacheInfo).await.unwrap(), None, "nothing outside the prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_staged_objects_over_the_copy_limit_are_streamed_into_place() {
    // AWS CopyObject stops at 5 GiB; with the limit at 1 MiB an 11 MiB staged upload (a NAR
    // named only after hashing, as `berth push` sends) takes the streamed path.
    let (url, _, _dir) = s3_url("");
    let store = Store::open(&url).unwrap().with_copy_limit(1 << 20);
    let bytes = pattern(11 << 20);
    let staged = upload(&store, None, &bytes).await;
    staged.commit(&nar(42)).await.unwrap();
    assert_eq!(read_all(&store, &nar(42), None).await.unwrap(), bytes, "byte-identical, in order");
    assert_eq!(staging_count(&store).await, 0, "the staging object is gone");
    // Committing the same content again over the existing object keeps it whole.
    upload(&store, None, &bytes).await.commit(&nar(42)).await.unwrap();
    assert_eq!(store.head(&nar(42)).await.unwrap(), Some(bytes.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_with_conditional_writes() {
    let (url, _, _dir) = s3_url("&conditional_put=etag&copy_if_not_exists=multipart");
    let store = Store::open(&url).unwrap();
    contract(store.clone()).await;

    // What SeaweedFS honours (4.48, recorded in docs/storage.md): `If-None-Match: *` on
    // PutObject, and the conditional multipart completion behind copy_if_not_exists=multipart.
    let (a, b) = (Path::from("probe/a"), Path::from("probe/b"));
    store.inner.put(&a, Bytes::from_static(b"a").into()).await.unwrap();
    store.inner.put(&b, Bytes::from_static(b"b").into()).await.unwrap();
    let create = PutOptions { mode: PutMode::Create, ..Default::default() };
    let put = store.inner.put_opts(&b, Bytes::from_static(b"c").into(), create).await;
    assert!(matches!(put, Err(object_store::Error::AlreadyExists { .. })), "If-None-Match: {put:?}");
    let copied = store.inner.copy_if_not_exists(&a, &b).await;
    assert!(matches!(copied, Err(object_store::Error::AlreadyExists { .. })), "copy_if_not_exists: {copied:?}");
    assert_eq!(store.inner.get(&b).await.unwrap().bytes().await.unwrap(), &b"b"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_presigned_urls_are_signed() {
    let (url, _, _dir) = s3_url("");
    let store = Store::open(&url).unwrap();
    store.put(&ObjectKey::CacheInfo, Bytes::from_static(b"StoreDir: /nix/store\n")).await.unwrap();
    let signed = store.presigned_get(&ObjectKey::CacheInfo, Duration::from_secs(300)).await.unwrap().unwrap();
    assert!(signed.contains("/cache/nix-cache-info?"), "the prefix is applied: {signed}");
    let response = reqwest::get(&signed).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), &b"StoreDir: /nix/store\n"[..]);
    let unsigned = signed.split('?').next().unwrap();
    let refused = reqwest::get(unsigned).await.unwrap().status();
    assert!(refused == 403 || refused == 401, "an unsigned URL is refused (SigV4 is on): {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_credentials_fail_clearly() {
    let server = Seaweed::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong");
    std::fs::write(&file, "[default]\naws_access_key_id = berth-test-key\naws_secret_access_key = not-the-secret\n")
        .unwrap();
    let url =
        format!("s3://{}?endpoint={}&credentials_file={}", server.new_bucket(), server.endpoint(), file.display());
    let store = Store::open(&url).unwrap();
    assert!(!format!("{store:?}").contains("not-the-secret"), "Debug hides the secret: {store:?}");
    let err = store.put(&ObjectKey::CacheInfo, Bytes::from_static(b"x")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Denied(_)), "{text}");
    assert!(text.contains("denied access") && !text.contains("not-the-secret"), "{text}");

    let missing = format!("{url}&profile=nope");
    let err = Store::open(&missing).unwrap_err().to_string();
    assert!(err.contains("no [nope] profile"), "{err}");
}

#[test]
fn bad_urls_list_the_accepted_forms() {
    let err = Store::open("s3://bucket?secret_access_key=hunter2").unwrap_err().to_string();
    assert!(
        err.contains("credentials_file") && err.contains("file:///absolute/dir") && !err.contains("hunter2"),
        "{err}"
    );
    let err = Store::open("gs://bucket").unwrap_err().to_string();
    assert!(err.contains("memory://") && err.contains("s3://bucket[/prefix]"), "{err}");
}
