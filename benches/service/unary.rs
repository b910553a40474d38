//! Figure 1 (unary cost: CPU per call, throughput and latency of `GetTask`, against a bare
//! tonic server and a direct HTTP call, latency also from a client that is not tonic's) and
//! figure 4 (idle memory), and the cost of tracing and of authorization (tokens, Cedar
//! policies) next to the same service without them.
//!
//! The service and the bare server are loaded in alternating rounds within one run, and the
//! figures are ratios of per-round medians: on a shared machine absolute times drift, but two
//! servers measured side by side drift together.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures::future::join_all;
use prost::Message;
use stream_export::{
    emulator::data::LIVESTREAM_CHANNEL,
    proto::{GetTaskRequest, export_service_client::ExportServiceClient},
    service::{
        Rpc,
        authorization::{Policies, Resource},
        caller::{Caller, CallerSource},
    },
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::{
    Scale,
    otlp_sink::OtlpSink,
    processes::{self, ChildProcess, EmulatorClient},
    procfs,
    python_grpc::python_with_grpcio,
    raw_grpc::RawGrpc,
    report::{Figure, Target, median, quantile},
    tasks,
};

const MIB: f64 = 1024.0 * 1024.0;

/// What one round of load on one server gave.
struct Round {
    calls: u64,
    elapsed: Duration,
    cpu: Duration,
}

impl Round {
    fn cpu_us_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }

    fn calls_per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

/// One server under load: its process, and clients spread over several connections.
struct LoadedServer {
    process: ChildProcess,
    clients: Vec<ExportServiceClient<Channel>>,
    /// `authorization` sent with every `GetTask` (`Bearer <token>`), for a service with tokens.
    authorization: Option<MetadataValue<Ascii>>,
}

impl LoadedServer {
    async fn connect(process: ChildProcess, connections: usize) -> Self {
        let channels = join_all((0..connections).map(|_| process.channel())).await;
        Self { process, clients: channels.into_iter().map(ExportServiceClient::new).collect(), authorization: None }
    }

    /// [`LoadedServer::connect`], sending `authorization: Bearer <token>` with every call.
    async fn connect_as(process: ChildProcess, connections: usize, token: &str) -> Self {
        let authorization = format!("Bearer {token}").parse().expect("an ASCII header value");
        Self { authorization: Some(authorization), ..Self::connect(process, connections).await }
    }

    /// A `GetTask` request, with the server's `authorization` if it has one.
    fn get_task_request(authorization: Option<&MetadataValue<Ascii>>, task_id: &str) -> tonic::Request<GetTaskRequest> {
        let mut request = tonic::Request::new(GetTaskRequest { task_id: task_id.to_owned() });
        if let Some(authorization) = authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        request
    }

    /// `concurrency` callers send `GetTask` back to back for `window`; the process's CPU time
    /// over the same span is read from `/proc`.
    async fn load(&self, task_id: &str, concurrency: usize, window: Duration) -> Round {
        let cpu_before = procfs::cpu_time(self.process.pid());
        let started = Instant::now();
        let deadline = started + window;
        let workers = (0..concurrency).map(|i| {
            let mut client = self.clients[i % self.clients.len()].clone();
            let (task_id, authorization) = (task_id.to_owned(), self.authorization.clone());
            tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    let request = Self::get_task_request(authorization.as_ref(), &task_id);
                    client.get_task(request).await.expect("GetTask succeeds");
                    calls += 1;
                }
                calls
            })
        });
        let calls = join_all(workers).await.into_iter().map(|r| r.expect("a load worker")).sum();
        let elapsed = started.elapsed();
        Round { calls, elapsed, cpu: procfs::cpu_time(self.process.pid()).saturating_sub(cpu_before) }
    }

    /// [`LoadedServer::load`] at a fixed call rate instead of back to back: `concurrency`
    /// callers, each sending one call every `concurrency / rate` seconds (staggered), so that
    /// two servers are compared at the same rate (a closed loop runs the cheaper server faster,
    /// and a busier server shares its wakeups across more calls). A caller whose call outlasts
    /// its period skips ticks, so the rate reached is what [`Round::calls_per_second`] says.
    async fn load_paced(&self, task_id: &str, rate: f64, concurrency: usize, window: Duration) -> Round {
        let cpu_before = procfs::cpu_time(self.process.pid());
        let started = Instant::now();
        let deadline = started + window;
        let period = Duration::from_secs_f64(concurrency as f64 / rate);
        let workers = (0..concurrency).map(|i| {
            let mut client = self.clients[i % self.clients.len()].clone();
            let (task_id, authorization) = (task_id.to_owned(), self.authorization.clone());
            let first = tokio::time::Instant::from_std(started) + period.mul_f64(i as f64 / concurrency as f64);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval_at(first, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut calls = 0u64;
                loop {
                    ticks.tick().await;
                    if Instant::now() >= deadline {
                        return calls;
                    }
                    let request = Self::get_task_request(authorization.as_ref(), &task_id);
                    client.get_task(request).await.expect("GetTask succeeds");
                    calls += 1;
                }
            })
        });
        let calls = join_all(workers).await.into_iter().map(|r| r.expect("a load worker")).sum();
        let elapsed = started.elapsed();
        Round { calls, elapsed, cpu: procfs::cpu_time(self.process.pid()).saturating_sub(cpu_before) }
    }

    /// Latencies of `calls` sequential `GetTask`s (one in flight), in microseconds.
    async fn latencies(&self, task_id: &str, calls: usize) -> Vec<f64> {
        let mut client = self.clients[0].clone();
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let request = Self::get_task_request(self.authorization.as_ref(), task_id);
            let started = Instant::now();
            client.get_task(request).await.expect("GetTask succeeds");
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        samples
    }

    /// Latencies of `calls` sequential `GetTask`s from a raw HTTP/2 client (one in flight, a
    /// PING with each call as grpcio's BDP probe does), in microseconds: what clients other
    /// than tonic's see, Nagle's algorithm included if the server left it on.
    async fn non_tonic_latencies(&self, task_id: &str, calls: usize) -> Vec<f64> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.process.port));
        let mut client = RawGrpc::connect(addr).await;
        let request = GetTaskRequest { task_id: task_id.to_owned() }.encode_to_vec();
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            let reply = client.unary("/streamexport.v1.ExportService/GetTask", &request).await;
            assert_eq!(reply.status, Some(0), "GetTask from the raw HTTP/2 client succeeds");
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        samples
    }
}

