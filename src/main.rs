//! The `stream-export` binary: the gRPC service, the Stream API emulator, and the command-line
//! client (`export`, `task`, `job`, `schedule`).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rand::{Rng, distr::Alphanumeric};
use secrecy::SecretString;
use stream_export::{
    client_cli,
    config::{ConfigError, ServeArgs, Settings, UpstreamSettings, parse_base_url},
    emulator, startup,
    store::embedded::StateDirError,
    telemetry,
};
use tokio::net::TcpListener;

/// stream-export: Stream Chat exports over gRPC, without poll loops.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gRPC export service.
    ///
    /// Spans are exported over OpenTelemetry's OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT (or
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; the other standard OTEL_* variables configure
    /// it (protocol, service name, resource attributes, sampler, batch processor).
    Serve(Box<ServeArgs>),
    /// Run the Stream API emulator alone, for SDKs and tests.
    Emulator(emulator::EmulatorArgs),
    /// Submit a channel or user export to a running service; with --wait, follow it; with
    /// --output, save its records to a file.
    Export(client_cli::ExportCommand),
    /// Get, watch or list tasks (task get | watch | list), and save a task's export.
    Task(client_cli::TaskCommand),
    /// Run export jobs of any number of channels or users (job create | get | list | watch |
    /// tasks | verify | cancel), and save or archive a job's exports.
    Job(client_cli::JobCommand),
    /// Have the service start an export job every interval, each exporting one window of time
    /// (schedule create | get | list | pause | resume | delete).
    Schedule(client_cli::ScheduleCommand),
}

fn main() -> ExitCode {
    tune_allocator();
    // `stream-export --server URL export …` works as well as `stream-export export --server URL …`.
    let cli = Cli::parse_from(client_cli::hoist_client_options(std::env::args_os().collect()));
    // The client commands run on one thread: a save is a pipeline of socket reads, decoding and
    // file writes, and handing each message to another thread costs more than it gains.
    let runtime = match cli.command {
        Command::Export(_) | Command::Task(_) | Command::Job(_) | Command::Schedule(_) => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        }
        Command::Serve(_) | Command::Emulator(_) => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli.command)),
        Err(error) => {
            eprintln!("stream-export: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps glibc's malloc from handing memory back to the kernel after every large message.
///
/// By default glibc serves blocks of 128 KiB and more with a fresh `mmap` and trims a thread's
/// arena as soon as 128 KiB at its top are free, so every 128 KiB `ReadExport` batch, encode
/// buffer and download chunk was mapped, faulted in page by page, and unmapped again: saving a
/// 1 GiB export cost the service 100,000 page faults and a quarter of its CPU. Blocks below
/// 1 MiB now come from the arenas, and up to 4 MiB free at an arena's top stays mapped: a bound
/// per arena (glibc makes at most eight per core), not per stream. Must run before any thread
/// starts.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_BYTES: libc::c_int = 1024 * 1024;
        const TRIM_THRESHOLD_BYTES: libc::c_int = 4 * 1024 * 1024;
        // SAFETY: mallopt only changes malloc's parameters; it is called before any other
        // thread exists, so nothing allocates concurrently. A refusal (return 0) leaves the
        // defaults, which are correct, only slower.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
        }
    }
}

/// Runs one command to its end.
async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(args) => {
            let settings = match args.into_settings() {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("stream-export: {error}");
                    return ExitCode::from(2);
                }
            };
            let tracing = match telemetry::otel::OtelEnv::read(|name| std::env::var(name).ok())
                .and_then(|env| env.map(|env| telemetry::otel::Tracing::start(&env)).transpose())
            {
                Ok(tracing) => tracing,
                Err(error) => {
                    eprintln!("stream-export: {error:#}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init(settings.log_format, tracing.as_ref());
            if tracing.is_some() {
                tracing::info!("exporting spans over OTLP");
            }
            let flush_limit = telemetry::otel::FLUSH_LIMIT.min(settings.transport.shutdown_grace);
            let outcome = serve(settings).await;
            if let Some(tracing) = tracing {
                tracing.shutdown(flush_limit).await;
            }
            report(outcome)
        }
        Command::Emulator(args) => {
            telemetry::init(telemetry::LogFormat::Text, None);
            report(emulator::run(args).await)
        }
        Command::Export(command) => client_cli::run_export(command).await,
        Command::Task(command) => client_cli::run_task(command).await,
        Command::Job(command) => client_cli::run_job(command).await,
        Command::Schedule(command) => client_cli::run_schedule(command).await,
    }
}

/// Runs the service until a shutdown signal. With `--emulator`, first starts the embedded
/// emulator as its upstream, with fresh credentials that never leave the process. It is started
/// here, in the binary, so that the library's service path never links the emulator in.
async fn serve(mut settings: Settings) -> anyhow::Result<()> {
    let embedded = match settings.upstream {
        UpstreamSettings::Emulator { synthetic_channels } => {
            let random = |len| rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect::<String>();
            let (api_key, api_secret) = (format!("emulator-{}", random(12).to_lowercase()), random(48));
            let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the embedded emulator")?;
            let mut config = emulator::EmulatorConfig::new(&api_key, &api_secret);
            config.synthetic_channels = synthetic_channels;
            let handle = emulator::spawn(listener, config).await.context("starting the embedded emulator")?;
            let base_url = parse_base_url(&handle.base_url())?;
            tracing::info!(%base_url, %api_key, "embedded Stream API emulator started");
            settings.upstream =
                UpstreamSettings::Remote { base_url, api_key, api_secret: SecretString::from(api_secret) };
            Some(handle)
        }
        UpstreamSettings::Remote { .. } => None,
    };
    let outcome = startup::run(settings).await;
    if let Some(emulator) = embedded {
        emulator.shutdown().await;
    }
    outcome
}

/// Turns the outcome of a subcommand into the process exit code, printing a failure in one line.
fn report(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stream-export: {error:#}");
            // A file a setting names (tokens, policies, TLS) or a state directory that cannot be
            // used is a setting to fix, as a bad flag is.
            let setting =
                error.downcast_ref::<ConfigError>().is_some() || error.downcast_ref::<StateDirError>().is_some();
            if setting { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}
