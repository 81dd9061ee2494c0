//! `serve --emulator`: a complete local demo with no account, no database server and no
//! configuration. The emulator runs in-process; two demo pipelines are created through the
//! real SDK client and one execution of each is started:
//!
//! - `demo-callback`: an `Approve` Callback step (then `Train`). Stopped, it stays Stopping until
//!   someone answers the callback with SendPipelineExecutionStepSuccess or Failure.
//! - `demo-lambda`: an `Evaluate` Lambda step of two minutes (then `Register`). Stopped, it
//!   stays Stopping until the function finishes, then is Stopped.

use serde_json::json;

use sagemaker_emulator::RunningEmulator;

use crate::sagemaker::SageMaker;

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/PipelineControlDemo";

/// The demo executions' display names, each its own (what `get`, the live view and the console
/// show first).
const CALLBACK_DISPLAY_NAME: &str = "demo-callback-waits-for-a-reviewer";
const LAMBDA_DISPLAY_NAME: &str = "demo-lambda-evaluates-for-two-minutes";

/// What the demo created.
#[derive(Debug, Clone)]
pub(crate) struct Demo {
    pub(crate) emulator_url: String,
    pub(crate) region: String,
    pub(crate) callback_execution: String,
    pub(crate) callback_token: Option<String>,
    pub(crate) lambda_execution: String,
}

/// The emulator's queue for its EventBridge events, which the demo service reads (push).
pub(crate) const EVENTS_QUEUE: &str = "pipeline-control-events";

/// Creates the demo pipelines and starts one execution of each.
pub(crate) async fn seed(
    sagemaker: &SageMaker,
    emulator: &RunningEmulator,
    region: &str,
) -> anyhow::Result<Demo> {
    let callback = json!({
        "Version": "2020-12-01",
        "Metadata": {},
        "Parameters": [{"Name": "ModelUri", "Type": "String", "DefaultValue": "s3://demo-bucket/model.tar.gz"}],
        "Steps": [
            {"Name": "Approve", "Type": "Callback", "DisplayName": "Wait for a reviewer",
             "SqsQueueUrl": format!("https://sqs.{region}.amazonaws.com/123456789012/demo-approvals"),
             "Arguments": {"model": {"Get": "Parameters.ModelUri"}},
             "OutputParameters": [{"OutputName": "decision", "OutputType": "String"}]},
            {"Name": "Train", "Type": "Training", "DependsOn": ["Approve"],
             "Arguments": {"Emulator": {"DurationSeconds": 300}}}
        ]
    });
    let lambda = json!({
        "Version": "2020-12-01",
        "Metadata": {},
        "Steps": [
            {"Name": "Evaluate", "Type": "Lambda", "DisplayName": "Evaluate the model",
             "FunctionArn": format!("arn:aws:lambda:{region}:123456789012:function:demo-evaluate"),
             "Arguments": {"Emulator": {"DurationSeconds": 120, "TimeoutSeconds": 300}}},
            {"Name": "Register", "Type": "RegisterModel", "DependsOn": ["Evaluate"],
             "Arguments": {"Emulator": {"DurationSeconds": 30}}}
        ]
    });
    let token = |name: &str| format!("demo-{name}-0000000000000000000000000000");
    sagemaker
        .create_pipeline(
            "demo-callback",
            &callback.to_string(),
            ROLE_ARN,
            &token("create-callback"),
        )
        .await?;
    sagemaker
        .create_pipeline(
            "demo-lambda",
            &lambda.to_string(),
            ROLE_ARN,
            &token("create-lambda"),
        )
        .await?;
    let callback_execution = sagemaker
        .start_execution(
            "demo-callback",
            CALLBACK_DISPLAY_NAME,
            &token("start-callback"),
        )
        .await?;
    let lambda_execution = sagemaker
        .start_execution("demo-lambda", LAMBDA_DISPLAY_NAME, &token("start-lambda"))
        .await?;
    let callback_token = emulator
        .callback_tokens(&callback_execution)
        .and_then(|tokens| tokens.into_iter().find(|(step, _)| step == "Approve"))
        .map(|(_, token)| token);
    Ok(Demo {
        emulator_url: emulator.endpoint_url.clone(),
        region: region.to_string(),
        callback_execution,
        callback_token,
        lambda_execution,
    })
}

impl Demo {
    /// What to try, for the person who started the demo at a terminal. `tls`: whether the gRPC
    /// port speaks TLS (the commands then need the CA, and maybe credentials).
    pub(crate) fn banner(
        &self,
        grpc: &str,
        tls: bool,
        metrics: Option<std::net::SocketAddr>,
        console: Option<std::net::SocketAddr>,
    ) -> String {
        let transport = if tls { "-cacert CA.pem" } else { "-plaintext" };
        let rpc = |method: &str, arn: &str, extra: &str| {
            format!(
                "  grpcurl {transport} -d '{{\"pipeline_execution_arn\": \"{arn}\"{extra}}}' {grpc} pipelinecontrol.v1.PipelineControl/{method}"
            )
        };
        let mut lines = vec![String::new()];
        if let Some(console) = console {
            lines.push(format!(
                "Console for people on call: http://{console}/    (open demo-callback: http://{console}/executions?arn={})",
                self.callback_execution
            ));
        }
        lines.extend([
            format!("SageMaker Pipelines emulator: {}", self.emulator_url),
            format!(
                "  demo-callback execution (waits for a callback): {}",
                self.callback_execution
            ),
            format!(
                "  demo-lambda execution (a two-minute Lambda step): {}",
                self.lambda_execution
            ),
            String::new(),
            if tls {
                "Try (CA.pem is the CA of --tls-cert; add -cert/-key or -H 'authorization: Bearer TOKEN' as your credentials require):".to_string()
            } else {
                "Try:".to_string()
            },
            rpc("GetExecution", &self.callback_execution, ""),
            rpc(
                "StopExecution",
                &self.callback_execution,
                ", \"reason\": \"demo\"",
            ),
            rpc("WatchExecution", &self.callback_execution, ""),
            rpc("StopExecution", &self.lambda_execution, ""),
            String::new(),
            "Or for people, with the command line (in a checkout, `cargo run --release --` does for `pipeline-control`):".to_string(),
        ]);
        let server = match (grpc, tls) {
            ("127.0.0.1:50051", false) => String::new(),
            (address, false) => format!(" --server http://{address}"),
            (address, true) => format!(" --server https://{address} --ca-cert CA.pem"),
        };
        lines.push(format!(
            "  pipeline-control stop {} --reason demo --wait{server}    (live until Stopped)",
            self.callback_execution
        ));
        lines.push(format!("  pipeline-control history{server}"));
        if let Some(token) = &self.callback_token {
            lines.push(String::new());
            lines.push(
                "Answer the callback (this lets a stopped demo-callback execution reach Stopped):"
                    .into(),
            );
            lines.push(format!(
                "  AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo aws sagemaker send-pipeline-execution-step-success --region {} --endpoint-url {} --callback-token {token}",
                self.region, self.emulator_url
            ));
        }
        lines.push(format!(
            "  curl {}/_emulator/callbacks    (the messages the Callback step sent)",
            self.emulator_url
        ));
        if let Some(metrics) = metrics {
            lines.push(format!(
                "  curl http://{metrics}/metrics    (the service's metrics)"
            ));
        }
        lines.push(String::new());
        lines.join("\n")
    }
}