/// Latencies of `calls` sequential `GetTask` calls from grpcio on one channel (after a warm-up),
/// in microseconds: `conformance/python-grpc/unary_latency.py` run by the venv's `python`.
async fn grpcio_latencies(python: &Path, port: u16, task_id: &str, calls: usize) -> Vec<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/python-grpc/unary_latency.py");
    let output = tokio::process::Command::new(python)
        .args([script, &format!("127.0.0.1:{port}"), task_id, &calls.to_string()])
        .output()
        .await
        .expect("python runs");
    assert!(output.status.success(), "unary_latency.py: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("a JSON list of latencies")
}

/// Latencies of `calls` sequential direct `GET /tasks/{id}` to the emulator, in microseconds.
async fn direct_latencies(emulator: &EmulatorClient, task_id: &str, calls: usize) -> Vec<f64> {
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        assert_eq!(emulator.get_task(task_id).await, 200, "direct GET /tasks/{{id}}");
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    samples
}

/// Warms both servers up, then loads them in alternating rounds; the rounds of each.
async fn throughput_rounds(
    scale: &Scale,
    service: &LoadedServer,
    bare: &LoadedServer,
    task_id: &str,
) -> (Vec<Round>, Vec<Round>) {
    eprintln!("unary: warming up");
    for server in [service, bare] {
        server.load(task_id, scale.unary_concurrency, scale.unary_window / 4).await;
    }
    let (mut service_rounds, mut bare_rounds) = (Vec::new(), Vec::new());
    for round in 0..scale.unary_rounds {
        eprintln!("unary: throughput round {}/{}", round + 1, scale.unary_rounds);
        service_rounds.push(service.load(task_id, scale.unary_concurrency, scale.unary_window).await);
        bare_rounds.push(bare.load(task_id, scale.unary_concurrency, scale.unary_window).await);
    }
    (service_rounds, bare_rounds)
}

