//! Server assembly: the upstream client, the gRPC services (export, health, reflection), and
//! the shutdown path. The files the settings name are read here, in [`files`].

mod files;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio::{
    net::TcpListener,
    signal::unix::{Signal, SignalKind},
};
use tokio_util::sync::CancellationToken;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Server, ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    archive::{AllowList, Archives},
    config::{IdempotencySettings, Settings, StateSettings, TransportSettings, UpstreamSettings},
    fleet::{
        Redis,
        budget::FleetBudget,
        jobs::{JobLeases, RedisJobStore},
        members::Members,
        registry::RedisRegistry,
        submit::RedisSubmitStore,
        watch_lease::FleetView,
    },
    jobs::{
        JobClaims, JobParts, Jobs, RunsEveryJob,
        schedules::{AlwaysLeads, LoopLeader, Schedules},
    },
    proto::{self, export_service_server::ExportServiceServer},
    service::{ExportApi, JobChecks, Stores, authorization::Policies, caller::CallerAuth},
    store::{
        MemoryRegistry, MemoryStore, TaskRegistry,
        embedded::{EmbeddedJobStore, EmbeddedRegistry, EmbeddedSubmitStore, StateDir},
        jobs::JobStore,
        memory_jobs::MemoryJobStore,
        pending::{KeptUntilStored, PENDING_CAPACITY},
        schedules::ScheduleStore,
    },
    task_watch::{ChangeObserver, Coordination, WatchHub, WatchSettings, coordination::SlotBooker},
    telemetry::{self, layer::GrpcTelemetryLayer},
    upstream::{ClientConfig, CredentialCheck, Credentials, RetryPolicy, StreamClient},
};

/// The name under which health reports the export service.
pub const EXPORT_SERVICE_NAME: &str = "streamexport.v1.ExportService";

/// A built, not yet running, service: its listener is bound, so [`Application::local_addr`]
/// is known before [`Application::run_until`] (tests bind port 0 and read it back).
pub struct Application {
    listener: TcpListener,
    api: ExportApi,
    hub: WatchHub,
    jobs: Jobs,
    policies: Policies,
    auth: CallerAuth,
    transport: TransportSettings,
    /// The TLS of `transport`, its files read.
    tls: Option<ServerTlsConfig>,
    unary_timeout: Duration,
    hangups: Option<Signal>,
    /// Cancelled at the drain: the replica leaves the fleet (if it is in one).
    leaving_fleet: CancellationToken,
    credential_check: CredentialCheck,
}

