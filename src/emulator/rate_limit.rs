//! Fixed one-minute windows per route, reported in lower-case `x-ratelimit-*` headers; with
//! [`RateLimits::per_second`] also one-second windows of a minute's limit ÷ 30 (at least 1), as
//! Stream documents. A request refused by its second reports the minute's limit, nothing
//! remaining, and the next second as the reset.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::config::{RateLimits, Route};

/// The state of one route's window after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateInfo {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// Unix seconds at which the window ends.
    pub(crate) reset: i64,
}

impl RateInfo {
    /// Writes the three headers, in lower case (the Python SDK finds no other spelling).
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(self.limit));
        headers.insert(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(self.remaining));
        headers.insert(HeaderName::from_static("x-ratelimit-reset"), HeaderValue::from(self.reset));
    }

    /// The same window with nothing left, as an edge 429 reports it.
    pub(crate) fn exhausted(self) -> Self {
        Self { remaining: 0, ..self }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Window {
    start: i64,
    used: u32,
    /// The current second and the requests counted in it.
    second: i64,
    used_in_second: u32,
}

/// Request counts per route in the current window.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: RateLimits,
    windows: BTreeMap<Route, Window>,
}

impl RateLimiter {
    pub(crate) fn new(limits: RateLimits) -> Self {
        Self { limits, windows: BTreeMap::new() }
    }

    fn window(&mut self, route: Route, now_secs: i64) -> &mut Window {
        let start = now_secs - now_secs.rem_euclid(60);
        let window = self.windows.entry(route).or_default();
        if window.start != start {
            *window = Window { start, ..Window::default() };
        }
        if window.second != now_secs {
            window.second = now_secs;
            window.used_in_second = 0;
        }
        window
    }

    /// Counts a request; `Err` when the window is already used up.
    pub(crate) fn consume(&mut self, route: Route, now_secs: i64) -> Result<RateInfo, RateInfo> {
        let limit = self.limits.get(route);
        let per_second = self.limits.per_second.then(|| (limit / 30).max(1));
        let window = self.window(route, now_secs);
        let reset = window.start + 60;
        if window.used >= limit {
            return Err(RateInfo { limit, remaining: 0, reset });
        }
        if per_second.is_some_and(|most| window.used_in_second >= most) {
            return Err(RateInfo { limit, remaining: 0, reset: now_secs + 1 });
        }
        window.used += 1;
        window.used_in_second += 1;
        Ok(RateInfo { limit, remaining: limit - window.used, reset })
    }

    /// The window's state without counting a request.
    pub(crate) fn peek(&mut self, route: Route, now_secs: i64) -> RateInfo {
        let limit = self.limits.get(route);
        let window = self.window(route, now_secs);
        RateInfo { limit, remaining: limit.saturating_sub(window.used), reset: window.start + 60 }
    }

    /// Sets a route's limit and starts its window afresh.
    pub(crate) fn set_limit(&mut self, route: Route, per_minute: u32) {
        self.limits.set(route, per_minute);
        self.windows.remove(&route);
    }

    pub(crate) fn limits(&self) -> BTreeMap<&'static str, u32> {
        Route::NAMED.into_iter().map(|route| (route.name(), self.limits.get(route))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_and_resets_each_minute() {
        let mut limiter = RateLimiter::new(RateLimits::uniform(2));
        let now = 1_700_000_010;
        assert_eq!(limiter.consume(Route::GetTask, now).map(|i| i.remaining), Ok(1));
        assert_eq!(limiter.consume(Route::GetTask, now).map(|i| i.remaining), Ok(0));
        assert!(limiter.consume(Route::GetTask, now).is_err());
        assert_eq!(limiter.peek(Route::GetTask, now).reset, 1_700_000_040);
        assert!(limiter.consume(Route::GetTask, now + 60).is_ok());
        assert!(limiter.consume(Route::ExportUser, now).is_ok());
    }

    #[test]
    fn with_per_second_limits_a_second_takes_a_thirtieth_of_the_minute() {
        let mut limits = RateLimits::uniform(60);
        limits.per_second = true;
        let mut limiter = RateLimiter::new(limits);
        let now = 1_700_000_010;
        assert!(limiter.consume(Route::ExportChannels, now).is_ok());
        assert!(limiter.consume(Route::ExportChannels, now).is_ok());
        let refused = limiter.consume(Route::ExportChannels, now).expect_err("a third in one second");
        assert_eq!((refused.limit, refused.remaining, refused.reset), (60, 0, now + 1));
        assert_eq!(limiter.consume(Route::ExportChannels, now + 1).map(|info| info.remaining), Ok(57));
        // A small limit still allows one a second; without the setting, bursts are fine.
        let mut small = RateLimits::uniform(10);
        small.per_second = true;
        let mut limiter = RateLimiter::new(small);
        assert!(limiter.consume(Route::GetTask, now).is_ok());
        assert!(limiter.consume(Route::GetTask, now).is_err());
        let mut burst = RateLimiter::new(RateLimits::uniform(60));
        assert!((0..60).all(|_| burst.consume(Route::GetTask, now).is_ok()));
    }
}
