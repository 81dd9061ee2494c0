//! The `pipeline-control` binary: parse the command line, start logging, run the subcommand.
//! A failure ends the process with status 1 and one line on standard error.

use std::process::ExitCode;

use clap::Parser as _;
use pipeline_control::{
    app::Application,
    client,
    config::{Cli, Command, ServiceCommand},
    shutdown, store, telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        // The client commands print for people (or scripts): no service logs.
        Command::Client(command) => return client::run(command).await,
        Command::Service(command) => command,
    };
    let traces = match &command {
        ServiceCommand::Serve(args) => args.traces_endpoint().map(str::to_string),
        _ => None,
    };
    let telemetry = match telemetry::init(cli.log_format, &cli.log_filter, traces.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("pipeline-control: error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(command).await;
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

async fn run(command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Serve(args) => Application::build(args).await?.run().await,
        ServiceCommand::Migrate(args) => {
            let store = store::connect(&args.store()).await?;
            store.migrate().await?;
            store.close().await;
            tracing::info!(backend = ?store.backend(), "migrations applied");
            Ok(())
        }
        ServiceCommand::Emulator(args) => {
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
