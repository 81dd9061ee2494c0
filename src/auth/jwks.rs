//! The public keys of each JWT issuer: its key set (JWKS), fetched over HTTPS and cached.
//!
//! A key set is fetched when the first token of its issuer comes, and again:
//! - when a token names a `kid` the set does not have (the issuer rotated its keys): at once,
//!   but at most once per [`UNKNOWN_KID_REFETCH`], so a flood of made-up kids costs one fetch
//!   per 30 s;
//! - when the set is older than [`REFRESH_AFTER`], by the first call that finds it so (the
//!   calls meanwhile use the set they have), so that keys the issuer withdrew stop counting.
//!
//! A fetch that fails is logged and counted, and the last good set is kept for up to
//! [`KEEP_LAST_GOOD`] after it was fetched; a failed fetch is not tried again for
//! [`RETRY_AFTER`]. Whatever happens, a token whose key is not known is refused as invalid
//! credentials: the issuer being down is never the caller's INTERNAL.
//!
//! Fetches go through the identity providers' HTTP client ([`super::https`]), each bounded in
//! time ([`FETCH_TIMEOUT`], discovery and key set together) and in size ([`MAX_DOCUMENT`]);
//! redirects are not followed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use jsonwebtoken::{DecodingKey, jwk::Jwk};
use serde::Deserialize;

use super::{
    https::Https,
    identity::{JwksLocation, usable_url},
};
use crate::metrics::Metrics;

/// Between two fetches that an unknown `kid` asks for.
pub(crate) const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);
/// A set older than this is fetched again.
pub(crate) const REFRESH_AFTER: Duration = Duration::from_secs(10 * 60);
/// After a failed fetch, no other for this long.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The last good set serves while fetches fail, for this long after it was fetched.
pub(crate) const KEEP_LAST_GOOD: Duration = Duration::from_secs(24 * 60 * 60);
/// A whole fetch (discovery document and key set).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest discovery document or key set read.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// One key of a set, ready to verify with.
#[derive(Debug)]
pub(crate) struct Key {
    /// What the set says of it (`kty`, `alg`, `use`, `crv`).
    pub(crate) jwk: Jwk,
    pub(crate) decoding: DecodingKey,
}

/// An issuer's keys by `kid`.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: HashMap<String, Arc<Key>>,
}

impl KeySet {
    /// The keys of a JWKS document. Keys without a `kid`, symmetric keys, and keys this
    /// service cannot read are left out (a set may hold keys for other uses).
    fn parse(document: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(document)
            .map_err(|e| format!("the key set is not a JWKS document: {e}"))?;
        let mut keys = HashMap::with_capacity(document.keys.len());
        for value in document.keys {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    tracing::debug!(%error, "left out a key this service cannot read");
                    continue;
                }
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                tracing::debug!("left out a key without a kid");
                continue;
            };
            if matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            ) {
                tracing::debug!(kid, "left out a symmetric key");
                continue;
            }
            match DecodingKey::from_jwk(&jwk) {
                Ok(decoding) => {
                    keys.insert(kid, Arc::new(Key { jwk, decoding }));
                }
                Err(error) => {
                    tracing::debug!(kid, %error, "left out a key this service cannot use")
                }
            }
        }
        Ok(Self { keys })
    }

    fn get(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys.get(kid).cloned()
    }

    #[cfg(test)]
    fn with_kids(kids: &[&str]) -> Self {
        let keys = kids
            .iter()
            .map(|kid| {
                let jwk: Jwk = serde_json::from_value(serde_json::json!({
                    "kty": "EC", "crv": "P-256", "kid": kid,
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                }))
                .unwrap();
                let decoding = DecodingKey::from_jwk(&jwk).unwrap();
                (kid.to_string(), Arc::new(Key { jwk, decoding }))
            })
            .collect();
        Self { keys }
    }
}

/// The HTTP client of every key-set fetch, and the count of their outcomes.
#[derive(Debug)]
pub(crate) struct Fetcher {
    https: Arc<Https>,
    metrics: Arc<Metrics>,
}

impl Fetcher {
    pub(crate) fn new(https: Arc<Https>, metrics: Arc<Metrics>) -> Self {
        Self { https, metrics }
    }

    /// The key set at `location`, fetched now.
    async fn fetch(&self, location: &JwksLocation) -> Result<KeySet, String> {
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, async {
            let jwks_uri = match location {
                JwksLocation::Uri(uri) => uri.clone(),
                JwksLocation::Discovery(url) => {
                    #[derive(Deserialize)]
                    struct Discovery {
                        jwks_uri: String,
                    }
                    let document = self.get(url).await?;
                    let discovery: Discovery = serde_json::from_slice(&document).map_err(|e| {
                        format!("{url} is not an OpenID discovery document with a jwks_uri: {e}")
                    })?;
                    usable_url(&discovery.jwks_uri)
                        .map_err(|why| format!("{url} names a jwks_uri that {why}"))?;
                    discovery.jwks_uri
                }
            };
            KeySet::parse(&self.get(&jwks_uri).await?).map_err(|why| format!("{jwks_uri}: {why}"))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
        self.metrics
            .jwks_fetched(if fetched.is_ok() { "ok" } else { "error" });
        fetched
    }

    /// The body of a 200 answer to `GET url`, at most [`MAX_DOCUMENT`] long.
    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| format!("{url}: {e}"))?;
        let response = self
            .https
            .client()?
            .request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("{url} answered {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| format!("{url}: {e} (at most {MAX_DOCUMENT} bytes are read)"))
    }
}

