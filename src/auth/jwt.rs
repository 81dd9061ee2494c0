//! Callers proven by a JWT from an issuer of the identity file (`[[jwt]]`): Kubernetes
//! projected service-account tokens first, any OpenID Connect issuer alike.
//!
//! A token is checked, in this order: its header names an algorithm this service accepts
//! (never `none`, never HMAC) and a `kid`; its `iss` is exactly a configured issuer; the
//! algorithm is one of that issuer's; the issuer's key set has the `kid` (see [`super::jwks`]),
//! and that key is of the algorithm's type and curve and, when it says so, for that algorithm
//! and for signatures; the signature verifies with it; `aud` holds one of the issuer's
//! audiences; `exp` and `nbf` hold with [`LEEWAY`]; an `iat` is not in the future beyond the
//! leeway, and `exp - iat` is within the issuer's `max_lifetime`. The principal is then the
//! issuer's template over the token's string claims.
//!
//! A refusal tells the caller only that the credentials are invalid, or expired (or not yet
//! valid); the log says which check failed.
//!
//! A token that passed is remembered (by its SHA-256, for at most [`VERIFIED_ENTRIES`] tokens)
//! until it expires: its caller's next calls cost a hash and a lookup rather than a signature
//! check, as long as the issuer's key set still holds the very key that verified it (a key
//! rotated out or replaced makes the token be checked again, and refused). A reload of the
//! identity file starts afresh.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use jsonwebtoken::{
    Algorithm, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{
    identity::{self, IssuerSettings},
    jwks::{Fetcher, Key, KeySource},
};
use crate::domain::Principal;

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub(crate) const LEEWAY: u64 = 60;

/// Tokens remembered once verified, at most.
const VERIFIED_ENTRIES: usize = 10_000;

/// The configured issuers, by their exact `iss`, and the tokens they verified.
#[derive(Debug)]
pub(crate) struct Issuers {
    by_issuer: HashMap<String, Issuer>,
    verified: quick_cache::sync::Cache<[u8; 32], Remembered>,
}

impl Default for Issuers {
    fn default() -> Self {
        Self {
            by_issuer: HashMap::new(),
            verified: quick_cache::sync::Cache::new(VERIFIED_ENTRIES),
        }
    }
}

/// A verified token: what it proved, and the key that verified it.
#[derive(Debug, Clone)]
struct Remembered {
    principal: Principal,
    issuer: Arc<str>,
    kid: Arc<str>,
    key: Arc<Key>,
    expires: u64,
}

#[derive(Debug)]
struct Issuer {
    settings: IssuerSettings,
    keys: Arc<KeySource>,
}

/// A token that proved its caller.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub(crate) principal: Principal,
    pub(crate) issuer: Arc<str>,
    /// Its `exp`, in seconds since the epoch.
    pub(crate) expires: u64,
}

/// Why a token was refused: what the log says. The caller learns only which kind.
#[derive(Debug)]
pub(crate) enum Refused {
    Invalid(String),
    /// Expired, or not valid yet.
    Expired(String),
}

/// The parts of a token's header this service reads before trusting it.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

