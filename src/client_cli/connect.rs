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
    let server = options.server.trim();
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
        .map_err(|error| Failure::Unreachable(format!("cannot connect to {server}: {}", one_line(&error))))?;
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