impl Application {
    /// Reads the files the settings name, binds the listener and builds the upstream client.
    /// A file that cannot be used is a [`ConfigError`](crate::config::ConfigError).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // First: until a SIGHUP handler is installed, SIGHUP ends the process.
        let hangups = listen_for_hangups();
        let auth = files::caller_auth(&settings.access)?;
        let tls = settings.transport.tls.as_ref().map(files::tls_config).transpose()?;
        let policies = files::policies(&settings.access)?;
        warn_of_broken_promises(&settings, &policies);
        let UpstreamSettings::Remote { base_url, api_key, api_secret } = settings.upstream else {
            // The library never links the emulator into the service path: the binary starts it.
            anyhow::bail!("the embedded emulator is started by the stream-export binary (serve --emulator)");
        };
        let credentials = Credentials::new(api_key.clone(), &api_secret).context("signing the Stream server token")?;
        let client = StreamClient::new(ClientConfig {
            base_url: base_url.clone(),
            credentials,
            connect_timeout: settings.upstream_connect_timeout,
            request_timeout: settings.upstream_timeout,
            retry: RetryPolicy::default(),
        })
        .context("building the Stream API client")?;
        let credential_check = CredentialCheck::new(client.clone(), base_url, settings.upstream_timeout);
        // The state first: a second process on the same directory stops here, before it binds.
        let state = match (&settings.redis, &settings.state) {
            (None, StateSettings::Dir(dir)) => {
                let state = StateDir::open(dir)?;
                tracing::info!(state_dir = %dir.display(), "state kept on disk");
                Some(state)
            }
            _ => None,
        };
        let listener =
            TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
        let redis = match &settings.redis {
            None => None,
            Some(redis) => {
                let redis = Redis::new(redis, &api_key).map_err(|why| anyhow::anyhow!("--redis-url: {why}"))?;
                // Connected on first use: Redis is not needed to serve reads.
                if let Err(error) = redis.connection().await {
                    tracing::warn!(%error, "fleet mode: Redis is not reachable yet; starting anyway");
                }
                Some(redis)
            }
        };
        let stores = stores(
            settings.idempotency,
            settings.task_registry_capacity,
            redis.clone().map(|redis| (redis, settings.upstream_timeout)),
            state.as_ref(),
            &api_secret,
        )?;
        let leaving_fleet = CancellationToken::new();
        let (coordination, job_seams) = match redis {
            None => (Coordination::solo(), solo_job_seams(state.as_ref())),
            Some(redis) => {
                let members = Members::start(redis.clone(), leaving_fleet.clone());
                let job_seams = fleet_job_seams(&redis, &members);
                (fleet_coordination(redis, members, &settings.watch, leaving_fleet.clone()), job_seams)
            }
        };
        let hub = WatchHub::new(
            client.clone(),
            settings.watch,
            coordination,
            Some(Arc::new(RegistryObserver(Arc::clone(&stores.registry)))),
        );
        let jobs = Jobs::new(JobParts {
            store: job_seams.store,
            client: client.clone(),
            hub: hub.clone(),
            submits: Arc::clone(&stores.submits),
            registry: Arc::clone(&stores.registry),
            policy: Arc::new(JobChecks::new(policies.clone())),
            export_slots: job_seams.export_slots,
            claims: job_seams.claims,
            archives: Archives::new(
                AllowList::new(&settings.archive.allow).map_err(|why| anyhow::anyhow!("--archive-allow: {why}"))?,
                settings.archive.store_options,
                client.clone(),
            ),
            settings: settings.jobs,
        });
        match jobs.resume().await {
            Ok(0) => {}
            Ok(resumed) => tracing::info!(resumed, "export jobs resumed"),
            Err(error) => {
                tracing::warn!(%error, "the unfinished export jobs could not be read; they resume at the next start")
            }
        }
        let schedules =
            Schedules::new(job_seams.schedules, jobs.clone(), job_seams.schedule_leader, settings.schedules);
        schedules.run();
        let api = ExportApi::new(client, hub.clone(), stores, schedules, policies.clone(), settings.limits);
        Ok(Self {
            listener,
            api,
            hub,
            jobs,
            policies,
            auth,
            transport: settings.transport,
            tls,
            unary_timeout: settings.limits.unary_timeout,
            hangups,
            leaving_fleet,
            credential_check,
        })
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The hub behind WatchTask, for inspection.
    pub fn watch_hub(&self) -> WatchHub {
        self.hub.clone()
    }

    /// Serves until `shutdown` resolves, then drains: health turns NOT_SERVING at once, new
    /// connections and calls are refused, watch streams end as interrupted (resumable), unary
    /// calls in flight finish, and after `shutdown_grace` whatever is still open is dropped
    /// (tonic's graceful stop alone would wait forever for a client that holds a stream open).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // grpcurl 1.8 speaks only v1alpha; newer tools v1. Serve both.
        let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
        let reflection_v1alpha = reflection().build_v1alpha().context("building reflection v1alpha")?;
        let addr = self.local_addr()?;
        let transport = &self.transport;
        let reads_ending = self.api.read_streams_ending();
        reload_policies_on_sighup(self.policies.clone(), self.hangups);
        let export = InterceptedService::new(
            ExportServiceServer::new(self.api)
                .max_decoding_message_size(transport.max_request_bytes)
                .max_encoding_message_size(crate::contract::MAX_RESPONSE_BYTES),
            self.auth,
        );

