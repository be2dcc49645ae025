//! Decompression bombs, over and under the per-decoder limit, one at a time and many at
//! once, and what the real Nix tells its user when it meets the limit.

use super::*;

/// CRC-32 (IEEE), as the xz block header carries it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// An `.nar.xz` of `size` zero bytes whose block header declares a 4 GiB dictionary: a
/// decoder without a memory limit allocates it and fills it as the zeros expand.
fn xz_bomb(size: u64) -> Vec<u8> {
    xz_declaring(size, 40) // 4 GiB - 1, the largest dictionary LZMA2 can declare
}

/// An `.nar.xz` of `size` zero bytes whose block header declares the LZMA2 dictionary of
/// properties byte `dict` (`(2 | dict & 1) << (dict / 2 + 11)` bytes; 40: 4 GiB - 1).
fn xz_declaring(size: u64, dict: u8) -> Vec<u8> {
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 0);
    write_zero_nar(&mut enc, size);
    let mut xz = enc.finish().unwrap();
    // Stream header (12 bytes), then the block header: size byte, flags (no sizes, one
    // filter), LZMA2's id 0x21, its 1-byte properties (the dictionary size), padding, CRC32.
    let header_len = (usize::from(xz[12]) + 1) * 4;
    assert_eq!((xz[13], xz[14], xz[15]), (0x00, 0x21, 0x01), "the block header of a one-filter LZMA2 stream");
    xz[16] = dict;
    let crc = crc32(&xz[12..12 + header_len - 4]);
    xz[12 + header_len - 4..12 + header_len].copy_from_slice(&crc.to_le_bytes());
    xz
}

/// A `.nar.zst` of `size` zero bytes whose frame header declares a 2^27 (128 MiB) window,
/// the most a default zstd decoder accepts.
fn zstd_bomb(size: u64) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    write_zero_nar(&mut enc, size);
    let mut zst = enc.finish().unwrap();
    // Magic (4 bytes), the frame header descriptor, then the window descriptor unless the
    // frame is a single segment.
    assert_eq!(zst[4] & 0x20, 0, "a streamed frame carries a window descriptor");
    zst[5] = (27 - 10) << 3;
    zst
}

/// The body of berth's push API: a claim for a one-file path, then the compressed NAR.
fn push_body(zst: &[u8]) -> Vec<u8> {
    let claim = serde_json::json!({
        "path": "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-bomb",
        "narHash": format!("sha256:{}", nixbase32(&[0; 32])),
        "narSize": 1,
        "references": [],
    });
    let claim = serde_json::to_vec(&claim).unwrap();
    let mut body = (claim.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&claim);
    body.extend_from_slice(zst);
    body
}

#[track_caller]
fn assert_too_large(status: StatusCode, body: &str, what: &str) {
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{what}: {body}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(json["code"], "too_large", "{what}: {body}");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("max_decoder_memory_mib") && message.contains("MiB"), "{what}: names the limit: {body}");
}

