//! The loopback S3 server of `tests/common/s3.rs`, driven by object_store's S3 client as the
//! archives drive it: what it stores, what it refuses, and the failures it injects.

use std::{sync::Arc, time::Duration};

use futures::TryStreamExt;

use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig, WriteMultipart,
    aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey},
    path::Path,
};

use crate::common::s3::{BUCKET, Failure, RequestKind, S3Server};

/// A client of `server`'s bucket built from [`S3Server::object_store_options`] (so that a wrong
/// key fails here), with object_store's default retries.
fn client(server: &S3Server) -> AmazonS3 {
    client_with(server, RetryConfig::default())
}

fn client_with(server: &S3Server, retry: RetryConfig) -> AmazonS3 {
    let builder = server.object_store_options().into_iter().fold(
        AmazonS3Builder::new().with_bucket_name(BUCKET).with_retry(retry),
        |builder, (key, value)| {
            let key: AmazonS3ConfigKey = key.parse().unwrap_or_else(|_| panic!("object_store knows {key}"));
            builder.with_config(key, value)
        },
    );
    builder.build().expect("an S3 client")
}

/// Retries that give up soon, and quickly.
fn few_quick_retries(max_retries: usize) -> RetryConfig {
    RetryConfig {
        max_retries,
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..BackoffConfig::default()
        },
        ..RetryConfig::default()
    }
}