/// Whether a bearer token has the shape of a JWT (three dot-separated parts).
pub(crate) fn is_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl Issuers {
    /// The issuers of a (re)loaded file. An issuer that was there before with the same key set
    /// keeps its cached keys.
    pub(crate) fn new(
        settings: Vec<IssuerSettings>,
        previous: Option<&Issuers>,
        fetcher: &Arc<Fetcher>,
    ) -> Self {
        let by_issuer = settings
            .into_iter()
            .map(|settings| {
                let kept = previous
                    .and_then(|previous| previous.by_issuer.get(&settings.issuer))
                    .map(|issuer| &issuer.keys)
                    .filter(|keys| keys.fetches(&settings.jwks));
                let keys = kept.cloned().unwrap_or_else(|| {
                    Arc::new(KeySource::new(
                        settings.issuer.clone(),
                        settings.jwks.clone(),
                        fetcher.clone(),
                    ))
                });
                (settings.issuer.clone(), Issuer { settings, keys })
            })
            .collect();
        Self {
            by_issuer,
            ..Self::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_issuer.len()
    }

    pub(crate) fn trusts(&self, issuer: &str) -> bool {
        self.by_issuer.contains_key(issuer)
    }

    /// The caller a token proves, or why it proves none.
    pub(crate) async fn verify(&self, token: &str) -> Result<Verified, Refused> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(remembered) = self.verified.get(&digest)
            && let Some(verified) = self.still(&remembered).await
        {
            return Ok(verified);
        }
        let (verified, kid, key) = self.check(token).await?;
        self.verified.insert(
            digest,
            Remembered {
                principal: verified.principal.clone(),
                issuer: verified.issuer.clone(),
                kid,
                key,
                expires: verified.expires,
            },
        );
        Ok(verified)
    }

    /// What a remembered token proves now: `None` once it has expired (beyond the leeway, as
    /// the check counts it) or its issuer's key set no longer holds the key that verified it.
    async fn still(&self, remembered: &Remembered) -> Option<Verified> {
        if now() > remembered.expires.saturating_add(LEEWAY) {
            return None;
        }
        let issuer = self.by_issuer.get(remembered.issuer.as_ref())?;
        let current = issuer.keys.key(&remembered.kid).await?;
        Arc::ptr_eq(&current, &remembered.key).then(|| Verified {
            principal: remembered.principal.clone(),
            issuer: remembered.issuer.clone(),
            expires: remembered.expires,
        })
    }

    /// Every check of a token, and the key that verified it.
    async fn check(&self, token: &str) -> Result<(Verified, Arc<str>, Arc<Key>), Refused> {
        let invalid = |why: String| Refused::Invalid(why);
        let mut parts = token.split('.');
        let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
            return Err(invalid("not a JWT".into()));
        };
        let header: Header =
            decode_part(header).map_err(|why| invalid(format!("header: {why}")))?;
        let algorithm = identity::algorithm(&header.alg).map_err(invalid)?;
        let claims: serde_json::Map<String, serde_json::Value> =
            decode_part(payload).map_err(|why| invalid(format!("claims: {why}")))?;
        let iss = claims
            .get("iss")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| invalid("the token has no iss".into()))?;
        let issuer = self
            .by_issuer
            .get(iss)
            .ok_or_else(|| invalid(format!("issuer {iss:?} is not in the identity file")))?;
        let settings = &issuer.settings;
        if !settings.algorithms.contains(&algorithm) {
            return Err(invalid(format!(
                "algorithm {algorithm:?} is not among issuer {iss:?}'s ({:?})",
                settings.algorithms
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the token names no key (kid)".into()))?;
        let key = issuer.keys.key(&kid).await.ok_or_else(|| {
            invalid(format!(
                "issuer {iss:?} has no key {kid:?} (or its key set cannot be fetched)"
            ))
        })?;
        fits(&key.jwk, algorithm).map_err(|why| invalid(format!("key {kid:?}: {why}")))?;

        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY;
        validation.validate_nbf = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&settings.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.decoding, &validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature => {
                    Refused::Expired(format!("expired more than {LEEWAY} s ago (exp)"))
                }
                ErrorKind::ImmatureSignature => {
                    Refused::Expired(format!("not valid for another {LEEWAY} s or more (nbf)"))
                }
                ErrorKind::InvalidSignature => invalid(format!(
                    "the signature does not verify with issuer {iss:?}'s key {kid:?}"
                )),
                ErrorKind::InvalidAudience => invalid(format!(
                    "aud holds none of issuer {iss:?}'s audiences {:?}",
                    settings.audiences
                )),
                ErrorKind::MissingRequiredClaim(claim) => {
                    invalid(format!("the token has no {claim}"))
                }
                _ => invalid(error.to_string()),
            },
        )?;

        // Verified: the claims can be believed from here on.
        let expires = claims
            .get("exp")
            .and_then(seconds)
            .ok_or_else(|| invalid("exp is not a number of seconds".into()))?;
        let issued = claims.get("iat").map(seconds);
        let now = now();
        match issued {
            Some(None) => return Err(invalid("iat is not a number of seconds".into())),
            Some(Some(iat)) if iat > now + LEEWAY => {
                return Err(Refused::Expired(format!(
                    "issued in the future (iat {iat})"
                )));
            }
            _ => {}
        }
        if let Some(max) = settings.max_lifetime {
            let iat = issued
                .flatten()
                .ok_or_else(|| invalid("no iat, and the issuer has a max_lifetime".into()))?;
            let lifetime = expires.saturating_sub(iat);
            if lifetime > max.as_secs() {
                return Err(invalid(format!(
                    "a lifetime of {lifetime} s is longer than max_lifetime ({} s)",
                    max.as_secs()
                )));
            }
        }
        let principal = settings
            .principal
            .render(&claims)
            .and_then(|text| Principal::parse(&text))
            .map_err(|why| invalid(format!("principal: {why}")))?;
        let verified = Verified {
            principal,
            issuer: Arc::from(settings.issuer.as_str()),
            expires,
        };
        Ok((verified, Arc::from(kid.as_str()), key))
    }
}

