//! Injected faults: what the next N requests of a route get instead of (or on top of) a normal answer.

use serde::{Deserialize, Serialize};

use super::config::Route;

fn default_code() -> i64 {
    -1
}

fn default_edge_status() -> u16 {
    429
}

fn default_redirect_status() -> u16 {
    302
}

/// A fault kind, as posted to `POST /_emulator/faults`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Fault {
    /// A Stream error body with this HTTP status and code.
    Status {
        status: u16,
        #[serde(default = "default_code")]
        code: i64,
        #[serde(default)]
        message: Option<String>,
        /// Adds this many generated `exception_fields` (`field_0`: "field_0 is not valid", ...).
        #[serde(default)]
        exception_fields: u32,
    },
    /// A plain-text body (an edge error), no JSON.
    NonJson {
        #[serde(default = "default_edge_status")]
        status: u16,
        #[serde(default)]
        body: Option<String>,
    },
    /// The normal status with a body that is not valid JSON.
    MalformedJson,
    /// The normal response, cut mid-body after declaring the full Content-Length.
    Truncated,
    /// Waits, then answers normally.
    Delay { ms: u64 },
    /// Closes the connection without any response.
    Drop,
    /// A redirect (302 by default) to `location`, by default the request's own path and query
    /// (so a client that follows it comes back, and is counted again).
    Redirect {
        #[serde(default = "default_redirect_status")]
        status: u16,
        #[serde(default)]
        location: Option<String>,
    },
    /// The route's success status with a valid JSON body of about `bytes` bytes (streamed, no
    /// `Content-Length`); the request is not run.
    Oversize { bytes: u64 },
}

/// Which routes a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteSel {
    Any,
    One(Route),
}

impl RouteSel {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        if name == "*" { Some(RouteSel::Any) } else { Route::from_name(name).map(RouteSel::One) }
    }

    fn name(self) -> &'static str {
        match self {
            RouteSel::Any => "*",
            RouteSel::One(route) => route.name(),
        }
    }

    fn matches(self, route: Route) -> bool {
        match self {
            RouteSel::Any => true,
            RouteSel::One(one) => one == route,
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    route: RouteSel,
    remaining: u32,
    fault: Fault,
}

/// Pending fault rules, applied first-in first-out.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    rules: Vec<Rule>,
}

impl Faults {
    pub(crate) fn add(&mut self, route: RouteSel, count: u32, fault: Fault) {
        if count > 0 {
            self.rules.push(Rule { route, remaining: count, fault });
        }
    }

    pub(crate) fn clear(&mut self) -> usize {
        let cleared = self.rules.len();
        self.rules.clear();
        cleared
    }

    /// The fault for this request, if any rule matches; uses up one of its count.
    pub(crate) fn take(&mut self, route: Route) -> Option<Fault> {
        let index = self.rules.iter().position(|rule| rule.route.matches(route))?;
        let rule = &mut self.rules[index];
        let fault = rule.fault.clone();
        rule.remaining -= 1;
        if rule.remaining == 0 {
            self.rules.remove(index);
        }
        Some(fault)
    }

    pub(crate) fn list(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.rules
                .iter()
                .map(|rule| serde_json::json!({"route": rule.route.name(), "count": rule.remaining, "fault": rule.fault}))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_apply_in_order_and_expire() {
        let mut faults = Faults::default();
        faults.add(RouteSel::One(Route::GetTask), 2, Fault::Drop);
        faults.add(RouteSel::Any, 1, Fault::MalformedJson);
        assert_eq!(faults.take(Route::ExportUser), Some(Fault::MalformedJson));
        assert_eq!(faults.take(Route::ExportUser), None);
        assert_eq!(faults.take(Route::GetTask), Some(Fault::Drop));
        assert_eq!(faults.take(Route::GetTask), Some(Fault::Drop));
        assert_eq!(faults.take(Route::GetTask), None);
    }

    #[test]
    fn fault_json_shapes() {
        let parsed: Result<Fault, _> = serde_json::from_str(r#"{"kind":"status","status":503}"#);
        assert!(matches!(parsed, Ok(Fault::Status { status: 503, code: -1, .. })));
        let parsed: Result<Fault, _> = serde_json::from_str(r#"{"kind":"delay","ms":5}"#);
        assert!(matches!(parsed, Ok(Fault::Delay { ms: 5 })));
    }
}
