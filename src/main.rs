//! The `stream-export` binary: the gRPC service, and the Stream API emulator.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stream_export::{config::ServeArgs, emulator, startup, telemetry};

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