/// Both servers at the same fixed call rate, in alternating rounds; the rounds of each.
async fn paced_rounds(
    scale: &Scale,
    service: &LoadedServer,
    bare: &LoadedServer,
    task_id: &str,
) -> (Vec<Round>, Vec<Round>) {
    let (mut service_rounds, mut bare_rounds) = (Vec::new(), Vec::new());
    for round in 0..scale.unary_rounds {
        eprintln!("unary: paced round {}/{} at {}/s", round + 1, scale.unary_rounds, scale.unary_paced_rate);
        let (rate, concurrency, window) = (scale.unary_paced_rate, scale.unary_concurrency, scale.unary_window);
        service_rounds.push(service.load_paced(task_id, rate, concurrency, window).await);
        bare_rounds.push(bare.load_paced(task_id, rate, concurrency, window).await);
    }
    (service_rounds, bare_rounds)
}

/// One-in-flight latencies, in microseconds, each from its own kind of client.
#[derive(Default)]
struct Latencies {
    service: Vec<f64>,
    bare: Vec<f64>,
    direct: Vec<f64>,
    service_non_tonic: Vec<f64>,
    bare_non_tonic: Vec<f64>,
    /// From grpcio (Python), when the Python conformance venv is there.
    service_grpcio: Vec<f64>,
    bare_grpcio: Vec<f64>,
}

/// One-in-flight latencies of the service, the bare server (each from tonic's client, from a
/// raw HTTP/2 client and, with `python`, from grpcio) and a direct HTTP call, in alternating
/// rounds.
async fn latency_rounds(
    scale: &Scale,
    service: &LoadedServer,
    bare: &LoadedServer,
    emulator: &EmulatorClient,
    task_id: &str,
    python: Option<&Path>,
) -> Latencies {
    let mut latencies = Latencies::default();
    for round in 0..scale.latency_rounds {
        eprintln!("unary: latency round {}/{}", round + 1, scale.latency_rounds);
        latencies.service.extend(service.latencies(task_id, scale.latency_calls).await);
        latencies.bare.extend(bare.latencies(task_id, scale.latency_calls).await);
        latencies.direct.extend(direct_latencies(emulator, task_id, scale.latency_calls).await);
        latencies.service_non_tonic.extend(service.non_tonic_latencies(task_id, scale.latency_calls).await);
        latencies.bare_non_tonic.extend(bare.non_tonic_latencies(task_id, scale.latency_calls).await);
        if let Some(python) = python {
            let calls = scale.latency_calls;
            latencies.service_grpcio.extend(grpcio_latencies(python, service.process.port, task_id, calls).await);
            latencies.bare_grpcio.extend(grpcio_latencies(python, bare.process.port, task_id, calls).await);
        }
    }
    latencies
}

