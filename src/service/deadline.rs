//! The caller's deadline, from the `grpc-timeout` header.
//!
//! tonic enforces it for unary calls; a response stream outlives the handler, so `WatchTask`
//! reads it itself.

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// Upstream work stops this long before the caller's deadline, so that the caller gets this
/// service's DEADLINE_EXCEEDED (with details) rather than a bare cancellation.
const UPSTREAM_MARGIN: Duration = Duration::from_millis(20);

/// When upstream work for this call must be done by.
pub fn for_upstream(metadata: &MetadataMap) -> Option<Instant> {
    from_metadata(metadata).map(|deadline| deadline.checked_sub(UPSTREAM_MARGIN).unwrap_or(deadline))
}

/// When the caller's deadline passes, if it sent one that parses.
pub fn from_metadata(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    Some(Instant::now() + parse_timeout(value)?)
}

/// Parses `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
