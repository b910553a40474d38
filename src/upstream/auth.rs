//! Server-side authentication: the API key and the server JWT.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};

/// What every upstream request carries: the API key (not secret) and the server token.
///
/// Stream's server token is an HS256 JWT over exactly `{"server": true}`: no expiry, so it is
/// made once at start and reused. It grants full access to the app, so it is kept in a
/// [`SecretString`] and never printed.
pub struct Credentials {
    api_key: String,
    server_token: SecretString,
}

impl Credentials {
    /// Signs the server token with `api_secret`.
    pub fn new(api_key: impl Into<String>, api_secret: &SecretString) -> Result<Self, jsonwebtoken::errors::Error> {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({ "server": true }),
            &EncodingKey::from_secret(api_secret.expose_secret().as_bytes()),
        )?;
        Ok(Self { api_key: api_key.into(), server_token: token.into() })
    }

    /// The API key, sent as the `api_key` query parameter.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The server JWT, sent raw (no `Bearer`) in `Authorization`.
    pub(crate) fn server_token(&self) -> &SecretString {
        &self.server_token
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("api_key", &self.api_key).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    #[test]
    fn server_token_is_hs256_over_server_true_without_expiry() {
        let secret: SecretString = "dummy-secret-0123456789abcdef0123456789abcdef".into();
        let credentials = Credentials::new("key", &secret).unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            credentials.server_token().expose_secret(),
            &DecodingKey::from_secret(secret.expose_secret().as_bytes()),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims, serde_json::json!({ "server": true }));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let credentials = Credentials::new("key", &"s3cr3t-value".to_string().into()).unwrap();
        let printed = format!("{credentials:?}");
        assert!(!printed.contains(credentials.server_token().expose_secret()));
        assert!(printed.contains("key"));
    }
}
