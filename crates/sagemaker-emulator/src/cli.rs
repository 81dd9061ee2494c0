//! The emulator's command line, shared by the `sagemaker-emulator` binary and
//! `pipeline-control emulator`: every setting a flag with an environment variable.
//!
//! - `--listen` (`PIPELINE_CONTROL_EMULATOR_LISTEN`, default `127.0.0.1:9380`).
//! - `--region` (`PIPELINE_CONTROL_EMULATOR_REGION`, default `us-east-1`): the region of calls
//!   whose signature names none; every other call acts in the region of its SigV4 scope.
//! - `--role-external-id ROLE_ARN=EXTERNAL_ID`, repeatable
//!   (`PIPELINE_CONTROL_EMULATOR_ROLE_EXTERNAL_IDS`, pairs separated by spaces): AssumeRole of
//!   ROLE_ARN must pass exactly this ExternalId (as `PUT /_emulator/roles` sets it).
//! - `--access-key AKID:SECRET[:ACCOUNT]`, repeatable (`PIPELINE_CONTROL_EMULATOR_ACCESS_KEYS`,
//!   separated by commas): a key whose signatures the emulator checks, whose calls act in
//!   ACCOUNT (default `--account-id`).
//! - `--web-identity-issuer URL`, repeatable (`PIPELINE_CONTROL_EMULATOR_WEB_IDENTITY_ISSUERS`,
//!   separated by commas): the issuers whose web identity tokens AssumeRoleWithWebIdentity
//!   accepts (none given: every issuer).
//! - [`EmulatorSettings`], shared with `pipeline-control serve --emulator`: `--time-scale`,
//!   `--seed`, `--account-id` (the account of every key but those its STS issued and those
//!   `--access-key` gives to another), and
//!   `--events-queue NAME`, repeatable (`PIPELINE_CONTROL_EMULATOR_EVENTS_QUEUES`, names
//!   separated by commas or spaces): SQS queues of the default account and region that
//!   receive SageMaker's EventBridge events (as `PUT /_emulator/events/queues` adds them), and
//!   `--quota OPERATION=RATE[/BURST]`, repeatable (`PIPELINE_CONTROL_EMULATOR_QUOTAS`, separated
//!   by commas): the request quota of an operation (`*`: every operation without
//!   one of its own) in every account and region, as `PUT /_emulator/quotas/{Operation}` sets
//!   it.

use std::{future::Future, net::SocketAddr, str::FromStr as _};

use clap::Args;

use crate::{
    AccessKey, EmulatorOptions, EmulatorServer, QuotaSetting, identity::RoleRule,
    options::check_web_identity_issuer, queue::valid_queue_name, state::Operation, sts,
};

/// Settings of a standalone emulator.
#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Address the emulator listens on (port 0 picks a free port).
    #[arg(
        long,
        env = "PIPELINE_CONTROL_EMULATOR_LISTEN",
        default_value = "127.0.0.1:9380"
    )]
    pub listen: SocketAddr,

    /// The region of calls whose signature names none (the others act in the region of
    /// their SigV4 credential scope), in the ARNs they make.
    #[arg(
        long,
        env = "PIPELINE_CONTROL_EMULATOR_REGION",
        default_value = "us-east-1"
    )]
    pub region: String,

    /// AssumeRole of ROLE_ARN must pass exactly this ExternalId (repeatable; in the
    /// environment, pairs separated by spaces).
    #[arg(
        long = "role-external-id",
        env = "PIPELINE_CONTROL_EMULATOR_ROLE_EXTERNAL_IDS",
        value_name = "ROLE_ARN=EXTERNAL_ID",
        value_parser = role_external_id,
        value_delimiter = ' '
    )]
    pub role_external_ids: Vec<(String, String)>,

    /// A key whose secret the emulator knows, and the 12-digit account its calls act in
    /// (default: --account-id): the emulator checks the SigV4 signature of every call made
    /// with it, and accepts calls with other keys with any signature (repeatable; separated by
    /// commas, in the environment too).
    #[arg(
        long = "access-key",
        env = "PIPELINE_CONTROL_EMULATOR_ACCESS_KEYS",
        value_name = "AKID:SECRET[:ACCOUNT]",
        value_parser = AccessKey::from_str,
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub access_keys: Vec<AccessKey>,

    /// An issuer (the `iss` of its tokens, such as an EKS cluster's OIDC issuer URL) whose web
    /// identity tokens AssumeRoleWithWebIdentity accepts, as an OpenID Connect provider of the
    /// account would; with none given, every issuer is (repeatable; separated by commas, in
    /// the environment too).
    #[arg(
        long = "web-identity-issuer",
        env = "PIPELINE_CONTROL_EMULATOR_WEB_IDENTITY_ISSUERS",
        value_name = "URL",
        value_parser = web_identity_issuer,
        value_delimiter = ','
    )]
    pub web_identity_issuers: Vec<String>,

    /// The emulator's behaviour.
    #[command(flatten)]
    pub settings: EmulatorSettings,
}

