//! The `pipeline-control` binary: parse the command line, start logging, run the subcommand.
//! A failure ends the process with status 1 and one line on standard error.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use pipeline_control::{
    app::Application,
    client::{self, ClientCommand},
    config::ServiceCommand,
    shutdown, store,
    telemetry::{self, LogFormat},
};

/// The heading of the logging options in `--help`, apart from the clients' own.
const LOGGING: &str = "Logging (of serve, migrate and emulator; the client commands print no logs)";

/// Stop Amazon SageMaker pipeline executions safely: durable idempotency, honest progress,
/// upstream economy.
#[derive(Debug, Parser)]
#[command(name = "pipeline-control", version, about, long_about = None)]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines (one object a line).
    #[arg(long, env = "PIPELINE_CONTROL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true, help_heading = LOGGING)]
    log_format: LogFormat,

    /// Which logs to write, as a tracing filter (`info`, `debug`, `pipeline_control=debug,info`).
    #[arg(
        long,
        env = "PIPELINE_CONTROL_LOG",
        default_value = "info",
        global = true,
        help_heading = LOGGING
    )]
    log_filter: String,

    /// What to run.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands of the one binary: the service's, and the clients'.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing would only add noise
enum Command {
    /// The service, its database and the emulator.
    #[command(flatten)]
    Service(ServiceCommand),
    /// The command line for people: clients of a running service.
    #[command(flatten)]
    Client(ClientCommand),
    /// Prints the completion script of a shell, e.g. `source <(pipeline-control completions
    /// bash)`, or into `~/.local/share/bash-completion/completions/pipeline-control`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return client::refuse(error),
    };
    let command = match cli.command {
        // The client commands print for people (or scripts): no service logs.
        Command::Client(command) => return client::run(command).await,
        Command::Completions { shell } => {
            let mut cli = Cli::command();
            clap_complete::generate(shell, &mut cli, "pipeline-control", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