/// One issuer's key set, as fetched and as it ages.
#[derive(Debug)]
pub(crate) struct KeySource {
    issuer: String,
    location: JwksLocation,
    fetcher: Arc<Fetcher>,
    state: Mutex<Cache>,
    /// Held by the one call that fetches; others wait on it only when they need its outcome.
    fetching: tokio::sync::Mutex<()>,
}

/// What is known of a key set, and when things last happened to it.
#[derive(Debug, Default)]
struct Cache {
    keys: Option<Arc<KeySet>>,
    /// When `keys` were fetched.
    fetched: Option<Instant>,
    /// The last fetch, if it failed (a success clears it).
    failed: Option<Instant>,
    /// The last fetch an unknown `kid` asked for.
    unknown_kid: Option<Instant>,
}

/// What a call looking for a key does next.
#[derive(Debug)]
enum Plan {
    Use(Arc<Key>),
    /// Use the key, and refresh the old set if no other call is doing it.
    UseAndRefresh(Arc<Key>),
    /// Fetch, then look again; `unknown_kid` when the set was there but lacked the key.
    Fetch {
        unknown_kid: bool,
    },
    /// Refused without a fetch: the key is not known and may not be fetched now.
    Unknown,
}

impl Cache {
    fn plan(&self, now: Instant, kid: &str) -> Plan {
        let since = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
        let age = since(self.fetched);
        let retry_wait = since(self.failed).is_some_and(|since| since < RETRY_AFTER);
        let usable = self
            .keys
            .as_ref()
            .filter(|_| age.is_some_and(|age| age <= KEEP_LAST_GOOD));
        match usable {
            None if retry_wait => Plan::Unknown,
            None => Plan::Fetch { unknown_kid: false },
            Some(keys) => match keys.get(kid) {
                Some(key) if age.is_some_and(|age| age > REFRESH_AFTER) && !retry_wait => {
                    Plan::UseAndRefresh(key)
                }
                Some(key) => Plan::Use(key),
                None if since(self.unknown_kid)
                    .is_some_and(|since| since < UNKNOWN_KID_REFETCH) =>
                {
                    Plan::Unknown
                }
                None => Plan::Fetch { unknown_kid: true },
            },
        }
    }

    fn lookup(&self, now: Instant, kid: &str) -> Option<Arc<Key>> {
        match self.plan(now, kid) {
            Plan::Use(key) | Plan::UseAndRefresh(key) => Some(key),
            Plan::Fetch { .. } | Plan::Unknown => None,
        }
    }
}

