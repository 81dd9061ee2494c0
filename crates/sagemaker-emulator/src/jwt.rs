//! Web identity tokens as AssumeRoleWithWebIdentity reads them: the claims of a JWT (RFC 7519)
//! in its compact form, `HEADER.PAYLOAD.SIGNATURE`, each part base64url without padding, the
//! header and the payload JSON objects.
//!
//! The signature is not verified. STS verifies it with the keys the issuer publishes (its
//! JWKS, found through its OpenID Connect discovery document); the emulator fetches nothing,
//! so a token signed with any key, or with none, is read alike. What it does check, the
//! issuer, the audience and the expiry, is up to `sts`.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

/// The claims STS reads of a token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Claims {
    /// `iss`: who issued it (an EKS cluster's `https://oidc.eks.REGION.amazonaws.com/id/ID`).
    pub(crate) issuer: String,
    /// `sub`: whom it names (`system:serviceaccount:NAMESPACE:NAME` for a pod).
    pub(crate) subject: String,
    /// `aud`: one audience, or several (Kubernetes writes a list).
    pub(crate) audiences: Vec<String>,
    /// `exp`, in epoch seconds.
    pub(crate) expires_at: f64,
}

/// Why a token cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// Not three base64url parts, or a header or payload that is no JSON object, or a claim
    /// of the wrong type.
    Malformed,
    /// A claim STS requires is missing: `iss`, `sub`, `aud` or `exp`.
    Missing(&'static str),
}

/// The claims of `token`.
pub(crate) fn claims(token: &str) -> Result<Claims, Unreadable> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err(Unreadable::Malformed);
    };
    object(header)?;
    URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Unreadable::Malformed)?;
    let payload = object(payload)?;
    let text = |name: &'static str| match payload.get(name) {
        None => Err(Unreadable::Missing(name)),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(Unreadable::Malformed),
    };
    let (issuer, subject) = (text("iss")?, text("sub")?);
    let audiences = match payload.get("aud") {
        None => return Err(Unreadable::Missing("aud")),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(several)) => several
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or(Unreadable::Malformed)?,
        Some(_) => return Err(Unreadable::Malformed),
    };
    let expires_at = match payload.get("exp") {
        None => return Err(Unreadable::Missing("exp")),
        Some(exp) => exp.as_f64().ok_or(Unreadable::Malformed)?,
    };
    Ok(Claims {
        issuer,
        subject,
        audiences,
        expires_at,
    })
}

/// The JSON object a base64url part holds.
fn object(part: &str) -> Result<Map<String, Value>, Unreadable> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Unreadable::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(Unreadable::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn part(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn token(payload: &Value) -> String {
        format!(
            "{}.{}.{}",
            part(&json!({"alg": "RS256", "kid": "k1"})),
            part(payload),
            URL_SAFE_NO_PAD.encode(b"not checked")
        )
    }

    #[test]
    fn a_tokens_claims_are_read_and_its_signature_is_not_checked() {
        let claims = claims(&token(&json!({
            "iss": "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
            "sub": "system:serviceaccount:ml:pipeline-control",
            "aud": ["sts.amazonaws.com"],
            "exp": 1_796_130_000,
            "iat": 1_796_126_400,
            "kubernetes.io": {"namespace": "ml"},
        })))
        .unwrap();
        assert_eq!(
            claims,
            Claims {
                issuer: "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE".into(),
                subject: "system:serviceaccount:ml:pipeline-control".into(),
                audiences: vec!["sts.amazonaws.com".into()],
                expires_at: 1_796_130_000.0,
            }
        );
        let one = super::claims(&token(
            &json!({"iss": "i", "sub": "s", "aud": "a", "exp": 1.5}),
        ))
        .unwrap();
        assert_eq!((one.audiences, one.expires_at), (vec!["a".into()], 1.5));
        // An unsigned token (`alg` none) has an empty signature.
        let unsigned = format!(
            "{}.{}.",
            part(&json!({"alg": "none"})),
            part(&json!({"iss": "i", "sub": "s", "aud": "a", "exp": 1}))
        );
        assert!(super::claims(&unsigned).is_ok());
    }

    #[test]
    fn a_token_that_is_no_jwt_or_lacks_a_claim_is_unreadable() {
        let whole = json!({"iss": "i", "sub": "s", "aud": "a", "exp": 1});
        for name in ["iss", "sub", "aud", "exp"] {
            let mut payload = whole.clone();
            payload.as_object_mut().unwrap().remove(name);
            assert_eq!(claims(&token(&payload)), Err(Unreadable::Missing(name)));
        }
        let good = token(&whole);
        let (header, rest) = good.split_once('.').unwrap();
        for bad in [
            "",
            "not-a-jwt",
            "a.b",
            &format!("{good}.more"),
            &format!("{header}.%%%.sig"),
            &format!("{}.{rest}", part(&json!(["a list"]))),
            &format!("{header}.{}.sig", URL_SAFE_NO_PAD.encode("not json")),
            &format!("{header}.{}.", part(&json!("a string"))),
            &format!("{}!", good),
            &token(&json!({"iss": 1, "sub": "s", "aud": "a", "exp": 1})),
            &token(&json!({"iss": "i", "sub": "s", "aud": [1], "exp": 1})),
            &token(&json!({"iss": "i", "sub": "s", "aud": "a", "exp": "soon"})),
        ] {
            assert_eq!(claims(bad), Err(Unreadable::Malformed), "{bad:?}");
        }
    }
}
