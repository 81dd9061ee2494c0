//! The estate: every account and region the service serves, and the SageMaker client for each.
//!
//! An execution ARN names its region and account; [`Estate::client`] gives the SageMaker client
//! for that (account, region), built on first use and cached: the ARN's region, the account's
//! endpoint if the accounts file gives one (else `--sagemaker-endpoint`, else the AWS SDK's
//! standard `AWS_ENDPOINT_URL_SAGEMAKER` / `AWS_ENDPOINT_URL`), and credentials for the
//! account: a role assumed through aws-config's STS provider (cached by the SDK and refreshed
//! before it expires) when the account has one, else the service's own credential chain. Every
//! SageMaker and STS client shares one HTTP connector (the events readers another, outside its
//! ceiling); the service's own credentials are cached once for all (the base `SdkConfig`'s
//! identity cache), a role's in its client's cache of its own.
//!
//! Without `--accounts-file` every account and region is served. With it, an ARN whose account
//! or region is not listed is refused ([`Estate::check`]) before anything is recorded or sent.
//! The file is reloaded on SIGHUP ([`Estate::reload`]); a file that fails to load keeps the
//! previous one in force. A reload drops the cached clients, so a changed role or endpoint
//! takes effect at the next call.
//!
//! Each client paces its calls (see `pace`) with its (account, region)'s pace, which the estate
//! keeps across reloads: a reload (say, an account added during an incident) drops the clients
//! but not what was learnt of every quota.
//!
//! Every client records what it reads of executions and the changes it makes to them in the
//! estate's [`Recent`], so that reads are shared and none begun before a change answers for
//! after it.

mod accounts;
mod ceiling;

use std::{path::PathBuf, sync::Arc};

use arc_swap::ArcSwap;
use aws_config::{BehaviorVersion, Region, SdkConfig, sts::AssumeRoleProvider};
use aws_sdk_sagemaker::config::{Credentials, IdentityCache};
use dashmap::DashMap;

use self::ceiling::Ceiling;

pub(crate) use accounts::Accounts;

use crate::{
    domain::ExecutionArn,
    error::Error,
    files,
    metrics::Metrics,
    pace::Pace,
    recent::Recent,
    sagemaker::{CallPolicy, SageMaker},
};

/// The HTTP client every SageMaker and STS client shares: one connection pool and one TLS
/// configuration for the whole estate. Made as the SDK makes its default one (rustls on
/// aws-lc, the proxy of the environment), which it would otherwise make once per client.
/// At most `per_endpoint` requests are in flight to each endpoint ([`Ceiling`]).
fn shared_http_client(per_endpoint: usize) -> aws_sdk_sagemaker::config::SharedHttpClient {
    Ceiling::client(pooled_http_client(), per_endpoint)
}

/// An HTTP client with a connection pool of its own, made as the SDK makes its default one.
fn pooled_http_client() -> aws_sdk_sagemaker::config::SharedHttpClient {
    use aws_smithy_http_client::{ConnectorBuilder, proxy::ProxyConfig, tls};
    aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        // Idle connections left by a burst go after 30 s rather than hyper's 90 s.
        connector.set_pool_idle_timeout(Some(Some(std::time::Duration::from_secs(30))));
        connector.build()
    })
}

/// The session name of every role the service assumes (it shows in CloudTrail).
const SESSION_NAME: &str = "pipeline-control";

