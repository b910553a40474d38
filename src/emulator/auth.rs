//! Server-side authentication: the `api_key` query parameter, then `stream-auth-type: jwt` and a
//! raw HS256 JWT (no `Bearer`) signed with the secret whose payload has `"server": true`.

use axum::http::{HeaderMap, StatusCode, header::AUTHORIZATION};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, errors::ErrorKind};
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::wire::ApiError;

fn unauthorized(code: i64, operation: &str, detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, operation, detail)
}

/// 401 code 2 when `api_key` is missing or wrong.
pub(crate) fn check_api_key(query: Option<&str>, expected: &str, operation: &str) -> Result<(), ApiError> {
    let given = query.and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "api_key")
            .map(|(_, value)| value.into_owned())
    });
    match given {
        None => Err(unauthorized(2, operation, "api_key or app_id not provided")),
        Some(key) if key.is_empty() => Err(unauthorized(2, operation, "api_key or app_id not provided")),
        Some(key) if bool::from(key.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        Some(_) => Err(unauthorized(2, operation, "api_key not valid")),
    }
}

/// Checks `stream-auth-type` and the server token, against the emulator clock (`now_secs`).
pub(crate) fn check_jwt(
    headers: &HeaderMap,
    secret: &str,
    api_key: &str,
    now_secs: i64,
    operation: &str,
) -> Result<(), ApiError> {
    let auth_type = headers.get("stream-auth-type").and_then(|value| value.to_str().ok());
    if !auth_type.is_some_and(|value| value.eq_ignore_ascii_case("jwt")) {
        return Err(unauthorized(5, operation, "stream-auth-type header must be jwt for server-side requests"));
    }
    let token = headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok()).map(str::trim).unwrap_or_default();
    if token.is_empty() {
        return Err(unauthorized(5, operation, "JWTAuth error: authorization header is missing"));
    }
    if token.contains(' ') {
        return Err(unauthorized(
            5,
            operation,
            "JWTAuth error: token is malformed, send the raw JWT without a scheme such as Bearer",
        ));
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = match decode::<Value>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation) {
        Ok(data) => data.claims,
        Err(error) => {
            return Err(match error.kind() {
                ErrorKind::InvalidSignature => unauthorized(
                    43,
                    operation,
                    &format!(
                        "JWTAuth error: signature is not valid. Make sure the token is created using the secret for API key {api_key}"
                    ),
                ),
                ErrorKind::InvalidAlgorithm => {
                    unauthorized(5, operation, "JWTAuth error: token must be signed with HS256")
                }
                _ => unauthorized(5, operation, "JWTAuth error: token is malformed"),
            });
        }
    };
    let number = |name: &str| claims.get(name).and_then(Value::as_f64);
    if number("exp").is_some_and(|exp| exp < now_secs as f64) {
        return Err(unauthorized(40, operation, "JWTAuth error: token has expired"));
    }
    if number("nbf").is_some_and(|nbf| nbf > now_secs as f64) {
        return Err(unauthorized(41, operation, "JWTAuth error: token is not valid yet"));
    }
    if number("iat").is_some_and(|iat| iat > now_secs as f64 + 5.0) {
        return Err(unauthorized(42, operation, "JWTAuth error: token used before issue at (iat)"));
    }
    if claims.get("server") != Some(&Value::Bool(true)) {
        return Err(unauthorized(
            5,
            operation,
            "JWTAuth error: server-side requests need a server token (server: true)",
        ));
    }
    Ok(())
}