        let mut server = Server::builder()
            .layer(GrpcTelemetryLayer)
            .max_concurrent_streams(transport.max_concurrent_streams)
            .http2_keepalive_interval(transport.http2_keepalive_interval)
            .http2_keepalive_timeout(Some(transport.http2_keepalive_timeout))
            // A backstop only: handlers end their own upstream work by the unary timeout.
            .timeout(self.unary_timeout + UNARY_TIMEOUT_BACKSTOP);
        if let Some(age) = transport.max_connection_age {
            server = server.max_connection_age(age);
        }
        let serves_tls = self.tls.is_some();
        if let Some(tls) = self.tls {
            server = server.tls_config(tls).context("configuring TLS")?;
        }

        set_health(&health, ServingStatus::Serving).await;
        tracing::info!(%addr, tls = serves_tls, "stream-export serving gRPC");

        let drain_health = health.clone();
        let (hub, jobs, leaving_fleet) = (self.hub.clone(), self.jobs.clone(), self.leaving_fleet);
        let draining = CancellationToken::new();
        let drain_started = draining.clone();
        let serve = server
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(export)
            .serve_with_incoming_shutdown(accepted_connections(self.listener), async move {
                shutdown.await;
                tracing::info!("shutting down: draining");
                set_health(&drain_health, ServingStatus::NotServing).await;
                // Watch streams end as interrupted, so clients resume elsewhere and the
                // server's graceful stop does not wait on them.
                hub.shutdown();
                jobs.shutdown();
                leaving_fleet.cancel();
                drain_started.cancel();
            });
        let grace = transport.shutdown_grace;
        let result = tokio::select! {
            result = serve => result.context("serving gRPC"),
            () = async {
                draining.cancelled().await;
                // ReadExport streams end a little before the connections close, so that their
                // final status (`SHUTTING_DOWN` with `next_index`) reaches the client.
                let flush = (grace / 4).min(READ_FLUSH_ALLOWANCE);
                tokio::time::sleep(grace - flush).await;
                reads_ending.cancel();
                tokio::time::sleep(flush).await;
            } => {
                tracing::warn!(?grace, "shutdown grace elapsed; closing the connections still open");
                Ok(())
            }
        };
        tracing::info!("stopped");
        result
    }
}

/// The stores of the mode: the fleet's Redis (with the upstream timeout, which bounds a submit's claim),
/// the state directory, or memory (by choice).
fn stores(
    idempotency: IdempotencySettings,
    registry_capacity: Option<usize>,
    redis: Option<(Redis, Duration)>,
    state: Option<&StateDir>,
    api_secret: &SecretString,
) -> anyhow::Result<Stores> {
    let capacity = |default| registry_capacity.unwrap_or(default);
    Ok(match (redis, state) {
        (Some((redis, upstream_timeout)), _) => {
            let registry = Arc::new(RedisRegistry::new(redis.clone(), capacity(MEMORY_REGISTRY_CAPACITY)));
            // On one Redis, a submit's registry record in the script of its `done`.
            let submits = RedisSubmitStore::new(redis.clone(), idempotency.ttl, upstream_timeout)
                .recording_into(Arc::clone(&registry));
            Stores {
                submits: Arc::new(submits),
                registry: kept_until_stored(registry),
                page_token_key: fleet_page_token_key(api_secret, &redis.key("registry", "tasks", "page-tokens")),
            }
        }
        (None, Some(state)) => {
            let submits = EmbeddedSubmitStore::new(state.db(), idempotency.ttl, idempotency.capacity)
                .context("reading the idempotency records of the state directory")?
                // A submit's registry record in the transaction of its `done`.
                .recording_into_registry(capacity(DISK_REGISTRY_CAPACITY));
            Stores {
                submits: Arc::new(submits),
                registry: kept_until_stored(Arc::new(EmbeddedRegistry::new(
                    state.db(),
                    capacity(DISK_REGISTRY_CAPACITY),
                ))),
                page_token_key: state.page_token_key(),
            }
        }
        (None, None) => {
            tracing::warn!(
                "state kept in memory only (--memory-state): a restart forgets every request_id and every task's \
                 owner"
            );
            Stores {
                submits: Arc::new(MemoryStore::new(idempotency.ttl, idempotency.capacity)),
                registry: Arc::new(MemoryRegistry::new(capacity(MEMORY_REGISTRY_CAPACITY))),
                // Tokens live as long as the registry they point into.
                page_token_key: rand::random(),
            }
        }
    })
}

