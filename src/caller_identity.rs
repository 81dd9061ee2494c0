//! The proof an AWS IAM caller presents, as the service and the command line both spell it
//! (Vault's aws auth, iam method): an `sts:GetCallerIdentity` request the caller signed with
//! SigV4 but did not send, carried whole in the metadata [`METADATA`] as standard base64 of
//! the JSON object
//!
//! ```json
//! {"method": "POST", "url": "https://sts.eu-west-1.amazonaws.com/",
//!  "headers": {"Content-Type": "...", "X-Amz-Date": "...", "Authorization": "...",
//!              "X-Pipeline-Control-Server-Id": "pipeline-control.prod"},
//!  "body": "Action=GetCallerIdentity&Version=2011-06-15"}
//! ```
//!
//! The service sends it to STS itself: STS's answer names the caller. The server id header,
//! among the signed ones, binds the proof to one service, so a service that receives it
//! cannot replay it to another.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The gRPC metadata that carries the proof.
pub(crate) const METADATA: &str = "x-pipeline-control-iam";

/// The signed header whose value names the service the proof is for (`[iam] server_id`).
pub(crate) const SERVER_ID_HEADER: &str = "x-pipeline-control-server-id";

/// The only body accepted: GetCallerIdentity, nothing else.
pub(crate) const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// The content type of STS's query protocol, as the SDKs send it.
pub(crate) const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// A signed request, not sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignedRequest {
    pub(crate) method: String,
    pub(crate) url: String,
    /// Each header once, its value one string.
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: String,
}

impl SignedRequest {
    /// The metadata value: standard base64 of the JSON.
    pub(crate) fn encode(&self) -> String {
        // A struct of strings always serializes.
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    /// The request in a metadata value, or why it holds none.
    pub(crate) fn decode(value: &[u8]) -> Result<Self, String> {
        let json = base64::engine::general_purpose::STANDARD
            .decode(value.trim_ascii())
            .map_err(|e| format!("not standard base64: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| {
            format!("not the JSON of a signed request (method, url, headers, body): {e}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_goes_through_its_encoding_unchanged() {
        let request = SignedRequest {
            method: "POST".into(),
            url: "https://sts.amazonaws.com/".into(),
            headers: BTreeMap::from([
                ("Content-Type".into(), CONTENT_TYPE.into()),
                (SERVER_ID_HEADER.into(), "pc.prod".into()),
            ]),
            body: BODY.into(),
        };
        assert_eq!(
            SignedRequest::decode(request.encode().as_bytes()),
            Ok(request)
        );
        assert!(
            SignedRequest::decode(b"%%%")
                .unwrap_err()
                .contains("base64")
        );
        let extra = base64::engine::general_purpose::STANDARD
            .encode(r#"{"method":"POST","url":"u","headers":{},"body":"","x":1}"#);
        assert!(SignedRequest::decode(extra.as_bytes()).is_err());
        let numbers = base64::engine::general_purpose::STANDARD
            .encode(r#"{"method":"POST","url":"u","headers":{"A":1},"body":""}"#);
        assert!(SignedRequest::decode(numbers.as_bytes()).is_err());
    }
}
