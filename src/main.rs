//! The `pipeline-control` binary: parse the command line, start logging, run the subcommand.
//! A failure ends the process with status 1 and one line on standard error.

use std::process::ExitCode;

use clap::Parser as _;
use pipeline_control::{
    app::Application,
    config::{Cli, Command},
    shutdown, store, telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = match &cli.command {
        Command::Serve(args) => args.traces_endpoint().map(str::to_string),
        _ => None,
    };
    let telemetry = match telemetry::init(cli.log_format, &cli.log_filter, traces.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("pipeline-control: error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(cli.command).await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("pipeline-control: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => Application::build(args).await?.run().await,
        Command::Migrate(args) => {
            let store = store::connect(&args).await?;
            store.migrate().await?;
            store.close().await;
            tracing::info!(backend = ?store.backend(), "migrations applied");
            Ok(())
        }
        Command::Emulator(args) => {
            let signal = shutdown::signal()?;
            let started = |endpoint: &str| {
                tracing::info!(
                    endpoint = %endpoint,
                    time_scale = args.settings.time_scale,
                    "SageMaker Pipelines emulator serving"
                );
            };
            args.run(started, signal).await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}