/// The cost of tracing: the service with span export on (`always_on`, to a receiver) against
/// the same service with it off, loaded in alternating rounds; CPU per call and p50 latency as
/// ratios (on / off).
async fn tracing_cost(
    scale: &Scale,
    emulator_process: &ChildProcess,
    untraced: &LoadedServer,
    task_id: &str,
) -> Vec<Figure> {
    let sink = OtlpSink::start().await;
    let endpoint = format!("http://{}", sink.addr);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_TRACES_SAMPLER", "always_on")];
    let process = processes::start_service_with_env("service-traced", emulator_process, &[], &env).await;
    let traced = LoadedServer::connect(process, scale.unary_connections).await;
    eprintln!("unary: tracing on, warming up");
    traced.load(task_id, scale.unary_concurrency, scale.unary_window / 4).await;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let (mut on_lat, mut off_lat) = (Vec::new(), Vec::new());
    for round in 0..scale.unary_rounds {
        eprintln!("unary: tracing on/off round {}/{}", round + 1, scale.unary_rounds);
        on.push(traced.load(task_id, scale.unary_concurrency, scale.unary_window).await);
        off.push(untraced.load(task_id, scale.unary_concurrency, scale.unary_window).await);
        on_lat.extend(traced.latencies(task_id, scale.latency_calls).await);
        off_lat.extend(untraced.latencies(task_id, scale.latency_calls).await);
    }
    let cpu = |rounds: &[Round]| median(&rounds.iter().map(Round::cpu_us_per_call).collect::<Vec<_>>());
    let (on_cpu, off_cpu) = (cpu(&on), cpu(&off));
    let (on_p50, off_p50) = (quantile(&mut on_lat, 0.5), quantile(&mut off_lat, 0.5));
    // The batch processor sends every 5 s: wait for the last batch before counting.
    tokio::time::sleep(Duration::from_secs(6)).await;
    vec![
        Figure::info("unary_cpu_us_per_call_service_traced", on_cpu, "µs"),
        Figure::target("unary_tracing_cost_ratio", on_cpu / off_cpu, "x", Target::AtMost(1.25)),
        Figure::info("unary_tracing_p50_ratio", on_p50 / off_p50, "x"),
        Figure::info("unary_tracing_spans_received", sink.spans() as f64, ""),
    ]
}

/// The example policy set (README "Authorization policies"): `platform` may read every task.
const POLICY_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/examples/teams.cedar");

/// The callers of the tokens file, with their tokens (at least 16 characters each).
const CALLERS: [(&str, &str); 3] = [
    ("analytics", "bench-token-analytics-0123456789"),
    ("privacy", "bench-token-privacy-0123456789ab"),
    ("platform", "bench-token-platform-0123456789a"),
];

/// The token of a caller in [`CALLERS`].
fn token(caller: &str) -> &'static str {
    CALLERS.iter().find(|(name, _)| *name == caller).map(|(_, token)| *token).expect("a caller of the tokens file")
}