/// Where the SageMaker clients come from.
#[derive(Debug, Clone, Default)]
pub(crate) struct EstateSettings {
    /// `--sagemaker-endpoint`: every account's SageMaker, unless its entry names another.
    pub(crate) endpoint: Option<String>,
    /// `--sts-endpoint`: where roles are assumed.
    pub(crate) sts_endpoint: Option<String>,
    /// `--sqs-endpoint`: where the events queues are read.
    pub(crate) sqs_endpoint: Option<String>,
    /// `--accounts-file`.
    pub(crate) accounts_file: Option<PathBuf>,
    /// Fixed credentials instead of the default chain (embedders and tests).
    pub(crate) static_credentials: Option<(String, String)>,
    /// `--upstream-max-connections`: requests in flight at most to each endpoint.
    pub(crate) max_connections_per_endpoint: usize,
    /// The region of the base configuration (`--aws-region`). Each call goes to its ARN's
    /// region; this only spares the SDK from looking one up (which may ask the instance
    /// metadata service) when nothing else names one.
    pub(crate) region: Option<String>,
}

/// Every (account, region) the service reaches, and how.
#[derive(Debug)]
pub(crate) struct Estate {
    base: SdkConfig,
    /// The base, with the STS endpoint override if there is one: what role providers use.
    for_sts: SdkConfig,
    policy: CallPolicy,
    settings: EstateSettings,
    /// The accounts file in force; `None` without one (everything served).
    accounts: ArcSwap<Option<Accounts>>,
    clients: DashMap<(String, String), SageMaker>,
    /// The pace of each (account, region) reached, kept when a reload drops the clients.
    paces: DashMap<(String, String), Arc<Pace>>,
    /// The events readers' HTTP client: outside the ceiling of `--upstream-max-connections`.
    /// Each reader's long poll holds a request for 20 s, and there is one reader per queue
    /// given: under the ceiling, more queues than it in one region's SQS would wait for one
    /// another's polls (and time out), and where SQS and SageMaker share an endpoint (the
    /// emulator) the polls would hold SageMaker's calls up.
    events_http: aws_sdk_sagemaker::config::SharedHttpClient,
    metrics: Arc<Metrics>,
    /// What every client read of executions and changed lately (kept across reloads).
    recent: Arc<Recent>,
}

