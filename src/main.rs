//! The `stream-export` binary: the gRPC service, the Stream API emulator, and the command-line
//! client (`export`, `task`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stream_export::{client_cli, config::ServeArgs, emulator, startup, telemetry};

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
    Serve(Box<ServeArgs>),
    /// Run the Stream API emulator alone, for SDKs and tests.
    Emulator(emulator::EmulatorArgs),
    /// Submit a channel or user export to a running service; with --wait, follow it; with
    /// --output, save its records to a file.
    Export(client_cli::ExportCommand),
    /// Get or watch an existing task (and save its export).
    Task(client_cli::TaskCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = match args.into_settings() {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("stream-export: {error}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init(settings.log_format);
            report(startup::run(settings).await)
        }
        Command::Emulator(args) => {
            telemetry::init(telemetry::LogFormat::Text);
            report(emulator::run(args).await)
        }
        Command::Export(command) => client_cli::run_export(command).await,
        Command::Task(command) => client_cli::run_task(command).await,
    }
}

/// Turns the outcome of a subcommand into the process exit code, printing a failure in one line.
fn report(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stream-export: {error:#}");
            ExitCode::FAILURE
        }
    }
}
