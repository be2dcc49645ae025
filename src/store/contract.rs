//! One contract suite, run against every backend: what `ingest` and `http` rely on.

use bytes::Bytes;
use futures::TryStreamExt;

use super::{ByteRange, ObjectKey, Store};
use crate::nixfmt::{Compression, NarFileName, StorePathHash};

async fn read_all(store: &Store, key: &ObjectKey, range: Option<ByteRange>) -> Option<Vec<u8>> {
    let body = store.get(key, range).await.unwrap()?;
    let chunks: Vec<Bytes> = body.stream.try_collect().await.unwrap();
    Some(chunks.concat())
}

async fn contract(store: Store) {
    let info = ObjectKey::NarInfo(StorePathHash::parse("0c6kzph7l0dcbqmjknjmggwd3ggi7mrl").unwrap());
    assert_eq!(store.head(&info).await.unwrap(), None, "missing object has no size");
    assert!(store.get(&info, None).await.unwrap().is_none(), "missing object reads as None");
    store.put(&info, Bytes::from_static(b"StorePath: x\n")).await.unwrap();
    assert_eq!(store.get_bytes(&info).await.unwrap().unwrap(), &b"StorePath: x\n"[..]);

    let nar = ObjectKey::Nar(NarFileName::for_file_hash(&[3; 32], Compression::Zstd));
    let mut upload = store.start_upload().await.unwrap();
    upload.write(b"0123").await.unwrap();
    assert_eq!(store.head(&nar).await.unwrap(), None, "an upload is invisible before commit");
    upload.write(b"456789").await.unwrap();
    upload.commit(&nar).await.unwrap();
    assert_eq!(store.head(&nar).await.unwrap(), Some(10));
    let range = |start, end| Some(ByteRange::From { start, end });
    assert_eq!(read_all(&store, &nar, range(2, Some(4))).await.unwrap(), b"234");
    assert_eq!(read_all(&store, &nar, range(7, None)).await.unwrap(), b"789");
    assert_eq!(read_all(&store, &nar, Some(ByteRange::Suffix(2))).await.unwrap(), b"89");

    // The same content committed twice keeps one object; an aborted upload leaves nothing.
    let mut again = store.start_upload().await.unwrap();
    again.write(b"0123456789").await.unwrap();
    again.commit(&nar).await.unwrap();
    let mut dropped = store.start_upload().await.unwrap();
    dropped.write(b"junk").await.unwrap();
    dropped.abort().await;
    assert_eq!(store.sweep_staging().await.unwrap(), 0, "no staging objects remain");

    store.delete(&nar).await.unwrap();
    store.delete(&nar).await.unwrap();
    assert_eq!(store.head(&nar).await.unwrap(), None);
}

#[tokio::test]
async fn in_memory_backend() {
    contract(Store::open("memory://").unwrap()).await;
}

#[tokio::test]
async fn local_directory_backend() {
    let dir = tempfile::tempdir().unwrap();
    contract(Store::open(&format!("file://{}", dir.path().display())).unwrap()).await;
    assert!(dir.path().join("nar").is_dir(), "a local store is a binary-cache layout");
}