/// What export jobs need of the mode: where they are kept, whose export budget their submits
/// spend, and who runs each.
struct JobSeams {
    store: Arc<dyn JobStore>,
    /// The same store's schedules: a window's job is created with its schedule's cursor move.
    schedules: Arc<dyn ScheduleStore>,
    /// Who runs the schedules' loop.
    schedule_leader: Arc<dyn LoopLeader>,
    export_slots: Arc<dyn SlotBooker>,
    claims: Arc<dyn JobClaims>,
}

/// One process: jobs in the state directory (or memory, by choice), its own budget, every job
/// run here.
fn solo_job_seams(state: Option<&StateDir>) -> JobSeams {
    let (store, schedules): (Arc<dyn JobStore>, Arc<dyn ScheduleStore>) = match state {
        Some(state) => {
            let store = Arc::new(EmbeddedJobStore::new(state.db()));
            (store.clone(), store)
        }
        None => {
            let store = Arc::new(MemoryJobStore::default());
            (store.clone(), store)
        }
    };
    JobSeams {
        store,
        schedules,
        schedule_leader: Arc::new(AlwaysLeads),
        export_slots: Coordination::solo().slots,
        claims: Arc::new(RunsEveryJob),
    }
}

/// A fleet: jobs in Redis, the fleet's one export budget, each job run by the replica holding
/// its lease.
fn fleet_job_seams(redis: &Redis, members: &Members) -> JobSeams {
    let store = Arc::new(RedisJobStore::new(redis.clone()));
    JobSeams {
        store: store.clone(),
        schedules: store,
        schedule_leader: Arc::new(members.clone()),
        export_slots: Arc::new(FleetBudget::named(redis.clone(), members.clone(), "exports")),
        claims: Arc::new(JobLeases::new(redis.clone(), members.id(), JOB_LEASE)),
    }
}

/// How long a replica's lease on running a job lasts unless renewed (every third of it): a
/// dead replica's jobs are taken over within about this long.
const JOB_LEASE: Duration = Duration::from_secs(6);

/// A registry whose refused records are kept until it takes them: the export has started by
/// then, and a lost record would lock its owner out under owner-based policies.
fn kept_until_stored(registry: Arc<dyn TaskRegistry>) -> Arc<dyn TaskRegistry> {
    Arc::new(KeptUntilStored::new(registry, PENDING_CAPACITY))
}

/// Says loudly at start-up when the configuration makes a promise the state cannot keep. What
/// one process can see: policies with a memory-only registry (every restart locks owners out),
/// and Kubernetes without Redis (replicas do not know each other's tasks or request ids).
fn warn_of_broken_promises(settings: &Settings, policies: &Policies) {
    let fleet = settings.redis.is_some();
    if policies.is_enforced() && !fleet && settings.state == StateSettings::Memory {
        tracing::error!(
            "--policy-file with --memory-state: the task registry is lost at every restart, and owner-based \
             policies then refuse owners their own tasks; drop --memory-state (or use Redis)"
        );
    }
    if !fleet && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        tracing::warn!(
            "running in Kubernetes without Redis: if this Deployment has more than one replica, a task's owner \
             may be refused by the replica that did not take the submit, and a retried request_id may start a \
             second export there; set STREAM_EXPORT_REDIS_URL for more than one replica"
        );
    }
}

