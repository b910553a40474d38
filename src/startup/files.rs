//! The files the settings name, read at start-up into what the service uses: the callers'
//! tokens, the authorization policies, and the TLS certificates and key. A file that cannot be
//! read, or does not parse, stops start-up with a [`ConfigError`] naming its setting (the binary
//! exits with code 2 on it).

use secrecy::{ExposeSecret, SecretSlice};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::{
    config::{AccessSettings, ConfigError, TlsSettings},
    service::{
        authorization::Policies,
        caller::{CallerAuth, TokenTable},
    },
};

/// Caller authentication: the token table of `--auth-tokens-file`, if set.
pub fn caller_auth(access: &AccessSettings) -> Result<CallerAuth, ConfigError> {
    let tokens = match &access.tokens_file {
        Some(path) => Some(
            TokenTable::load(path)
                .map_err(|error| ConfigError::invalid("STREAM_EXPORT_AUTH_TOKENS_FILE (--auth-tokens-file)", error))?
                .into(),
        ),
        None => None,
    };
    Ok(CallerAuth { tokens, trust_forwarded_client_cert: access.trust_forwarded_client_cert })
}

/// The policies of `--policy-file`, parsed and validated; without one, every call is permitted.
pub fn policies(access: &AccessSettings) -> Result<Policies, ConfigError> {
    match &access.policy_file {
        Some(path) => Policies::load(path)
            .map_err(|error| ConfigError::invalid("STREAM_EXPORT_POLICY_FILE (--policy-file)", error)),
        None => Ok(Policies::permit_all()),
    }
}

/// The TLS configuration of the server: its certificate chain and key, and for mutual TLS the
/// CA of client certificates.
pub fn tls_config(tls: &TlsSettings) -> Result<ServerTlsConfig, ConfigError> {
    let cert = read(&tls.cert_file, "STREAM_EXPORT_TLS_CERT (--tls-cert)")?;
    let key = SecretSlice::from(read(&tls.key_file, "STREAM_EXPORT_TLS_KEY (--tls-key)")?);
    let config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key.expose_secret()));
    Ok(match &tls.client_ca_file {
        Some(ca) => {
            config.client_ca_root(Certificate::from_pem(read(ca, "STREAM_EXPORT_TLS_CLIENT_CA (--tls-client-ca)")?))
        }
        None => config,
    })
}

fn read(path: &std::path::Path, setting: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| ConfigError::unreadable(setting, path, &error))
}