impl KeySource {
    pub(crate) fn new(issuer: String, location: JwksLocation, fetcher: Arc<Fetcher>) -> Self {
        Self {
            issuer,
            location,
            fetcher,
            state: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this source fetches from `location` (a reloaded file keeps a source whose
    /// issuer and location did not change, and its keys).
    pub(crate) fn fetches(&self, location: &JwksLocation) -> bool {
        &self.location == location
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A poisoned lock only means a panic elsewhere; the cache is still consistent (every
        // change to it is one assignment).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key `kid` of this issuer, fetching the set when it must and may.
    pub(crate) async fn key(&self, kid: &str) -> Option<Arc<Key>> {
        let plan = self.cache().plan(Instant::now(), kid);
        match plan {
            Plan::Use(key) => Some(key),
            Plan::UseAndRefresh(key) => {
                // Only one call refreshes; the others go on with the key they have.
                if let Ok(_fetching) = self.fetching.try_lock() {
                    // The set may have been refreshed since this call planned.
                    let still = self.cache().plan(Instant::now(), kid);
                    if matches!(still, Plan::UseAndRefresh(_)) {
                        self.refresh(false).await;
                    }
                }
                Some(key)
            }
            Plan::Unknown => None,
            Plan::Fetch { .. } => {
                let _fetching = self.fetching.lock().await;
                // Another call may have fetched while this one waited: plan again.
                let again = self.cache().plan(Instant::now(), kid);
                match again {
                    Plan::Use(key) | Plan::UseAndRefresh(key) => return Some(key),
                    Plan::Unknown => return None,
                    Plan::Fetch { unknown_kid } => self.refresh(unknown_kid).await,
                }
                self.cache().lookup(Instant::now(), kid)
            }
        }
    }

    /// Fetches the set and puts it in force, or keeps the last good one; called with
    /// `fetching` held.
    async fn refresh(&self, unknown_kid: bool) {
        if unknown_kid {
            self.cache().unknown_kid = Some(Instant::now());
        }
        let fetched = self.fetcher.fetch(&self.location).await;
        let now = Instant::now();
        let mut cache = self.cache();
        match fetched {
            Ok(keys) => {
                let first = cache.keys.is_none();
                let count = keys.keys.len();
                cache.keys = Some(Arc::new(keys));
                cache.fetched = Some(now);
                cache.failed = None;
                if first {
                    tracing::info!(issuer = %self.issuer, keys = count, "fetched an issuer's key set");
                } else {
                    tracing::debug!(issuer = %self.issuer, keys = count, unknown_kid, "fetched an issuer's key set again");
                }
            }
            Err(why) => {
                cache.failed = Some(now);
                let kept = cache
                    .fetched
                    .map(|at| now.saturating_duration_since(at))
                    .filter(|age| *age <= KEEP_LAST_GOOD && cache.keys.is_some());
                match kept {
                    Some(age) => tracing::warn!(
                        issuer = %self.issuer,
                        error = why,
                        last_good_age = ?Duration::from_secs(age.as_secs()),
                        "could not fetch an issuer's key set; keeping the last good one"
                    ),
                    None => tracing::warn!(
                        issuer = %self.issuer,
                        error = why,
                        "could not fetch an issuer's key set, and none is at hand: its tokens are refused"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(keys: &[&str], fetched: Option<Instant>) -> Cache {
        Cache {
            keys: fetched.map(|_| Arc::new(KeySet::with_kids(keys))),
            fetched,
            ..Cache::default()
        }
    }

    fn kind(plan: Plan) -> &'static str {
        match plan {
            Plan::Use(_) => "use",
            Plan::UseAndRefresh(_) => "use+refresh",
            Plan::Fetch { unknown_kid: false } => "fetch",
            Plan::Fetch { unknown_kid: true } => "refetch",
            Plan::Unknown => "unknown",
        }
    }

    #[test]
    fn the_first_token_fetches_and_a_failed_fetch_waits_before_the_next() {
        let now = Instant::now();
        let mut empty = cache(&[], None);
        assert_eq!(kind(empty.plan(now, "a")), "fetch");
        empty.failed = Some(now);
        assert_eq!(
            kind(empty.plan(now + Duration::from_secs(29), "a")),
            "unknown"
        );
        assert_eq!(kind(empty.plan(now + RETRY_AFTER, "a")), "fetch");
    }

    #[test]
    fn an_unknown_kid_refetches_at_once_and_then_at_most_every_30_seconds() {
        let now = Instant::now();
        let mut set = cache(&["a"], Some(now));
        assert_eq!(kind(set.plan(now, "a")), "use");
        assert_eq!(kind(set.plan(now, "b")), "refetch");
        set.unknown_kid = Some(now);
        for later in [0, 1, 29] {
            assert_eq!(
                kind(set.plan(now + Duration::from_secs(later), "b")),
                "unknown"
            );
        }
        assert_eq!(kind(set.plan(now + UNKNOWN_KID_REFETCH, "b")), "refetch");
        assert_eq!(kind(set.plan(now + Duration::from_secs(29), "a")), "use");
    }

    #[test]
    fn an_old_set_is_refreshed_and_the_last_good_one_serves_for_a_day() {
        let fetched = Instant::now();
        let mut set = cache(&["a"], Some(fetched));
        let later = |d: Duration| fetched + d;
        assert_eq!(kind(set.plan(later(REFRESH_AFTER), "a")), "use");
        assert_eq!(
            kind(set.plan(later(REFRESH_AFTER + Duration::from_secs(1)), "a")),
            "use+refresh"
        );
        // The refresh failed: the old keys go on serving, without another try for 30 s.
        set.failed = Some(later(Duration::from_secs(3600)));
        assert_eq!(kind(set.plan(later(Duration::from_secs(3610)), "a")), "use");
        assert_eq!(
            kind(set.plan(later(Duration::from_secs(3600) + RETRY_AFTER), "a")),
            "use+refresh"
        );
        // Fetches keep failing: a day after the last good fetch, its keys are gone.
        let last_try = KEEP_LAST_GOOD - Duration::from_secs(10);
        set.failed = Some(later(last_try));
        assert_eq!(kind(set.plan(later(KEEP_LAST_GOOD), "a")), "use");
        assert_eq!(
            kind(set.plan(later(KEEP_LAST_GOOD + Duration::from_secs(1)), "a")),
            "unknown"
        );
        assert_eq!(kind(set.plan(later(last_try + RETRY_AFTER), "a")), "fetch");
    }

    #[test]
    fn a_key_set_keeps_the_keys_it_can_use() {
        let set = KeySet::parse(
            serde_json::json!({"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256", "use": "sig",
                 "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                 "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
                {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
                {"kty": "EC", "crv": "P-256",
                 "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                 "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
                {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"},
                {"kty": "XYZ", "kid": "odd"},
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let kids: Vec<_> = set.keys.keys().map(String::as_str).collect();
        assert_eq!(kids, ["ec"]);
        assert!(KeySet::parse(b"{\"keys\": 1}").is_err());
        assert!(KeySet::parse(b"<html>").is_err());
    }
}