/// Writes the tokens file of [`CALLERS`] and returns its path.
fn write_tokens_file() -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-tokens.txt");
    let lines: String = CALLERS.iter().map(|(name, token)| format!("{name} {token}\n")).collect();
    std::fs::write(&path, lines).expect("write the bench tokens file");
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// The cost of authorization: the same `GetTask` load on the service without callers (`plain`,
/// the process of figure 1), on one with the tokens file only (token check, no policy), and on
/// one with the tokens file and `teams.cedar` (token check, task-registry lookup, one Cedar
/// evaluation), in rotating rounds. The task of the last two was submitted through them by
/// `analytics`; the load is `platform`'s, whom the policy lets read every task.
async fn policy_cost(
    scale: &Scale,
    emulator_process: &ChildProcess,
    plain: &LoadedServer,
    plain_task: &str,
) -> Vec<Figure> {
    let tokens_file = write_tokens_file();
    let tokens_args = ["--auth-tokens-file", tokens_file.as_str()];
    let policy_args = ["--auth-tokens-file", tokens_file.as_str(), "--policy-file", POLICY_FILE];
    let tokens_process = processes::start_service("service-tokens", emulator_process, &tokens_args).await;
    let policy_process = processes::start_service("service-policy", emulator_process, &policy_args).await;
    let tokens = LoadedServer::connect_as(tokens_process, scale.unary_connections, token("platform")).await;
    let policy = LoadedServer::connect_as(policy_process, scale.unary_connections, token("platform")).await;
    let analytics = format!("Bearer {}", token("analytics"));
    let tokens_task = tasks::create_as(&tokens.clients[0], &analytics, LIVESTREAM_CHANNEL).await;
    let policy_task = tasks::create_as(&policy.clients[0], &analytics, LIVESTREAM_CHANNEL).await;

    // The policies are in force: `privacy` may not read `analytics`' task.
    let privacy = format!("Bearer {}", token("privacy")).parse().expect("an ASCII header value");
    let refused =
        policy.clients[0].clone().get_task(LoadedServer::get_task_request(Some(&privacy), &policy_task)).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|status| status.code()),
        Err(tonic::Code::PermissionDenied),
        "the policy service refuses privacy's GetTask of an analytics task"
    );

    let servers = [(plain, plain_task), (&tokens, tokens_task.as_str()), (&policy, policy_task.as_str())];
    eprintln!("unary: tokens and policies, warming up");
    for (server, task_id) in &servers[1..] {
        server.load(task_id, scale.unary_concurrency, scale.unary_window / 4).await;
    }
    let mut rounds: [Vec<Round>; 3] = Default::default();
    let mut latencies: [Vec<f64>; 3] = Default::default();
    for round in 0..scale.unary_rounds {
        eprintln!("unary: plain/tokens/policy round {}/{}", round + 1, scale.unary_rounds);
        // Each round starts with another server, so that no server always follows the same one.
        for k in 0..servers.len() {
            let at = (round + k) % servers.len();
            let (server, task_id) = servers[at];
            rounds[at].push(server.load(task_id, scale.unary_concurrency, scale.unary_window).await);
            latencies[at].extend(server.latencies(task_id, scale.latency_calls).await);
        }
    }
    let cpu = |rounds: &[Round]| median(&rounds.iter().map(Round::cpu_us_per_call).collect::<Vec<_>>());
    let [plain_cpu, tokens_cpu, policy_cpu] = [cpu(&rounds[0]), cpu(&rounds[1]), cpu(&rounds[2])];
    let [plain_lat, tokens_lat, policy_lat] = &mut latencies;
    let [plain_p50, tokens_p50, policy_p50] =
        [quantile(plain_lat, 0.5), quantile(tokens_lat, 0.5), quantile(policy_lat, 0.5)];
    vec![
        Figure::info("unary_cpu_us_per_call_service_plain", plain_cpu, "µs"),
        Figure::info("unary_cpu_us_per_call_service_tokens", tokens_cpu, "µs"),
        Figure::info("unary_cpu_us_per_call_service_policy", policy_cpu, "µs"),
        Figure::info("unary_token_cpu_ratio", tokens_cpu / plain_cpu, "x"),
        Figure::target("unary_policy_cpu_ratio", policy_cpu / plain_cpu, "x", Target::AtMost(1.10)),
        Figure::info("unary_p50_us_service_plain", plain_p50, "µs"),
        Figure::info("unary_p50_us_service_tokens", tokens_p50, "µs"),
        Figure::info("unary_p50_us_service_policy", policy_p50, "µs"),
        Figure::info("unary_token_added_p50_us", tokens_p50 - plain_p50, "µs"),
        Figure::info("unary_policy_added_p50_us", policy_p50 - plain_p50, "µs"),
    ]
}

/// `Policies::allows` of `teams.cedar`, in process: `platform`'s `GetTask` of a task that
/// `analytics` submitted (the decision the policy service makes on every call above), timed
/// over `calls` calls on one thread, in microseconds per call: each time of another task (a
/// Cedar evaluation: `policy_eval_us`), and again and again of one task (a remembered
/// decision: `policy_remembered_us`, what a caller polling a task pays).
async fn policy_eval(calls: usize) -> Vec<Figure> {
    let (evaluated, remembered) = tokio::task::spawn_blocking(move || {
        let policies = Policies::load(std::path::Path::new(POLICY_FILE)).expect("teams.cedar loads");
        let caller = Caller { name: "platform".to_owned(), source: CallerSource::Token };
        let task_ids: Vec<String> = (0..calls).map(|n| format!("7f1c2a9e-0b6d-4c1e-9a53-{n:012}")).collect();
        let allowed = |task_id: &str| {
            let resource = Resource::Task { id: task_id, owner: Some("analytics"), rpc: Some("ExportChannels") };
            policies.allows(&caller, Rpc::GetTask, &resource)
        };
        assert!(allowed("warm-up"), "teams.cedar lets platform read every task");
        let started = Instant::now();
        assert_eq!(std::hint::black_box(task_ids.iter().filter(|id| allowed(id)).count()), calls);
        let evaluated = started.elapsed().as_secs_f64() * 1e6 / calls.max(1) as f64;
        let started = Instant::now();
        assert_eq!(std::hint::black_box((0..calls).filter(|_| allowed(&task_ids[0])).count()), calls);
        (evaluated, started.elapsed().as_secs_f64() * 1e6 / calls.max(1) as f64)
    })
    .await
    .expect("the policy evaluation timing");
    vec![Figure::info("policy_eval_us", evaluated, "µs"), Figure::info("policy_remembered_us", remembered, "µs")]
}

