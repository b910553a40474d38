//! Every channel a QueryChannels filter matches, listed by keyset pages (`stream-api.md` §1.11).
//!
//! Rows are sorted on `created_at`, then `cid`, and each page asks for the rows after the last one
//! seen: no offset (Stream's stops at 1,000), and a page boundary inside one instant (a bulk
//! import creates many channels in the same microsecond) neither drops nor repeats a row. The
//! cursor is the last row's `created_at` exactly as Stream wrote it, so no rounding moves it. A
//! page that does not advance past the cursor is a bad response, never a loop.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    client::StreamClient,
    error::{ErrorKind, Operation, UpstreamError},
    wire::{ChannelSummary, QueryChannelsBody, SortParam},
};

/// Rows per page: Stream's largest `limit`.
pub const PAGE_SIZE: u32 = 30;

/// How many times one page waits out a 429 before the listing fails.
const RATE_LIMITED_RETRIES: usize = 10;

/// Where a listing got to: the last row's `created_at` (verbatim) and `cid`. Stored, it lets a
/// listing resume after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCursor {
    /// The last row's `created_at`, as Stream wrote it.
    pub created_at: String,
    /// The last row's `cid`.
    pub cid: String,
}

impl ListCursor {
    fn of(row: &ChannelSummary) -> Self {
        Self { created_at: row.created_at.clone(), cid: row.cid.clone() }
    }

    /// The position in the listing's order; `None` when the time does not parse.
    fn position(&self) -> Option<(DateTime<Utc>, &str)> {
        let at = DateTime::parse_from_rfc3339(&self.created_at).ok()?.with_timezone(&Utc);
        Some((at, self.cid.as_str()))
    }
}

/// Lists the channels of one filter, a page at a time.
#[derive(Debug)]
pub struct ChannelLister {
    client: StreamClient,
    filter: Value,
    cursor: Option<ListCursor>,
    finished: bool,
    calls: u64,
}

impl ChannelLister {
    /// A listing of `filter` (Stream's `filter_conditions`), from the start or after `from`.
    pub fn new(client: StreamClient, filter: Value, from: Option<ListCursor>) -> Self {
        Self { client, filter, cursor: from, finished: false, calls: 0 }
    }

    /// The last row listed, if any.
    pub fn cursor(&self) -> Option<&ListCursor> {
        self.cursor.as_ref()
    }

    /// Whether the last page has been read.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// QueryChannels calls made (a 429 waited out counts as a call).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The next page of rows; empty once the listing is finished. A 429 waits for the window's
    /// reset (at most [`RATE_LIMITED_RETRIES`] times); other failures are the caller's to judge.
    pub async fn next_page(&mut self) -> Result<Vec<ChannelSummary>, UpstreamError> {
        if self.finished {
            return Ok(Vec::new());
        }
        let body = QueryChannelsBody {
            filter_conditions: self.page_filter(),
            sort: vec![SortParam { field: "created_at", direction: 1 }, SortParam { field: "cid", direction: 1 }],
            limit: PAGE_SIZE,
            state: false,
            watch: false,
            presence: false,
        };
        let calls = std::sync::atomic::AtomicU64::new(0);
        let query = || {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.client.query_channels(&body, None)
        };
        let answer = query
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_secs(1))
                    .with_max_delay(Duration::from_secs(60))
                    .with_max_times(RATE_LIMITED_RETRIES),
            )
            .sleep(tokio::time::sleep)
            .when(|error| matches!(error.kind(), ErrorKind::RateLimited { .. }))
            .adjust(|error, delay| match error.kind() {
                ErrorKind::RateLimited { retry_after: Some(after) } => Some(after.max(Duration::from_millis(100))),
                _ => delay,
            })
            .notify(|_, delay| tracing::debug!(?delay, "QueryChannels rate-limited; waiting for the window"))
            .await;
        self.calls += calls.into_inner();
        let rows: Vec<ChannelSummary> = answer?.body.channels.into_iter().map(|row| row.channel).collect();
        self.check_order(&rows)?;
        self.finished = rows.len() < PAGE_SIZE as usize;
        if let Some(last) = rows.last() {
            self.cursor = Some(ListCursor::of(last));
        }
        Ok(rows)
    }

    /// The user's filter, and after the first page: rows after the cursor.
    fn page_filter(&self) -> Value {
        match &self.cursor {
            None => self.filter.clone(),
            Some(ListCursor { created_at, cid }) => json!({"$and": [
                self.filter,
                {"$or": [
                    {"created_at": {"$gt": created_at}},
                    {"$and": [{"created_at": {"$eq": created_at}}, {"cid": {"$gt": cid}}]},
                ]},
            ]}),
        }
    }

    /// Every row must come after the cursor and after the row before it.
    fn check_order(&self, rows: &[ChannelSummary]) -> Result<(), UpstreamError> {
        let positions = rows.iter().map(ListCursor::of).collect::<Vec<_>>();
        let mut previous = self.cursor.clone();
        for (index, here) in positions.iter().enumerate() {
            let Some(position) = here.position() else {
                return Err(bad_page(format!(
                    "row {index}'s created_at {:?} is not an RFC 3339 time",
                    here.created_at
                )));
            };
            if let Some(before) = previous.as_ref().and_then(ListCursor::position)
                && position <= before
            {
                return Err(bad_page(format!(
                    "row {index} ({}) does not come after {} in created_at, cid order: the listing would not advance",
                    here.cid, before.1
                )));
            }
            previous = Some(here.clone());
        }
        Ok(())
    }
}

