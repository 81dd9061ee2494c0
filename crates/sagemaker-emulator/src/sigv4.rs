//! AWS Signature Version 4 as a service checks it: the parts of the `Authorization` header, the
//! canonical request, the string to sign, the signing key, and the comparison of the signature
//! the request carries with the one a secret makes for it. It knows nothing of keys or
//! accounts: `identity` decides whose secret a request is checked with, and what a refusal
//! answers.
//!
//! As the SDKs sign for every service but S3: the URI path with its dot and empty segments
//! removed, then percent-encoded once more (a `%` the client sent becomes `%25`); the query
//! string decoded, encoded again and sorted; the signed headers, lowercase and in the order
//! `SignedHeaders` names them, their values trimmed, inner runs of spaces made one, several
//! values joined with commas; the hex SHA-256 of the body (an `x-amz-content-sha256` header
//! must say the same, or the body was not the one signed). Only header signatures
//! (`AWS4-HMAC-SHA256`) are read: neither presigned query strings nor SigV4a.

use std::fmt::Write as _;

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// What SigV4 signs of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    /// The path as sent, still percent-encoded.
    pub(crate) path: &'a str,
    /// The query string as sent, without its `?`.
    pub(crate) query: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
}

impl<'a> Request<'a> {
    /// The value of the header `name`, if it has one that is text.
    pub(crate) fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The parts of its `Authorization` header (none if it has none).
    pub(crate) fn authorization(&self) -> Authorization<'a> {
        self.header("authorization")
            .map(Authorization::parse)
            .unwrap_or_default()
    }

    /// When it was signed, as it says: its `X-Amz-Date` (`20261201T120000Z`).
    pub(crate) fn signed_at(&self) -> Option<&'a str> {
        self.header("x-amz-date")
    }
}

/// The parts of an `Authorization` header (`AWS4-HMAC-SHA256
/// Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=host;x-amz-date,
/// Signature=HEX`), as far as it has them.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Authorization<'a> {
    algorithm: &'a str,
    pub(crate) access_key_id: Option<&'a str>,
    /// The region of the credential scope. A SigV4a scope (`AKID/DATE/SERVICE/aws4_request`)
    /// names none.
    pub(crate) region: Option<&'a str>,
    /// `DATE/REGION/SERVICE/aws4_request`, when the credential is a SigV4 one.
    scope: Option<&'a str>,
    signed_headers: Option<&'a str>,
    signature: Option<&'a str>,
}

impl<'a> Authorization<'a> {
    pub(crate) fn parse(header: &'a str) -> Self {
        let header = header.trim();
        let (algorithm, rest) = header.split_once(' ').unwrap_or((header, ""));
        let mut parsed = Self {
            algorithm,
            ..Self::default()
        };
        for part in rest.split([',', ' ']) {
            match part.split_once('=') {
                Some(("Credential", credential)) => parsed.credential(credential),
                Some(("SignedHeaders", names)) => parsed.signed_headers = Some(names),
                Some(("Signature", signature)) => parsed.signature = Some(signature),
                _ => {}
            }
        }
        parsed
    }

    fn credential(&mut self, credential: &'a str) {
        let parts: Vec<&str> = credential.split('/').collect();
        self.access_key_id = parts.first().copied().filter(|key| !key.is_empty());
        if let [_, _date, region, _service, "aws4_request"] = parts.as_slice() {
            self.region = Some(*region).filter(|region| !region.is_empty());
            self.scope = credential.split_once('/').map(|(_, scope)| scope);
        }
    }
}

/// Whether `request` carries the signature that `secret` makes for it. A header that is not a
/// whole SigV4 one, a credential scope of another day than `X-Amz-Date`'s, and an
/// `x-amz-content-sha256` that is not the body's are signatures that do not match.
pub(crate) fn is_signed_by(request: &Request<'_>, secret: &str) -> bool {
    let authorization = request.authorization();
    let (Some(scope), Some(signed_headers), Some(signature), Some(signed_at)) = (
        authorization.scope,
        authorization.signed_headers,
        authorization.signature,
        request.signed_at(),
    ) else {
        return false;
    };
    let scope_parts: Vec<&str> = scope.split('/').collect();
    let [date, region, service, "aws4_request"] = scope_parts.as_slice() else {
        return false;
    };
    let payload_hash = sha256_hex(request.body);
    if authorization.algorithm != ALGORITHM
        || signed_at.get(..8) != Some(date)
        || request
            .header("x-amz-content-sha256")
            .is_some_and(|claimed| claimed != payload_hash)
    {
        return false;
    }
    let Ok(signature) = hex::decode(signature) else {
        return false;
    };
    let canonical = canonical_request(request, signed_headers, &payload_hash);
    let to_sign = string_to_sign(signed_at, scope, &canonical);
    // In constant time, as `verify_slice` compares.
    hmac(
        &signing_key(secret, date, region, service),
        to_sign.as_bytes(),
    )
    .verify_slice(&signature)
    .is_ok()
}

