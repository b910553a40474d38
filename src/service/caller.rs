//! Who is calling: optional bearer-token authentication, and the caller's identity for the
//! audit log (token name, mTLS peer, or the client certificate an Envoy sidecar forwarded).

use std::{collections::HashMap, path::Path, sync::Arc};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status, service::Interceptor};

use super::forwarded_cert;
use crate::contract::status;

/// The identity of a caller, attached to each request by [`CallerAuth`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// A name for logs: the token's name, a certificate subject, or `anonymous`.
    pub name: String,
    /// How the name was established.
    pub source: CallerSource,
}

/// Where a caller's identity comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerSource {
    /// A bearer token from the tokens file.
    Token,
    /// The client certificate of a mutual-TLS connection.
    MtlsPeer,
    /// The `x-forwarded-client-cert` header of a trusted Envoy sidecar.
    ForwardedClientCert,
    /// Nothing identifies the caller.
    Anonymous,
}

impl CallerSource {
    /// The policies' `Caller.source`: `token`, `mtls`, `forwarded_client_cert` or `anonymous`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::MtlsPeer => "mtls",
            Self::ForwardedClientCert => "forwarded_client_cert",
            Self::Anonymous => "anonymous",
        }
    }

    /// Reads [`CallerSource::name`] back (a stored job's owner); anything else is anonymous.
    pub fn from_name(name: &str) -> Self {
        [Self::Token, Self::MtlsPeer, Self::ForwardedClientCert]
            .into_iter()
            .find(|source| source.name() == name)
            .unwrap_or(Self::Anonymous)
    }
}

impl Caller {
    /// The caller of a request (anonymous when no interceptor ran).
    pub fn of<T>(request: &Request<T>) -> Caller {
        request.extensions().get::<Caller>().cloned().unwrap_or_else(Caller::anonymous)
    }

    fn anonymous() -> Caller {
        Caller { name: "anonymous".into(), source: CallerSource::Anonymous }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Bearer tokens and the caller names they stand for. Only SHA-256 digests are kept, and a
/// presented token is compared with every one of them in constant time.
#[derive(Clone, Default)]
pub struct TokenTable {
    entries: Vec<([u8; 32], String)>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTable").field("callers", &self.entries.len()).finish()
    }
}

impl TokenTable {
    /// Reads a tokens file: one `<caller-name> <token>` per line; blank lines and lines
    /// starting with `#` are ignored. Errors name the line, never the token.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        Self::parse(&text).map_err(|error| format!("{}: {error}", path.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        let mut names = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, line)| (i + 1, line.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(name), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(format!("line {number}: expected `<caller-name> <token>`"));
            };
            if token.len() < 16 {
                return Err(format!("line {number}: the token of {name} is shorter than 16 characters"));
            }
            if names.insert(name.to_owned(), number).is_some() {
                return Err(format!("line {number}: caller {name} is listed twice"));
            }
            entries.push((digest(token), name.to_owned()));
        }
        if entries.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Self { entries })
    }

    /// The caller a token belongs to.
    fn caller(&self, token: &str) -> Option<&str> {
        let presented = digest(token);
        let mut found = None;
        for (known, name) in &self.entries {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The interceptor in front of `ExportService` (health and reflection stay open): with a
/// token table it demands `authorization: Bearer <token>`; either way it records the caller.
#[derive(Clone, Debug, Default)]
pub struct CallerAuth {
    /// Required tokens, if caller authentication is on.
    pub tokens: Option<Arc<TokenTable>>,
    /// Whether to believe `x-forwarded-client-cert` (only behind a sidecar that sets it).
    pub trust_forwarded_client_cert: bool,
}

impl Interceptor for CallerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = match &self.tokens {
            Some(tokens) => {
                let header = request.metadata().get("authorization").and_then(|value| value.to_str().ok());
                let token = header.and_then(bearer_token);
                match token.and_then(|token| tokens.caller(token)) {
                    Some(name) => Caller { name: name.to_owned(), source: CallerSource::Token },
                    None => return Err(status::unauthenticated(header.is_some())),
                }
            }
            None => self.certificate_identity(&request).unwrap_or_else(Caller::anonymous),
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

impl CallerAuth {
    fn certificate_identity(&self, request: &Request<()>) -> Option<Caller> {
        if let Some(subject) = request.peer_certs().and_then(|certs| certs.first().and_then(|c| subject_of(c))) {
            return Some(Caller { name: subject, source: CallerSource::MtlsPeer });
        }
        if self.trust_forwarded_client_cert {
            let header = request.metadata().get("x-forwarded-client-cert")?.to_str().ok()?;
            let name = forwarded_cert::identity(header)?;
            return Some(Caller { name, source: CallerSource::ForwardedClientCert });
        }
        None
    }
}

/// The token of an `authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 6750 and RFC 9110: `bearer` and `BEARER` are the same scheme).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim())
}

/// The subject of a DER certificate, e.g. `CN=batch-job,O=Acme`.
fn subject_of(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(certificate.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_maps_tokens_to_names() {
        let table =
            TokenTable::parse("# callers\nbilling  aaaaaaaaaaaaaaaaaaaa\n\nexports bbbbbbbbbbbbbbbbbbbb\n").unwrap();
        assert_eq!(table.caller("bbbbbbbbbbbbbbbbbbbb"), Some("exports"));
        assert_eq!(table.caller("aaaaaaaaaaaaaaaaaaaa"), Some("billing"));
        assert_eq!(table.caller("cccccccccccccccccccc"), None);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer tok", "bearer tok", "BEARER  tok ", " Bearer tok"] {
            assert_eq!(bearer_token(value), Some("tok"), "{value:?}");
        }
        for value in ["Basic tok", "Bearertok", "tok", "Bear tok"] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }

    #[test]
    fn bad_token_files_are_rejected_without_echoing_tokens() {
        for (text, expected) in [
            ("", "no tokens"),
            ("lonely\n", "line 1"),
            ("a short\n", "shorter than 16"),
            ("a aaaaaaaaaaaaaaaaaaaa\na bbbbbbbbbbbbbbbbbbbb\n", "listed twice"),
        ] {
            let error = TokenTable::parse(text).unwrap_err();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("aaaaaaaa") && !error.contains("bbbbbbbb"));
        }
    }
}