/// 12 MiB that are not all alike: three parts at object_store's 5 MiB chunk size.
fn twelve_mebibytes() -> Vec<u8> {
    (0..12 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

async fn upload(store: &AmazonS3, key: &str, data: &[u8]) -> object_store::Result<()> {
    let mut writer = WriteMultipart::new(store.put_multipart(&Path::from(key)).await?);
    writer.write(data);
    writer.finish().await.map(drop)
}

#[tokio::test]
async fn multipart_upload_reads_back_identical() {
    let server = S3Server::start().await;
    let data = twelve_mebibytes();

    upload(&client(&server), "shards/0001.jsonl", &data).await.expect("the upload completes");

    assert!(server.object("shards/0001.jsonl") == Some(data.clone()), "the stored object differs");
    assert_eq!(server.keys("shards/"), ["shards/0001.jsonl"]);
    assert_eq!(server.count(RequestKind::CreateMultipart), 1);
    assert_eq!(server.count(RequestKind::UploadPart), 3);
    assert_eq!(server.count(RequestKind::Complete), 1);
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
    let read = client(&server).get(&Path::from("shards/0001.jsonl")).await.unwrap().bytes().await.unwrap();
    assert!(read == data, "GetObject returns other bytes");
}

#[tokio::test]
async fn a_second_create_only_put_is_refused_and_the_first_object_stays() {
    let server = S3Server::start().await;
    let store = client(&server);
    let key = Path::from("manifests/job-1.json");

    store.put_opts(&key, PutPayload::from_static(b"first"), PutMode::Create.into()).await.expect("the first create");
    let second = store.put_opts(&key, PutPayload::from_static(b"second"), PutMode::Create.into()).await;

    assert!(matches!(second, Err(object_store::Error::AlreadyExists { .. })), "{second:?}");
    assert_eq!(server.object("manifests/job-1.json").as_deref(), Some(&b"first"[..]));
    assert_eq!(server.count(RequestKind::Put), 2);
}

#[tokio::test]
async fn a_failing_part_fails_the_upload_and_abort_leaves_nothing() {
    let server = S3Server::start().await;
    let store = client_with(&server, few_quick_retries(2));
    // More failures than the attempts of every part: each part gives up.
    server.fail_next(RequestKind::UploadPart, Failure::InternalError, 100);

    let mut writer = WriteMultipart::new(store.put_multipart(&Path::from("shards/0002.jsonl")).await.unwrap());
    writer.write(&twelve_mebibytes());
    let failed = writer.wait_for_capacity(0).await;
    assert!(matches!(failed, Err(object_store::Error::Generic { .. })), "{failed:?}");
    writer.abort().await.expect("the upload aborts");

    assert!(server.count(RequestKind::UploadPart) >= 3, "object_store retried a failed part");
    assert_eq!(server.count(RequestKind::Abort), 1);
    assert_eq!(server.count(RequestKind::Complete), 0);
    assert_eq!(server.object("shards/0002.jsonl"), None);
    assert_eq!(server.keys(""), Vec::<String>::new());
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
}

#[tokio::test]
async fn object_store_retries_a_put_answered_slow_down() {
    let server = S3Server::start().await;
    server.fail_next(RequestKind::Put, Failure::SlowDown, 1);

    client_with(&server, few_quick_retries(3))
        .put(&Path::from("manifests/job-2.json"), PutPayload::from_static(b"{}"))
        .await
        .expect("the put succeeds on its retry");

    assert_eq!(server.count(RequestKind::Put), 2);
    assert_eq!(server.object("manifests/job-2.json").as_deref(), Some(&b"{}"[..]));
}

#[tokio::test]
async fn object_store_retries_a_part_whose_connection_dropped() {
    let server = S3Server::start().await;
    server.fail_next(RequestKind::UploadPart, Failure::Drop, 1);
    let data = twelve_mebibytes();

    upload(&client_with(&server, few_quick_retries(3)), "shards/0003.jsonl", &data)
        .await
        .expect("the upload completes after the retry");

    assert_eq!(server.count(RequestKind::UploadPart), 4, "three parts, one sent twice");
    assert!(server.object("shards/0003.jsonl") == Some(data), "the stored object differs");
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
}

#[tokio::test]
async fn held_parts_leave_no_object_until_released() {
    let server = S3Server::start().await;
    let store = Arc::new(client(&server));
    let data = twelve_mebibytes();
    let hold = server.hold(RequestKind::UploadPart);

    let uploading = tokio::spawn({
        let (store, data) = (store.clone(), data.clone());
        async move { upload(&store, "shards/0004.jsonl", &data).await }
    });
    server.wait_until_held(1).await;
    assert_eq!(server.object("shards/0004.jsonl"), None);
    assert!(!server.pending_uploads().is_empty(), "the started upload is pending");

    drop(hold);
    uploading.await.unwrap().expect("the upload completes once released");
    assert!(server.object("shards/0004.jsonl") == Some(data), "the stored object differs");
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
}

#[tokio::test]
async fn a_request_signed_with_another_secret_is_refused() {
    let server = S3Server::start().await;
    let store = AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_region(crate::common::s3::REGION)
        .with_access_key_id(crate::common::s3::ACCESS_KEY)
        .with_secret_access_key("not-the-secret")
        .with_retry(few_quick_retries(0))
        .build()
        .unwrap();

    let refused = store.put(&Path::from("manifests/job-3.json"), PutPayload::from_static(b"{}")).await;

    assert!(matches!(refused, Err(object_store::Error::PermissionDenied { .. })), "{refused:?}");
    assert_eq!(server.keys(""), Vec::<String>::new());
}

#[tokio::test]
async fn the_child_environment_names_object_store_keys() {
    let server = S3Server::start().await;
    let from_env: Vec<(String, String)> = server
        .env()
        .into_iter()
        .map(|(name, value)| {
            let key: AmazonS3ConfigKey =
                name.to_ascii_lowercase().parse().unwrap_or_else(|_| panic!("AmazonS3Builder::from_env reads {name}"));
            (key.as_ref().to_owned(), value)
        })
        .collect();
    let options: Vec<(String, String)> = server
        .object_store_options()
        .into_iter()
        .map(|(name, value)| (name.parse::<AmazonS3ConfigKey>().unwrap().as_ref().to_owned(), value))
        .collect();
    assert_eq!(from_env, options);
}

/// The way the service builds a store from an archive URI, with SHA-256 checksums asked for.
#[tokio::test]
async fn a_store_from_an_s3_url_with_checksums_uploads_and_lists() {
    let server = S3Server::start().await;
    let mut options = server.object_store_options();
    options.push(("aws_checksum_algorithm".into(), "sha256".into()));
    let url = url::Url::parse(&server.url("shards/0005.jsonl")).unwrap();
    let (store, path) = object_store::parse_url_opts(&url, options).expect("a store from the URL");
    let data = twelve_mebibytes();

    let mut writer = WriteMultipart::new(store.put_multipart(&path).await.unwrap());
    writer.write(&data);
    let put = writer.finish().await.expect("the upload completes");

    assert!(server.object("shards/0005.jsonl") == Some(data), "the stored object differs");
    // A multipart ETag names its part count.
    assert!(put.e_tag.as_deref().is_some_and(|tag| tag.ends_with("-3\"")), "{:?}", put.e_tag);
    let head = store.head(&path).await.unwrap();
    assert_eq!((head.size, head.e_tag), (12 * 1024 * 1024, put.e_tag));
    let listed: Vec<_> =
        store.list(Some(&Path::from("shards"))).map_ok(|meta| meta.location).try_collect().await.unwrap();
    assert_eq!(listed, [path]);
}

/// The hazard of a create-only put: when its answer is lost, object_store's retry meets the
/// object the first attempt wrote, and reports AlreadyExists for a write that succeeded.
#[tokio::test]
async fn a_create_only_put_whose_answer_is_lost_reports_already_exists_yet_is_stored() {
    let server = S3Server::start().await;
    server.fail_next(RequestKind::Put, Failure::LoseAnswer, 1);

    let put = client_with(&server, few_quick_retries(3))
        .put_opts(&Path::from("manifests/job-4.json"), PutPayload::from_static(b"mine"), PutMode::Create.into())
        .await;

    assert!(matches!(put, Err(object_store::Error::AlreadyExists { .. })), "{put:?}");
    assert_eq!(server.count(RequestKind::Put), 2);
    assert_eq!(server.object("manifests/job-4.json").as_deref(), Some(&b"mine"[..]));
}

/// The same for a multipart upload: the retried CompleteMultipartUpload finds its upload gone
/// (s3s-fs answers 403 AccessDenied, where AWS answers 200), `finish` then aborts, which fails
/// too, and reports an error: yet the whole object is stored.
#[tokio::test]
async fn a_complete_whose_answer_is_lost_fails_the_upload_yet_the_object_is_stored() {
    let server = S3Server::start().await;
    server.fail_next(RequestKind::Complete, Failure::LoseAnswer, 1);
    let data = twelve_mebibytes();

    let finished = upload(&client_with(&server, few_quick_retries(3)), "shards/0006.jsonl", &data).await;

    assert!(finished.is_err(), "{finished:?}");
    assert_eq!(server.count(RequestKind::Complete), 2);
    assert!(server.object("shards/0006.jsonl") == Some(data), "the stored object differs");
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
}