/// The canonical request: method, canonical URI, canonical query string, the signed headers
/// and their names, and the payload's hash, one per line.
fn canonical_request(request: &Request<'_>, signed_headers: &str, payload_hash: &str) -> String {
    let mut out = format!(
        "{}\n{}\n{}\n",
        request.method,
        canonical_uri(request.path),
        canonical_query(request.query)
    );
    for name in signed_headers.split(';') {
        let values: Vec<String> = request
            .headers
            .get_all(name)
            .iter()
            .map(|value| trim_all(&String::from_utf8_lossy(value.as_bytes())))
            .collect();
        let _ = writeln!(out, "{name}:{}", values.join(","));
    }
    let _ = write!(out, "\n{signed_headers}\n{payload_hash}");
    out
}

/// The path as AWS signs it for every service but S3: without its dot and empty segments
/// (RFC 3986's remove_dot_segments; a trailing slash stays), then encoded once more.
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    if !segments.is_empty()
        && (path.ends_with('/') || path.ends_with("/.") || path.ends_with("/.."))
    {
        normalized.push('/');
    }
    uri_encode(&normalized, true)
}

/// Each name and value decoded and encoded again as SigV4 encodes them, sorted by name, then
/// value: `a=1&b=&c=x%20y`.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| (uri_encode(&name, false), uri_encode(&value, false)))
        .collect();
    pairs.sort();
    let pairs: Vec<String> = pairs
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    pairs.join("&")
}

/// `text` with every byte but the unreserved ones (and `/`, when `keep_slash`) as `%XX`.
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A header value without its leading and trailing spaces, with each run of spaces inside it
/// made one.
fn trim_all(value: &str) -> String {
    value
        .split(' ')
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn string_to_sign(signed_at: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{signed_at}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [date, region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes()).finalize().into_bytes().to_vec();
    }
    key
}