/// How the emulator runs, standalone or in-process (`pipeline-control serve --emulator`).
#[derive(Debug, Clone, Args)]
pub struct EmulatorSettings {
    /// Emulated seconds per real second: 60 runs a one-minute step in one second.
    #[arg(long, env = "PIPELINE_CONTROL_EMULATOR_TIME_SCALE", default_value_t = 1.0, value_parser = positive_scale)]
    pub time_scale: f64,

    /// Seed for the ids it makes: the same calls in the same order give the same ids.
    #[arg(long, env = "PIPELINE_CONTROL_EMULATOR_SEED")]
    pub seed: Option<u64>,

    /// The 12-digit account of every call not signed with a key its STS issued (those act in
    /// the assumed role's account) nor with an --access-key of another account, in the ARNs
    /// they make.
    #[arg(long, env = "PIPELINE_CONTROL_EMULATOR_ACCOUNT_ID", default_value = "123456789012", value_parser = account_id)]
    pub account_id: String,

    /// An SQS queue of the emulator's default account and region (made on first use) that
    /// receives SageMaker's EventBridge events of that account and region's executions, as an
    /// EventBridge rule with an SQS target would (repeatable; names separated by commas or
    /// spaces, in the environment too).
    #[arg(
        long = "events-queue",
        env = "PIPELINE_CONTROL_EMULATOR_EVENTS_QUEUES",
        value_name = "NAME",
        value_parser = queue_names,
        value_delimiter = ','
    )]
    pub events_queues: Vec<String>,

    /// The request quota of an operation (`*`: every operation without one of its own) in
    /// each account and region, RATE calls per second with bursts of BURST (default: one
    /// second's calls); beyond it calls are answered ThrottlingException, as SageMaker's are
    /// (repeatable; separated by commas, in the environment too).
    #[arg(
        long = "quota",
        env = "PIPELINE_CONTROL_EMULATOR_QUOTAS",
        value_name = "OPERATION=RATE[/BURST]",
        value_parser = quota,
        value_delimiter = ','
    )]
    pub quotas: Vec<QuotaSetting>,
}

/// `OPERATION=RATE[/BURST]`, of an operation the emulator serves or `*`.
fn quota(text: &str) -> Result<QuotaSetting, String> {
    let setting: QuotaSetting = text.trim().parse()?;
    let op = &setting.operation;
    if op != "*" && Operation::from_name(op).is_none() {
        return Err(format!("no operation {op} (a SageMaker operation, or *)"));
    }
    Ok(setting)
}

fn positive_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 1_000_000.0 => Ok(f),
        _ => Err("must be a number greater than 0 and at most 1000000".into()),
    }
}

/// `ROLE_ARN=EXTERNAL_ID`, split at the first `=` (a role name may not contain one here),
/// both checked as AssumeRole checks them.
fn role_external_id(text: &str) -> Result<(String, String), String> {
    let (role_arn, external_id) = text
        .split_once('=')
        .ok_or_else(|| "must be ROLE_ARN=EXTERNAL_ID".to_string())?;
    sts::check_role_rule(&RoleRule {
        role_arn: role_arn.to_string(),
        external_id: Some(external_id.to_string()),
        refuse: false,
    })?;
    Ok((role_arn.to_string(), external_id.to_string()))
}

