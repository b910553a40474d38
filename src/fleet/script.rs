//! The one way the fleet calls Redis: a Lua script, run atomically on the one Redis (or the one
//! Cluster slot) that holds its keys. Every key a script touches is passed as a key (so that a
//! Redis Cluster routes the call, and refuses keys of several slots), never built inside it.
//!
//! Scripts are sent by digest (`EVALSHA`), and their text only when Redis does not know it
//! yet. A call waits at most [`super::CALL_TIMEOUT`], connecting included, and fails with
//! [`FleetError::Unavailable`] when Redis cannot be reached, or [`FleetError::Refused`] when
//! it answers with an error.

use redis::{FromRedisValue, ScriptInvocation, ToRedisArgs};

use super::connection::{FleetError, Redis};

/// A Lua script of the fleet, with the name its calls are traced under.
pub struct FleetScript {
    /// The name of its calls' client spans: `EVALSHA <what it does>` (`EVALSHA submit.claim`).
    operation: &'static str,
    script: redis::Script,
}

impl std::fmt::Debug for FleetScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetScript").field("operation", &self.operation).finish_non_exhaustive()
    }
}

impl FleetScript {
    /// The script `source`, whose calls are traced as `operation` (`EVALSHA submit.claim`).
    pub fn new(operation: &'static str, source: &str) -> Self {
        Self { operation, script: redis::Script::new(source) }
    }

    /// A call of the script: add its keys and arguments in order, then [`ScriptCall::run`] it.
    pub fn call(&self) -> ScriptCall<'_> {
        ScriptCall { operation: self.operation, invocation: self.script.prepare_invoke(), traced: true }
    }
}

/// One call of a [`FleetScript`].
pub struct ScriptCall<'a> {
    operation: &'static str,
    invocation: ScriptInvocation<'a>,
    traced: bool,
}

impl ScriptCall<'_> {
    /// Adds the next key (`KEYS[n]`).
    #[must_use]
    pub fn key(mut self, key: impl ToRedisArgs) -> Self {
        self.invocation.key(key);
        self
    }

    /// Adds the next argument (`ARGV[n]`).
    #[must_use]
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.invocation.arg(arg);
        self
    }

    /// Not traced: for the periodic calls every replica makes in the background (heartbeats,
    /// follows, lease renewals, budget bookings), which would otherwise be hundreds of root
    /// spans per second with no caller to attach them to.
    #[must_use]
    pub fn quiet(mut self) -> Self {
        self.traced = false;
        self
    }

    /// Runs the call on `redis`, and notes whether Redis answered (outages are logged once).
    pub async fn run<T: FromRedisValue>(self, redis: &Redis) -> Result<T, FleetError> {
        let mut connection = redis.connection().await?;
        let answer = self.invocation.invoke_async(&mut connection);
        if self.traced { redis.call(self.operation, answer).await } else { redis.observe(answer.await) }
    }
}
