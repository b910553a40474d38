//! Wire helpers: the `duration` field, timestamps, JSON bodies and Stream error bodies.

use std::time::Instant;

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// Where the `more_info` field of every error points.
pub(crate) const MORE_INFO: &str = "https://getstream.io/chat/docs/api_errors_response";

/// The moment a request arrived, to compute `duration`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timer(pub(crate) Instant);

impl Timer {
    pub(crate) fn start() -> Self {
        Self(Instant::now())
    }

    /// The elapsed time as the API prints it: `"1.23ms"`.
    pub(crate) fn duration(&self) -> String {
        let ms = self.0.elapsed().as_secs_f64() * 1000.0;
        format!("{ms:.2}ms")
    }
}

/// RFC 3339 in UTC with microseconds, trailing zeros trimmed, and `Z` (Go's RFC3339Nano style).
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    let text = at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let body = text.trim_end_matches('Z');
    let trimmed = if body.contains('.') { body.trim_end_matches('0').trim_end_matches('.') } else { body };
    format!("{trimmed}Z")
}

/// A JSON response with `duration` added to the object.
pub(crate) fn json(status: StatusCode, timer: Timer, mut body: Value) -> Response {
    if let Value::Object(map) = &mut body {
        map.insert("duration".to_owned(), Value::String(timer.duration()));
    }
    (status, Json(body)).into_response()
}

/// A Stream API error.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: i64,
    pub(crate) message: String,
    pub(crate) exception_fields: Option<Map<String, Value>>,
}

impl ApiError {
    /// An error whose message follows `<Operation> failed with error: "<detail>"`.
    pub(crate) fn new(status: StatusCode, code: i64, operation: &str, detail: &str) -> Self {
        Self { status, code, message: format!("{operation} failed with error: \"{detail}\""), exception_fields: None }
    }

    /// An input error (HTTP 400, code 4) naming the offending field.
    pub(crate) fn input(operation: &str, field: &str, detail: &str) -> Self {
        let mut fields = Map::new();
        fields.insert(field.to_owned(), Value::String(detail.to_owned()));
        Self { exception_fields: Some(fields), ..Self::new(StatusCode::BAD_REQUEST, 4, operation, detail) }
    }

    /// A missing resource (HTTP 404, code 16).
    pub(crate) fn not_found(operation: &str, detail: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, 16, operation, detail)
    }

    /// The Stream error body.
    pub(crate) fn body(&self, duration: String) -> Value {
        let mut body = json!({
            "code": self.code,
            "message": self.message,
            "StatusCode": self.status.as_u16(),
            "duration": duration,
            "more_info": MORE_INFO,
            "details": [],
        });
        if let (Some(fields), Value::Object(map)) = (&self.exception_fields, &mut body) {
            map.insert("exception_fields".to_owned(), Value::Object(fields.clone()));
        }
        body
    }

    pub(crate) fn response(&self, timer: Timer) -> Response {
        (self.status, Json(self.body(timer.duration()))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_trim_trailing_zeros() {
        let at = Utc.with_ymd_and_hms(2021, 2, 17, 8, 17, 49).single();
        let Some(at) = at else { panic!("valid date") };
        assert_eq!(timestamp(at), "2021-02-17T08:17:49Z");
        let at = at + chrono::Duration::microseconds(745_800);
        assert_eq!(timestamp(at), "2021-02-17T08:17:49.7458Z");
    }
}