/// One or more queue names separated by spaces (commas separate values already), each an SQS
/// queue name; kept as given, split by [`EmulatorSettings::events_queue_names`].
fn queue_names(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("must name a queue".into());
    }
    match text.split_whitespace().find(|name| !valid_queue_name(name)) {
        Some(name) => Err(format!(
            "{name:?} is not a queue name (1 to 80 letters, digits, - and _)"
        )),
        None => Ok(text.to_string()),
    }
}

fn web_identity_issuer(text: &str) -> Result<String, String> {
    check_web_identity_issuer(text)?;
    Ok(text.to_string())
}

fn account_id(text: &str) -> Result<String, String> {
    if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_string())
    } else {
        Err("must be 12 digits".into())
    }
}

impl EmulatorSettings {
    /// The emulator's options for `region`.
    pub fn options(&self, region: &str) -> EmulatorOptions {
        EmulatorOptions {
            time_scale: self.time_scale,
            seed: self.seed,
            region: region.to_string(),
            account_id: self.account_id.clone(),
            access_keys: Vec::new(),
            role_external_ids: Vec::new(),
            events_queues: self.events_queue_names(),
            web_identity_issuers: Vec::new(),
            quotas: self.quotas.clone(),
        }
    }

    /// The names `--events-queue` gave, each once, in order (a value may hold several,
    /// separated by spaces).
    pub fn events_queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in self.events_queues.iter().flat_map(|v| v.split_whitespace()) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        names
    }
}