#[allow(clippy::expect_used)] // HMAC takes a key of any length: this cannot fail.
fn hmac(key: &[u8], data: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("a key of any length");
    mac.update(data);
    mac
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The `Authorization` header that signs `request` (whose `X-Amz-Date` says when) with this
/// key for `region` and `service`, signing every header it has: what an SDK sends.
#[cfg(test)]
pub(crate) fn authorization_for(
    request: &Request<'_>,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
) -> String {
    let signed_at = request.signed_at().unwrap_or_default();
    let date = signed_at.get(..8).unwrap_or_default();
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let mut names: Vec<&str> = request.headers.keys().map(|name| name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let signed_headers = names.join(";");
    let canonical = canonical_request(request, &signed_headers, &sha256_hex(request.body));
    let to_sign = string_to_sign(signed_at, &scope, &canonical);
    let signature = hmac(
        &signing_key(secret, date, region, service),
        to_sign.as_bytes(),
    );
    format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed_headers}, Signature={}",
        hex::encode(signature.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    // AWS's published SigV4 example (the test suite's `get-vanilla`, and the signing key
    // example of the documentation).
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const VANILLA_SIGNATURE: &str =
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

    fn vanilla_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={VANILLA_SIGNATURE}"
            ))
            .unwrap(),
        );
        headers
    }

    fn get<'a>(headers: &'a HeaderMap, path: &'a str, query: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            path,
            query,
            headers,
            body: b"",
        }
    }

    #[test]
    fn get_vanilla_signs_as_aws_publishes_it() {
        let headers = vanilla_headers();
        let request = get(&headers, "/", "");
        let canonical = canonical_request(&request, "host;x-amz-date", &sha256_hex(b""));
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let to_sign = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            &canonical,
        );
        assert_eq!(
            to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        let key = signing_key(SECRET, "20150830", "us-east-1", "service");
        let signature = hmac(&key, to_sign.as_bytes()).finalize().into_bytes();
        assert_eq!(hex::encode(signature), VANILLA_SIGNATURE);
        // The documentation's own example of a signing key, for IAM.
        assert_eq!(
            hex::encode(signing_key(SECRET, "20150830", "us-east-1", "iam")),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );

        assert!(is_signed_by(&request, SECRET));
        assert!(!is_signed_by(
            &request,
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ"
        ));
        // The test signer writes the published header from the request without it.
        let mut unsigned = vanilla_headers();
        let published = unsigned.remove("authorization").unwrap();
        assert_eq!(
            authorization_for(
                &get(&unsigned, "/", ""),
                "AKIDEXAMPLE",
                SECRET,
                "us-east-1",
                "service"
            ),
            published.to_str().unwrap()
        );
    }

    #[test]
    fn anything_changed_after_signing_breaks_the_signature() {
        let headers = vanilla_headers();
        assert!(!is_signed_by(&get(&headers, "/other", ""), SECRET));
        assert!(!is_signed_by(&get(&headers, "/", "a=1"), SECRET));
        let mut post = get(&headers, "/", "");
        post.method = "POST";
        assert!(!is_signed_by(&post, SECRET));
        let mut with_body = get(&headers, "/", "");
        with_body.body = b"{}";
        assert!(!is_signed_by(&with_body, SECRET));

        let changed = |name: &'static str, value: &'static str| {
            let mut headers = vanilla_headers();
            headers.insert(name, HeaderValue::from_static(value));
            headers
        };
        for headers in [
            changed("host", "example.amazonaws.org"),
            changed("x-amz-date", "20150830T123601Z"),
            // The scope's day must be the date's.
            changed(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150831/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            changed(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf30",
            ),
            changed(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=not-hex",
            ),
            changed(
                "authorization",
                "AWS4-ECDSA-P256-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            changed(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            // A payload hash that is not the body's.
            changed(
                "x-amz-content-sha256",
                "0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ] {
            assert!(
                !is_signed_by(&get(&headers, "/", ""), SECRET),
                "{headers:?}"
            );
        }
        let mut headers = vanilla_headers();
        headers.remove("x-amz-date");
        assert!(!is_signed_by(&get(&headers, "/", ""), SECRET));

        // An unsigned header may change; the body's own hash may be sent.
        let mut headers = changed("user-agent", "anything");
        headers.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static(
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        );
        assert!(is_signed_by(&get(&headers, "/", ""), SECRET));
    }

    #[test]
    fn paths_queries_and_headers_are_made_canonical_as_aws_does() {
        for (path, canonical) in [
            ("", "/"),
            ("/", "/"),
            ("/example/..", "/"),
            ("/example/../", "/"),
            ("/./", "/"),
            ("//example//", "/example/"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/.", "/a/b/"),
            ("/-._~", "/-._~"),
            // The path as sent, encoded once more.
            ("/%20/foo", "/%2520/foo"),
            ("/ሴ", "/%E1%88%B4"),
        ] {
            assert_eq!(canonical_uri(path), canonical, "{path:?}");
        }
        for (query, canonical) in [
            ("", ""),
            ("Param2=value2&Param1=value1", "Param1=value1&Param2=value2"),
            ("Param1=value2&Param1=Value1", "Param1=Value1&Param1=value2"),
            ("a=x+y&b=%7e&c", "a=x%20y&b=~&c="),
            ("-._~=-._~", "-._~=-._~"),
            ("p=%E1%88%B4", "p=%E1%88%B4"),
        ] {
            assert_eq!(canonical_query(query), canonical, "{query:?}");
        }
        assert_eq!(trim_all("  a   b  c "), "a b c");

        let mut headers = HeaderMap::new();
        headers.append("my-header", HeaderValue::from_static("  value1  "));
        headers.append("my-header", HeaderValue::from_static("value2   two"));
        let request = get(&headers, "/", "");
        assert_eq!(
            canonical_request(&request, "my-header", "HASH"),
            "GET\n/\n\nmy-header:value1,value2 two\n\nmy-header\nHASH"
        );
    }

    #[test]
    fn the_credential_names_the_key_and_region() {
        let full = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AKID/20261201/eu-west-1/sagemaker/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        );
        assert_eq!(full.access_key_id, Some("AKID"));
        assert_eq!(full.region, Some("eu-west-1"));
        assert_eq!(
            full.scope,
            Some("20261201/eu-west-1/sagemaker/aws4_request")
        );
        assert_eq!(full.signed_headers, Some("host;x-amz-date"));
        assert_eq!(full.signature, Some("abc"));
        // Without spaces after the commas, as some clients write it.
        assert_eq!(
            Authorization::parse(
                "AWS4-HMAC-SHA256 Credential=AKID/20261201/eu-west-1/sagemaker/aws4_request,SignedHeaders=host;x-amz-date,Signature=abc"
            ),
            full
        );
        for (header, key, region) in [
            (
                "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=abc",
                None,
                None,
            ),
            (
                "AWS4-ECDSA-P256-SHA256 Credential=AKID/20261201/sagemaker/aws4_request",
                Some("AKID"),
                None,
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AKID/20261201//sagemaker/aws4_request",
                Some("AKID"),
                None,
            ),
            (
                "AWS4-HMAC-SHA256 Credential=/20261201/x/y/aws4_request",
                None,
                Some("x"),
            ),
            ("Bearer token", None, None),
            ("", None, None),
        ] {
            let parsed = Authorization::parse(header);
            assert_eq!(parsed.access_key_id, key, "{header}");
            assert_eq!(parsed.region, region, "{header}");
        }
    }
}