/// Eight uploads at once, each a bomb that expands 128 MiB of zeros through a decoder that
/// asks for a 4 GiB dictionary (xz) or a 128 MiB window (zstd): each is refused with 413
/// naming the limit, nothing is kept, and the server's peak RSS stays under 100 MiB.
#[test]
fn decompression_bombs_are_refused_within_bounded_memory() {
    let f = fixture(&[]);
    let xz = xz_bomb(128 << 20);
    let zst = zstd_bomb(128 << 20);
    eprintln!("bombs: xz {} bytes, zstd {} bytes", xz.len(), zst.len());
    let (xz_name, zst_name) = (nar_file_name(&xz, ".xz"), nar_file_name(&zst, ".zst"));
    let results: Vec<(String, StatusCode, String)> = std::thread::scope(|scope| {
        let mut uploads = Vec::new();
        for i in 0..8 {
            let (f, xz, zst, xz_name, zst_name) = (&f, &xz, &zst, &xz_name, &zst_name);
            uploads.push(scope.spawn(move || {
                let (what, request) = match i % 4 {
                    0 | 1 => ("PUT .nar.xz", f.client.put(f.url(&format!("nar/{xz_name}"))).body(xz.clone())),
                    2 => ("PUT .nar.zst", f.client.put(f.url(&format!("nar/{zst_name}"))).body(zst.clone())),
                    _ => ("POST /api/v1/paths", f.client.post(f.url("api/v1/paths")).body(push_body(zst))),
                };
                let r = request.bearer_auth(&f.push).send().unwrap();
                (what.to_owned(), r.status(), r.text().unwrap())
            }));
        }
        uploads.into_iter().map(|u| u.join().unwrap()).collect()
    });
    let peak = f.server.peak_rss_kib();
    eprintln!("server peak RSS after 8 concurrent bombs: {} MiB", peak / 1024);
    for (what, status, body) in &results {
        assert_too_large(*status, body, what);
    }
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB is over the {RSS_BOUND_KIB} KiB bound");
    let kept: Vec<_> = std::fs::read_dir(f.server.data_dir.join("cache/nar"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(kept.is_empty(), "nothing of a refused upload is kept: {kept:?}");

    // What Nix itself sends (xz preset 6: an 8 MiB dictionary; zstd level 19) still goes in.
    let mut nar = Vec::new();
    write_zero_nar(&mut nar, 3 << 20);
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(&nar).unwrap();
    let xz = enc.finish().unwrap();
    let zst = zstd::encode_all(&nar[..], 19).unwrap();
    for (file, ext) in [(xz, ".xz"), (zst, ".zst")] {
        let r = f.client.put(f.url(&format!("nar/{}", nar_file_name(&file, ext)))).bearer_auth(&f.push).body(file);
        let r = r.send().unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{ext}: {}", r.text().unwrap());
    }
}

/// Bombs that stay under the per-decoder limit are valid uploads, but each really fills its
/// dictionary: eight at once (xz, a 24 MiB dictionary, 256 MiB of zeros each) share the
/// decoder budget instead of multiplying memory, and the server's peak RSS stays under
/// 100 MiB.
#[test]
fn bombs_under_the_limit_share_the_decoder_budget() {
    let f = fixture(&[]);
    let xz = xz_declaring(256 << 20, 25);
    let name = nar_file_name(&xz, ".xz");
    let statuses: Vec<StatusCode> = std::thread::scope(|scope| {
        let uploads: Vec<_> = (0..8)
            .map(|_| {
                let (f, xz, name) = (&f, &xz, &name);
                scope.spawn(move || {
                    let r = f.client.put(f.url(&format!("nar/{name}"))).bearer_auth(&f.push).body(xz.clone());
                    r.send().unwrap().status()
                })
            })
            .collect();
        uploads.into_iter().map(|u| u.join().unwrap()).collect()
    });
    let peak = f.server.peak_rss_kib();
    eprintln!("server peak RSS after 8 concurrent 24 MiB-dictionary uploads: {} MiB", peak / 1024);
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB is over the {RSS_BOUND_KIB} KiB bound");
}

for_each_client!(nix_is_told_the_decoder_limit);

/// A user who raises Nix's xz level to 9 (a 64 MiB dictionary) is told, by Nix, which limit
/// the upload broke; the same path then uploads at Nix's default level.
fn nix_is_told_the_decoder_limit(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let file = s.path("random.bin");
    let mut random = vec![0u8; 2 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in random.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(&file, random).unwrap();
    let path = stdout_of(s.nix("nix-store").arg("--add").arg(&file));
    let netrc = s.netrc(&server.token("push"));
    let copy = |query: &str| {
        let url = format!("{}?{query}", server.url);
        s.nix("nix").args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &url, &path]).output().unwrap()
    };
    let out = copy("compression=xz&compression-level=9");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xz -9 needs a 64 MiB dictionary");
    assert!(stderr.contains("max_decoder_memory_mib") && stderr.contains("too_large"), "Nix shows why: {stderr}");
    let out = copy("compression=xz");
    assert!(out.status.success(), "xz at Nix's default level: {}", String::from_utf8_lossy(&out.stderr));
}
