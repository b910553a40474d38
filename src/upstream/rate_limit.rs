//! The `x-ratelimit-*` headers Stream sends on every response.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;

/// The rate-limit window of one upstream route, as the last response reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window (one minute).
    pub limit: u64,
    /// Requests left in the current window.
    pub remaining: u64,
    /// When the window resets.
    pub reset: DateTime<Utc>,
}

/// Stream's rate-limit window; a reset further away than this is not believed.
pub const WINDOW: Duration = Duration::from_secs(60);

impl RateLimit {
    /// Time until the window resets: zero if it has, at most one [`WINDOW`] whatever the
    /// header claimed.
    pub fn until_reset(&self) -> Duration {
        (self.reset - Utc::now()).to_std().unwrap_or_default().min(WINDOW)
    }

    /// Reads the three headers (names are case-insensitive); `None` unless all three parse.
    /// Like the official SDKs, only the first non-empty comma-separated item counts.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let number = |name: &str| -> Option<u64> {
            let value = headers.get(name)?.to_str().ok()?;
            value.split(',').map(str::trim).find(|item| !item.is_empty())?.parse().ok()
        };
        Some(Self {
            limit: number("x-ratelimit-limit")?,
            remaining: number("x-ratelimit-remaining")?,
            reset: DateTime::from_timestamp(i64::try_from(number("x-ratelimit-reset")?).ok()?, 0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn parses_headers_of_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert("X-RateLimit-Limit", HeaderValue::from_static("60"));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("59, 58"));
        headers.insert("X-RATELIMIT-RESET", HeaderValue::from_static("1700000000"));
        let limit = RateLimit::from_headers(&headers).unwrap();
        assert_eq!((limit.limit, limit.remaining, limit.reset.timestamp()), (60, 59, 1_700_000_000));
    }

    #[test]
    fn until_reset_is_bounded_by_one_window() {
        let far = RateLimit { limit: 1, remaining: 0, reset: Utc::now() + chrono::Duration::days(400) };
        assert_eq!(far.until_reset(), WINDOW);
        let past = RateLimit { reset: Utc::now() - chrono::Duration::seconds(5), ..far };
        assert_eq!(past.until_reset(), Duration::ZERO);
    }

    #[test]
    fn missing_or_garbled_headers_give_none() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit", HeaderValue::from_static("60"));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("many"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("1700000000"));
        assert_eq!(RateLimit::from_headers(&headers), None);
    }
}
