//! Storage URL parsing, table-tested.

use super::*;

#[track_caller]
fn check(input: &str, expected: Result<StoreUrl, &str>) {
    let got = StoreUrl::parse(input).map_err(|e| e.to_string());
    match (&got, &expected) {
        (Err(got), Err(want)) => assert!(got.contains(want), "{input}: error {got:?} lacks {want:?}"),
        _ => assert_eq!(got, expected.map_err(str::to_owned), "{input}"),
    }
}

fn s3(bucket: &str) -> S3Url {
    S3Url::plain(bucket.into(), None)
}

#[test]
fn local_and_memory() {
    check("memory://", Ok(StoreUrl::Memory));
    check("file:///var/lib/berth", Ok(StoreUrl::Dir("/var/lib/berth".into())));
    check("file://relative", Err("absolute directory"));
    check("http://example.org", Err("unsupported scheme"));
    check("s3:/bucket", Err("unsupported scheme"));
}

#[test]
fn bucket_and_prefix() {
    check("s3://cache", Ok(StoreUrl::S3(s3("cache"))));
    check("s3://my.cache-1/", Ok(StoreUrl::S3(s3("my.cache-1"))));
    let with_prefix = S3Url { prefix: Some("a/b_c/d.e".into()), ..s3("cache") };
    check("s3://cache/a/b_c/d.e", Ok(StoreUrl::S3(with_prefix.clone())));
    check("s3://cache/a/b_c/d.e/", Ok(StoreUrl::S3(with_prefix)));
    for bad in ["s3://ab", "s3://-cache", "s3://cache-", "s3://ca..che", "s3://ca_che", "s3://"] {
        check(bad, Err("invalid bucket name"));
    }
    check("s3://Cache", Err("invalid bucket name"));
    for bad in ["s3://cache/a//b", "s3://cache/a/../b", "s3://cache/./b", "s3://cache/a%20b", "s3://cache//"] {
        check(bad, Err("invalid prefix"));
    }
    check("s3://cache:9000/x", Err("no port"));
    check("s3://cache/a?x#frag", Err("no #fragment"));
}

#[test]
fn query_keys() {
    let url = "s3://cache/nix?endpoint=http://127.0.0.1:8333/&region=garage&credentials_file=/run/secrets/s3\
               &profile=berth&copy_if_not_exists=header:cf-copy-destination-if-none-match:*&conditional_put=etag";
    let expected = S3Url {
        prefix: Some("nix".into()),
        endpoint: Some("http://127.0.0.1:8333".into()),
        region: Some("garage".into()),
        path_style: true,
        credentials_file: Some("/run/secrets/s3".into()),
        profile: Some("berth".into()),
        copy_if_not_exists: Some(CopyIfNotExists::Header {
            name: "cf-copy-destination-if-none-match".into(),
            value: "*".into(),
        }),
        conditional_put: ConditionalPut::ETag,
        ..s3("cache")
    };
    check(url, Ok(StoreUrl::S3(expected)));
    let StoreUrl::S3(parsed) = StoreUrl::parse("s3://cache?endpoint=http://minio:9000").unwrap() else { panic!() };
    assert!(parsed.allow_http() && parsed.path_style, "an http endpoint allows http and defaults to path style");
    let StoreUrl::S3(parsed) = StoreUrl::parse("s3://cache?endpoint=https://x.example&path_style=false").unwrap()
    else {
        panic!()
    };
    assert!(!parsed.allow_http() && !parsed.path_style);
    let multipart = S3Url { copy_if_not_exists: Some(CopyIfNotExists::Multipart), ..s3("cache") };
    check("s3://cache?copy_if_not_exists=multipart", Ok(StoreUrl::S3(multipart)));
    check("s3://cache?conditional_put=none", Ok(StoreUrl::S3(s3("cache"))));
}

#[test]
fn bad_query_values() {
    check("s3://cache?endpoint=ftp://x", Err("invalid endpoint: must be http:// or https://"));
    check("s3://cache?endpoint=nonsense", Err("invalid endpoint: not a URL"));
    check("s3://cache?endpoint=http://x/some/path", Err("without a path"));
    check("s3://cache?region=us_east", Err("invalid region"));
    check("s3://cache?region=", Err("invalid region"));
    check("s3://cache?path_style=yes", Err("invalid path_style"));
    check("s3://cache?credentials_file=relative", Err("invalid credentials_file"));
    check("s3://cache?credentials_file=/run/../etc/shadow", Err("invalid credentials_file"));
    check("s3://cache?profile=a%20b", Err("invalid profile"));
    check("s3://cache?copy_if_not_exists=header:x", Err("invalid copy_if_not_exists"));
    check("s3://cache?copy_if_not_exists=dynamo:t", Err("invalid copy_if_not_exists"));
    check("s3://cache?conditional_put=dynamo", Err("invalid conditional_put"));
    check("s3://cache?region=a&region=b", Err("given twice"));
    check("s3://cache?bogus=1", Err("unknown query key \"bogus\""));
}

#[test]
fn secrets_are_refused_and_never_echoed() {
    for key in ["access_key_id", "aws_secret_access_key", "secret", "session_token", "password"] {
        let err = StoreUrl::parse(&format!("s3://cache?{key}=hunter2")).unwrap_err();
        assert_eq!(err, UrlError::SecretInUrl(key.into()));
        let text = err.to_string();
        assert!(text.contains("credentials_file") && !text.contains("hunter2"), "{text}");
    }
    for url in ["s3://key:hunter2@cache", "s3://cache?endpoint=http://key:hunter2@host"] {
        let err = StoreUrl::parse(url).unwrap_err();
        assert_eq!(err, UrlError::UserInfo, "{url}");
        assert!(!err.to_string().contains("hunter2"));
    }
}
