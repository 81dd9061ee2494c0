//! Whether events flow, and the queues they come from: [`Push`] tells pollers, per account and
//! region, whether a queue of theirs answers (then they read at `--poll-fallback-interval`);
//! [`Queue`] is a queue URL with the account and region whose SQS holds it. The consumers
//! (the parent module) set it; the pollers (`watch`) read it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;

/// Whether events flow: for an (account, region), whether a queue of theirs answered its
/// last receive; overall, whether every queue did.
#[derive(Debug)]
pub(crate) struct Push {
    queues: Vec<(Queue, AtomicBool)>,
}

impl Push {
    /// The consumers of `queues`, none of which has answered yet (so pollers start at the
    /// normal interval).
    pub(crate) fn new(queues: &[Queue]) -> Arc<Self> {
        Arc::new(Self {
            queues: queues
                .iter()
                .map(|queue| (queue.clone(), AtomicBool::new(false)))
                .collect(),
        })
    }

    /// Every queue answered its last receive (and there is one).
    pub(crate) fn flowing(&self) -> bool {
        !self.queues.is_empty() && self.queues.iter().all(|(_, q)| q.load(Ordering::Relaxed))
    }

    /// The events of executions of `account` in `region` flow: a queue of theirs answers.
    pub(crate) fn flowing_for(&self, account: &str, region: &str) -> bool {
        self.queues.iter().any(|(queue, healthy)| {
            queue.account == account && queue.region == region && healthy.load(Ordering::Relaxed)
        })
    }

    /// Records how queue `index` answered; returns whether that changed it.
    pub(super) fn set(&self, index: usize, healthy: bool) -> bool {
        self.queues
            .get(index)
            .is_some_and(|(_, queue)| queue.swap(healthy, Ordering::Relaxed) != healthy)
    }
}

/// The queues `urls` name (a URL that cannot be a queue's stops the start).
pub(crate) fn queues(urls: &[String], default_region: &str) -> anyhow::Result<Vec<Queue>> {
    urls.iter()
        .map(|url| {
            Queue::parse(url, default_region)
                .map_err(anyhow::Error::msg)
                .context("--events-queue-url")
        })
        .collect()
}

/// A queue to read: its URL, and the account and region whose SQS holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queue {
    pub(crate) url: String,
    pub(crate) account: String,
    pub(crate) region: String,
}

impl Queue {
    /// `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME` (or the legacy
    /// `https://REGION.queue.amazonaws.com/...`); any other host (an emulator, a VPC endpoint)
    /// is read in `default_region`.
    pub(crate) fn parse(url: &str, default_region: &str) -> Result<Self, String> {
        let parsed: http::Uri = url
            .parse()
            .map_err(|e| format!("events queue URL {url:?}: {e}"))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) {
            return Err(format!("events queue URL {url:?} must start with https://"));
        }
        let host = parsed.host().unwrap_or_default();
        let region = host
            .strip_prefix("sqs.")
            .and_then(|rest| rest.split('.').next())
            .or_else(|| {
                host.strip_suffix(".queue.amazonaws.com")
                    .filter(|r| !r.contains('.'))
            })
            .filter(|r| !r.is_empty())
            .unwrap_or(default_region)
            .to_string();
        let segments: Vec<&str> = parsed.path().split('/').filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            [account, name]
                if account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && !name.is_empty() =>
            {
                Ok(Self {
                    url: url.to_string(),
                    account: (*account).to_string(),
                    region,
                })
            }
            _ => Err(format!(
                "events queue URL {url:?} must end in /ACCOUNT/QUEUE_NAME (a 12-digit account)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_give_account_and_region() {
        let queue = Queue::parse(
            "https://sqs.eu-west-1.amazonaws.com/123456789012/events",
            "us-east-1",
        )
        .unwrap();
        assert_eq!(
            (queue.account.as_str(), queue.region.as_str()),
            ("123456789012", "eu-west-1")
        );
        let legacy = Queue::parse(
            "https://ap-south-1.queue.amazonaws.com/123456789012/e",
            "us-east-1",
        )
        .unwrap();
        assert_eq!(legacy.region, "ap-south-1");
        let local = Queue::parse("http://127.0.0.1:9380/111111111111/events", "us-west-2").unwrap();
        assert_eq!(
            (local.account.as_str(), local.region.as_str()),
            ("111111111111", "us-west-2")
        );
        for bad in [
            "sqs.eu-west-1.amazonaws.com/123456789012/events",
            "https://sqs.eu-west-1.amazonaws.com/events",
            "https://sqs.eu-west-1.amazonaws.com/12345/events",
            "ftp://host/123456789012/events",
        ] {
            assert!(Queue::parse(bad, "us-east-1").is_err(), "{bad}");
        }
    }

    #[test]
    fn events_flow_for_the_account_and_region_of_a_queue_that_answers() {
        let parsed = queues(
            &[
                "https://sqs.eu-west-1.amazonaws.com/111111111111/events".to_string(),
                "https://sqs.us-east-1.amazonaws.com/222222222222/events".to_string(),
            ],
            "us-east-1",
        )
        .unwrap();
        let push = Push::new(&parsed);
        assert!(!push.flowing() && !push.flowing_for("111111111111", "eu-west-1"));
        assert!(push.set(0, true));
        assert!(!push.set(0, true));
        assert!(push.flowing_for("111111111111", "eu-west-1"));
        assert!(!push.flowing_for("111111111111", "us-east-1"));
        assert!(!push.flowing_for("222222222222", "us-east-1"));
        assert!(!push.flowing());
        assert!(push.set(1, true));
        assert!(push.flowing());
        assert!(push.set(1, false));
        assert!(!push.flowing() && push.flowing_for("111111111111", "eu-west-1"));
        assert!(!Push::new(&[]).flowing());
        assert!(queues(&["ftp://x/1/q".to_string()], "us-east-1").is_err());
    }
}