/// The cost of tracing alone (`--only tracing`): what [`run`] measures after figure 1, against a
/// service of its own.
pub async fn run_tracing(scale: &Scale, emulator_process: &ChildProcess) -> Vec<Figure> {
    let service_process = processes::start_service("service-unary", emulator_process, &[]).await;
    let service = LoadedServer::connect(service_process, scale.unary_connections).await;
    let task_id = tasks::create(&service.clients[0], 1).await.remove(0);
    eprintln!("unary: tracing off, warming up");
    service.load(&task_id, scale.unary_concurrency, scale.unary_window / 4).await;
    tracing_cost(scale, emulator_process, &service, &task_id).await
}

/// Runs figures 1 and 4 and returns them.
pub async fn run(scale: &Scale, emulator_process: &ChildProcess, emulator: &EmulatorClient) -> Vec<Figure> {
    let python = python_with_grpcio();
    let service_process = processes::start_service("service-unary", emulator_process, &[]).await;
    // Idle: started and listening, no connection yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = procfs::rss_bytes(service_process.pid()) as f64 / MIB;

    let service = LoadedServer::connect(service_process, scale.unary_connections).await;
    let task_id = tasks::create(&service.clients[0], 1).await.remove(0);
    let task = service.clients[0].clone().get_task(GetTaskRequest { task_id: task_id.clone() }).await;
    let task_hex = hex::encode(task.expect("GetTask of the bench task").into_inner().encode_to_vec());
    let bare = LoadedServer::connect(processes::start_echo(&task_hex).await, scale.unary_connections).await;

    let (service_rounds, bare_rounds) = throughput_rounds(scale, &service, &bare, &task_id).await;
    let (service_paced, bare_paced) = paced_rounds(scale, &service, &bare, &task_id).await;
    let Latencies {
        service: mut service_lat,
        bare: mut bare_lat,
        direct: mut direct_lat,
        service_non_tonic: mut service_non_tonic_lat,
        bare_non_tonic: mut bare_non_tonic_lat,
        service_grpcio: mut service_grpcio_lat,
        bare_grpcio: mut bare_grpcio_lat,
    } = latency_rounds(scale, &service, &bare, emulator, &task_id, python.as_deref()).await;
    let loaded_rss = procfs::rss_bytes(service.process.pid()) as f64 / MIB;
    let tracing = tracing_cost(scale, emulator_process, &service, &task_id).await;
    let policy = policy_cost(scale, emulator_process, &service, &task_id).await;
    let eval = policy_eval(scale.policy_eval_calls).await;

    let cpu = |rounds: &[Round]| median(&rounds.iter().map(Round::cpu_us_per_call).collect::<Vec<_>>());
    let rate = |rounds: &[Round]| median(&rounds.iter().map(Round::calls_per_second).collect::<Vec<_>>());
    let (service_cpu, bare_cpu) = (cpu(&service_rounds), cpu(&bare_rounds));
    let (service_rate, bare_rate) = (rate(&service_rounds), rate(&bare_rounds));
    let (service_paced_cpu, bare_paced_cpu) = (cpu(&service_paced), cpu(&bare_paced));
    let service_p50 = quantile(&mut service_lat, 0.5);
    let direct_p50 = quantile(&mut direct_lat, 0.5);
    let service_non_tonic_p50 = quantile(&mut service_non_tonic_lat, 0.5);
    let grpcio = match python {
        Some(_) => {
            let (service_p50, bare_p50) = (quantile(&mut service_grpcio_lat, 0.5), quantile(&mut bare_grpcio_lat, 0.5));
            vec![
                Figure::info("unary_p50_us_service_grpcio", service_p50, "µs"),
                Figure::info("unary_p50_us_bare_tonic_grpcio", bare_p50, "µs"),
                Figure::target("unary_added_p50_us_grpcio", service_p50 - direct_p50, "µs", Target::Below(150.0)),
                Figure::info("unary_added_p50_us_grpcio_over_bare", service_p50 - bare_p50, "µs"),
            ]
        }
        None => {
            println!("unary_added_p50_us_grpcio: skipped, no Python with grpcio (run conformance/python-grpc/run.sh)");
            println!(
                r#"BENCH {{"figure":"unary_added_p50_us_grpcio","skipped":"no Python with grpcio in .venv/python-grpc"}}"#
            );
            Vec::new()
        }
    };
    vec![
        Figure::info("unary_cpu_us_per_call_service", service_cpu, "µs"),
        Figure::info("unary_cpu_us_per_call_bare_tonic", bare_cpu, "µs"),
        Figure::target("unary_cost_ratio", service_cpu / bare_cpu, "x", Target::AtMost(4.0)),
        Figure::info("unary_cpu_us_per_call_service_paced", service_paced_cpu, "µs"),
        Figure::info("unary_cpu_us_per_call_bare_tonic_paced", bare_paced_cpu, "µs"),
        Figure::info("unary_calls_per_s_service_paced", rate(&service_paced), "1/s"),
        Figure::info("unary_calls_per_s_bare_tonic_paced", rate(&bare_paced), "1/s"),
        Figure::target("unary_cost_ratio_paced", service_paced_cpu / bare_paced_cpu, "x", Target::AtMost(2.5)),
        Figure::info("unary_calls_per_s_service", service_rate, "1/s"),
        Figure::info("unary_calls_per_s_bare_tonic", bare_rate, "1/s"),
        Figure::info("unary_throughput_ratio_bare_over_service", bare_rate / service_rate, "x"),
        Figure::info("unary_p50_us_service", service_p50, "µs"),
        Figure::info("unary_p99_us_service", quantile(&mut service_lat, 0.99), "µs"),
        Figure::info("unary_p50_us_bare_tonic", quantile(&mut bare_lat, 0.5), "µs"),
        Figure::info("unary_p99_us_bare_tonic", quantile(&mut bare_lat, 0.99), "µs"),
        Figure::info("unary_p50_us_direct_http", direct_p50, "µs"),
        Figure::info("unary_p99_us_direct_http", quantile(&mut direct_lat, 0.99), "µs"),
        Figure::info("unary_p50_us_service_nontonic_client", service_non_tonic_p50, "µs"),
        Figure::info("unary_p99_us_service_nontonic_client", quantile(&mut service_non_tonic_lat, 0.99), "µs"),
        Figure::info("unary_p50_us_bare_tonic_nontonic_client", quantile(&mut bare_non_tonic_lat, 0.5), "µs"),
        Figure::target("unary_added_p50_us", service_p50 - direct_p50, "µs", Target::Below(150.0)),
        Figure::target(
            "unary_added_p50_us_nontonic_client",
            service_non_tonic_p50 - direct_p50,
            "µs",
            Target::Below(150.0),
        ),
        Figure::target("idle_rss_mib", idle_rss, "MiB", Target::Below(30.0)),
        Figure::info("rss_after_unary_load_mib", loaded_rss, "MiB"),
    ]
    .into_iter()
    .chain(grpcio)
    .chain(tracing)
    .chain(policy)
    .chain(eval)
    .collect()
}