fn bad_page(detail: String) -> UpstreamError {
    UpstreamError::Decode { operation: Operation::QueryChannels, status: 200, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ClientConfig, Credentials, RetryPolicy};

    fn lister(from: Option<ListCursor>) -> ChannelLister {
        let client = StreamClient::new(ClientConfig {
            base_url: "http://127.0.0.1:9".parse().expect("url"),
            credentials: Credentials::new("key", &"a-secret-of-enough-length-0123456789".to_owned().into())
                .expect("credentials"),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            retry: RetryPolicy::NONE,
        })
        .expect("client");
        ChannelLister::new(client, json!({"type": "messaging"}), from)
    }

    fn row(created_at: &str, cid: &str) -> ChannelSummary {
        let (channel_type, id) = cid.split_once(':').expect("a cid");
        ChannelSummary {
            cid: cid.into(),
            channel_type: channel_type.into(),
            id: id.into(),
            created_at: created_at.into(),
        }
    }

    #[test]
    fn a_page_that_does_not_advance_is_a_bad_response_not_a_loop() {
        let at = "2024-01-01T00:00:00.5Z";
        let cursor = ListCursor { created_at: at.into(), cid: "messaging:b".into() };
        let lister = lister(Some(cursor));
        // Later in cid order at the same instant, or later in time written with other digits: fine.
        assert!(
            lister.check_order(&[row(at, "messaging:c"), row("2024-01-01T00:00:00.50001Z", "messaging:a")]).is_ok()
        );
        // The cursor's own row again, an earlier cid at its instant, or rows out of order: refused.
        for rows in [
            vec![row(at, "messaging:b")],
            vec![row("2024-01-01T00:00:00.500000Z", "messaging:a")],
            vec![row(at, "messaging:d"), row(at, "messaging:c")],
            vec![row("yesterday", "messaging:z")],
        ] {
            let error = lister.check_order(&rows).expect_err("refused");
            assert_eq!(error.kind(), ErrorKind::BadResponse, "{rows:?}");
        }
    }

    #[test]
    fn pages_after_the_first_ask_for_rows_after_the_cursor() {
        let first = lister(None);
        assert_eq!(first.page_filter(), json!({"type": "messaging"}));
        let at = "2024-01-01T00:00:00Z";
        let next = lister(Some(ListCursor { created_at: at.into(), cid: "messaging:b".into() }));
        assert_eq!(
            next.page_filter(),
            json!({"$and": [{"type": "messaging"}, {"$or": [
                {"created_at": {"$gt": at}},
                {"$and": [{"created_at": {"$eq": at}}, {"cid": {"$gt": "messaging:b"}}]},
            ]}]})
        );
    }
}
