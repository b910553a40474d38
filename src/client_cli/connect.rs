//! The channel to the service: plain text or TLS (with an optional client certificate), and the
//! bearer token on every call.

use std::{path::Path, time::Duration};

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    client_cli::{ClientOptions, failure::Failure},
    contract::MAX_RESPONSE_BYTES,
    error_chain::one_line,
    proto::export_service_client::ExportServiceClient,
};

/// A client of the service that sends the bearer token, if any.
pub type Client = ExportServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The HTTP/2 receive windows of the connection and of each stream.
const RECEIVE_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// Connects to `--server`. Bad settings are [`Failure::Usage`]; a service that cannot be reached
/// is [`Failure::Unreachable`].
pub async fn connect(options: &ClientOptions) -> Result<Client, Failure> {
    let server = &server_url(&options.server);
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|error| Failure::Usage(format!("--server {server}: not a URL ({error})")))?;
    let tls_wanted = options.ca_cert.is_some() || options.client_cert.is_some() || options.client_key.is_some();
    let endpoint = match endpoint.uri().scheme_str() {
        Some("https") => endpoint
            .tls_config(tls_config(options)?)
            .map_err(|error| Failure::Usage(format!("TLS settings: {}", one_line(&error))))?,
        Some("http") if tls_wanted => {
            return Err(Failure::Usage(format!(
                "--ca-cert, --client-cert and --client-key need an https:// --server, not {server}"
            )));
        }
        Some("http") => endpoint,
        _ => return Err(Failure::Usage(format!("--server {server}: use http://HOST:PORT or https://HOST:PORT"))),
    };
    let channel = endpoint
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        // Flow-control windows of a few megabytes (h2's default is 64 KiB): a gigabyte export
        // then streams without the service pausing for a window update every few frames.
        .initial_stream_window_size(RECEIVE_WINDOW_BYTES)
        .initial_connection_window_size(RECEIVE_WINDOW_BYTES)
        .connect()
        .await
        .map_err(|error| Failure::Unreachable(format!("cannot connect to {server}: {}", explain(server, &error))))?;
    let token = match options.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) => Some(
            MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| Failure::Usage("--token: not a valid header value".into()))?,
        ),
        None => None,
    };
    // The default 4 MiB is less than a large user's ExportUser answer.
    Ok(ExportServiceClient::with_interceptor(channel, Bearer(token)).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// `--server` as a URL. `HOST:PORT` without a scheme (grpcurl's form) means plain text.
pub fn server_url(server: &str) -> String {
    let server = server.trim();
    if server.contains("://") { server.to_owned() } else { format!("http://{server}") }
}

/// A connection error in one line, saying so plainly when the scheme does not match what the
/// server speaks (see [`scheme_mismatch`]).
fn explain(server: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let text = one_line(error);
    match scheme_mismatch(server, &text) {
        Some(advice) => format!("{advice}: {text}"),
        None => text,
    }
}

/// What to say when a connection to `server` failed with `error` because the server speaks
/// plain text to an `https://` URL, or TLS to an `http://` one: rustls and h2 would only report
/// a corrupt record or a bad frame.
pub fn scheme_mismatch(server: &str, error: &str) -> Option<String> {
    let server = server_url(server);
    if let Some(address) = server.strip_prefix("https://") {
        return (error.contains("InvalidContentType") || error.contains("corrupt message"))
            .then(|| format!("the server does not speak TLS: use http://{address}"));
    }
    let address = server.strip_prefix("http://")?;
    // A body that broke off was being answered in HTTP/2: a lost connection, not TLS.
    let answered = error.contains("reading a body");
    (!answered && TLS_ANSWERS_TO_PLAIN_TEXT.iter().any(|sign| error.contains(sign)))
        .then(|| format!("the server did not answer in plain-text HTTP/2; if it uses TLS, use https://{address}"))
}

/// What h2 reports when a TLS server answers a plain-text HTTP/2 preface: its TLS alert record is
/// read as an HTTP/2 frame of an impossible size, or it has closed the connection already (a
/// broken pipe before any answer).
const TLS_ANSWERS_TO_PLAIN_TEXT: &[&str] = &["frame with invalid size", "broken pipe"];

/// TLS settings from the options: the CA (or the bundled web PKI roots) and a client identity.
fn tls_config(options: &ClientOptions) -> Result<ClientTlsConfig, Failure> {
    let mut config = ClientTlsConfig::new();
    config = match &options.ca_cert {
        Some(path) => config.ca_certificate(Certificate::from_pem(read("--ca-cert", path)?)),
        None => config.with_webpki_roots(),
    };
    match (&options.client_cert, &options.client_key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read("--client-cert", cert)?, read("--client-key", key)?));
        }
        (None, None) => {}
        _ => return Err(Failure::Usage("--client-cert and --client-key go together".into())),
    }
    Ok(config)
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|error| Failure::Usage(format!("{flag} {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheme_that_does_not_match_the_server_is_named() {
        let tls_to_plain = "transport error: received corrupt message of type InvalidContentType";
        assert_eq!(
            scheme_mismatch("https://h:1", tls_to_plain).unwrap(),
            "the server does not speak TLS: use http://h:1"
        );
        let plain_to_tls = "transport error: connection error: stream closed because of a broken pipe";
        assert!(scheme_mismatch("h:1", plain_to_tls).unwrap().contains("use https://h:1"));
        let cut = "error reading a body from connection: stream closed because of a broken pipe";
        assert_eq!(scheme_mismatch("http://h:1", cut), None, "a connection lost mid-answer is not about TLS");
        assert_eq!(scheme_mismatch("http://h:1", "tcp connect error: connection refused"), None);
    }
}
