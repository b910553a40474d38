//! Listing every channel of a QueryChannels filter (the planning step of export jobs): keyset
//! pages, a bulk import inside one page boundary, 429s waited out, a misbehaving upstream caught.

use std::{collections::BTreeSet, time::Duration};

use serde_json::json;
use stream_export::{
    emulator::{EmulatorConfig, data::BULK_IMPORT_SIZE},
    upstream::{
        ClientConfig, Credentials, RetryPolicy, StreamClient,
        channel_list::{ChannelLister, PAGE_SIZE},
    },
};

use crate::common::{API_KEY, API_SECRET, emulator::TestEmulator};

fn client(emulator: &TestEmulator) -> StreamClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    StreamClient::new(ClientConfig {
        base_url: emulator.base_url().parse().expect("url"),
        credentials: Credentials::new(API_KEY, &API_SECRET.to_owned().into()).expect("credentials"),
        connect_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(10),
        retry: RetryPolicy::default(),
    })
    .expect("client")
}

async fn emulator_with(synthetic: usize, query_channels_per_minute: u32) -> TestEmulator {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = synthetic;
    config.rate_limits.query_channels = query_channels_per_minute;
    TestEmulator::spawn(config).await
}

async fn list_all(lister: &mut ChannelLister) -> Vec<String> {
    let mut cids = Vec::new();
    while !lister.is_finished() {
        cids.extend(lister.next_page().await.expect("a page").into_iter().map(|row| row.cid));
    }
    cids
}

#[tokio::test]
async fn every_matching_channel_is_listed_once_in_pages_of_thirty() {
    let synthetic = 1_000;
    let emulator = emulator_with(synthetic, 10_000).await;
    let mut lister =
        ChannelLister::new(client(&emulator), json!({"team": {"$in": ["acme", "globex", "initech"]}}), None);
    let cids = list_all(&mut lister).await;
    assert_eq!(cids.len(), synthetic);
    assert_eq!(cids.iter().collect::<BTreeSet<_>>().len(), synthetic, "no channel twice");
    // A bulk import of more than a page in one microsecond did not stop or repeat the listing.
    assert!(BULK_IMPORT_SIZE > PAGE_SIZE as usize);
    assert_eq!(lister.calls(), synthetic as u64 / u64::from(PAGE_SIZE) + 1, "one call per page, no offset");
}

#[tokio::test]
async fn a_listing_resumes_from_its_cursor() {
    let emulator = emulator_with(200, 10_000).await;
    let filter = json!({"team": "acme"});
    let mut first = ChannelLister::new(client(&emulator), filter.clone(), None);
    let mut cids: Vec<String> = first.next_page().await.expect("page").into_iter().map(|row| row.cid).collect();
    let cursor = first.cursor().cloned();
    drop(first);
    let mut resumed = ChannelLister::new(client(&emulator), filter.clone(), cursor);
    cids.extend(list_all(&mut resumed).await);
    let whole = list_all(&mut ChannelLister::new(client(&emulator), filter, None)).await;
    assert_eq!(cids, whole);
}

#[tokio::test]
async fn a_rate_limited_page_is_waited_out_not_failed() {
    let emulator = emulator_with(60, 10_000).await;
    // The edge's 429 (no rate-limit headers): the lister backs off and asks again.
    let fault = json!({"route": "query_channels", "count": 1, "fault": {"kind": "non_json", "status": 429}});
    emulator.control(reqwest::Method::POST, "faults", Some(fault)).await;
    let mut lister =
        ChannelLister::new(client(&emulator), json!({"team": {"$in": ["acme", "globex", "initech"]}}), None);
    let first = lister.next_page().await.expect("page 1 after the 429");
    assert_eq!(first.len(), 30);
    assert_eq!(lister.calls(), 2, "the refused call and the one after the wait");
}

#[tokio::test]
async fn a_filter_stream_refuses_is_an_invalid_request_with_its_message() {
    let emulator = emulator_with(0, 10_000).await;
    let mut lister = ChannelLister::new(client(&emulator), json!({"type": {"$regex": "^m"}}), None);
    let error = lister.next_page().await.expect_err("refused");
    assert_eq!(error.kind(), stream_export::upstream::ErrorKind::InvalidRequest);
    assert!(error.to_string().contains("$regex"), "{error}");
}