/// The page-token key of a fleet: every replica derives the same one from what they share (the
/// API secret and the deployment's key namespace), so a token from one replica is good on
/// another, and none is kept in Redis. Rotating the API secret ends the tokens given before.
fn fleet_page_token_key(api_secret: &SecretString, namespace: &str) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(api_secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(b"stream-export ListTasks page tokens\0");
    mac.update(namespace.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The task registry's default capacity in memory and in Redis, which hold every record in RAM.
const MEMORY_REGISTRY_CAPACITY: usize = 100_000;

/// The task registry's default capacity on disk: large enough that records leave by their 60
/// days, not by eviction, below about 33,000 submits a day.
const DISK_REGISTRY_CAPACITY: usize = 2_000_000;

/// The connections accepted on `listener`, with `TCP_NODELAY` set on each (TLS is layered on
/// top of them, so it is covered too). Serving from our own bound listener skips tonic's
/// listener setup, and without the option Nagle's algorithm holds a unary call's trailers (a
/// small second write) until the client's delayed ACK: about 40 ms per call for every client
/// that does not happen to send first (a Python grpcio client measured 44 ms at p50).
fn accepted_connections(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// At most this long before the end of the shutdown grace, open ReadExport streams are ended
/// with a resumable status (a quarter of the grace if that is shorter).
const READ_FLUSH_ALLOWANCE: Duration = Duration::from_secs(1);

/// How long after the unary timeout tonic's own timeout cuts a handler that overran it.
const UNARY_TIMEOUT_BACKSTOP: Duration = Duration::from_secs(1);

/// Builds and runs the service until SIGINT or SIGTERM, with the metrics exporter if asked for
/// (the exporter is process-wide, so tests that build several applications leave it off),
/// after checking the Stream credentials once ([`CredentialCheck`]: rejected ones stop here).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    if let Some(addr) = settings.metrics_listen {
        telemetry::metrics::install(addr)?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let app = Application::build(settings).await?;
    app.credential_check.run().await?;
    app.run_until(shutdown_signal()).await
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

/// Notes every change the watch pollers observe in the task registry, in the background: a
/// poller never waits for the registry.
#[derive(Debug)]
struct RegistryObserver(Arc<dyn TaskRegistry>);

impl ChangeObserver for RegistryObserver {
    fn observed(
        &self,
        task: &proto::Task,
        at: chrono::DateTime<chrono::Utc>,
    ) -> futures::future::BoxFuture<'static, ()> {
        let (registry, task) = (Arc::clone(&self.0), task.clone());
        Box::pin(async move {
            if let Err(error) = registry.observed(&task, at).await {
                tracing::debug!(%error, "the task registry did not take an observation");
            }
        })
    }
}

/// Installs the SIGHUP handler (SIGHUP's default action ends the process).
fn listen_for_hangups() -> Option<Signal> {
    match tokio::signal::unix::signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; the policy file will not be reloaded");
            None
        }
    }
}

/// The coordination of watches in a fleet (this replica one of `members`): its polls and their
/// budget are shared through Redis.
fn fleet_coordination(
    redis: Redis,
    members: Members,
    watch: &WatchSettings,
    leaving: CancellationToken,
) -> Coordination {
    let polls = FleetView::new(redis.clone(), members.clone(), watch.fleet_lease, watch.fleet_follow_interval, leaving);
    Coordination { polls: Arc::new(polls), slots: Arc::new(FleetBudget::new(redis, members)) }
}

/// Reloads the policy file on each SIGHUP until the process ends; a file that does not parse
/// or validate is refused (logged) and the policies in force stay. Without a policy file, a
/// SIGHUP is logged and otherwise ignored.
fn reload_policies_on_sighup(policies: Policies, hangups: Option<Signal>) {
    let Some(mut hangups) = hangups else { return };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if !policies.is_enforced() {
                tracing::info!("SIGHUP: no policy file to reload (--policy-file is not set)");
                continue;
            }
            match policies.reload() {
                Ok(count) => tracing::info!(policies = count, "SIGHUP: the policy file was reloaded"),
                Err(error) => tracing::error!(%error, "SIGHUP: the new policy file was refused; the old policies stay"),
            }
        }
    });
}