impl Estate {
    /// Reads the accounts file (a bad one stops the start) and prepares the shared
    /// configuration. Credentials are resolved lazily, at the first call, so a machine without
    /// credentials can still start the service (and its health reflects the database).
    pub(crate) async fn load(
        settings: EstateSettings,
        policy: CallPolicy,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let accounts = match &settings.accounts_file {
            Some(path) => Some(files::read(path, Accounts::parse)?),
            None => None,
        };
        // A region is always given, so the SDK never looks for one (the instance metadata
        // service is one of the places it would look).
        let region = settings
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region))
            .http_client(shared_http_client(settings.max_connections_per_endpoint));
        if let Some((key, secret)) = &settings.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                key.clone(),
                secret.clone(),
                None,
                None,
                "static",
            ));
        }
        let base = loader.load().await;
        let for_sts = match &settings.sts_endpoint {
            Some(endpoint) => base.clone().into_builder().endpoint_url(endpoint).build(),
            None => base.clone(),
        };
        if let Some(accounts) = &accounts {
            tracing::info!(
                accounts = accounts.len(),
                "serving the accounts of the accounts file"
            );
        }
        Ok(Self {
            base,
            for_sts,
            policy,
            settings,
            accounts: ArcSwap::from_pointee(accounts),
            clients: DashMap::new(),
            paces: DashMap::new(),
            events_http: pooled_http_client(),
            metrics,
            recent: Arc::default(),
        })
    }

    /// Reloads the accounts file (on SIGHUP); a file that fails to load keeps the previous one
    /// in force, and says why.
    pub(crate) fn reload(&self) {
        let Some(path) = &self.settings.accounts_file else {
            return;
        };
        match files::read(path, Accounts::parse) {
            Ok(accounts) => {
                tracing::info!(file = %path.display(), accounts = accounts.len(), "reloaded the accounts file");
                self.accounts.store(Arc::new(Some(accounts)));
                self.clients.clear();
                self.metrics.file_reloaded("accounts", true);
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "kept the previous accounts");
                self.metrics.file_reloaded("accounts", false);
            }
        }
    }

    /// Refuses an execution whose account or region the accounts file does not list.
    pub(crate) fn check(&self, arn: &ExecutionArn) -> Result<(), Error> {
        self.check_in(arn.account(), arn.region())
    }

    /// Refuses an account or region the accounts file does not list.
    pub(crate) fn check_in(&self, account_id: &str, region: &str) -> Result<(), Error> {
        let accounts = self.accounts.load();
        let Some(accounts) = accounts.as_ref() else {
            return Ok(());
        };
        let account = accounts
            .get(account_id)
            .ok_or_else(|| Error::AccountNotServed {
                account: account_id.to_string(),
            })?;
        match &account.regions {
            Some(regions) if !regions.contains(region) => Err(Error::RegionNotServed {
                account: account_id.to_string(),
                region: region.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The SageMaker client for the execution's account and region (checked as
    /// [`Estate::check`] does).
    pub(crate) async fn client(&self, arn: &ExecutionArn) -> Result<SageMaker, Error> {
        self.check(arn)?;
        Ok(self.client_in(arn.account(), arn.region()).await)
    }

    /// The SageMaker client for an account and region, made on first use.
    pub(crate) async fn client_in(&self, account: &str, region: &str) -> SageMaker {
        let key = (account.to_string(), region.to_string());
        if let Some(client) = self.clients.get(&key) {
            return client.clone();
        }
        let client = self.build(account, region).await;
        // Two first calls at once may both build one; either serves.
        self.clients.entry(key).or_insert(client).clone()
    }

    async fn build(&self, account_id: &str, region: &str) -> SageMaker {
        let accounts = self.accounts.load();
        let account = accounts.as_ref().as_ref().and_then(|a| a.get(account_id));
        let mut config = aws_sdk_sagemaker::config::Builder::from(&self.base)
            .region(Region::new(region.to_string()))
            .retry_config(self.policy.retry())
            .timeout_config(self.policy.timeouts());
        let endpoint = account
            .and_then(|a| a.endpoint.clone())
            .or_else(|| self.settings.endpoint.clone());
        if let Some(endpoint) = &endpoint {
            config = config.endpoint_url(endpoint);
        }
        if let Some(provider) = self.role_credentials(account_id, region).await {
            // A cache of its own for the role's credentials: the shared one (the base
            // configuration's) keeps at most 64 providers and evicts beyond, so an estate of
            // more (account, region) than that would assume its roles again on nearly every
            // call.
            config = config
                .credentials_provider(provider)
                .identity_cache(IdentityCache::lazy().build());
        }
        tracing::debug!(account = account_id, region, "SageMaker client made");
        let pace = self
            .paces
            .entry((account_id.to_string(), region.to_string()))
            .or_insert_with(|| {
                Arc::new(Pace::new(
                    account_id,
                    region,
                    self.policy.pacing,
                    self.metrics.clone(),
                ))
            })
            .clone();
        SageMaker::new(
            aws_sdk_sagemaker::Client::from_conf(config.build()),
            account_id,
            region,
            self.policy,
            pace,
            self.metrics.clone(),
            self.recent.clone(),
        )
    }

    /// What the service read of executions and changed lately.
    pub(crate) fn recent(&self) -> &Recent {
        &self.recent
    }

    /// The credentials of the role the accounts file names for `account_id`, if it names one
    /// (else the base configuration's, the service's own chain).
    async fn role_credentials(
        &self,
        account_id: &str,
        region: &str,
    ) -> Option<aws_sdk_sagemaker::config::SharedCredentialsProvider> {
        let accounts = self.accounts.load();
        let account = accounts.as_ref().as_ref().and_then(|a| a.get(account_id))?;
        let role = account.role_arn.as_ref()?;
        let mut provider = AssumeRoleProvider::builder(role)
            .session_name(SESSION_NAME)
            .region(Region::new(region.to_string()))
            .configure(&self.for_sts);
        if let Some(external_id) = &account.external_id {
            provider = provider.external_id(external_id);
        }
        Some(aws_sdk_sagemaker::config::SharedCredentialsProvider::new(
            provider.build().await,
        ))
    }

    /// An SQS client for a queue of `account_id` in `region`, with that account's credentials
    /// (those SageMaker calls of the account use) and the events readers' HTTP client.
    pub(crate) async fn sqs(&self, account_id: &str, region: &str) -> aws_sdk_sqs::Client {
        let mut config = aws_sdk_sqs::config::Builder::from(&self.base)
            .http_client(self.events_http.clone())
            .region(Region::new(region.to_string()))
            .timeout_config(
                // Long polls wait 20 s for a message: the operation may take longer than that.
                aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(std::time::Duration::from_secs(5))
                    .operation_timeout(std::time::Duration::from_secs(40))
                    .build(),
            );
        if let Some(endpoint) = &self.settings.sqs_endpoint {
            config = config.endpoint_url(endpoint);
        }
        if let Some(provider) = self.role_credentials(account_id, region).await {
            // A cache of its own, as a SageMaker client's (see `build`).
            config = config
                .credentials_provider(provider)
                .identity_cache(aws_sdk_sqs::config::IdentityCache::lazy().build());
        }
        aws_sdk_sqs::Client::from_conf(config.build())
    }

    /// The region of the base configuration: a queue URL that names none is read there.
    pub(crate) fn default_region(&self) -> String {
        self.base
            .region()
            .map_or_else(|| "us-east-1".to_string(), |r| r.to_string())
    }

    /// Where SageMaker calls go when no account names its own endpoint.
    pub(crate) fn endpoint(&self) -> Option<&str> {
        self.settings.endpoint.as_deref()
    }

    /// The SageMaker endpoint calls for `account_id` go to, when it is not AWS's default: the
    /// accounts file's for it, else the service's.
    pub(crate) fn endpoint_of(&self, account_id: &str) -> Option<String> {
        let accounts = self.accounts.load();
        accounts
            .as_ref()
            .as_ref()
            .and_then(|a| a.get(account_id))
            .and_then(|a| a.endpoint.clone())
            .or_else(|| self.settings.endpoint.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An estate of one account, whose SageMaker nobody answers (no call is made).
    async fn estate(accounts: &std::path::Path) -> Estate {
        let settings = EstateSettings {
            endpoint: Some("http://127.0.0.1:9".into()),
            accounts_file: Some(accounts.to_path_buf()),
            static_credentials: Some(("AKIDTEST".into(), "secret".into())),
            region: Some("us-east-1".into()),
            max_connections_per_endpoint: 4,
            ..EstateSettings::default()
        };
        Estate::load(settings, CallPolicy::default(), Arc::new(Metrics::new()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_reload_makes_new_clients_that_keep_each_accounts_pace() {
        let accounts = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(accounts.path(), "[[account]]\nid = \"123456789012\"\n").unwrap();
        let estate = estate(accounts.path()).await;
        let before = estate.client_in("123456789012", "us-east-1").await;
        let elsewhere = estate.client_in("123456789012", "eu-west-1").await;
        assert!(!Arc::ptr_eq(before.pace(), elsewhere.pace()));

        // An account added (as during an incident), and the file reloaded.
        std::fs::write(
            accounts.path(),
            "[[account]]\nid = \"123456789012\"\n\n[[account]]\nid = \"333333333333\"\n",
        )
        .unwrap();
        estate.reload();
        assert!(estate.clients.is_empty(), "the clients are made anew");
        let after = estate.client_in("123456789012", "us-east-1").await;
        assert!(Arc::ptr_eq(before.pace(), after.pace()));
        let added = estate.client_in("333333333333", "us-east-1").await;
        assert!(!Arc::ptr_eq(before.pace(), added.pace()));
    }
}
