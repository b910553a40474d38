//! The access group: who may call (bearer tokens, forwarded client certificates) and what each
//! caller may do (the policy file), as the paths and switches `startup` builds them from.

use std::path::PathBuf;

/// Flags of caller authentication and authorization.
#[derive(clap::Args, Debug)]
pub struct AccessArgs {
    /// Require `authorization: Bearer <token>` on ExportService; the file lists
    /// `<caller-name> <token>` per line. Health and reflection stay open.
    #[arg(long, env = "STREAM_EXPORT_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Authorization policies (Cedar; schema in policy/stream-export.cedarschema): what each caller
    /// may export and read. Unset: every caller may do everything. SIGHUP reloads the file.
    #[arg(long, env = "STREAM_EXPORT_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// Take the caller's identity for the audit log from the last element of
    /// `x-forwarded-client-cert` (only behind an Envoy sidecar in SANITIZE_SET or
    /// APPEND_FORWARD mode).
    #[arg(long, env = "STREAM_EXPORT_TRUST_FORWARDED_CLIENT_CERT")]
    pub trust_forwarded_client_cert: bool,
}

/// Caller authentication and authorization: by default, no token is required and every caller
/// may do everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessSettings {
    /// The `<caller-name> <token>` lines of the callers, if tokens are required.
    pub tokens_file: Option<PathBuf>,
    /// Whether to believe `x-forwarded-client-cert` (only behind a sidecar that sets it).
    pub trust_forwarded_client_cert: bool,
    /// The Cedar policies, if they are enforced.
    pub policy_file: Option<PathBuf>,
}

impl AccessArgs {
    pub(super) fn into_settings(self) -> AccessSettings {
        AccessSettings {
            tokens_file: self.auth_tokens_file,
            trust_forwarded_client_cert: self.trust_forwarded_client_cert,
            policy_file: self.policy_file,
        }
    }
}