/// Seconds since the epoch, as the tokens count.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// A NumericDate claim: seconds since the epoch, whole or not (as jsonwebtoken reads them).
fn seconds(value: &serde_json::Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < u64::MAX as f64)
            .map(|s| s.round() as u64)
    })
}

/// A base64url part of a token, as JSON.
fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| format!("not base64url: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a JSON object: {e}"))
}

/// Whether a key may verify a signature of `algorithm`: its type (and curve) must be the
/// algorithm's, and what it says of its own use and algorithm must agree. An RSA key never
/// verifies an ES256 token, nor an HMAC one (which the header check already refused).
fn fits(jwk: &Jwk, algorithm: Algorithm) -> Result<(), String> {
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err(format!("it is for {usage:?}, not signatures"));
    }
    if let Some(own) = jwk.common.key_algorithm
        && own != KeyAlgorithm::from(algorithm)
    {
        return Err(format!("it is for {own}, and the token is {algorithm:?}"));
    }
    let fits = match (&jwk.algorithm, algorithm) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!("its type does not fit {algorithm:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_key_verifies_only_the_algorithms_of_its_type_and_curve() {
        let ec = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let rsa = serde_json::json!({"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"});
        let ed = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "d",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert!(fits(&jwk(ec.clone()), Algorithm::ES256).is_ok());
        assert!(fits(&jwk(ec.clone()), Algorithm::ES384).is_err());
        assert!(fits(&jwk(ec.clone()), Algorithm::RS256).is_err());
        assert!(fits(&jwk(rsa.clone()), Algorithm::RS256).is_ok());
        assert!(fits(&jwk(rsa.clone()), Algorithm::PS512).is_ok());
        assert!(fits(&jwk(rsa.clone()), Algorithm::ES256).is_err());
        assert!(fits(&jwk(rsa.clone()), Algorithm::HS256).is_err());
        assert!(fits(&jwk(ed.clone()), Algorithm::EdDSA).is_ok());
        assert!(fits(&jwk(ed), Algorithm::ES256).is_err());

        let mut own_alg = rsa.clone();
        own_alg["alg"] = "RS256".into();
        assert!(fits(&jwk(own_alg.clone()), Algorithm::RS256).is_ok());
        assert!(fits(&jwk(own_alg), Algorithm::PS256).is_err());
        let mut for_encryption = ec;
        for_encryption["use"] = "enc".into();
        assert!(fits(&jwk(for_encryption), Algorithm::ES256).is_err());
    }

    #[test]
    fn only_three_part_bearers_are_taken_for_jwts() {
        assert!(is_jwt("a.b.c"));
        for other in ["abc", "a.b", "a.b.c.d", "0123456789abcdef"] {
            assert!(!is_jwt(other), "{other}");
        }
    }
}
