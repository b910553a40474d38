//! Server assembly: the upstream client, the gRPC services (export, health, reflection), and
//! the shutdown path.

use std::{future::Future, net::SocketAddr};

use anyhow::Context;
use rand::{Rng, distr::Alphanumeric};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::{Settings, Upstream},
    emulator::{self, EmulatorHandle},
    proto::{self, export_service_server::ExportServiceServer},
    service::ExportApi,
    stream::{ClientConfig, Credentials, RetryPolicy, StreamClient},
    watch::WatchHub,
};

/// The name under which health reports the export service.
pub const EXPORT_SERVICE_NAME: &str = "streamexport.v1.ExportService";

/// A built, not yet running, service: its listener is bound, so [`Application::local_addr`]
/// is known before [`Application::run_until`] (tests bind port 0 and read it back).
pub struct Application {
    listener: TcpListener,
    api: ExportApi,
    hub: WatchHub,
    /// Kept alive as long as the service runs, in `--emulator` mode.
    emulator: Option<EmulatorHandle>,
}

impl Application {
    /// Binds the listener, starts the embedded emulator if asked for, and builds the client.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (base_url, api_key, api_secret, emulator) = match settings.upstream {
            Upstream::Remote { base_url, api_key, api_secret } => (base_url, api_key, api_secret, None),
            Upstream::Emulator => {
                let (api_key, api_secret) = generated_credentials();
                let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the embedded emulator")?;
                let handle = emulator::spawn(listener, emulator::EmulatorConfig::new(&api_key, &api_secret))
                    .await
                    .context("starting the embedded emulator")?;
                let base_url = crate::config::parse_base_url(&handle.base_url())?;
                tracing::info!(%base_url, %api_key, "embedded Stream API emulator started");
                (base_url, api_key, SecretString::from(api_secret), Some(handle))
            }
        };
        let credentials = Credentials::new(api_key, &api_secret).context("signing the Stream server token")?;
        let client = StreamClient::new(ClientConfig {
            base_url,
            credentials,
            connect_timeout: settings.upstream_connect_timeout,
            request_timeout: settings.upstream_timeout,
            retry: RetryPolicy::default(),
        })
        .context("building the Stream API client")?;
        let listener =
            TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
        let hub = WatchHub::new(client.clone(), settings.watch);
        Ok(Self { listener, api: ExportApi::new(client, hub.clone()), hub, emulator })
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The hub behind WatchTask, for inspection.
    pub fn watch_hub(&self) -> WatchHub {
        self.hub.clone()
    }

    /// The embedded emulator's base URL, in `--emulator` mode.
    pub fn emulator_base_url(&self) -> Option<String> {
        self.emulator.as_ref().map(EmulatorHandle::base_url)
    }

    /// Serves until `shutdown` resolves. Health turns NOT_SERVING as soon as it does.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // grpcurl 1.8 speaks only v1alpha; newer tools v1. Serve both.
        let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
        let reflection_v1alpha = reflection().build_v1alpha().context("building reflection v1alpha")?;

        let addr = self.local_addr()?;
        set_health(&health, ServingStatus::Serving).await;
        tracing::info!(%addr, "stream-export serving gRPC");

        let drain_health = health.clone();
        let hub = self.hub;
        let result = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ExportServiceServer::new(self.api))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), async move {
                shutdown.await;
                tracing::info!("shutting down");
                set_health(&drain_health, ServingStatus::NotServing).await;
                // Watch streams end as interrupted, so clients resume elsewhere and the
                // server's graceful stop does not wait on them.
                hub.shutdown();
            })
            .await;
        if let Some(emulator) = self.emulator {
            emulator.shutdown().await;
        }
        result.context("serving gRPC")
    }
}

/// Builds and runs the service until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    Application::build(settings).await?.run_until(shutdown_signal()).await
}

/// Reflection over the export contract and the health service.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(EXPORT_SERVICE_NAME, status).await;
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what Kubernetes sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Fresh credentials for the embedded emulator: they never leave this process.
fn generated_credentials() -> (String, String) {
    let random = |len| rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect::<String>();
    (format!("emulator-{}", random(12).to_lowercase()), random(48))
}
