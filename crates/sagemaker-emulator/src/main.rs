//! The `sagemaker-emulator` binary: the SageMaker Pipelines emulator on its own, until SIGTERM
//! or Ctrl-C. A failure ends the process with status 1 and one line on standard error.

use std::process::ExitCode;

use clap::Parser;
use sagemaker_emulator::cli::EmulatorArgs;

/// A SageMaker Pipelines emulator that speaks SageMaker's wire protocol.
#[derive(Debug, Parser)]
#[command(name = "sagemaker-emulator", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: EmulatorArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let shutdown = async {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
    };
    let started = |endpoint: &str| {
        eprintln!(
            "sagemaker-emulator: serving on {endpoint} (time scale {})",
            cli.args.settings.time_scale
        );
    };
    match cli.args.run(started, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sagemaker-emulator: error: {error}");
            ExitCode::FAILURE
        }
    }
}
