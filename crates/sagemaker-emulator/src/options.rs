//! How an emulator behaves: the settings the crate root's server and the state are built from.
//! A module of its own so that the state does not import the crate root that imports it.

/// How an emulator behaves.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Emulated seconds per real second (60 runs a one-minute step in one second).
    pub time_scale: f64,
    /// Seed for identifiers: the same calls in the same order give the same ids.
    pub seed: Option<u64>,
    /// The region of calls whose signature names none (SigV4's credential scope names the
    /// region of every other call).
    pub region: String,
    /// The 12-digit account of calls not signed with a key the emulator's STS issued (those
    /// act in the assumed role's account).
    pub account_id: String,
    /// Roles whose AssumeRole must pass exactly this ExternalId: (role ARN, external id).
    pub role_external_ids: Vec<(String, String)>,
    /// SQS queues of the default account and region (made on first use) that receive
    /// SageMaker's EventBridge events of that account and region's executions, as an
    /// EventBridge rule with an SQS target would deliver them.
    pub events_queues: Vec<String>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            time_scale: 1.0,
            seed: None,
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            role_external_ids: Vec::new(),
            events_queues: Vec::new(),
        }
    }
}