impl EmulatorArgs {
    /// Binds the listen address, calls `started` with the endpoint URL, and serves until
    /// `shutdown` completes.
    pub async fn run(
        &self,
        started: impl FnOnce(&str),
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let options = EmulatorOptions {
            role_external_ids: self.role_external_ids.clone(),
            access_keys: self.access_keys.clone(),
            web_identity_issuers: self.web_identity_issuers.clone(),
            ..self.settings.options(&self.region)
        };
        let server = EmulatorServer::bind(self.listen, &options)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidInput => e,
                kind => std::io::Error::new(kind, format!("cannot listen on {}: {e}", self.listen)),
            })?;
        started(&server.endpoint_url());
        server.run_until(shutdown).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::{CommandFactory as _, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    #[test]
    fn settings_are_checked() {
        Cli::command().debug_assert();
        for bad in [
            vec!["e", "--time-scale", "0"],
            vec!["e", "--time-scale", "-2"],
            vec!["e", "--account-id", "12345"],
            vec![
                "e",
                "--role-external-id",
                "arn:aws:iam::222222222222:role/R",
            ],
            vec!["e", "--role-external-id", "not-an-arn=abc"],
            vec![
                "e",
                "--role-external-id",
                "arn:aws:iam::222222222222:role/R=x",
            ],
            vec!["e", "--quota", "StopPipeline=10"],
            vec!["e", "--quota", "*=0"],
            vec!["e", "--quota", "*=10/0.5"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from([
            "e",
            "--quota",
            "*=10",
            "--quota",
            "StopPipelineExecution=2/4,DescribePipeline=0.5",
        ])
        .unwrap();
        let quotas: Vec<String> = cli
            .args
            .settings
            .options("us-east-1")
            .quotas
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            quotas,
            ["*=10", "StopPipelineExecution=2/4", "DescribePipeline=0.5"]
        );
        let cli = Cli::try_parse_from(["e", "--time-scale", "60", "--seed", "7"]).unwrap();
        assert_eq!(cli.args.settings.time_scale, 60.0);
        assert_eq!(cli.args.settings.seed, Some(7));
        assert!(cli.args.role_external_ids.is_empty());
        assert!(
            cli.args
                .settings
                .options("us-east-1")
                .events_queues
                .is_empty()
        );

        // Repeated, and separated by commas or spaces, as the environment gives them.
        let cli = Cli::try_parse_from([
            "e",
            "--events-queue",
            "events",
            "--events-queue",
            "a,b c",
            "--events-queue",
            "events",
        ])
        .unwrap();
        assert_eq!(
            cli.args.settings.options("eu-west-1").events_queues,
            ["events", "a", "b", "c"]
        );
        for bad in ["bad.name", "a,b bad!", ""] {
            assert!(
                Cli::try_parse_from(["e", "--events-queue", bad]).is_err(),
                "{bad:?}"
            );
        }
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--events-queue <NAME>"), "{help}");
        assert!(
            help.contains("PIPELINE_CONTROL_EMULATOR_EVENTS_QUEUES"),
            "{help}"
        );

        let cli = Cli::try_parse_from([
            "e",
            "--role-external-id",
            "arn:aws:iam::222222222222:role/R=abc=def",
            "--role-external-id",
            "arn:aws:iam::333333333333:role/S=x:y",
        ])
        .unwrap();
        assert_eq!(
            cli.args.role_external_ids,
            [
                (
                    "arn:aws:iam::222222222222:role/R".to_string(),
                    "abc=def".to_string()
                ),
                (
                    "arn:aws:iam::333333333333:role/S".to_string(),
                    "x:y".to_string()
                ),
            ]
        );
    }

    #[test]
    fn web_identity_issuers_are_repeatable_urls() {
        let eks = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE";
        let cli = Cli::try_parse_from([
            "e",
            "--web-identity-issuer",
            eks,
            "--web-identity-issuer",
            "https://token.actions.githubusercontent.com,http://127.0.0.1:8080",
        ])
        .unwrap();
        assert_eq!(
            cli.args.web_identity_issuers,
            [
                eks,
                "https://token.actions.githubusercontent.com",
                "http://127.0.0.1:8080"
            ]
        );
        assert!(
            Cli::try_parse_from(["e"])
                .unwrap()
                .args
                .web_identity_issuers
                .is_empty()
        );
        let error = Cli::try_parse_from(["e", "--web-identity-issuer", "oidc.example.com"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--web-identity-issuer"), "{error}");
        assert!(error.contains("must be an https://"), "{error}");
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--web-identity-issuer <URL>"), "{help}");
        assert!(
            help.contains("PIPELINE_CONTROL_EMULATOR_WEB_IDENTITY_ISSUERS"),
            "{help}"
        );
    }

    #[test]
    fn access_keys_are_repeatable_and_refused_when_malformed() {
        let cli = Cli::try_parse_from([
            "e",
            "--access-key",
            "AKIDONE:secret/one+",
            "--access-key",
            "AKIDTWO:secret-two:444444444444,AKIDTHREE:three",
        ])
        .unwrap();
        assert_eq!(
            cli.args.access_keys,
            [
                AccessKey::new("AKIDONE", "secret/one+"),
                AccessKey {
                    account_id: Some("444444444444".into()),
                    ..AccessKey::new("AKIDTWO", "secret-two")
                },
                AccessKey::new("AKIDTHREE", "three"),
            ]
        );
        // `serve --emulator` takes its options from the settings alone: no keys.
        assert!(
            cli.args
                .settings
                .options("us-east-1")
                .access_keys
                .is_empty()
        );

        let error = Cli::try_parse_from(["e", "--access-key", "AKIDONE:secret:12345"])
            .unwrap_err()
            .to_string();
        let first = error.lines().next().unwrap();
        assert!(first.contains("'AKIDONE:secret:12345'"), "{error}");
        assert!(first.contains("--access-key"), "{error}");
        assert!(first.contains("the account must be 12 digits"), "{error}");
        for bad in ["AKIDONE", "AKIDONE:", "AKID ONE:s", "A:s:1:2"] {
            assert!(
                Cli::try_parse_from(["e", "--access-key", bad]).is_err(),
                "{bad:?}"
            );
        }
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("--access-key <AKID:SECRET[:ACCOUNT]>"),
            "{help}"
        );
        assert!(
            help.contains("PIPELINE_CONTROL_EMULATOR_ACCESS_KEYS"),
            "{help}"
        );
    }
}
