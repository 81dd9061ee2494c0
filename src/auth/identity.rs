//! The identity file (`--identity-file`): how the callers' platforms prove who they are. Read
//! whole and checked here, so that what the rest of `auth` holds is known to be usable: every
//! URL is https (or http on a loopback address), every issuer has audiences, no algorithm is
//! symmetric or `none`, and every principal template names a claim.
//!
//! ```toml
//! [[jwt]]                                  # one per issuer
//! issuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE"
//! jwks_uri = "https://..."                 # optional: else the issuer's discovery document
//! audiences = ["pipeline-control"]
//! principal = "{sub}"                      # optional
//! algorithms = ["RS256", "ES256"]          # optional: RS256, ES256, EdDSA
//! max_lifetime = "24h"                     # optional
//!
//! [iam]
//! server_id = "pipeline-control.prod"
//! accounts = ["111111111111"]              # optional
//!
//! [mesh]
//! header = "x-forwarded-client-cert"       # or "l5d-client-id"
//! trusted_proxies = ["127.0.0.1/32"]       # optional: loopback
//!
//! [console]                                # people, through an authenticating proxy
//! jwt_header = "x-forwarded-access-token"  # optional: a JWT of a [[jwt]] issuer; default
//!                                          # `authorization` (`Bearer <jwt>`)
//! user_header = "x-forwarded-email"        # optional: the person, as the proxy names them
//! trusted_proxies = ["10.0.0.0/8"]         # optional: loopback; user_header counts only from these
//! ```
//!
//! Errors are one line naming the entry: `jwt[2] (issuer "https://..."): audiences must not be
//! empty` (entries are counted from 1, as in the token file).

use std::{collections::HashMap, net::IpAddr, time::Duration};

use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

/// The identity file, checked.
#[derive(Debug, Clone)]
pub(crate) struct IdentityFile {
    pub(crate) jwt: Vec<IssuerSettings>,
    pub(crate) iam: Option<IamSettings>,
    pub(crate) mesh: Option<MeshSettings>,
    pub(crate) console: ConsoleSettings,
}

/// `[console]`: how the web console learns who a person is from the authenticating proxy in
/// front of it (oauth2-proxy, an ALB with OIDC). gRPC callers are not affected by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsoleSettings {
    /// The header holding a JWT of a `[[jwt]]` issuer (a value `Bearer <jwt>` or the bare JWT).
    pub(crate) jwt_header: http::HeaderName,
    /// The header naming the person, believed only from `trusted_proxies`.
    pub(crate) user_header: Option<http::HeaderName>,
    pub(crate) trusted_proxies: Vec<IpNet>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            jwt_header: http::header::AUTHORIZATION,
            user_header: None,
            trusted_proxies: LOOPBACK.to_vec(),
        }
    }
}

/// One `[[jwt]]` issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuerSettings {
    /// The exact `iss` of its tokens.
    pub(crate) issuer: String,
    pub(crate) jwks: JwksLocation,
    /// `aud` must hold one of them (never empty).
    pub(crate) audiences: Vec<String>,
    pub(crate) principal: PrincipalTemplate,
    /// The algorithms its tokens may use (never empty, never symmetric).
    pub(crate) algorithms: Vec<Algorithm>,
    /// The longest `exp - iat` accepted.
    pub(crate) max_lifetime: Option<Duration>,
}

/// Where an issuer's key set is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwksLocation {
    /// The `jwks_uri` of this OpenID discovery document.
    Discovery(String),
    /// This URL.
    Uri(String),
}

/// `[iam]`: AWS IAM callers. Read and checked now; the callers themselves are authenticated by
/// a later part of the service.
#[derive(Debug, Clone)]
pub(crate) struct IamSettings {
    /// The value callers sign.
    pub(crate) server_id: String,
    /// Only callers of these accounts (12 digits each); every account when `None`.
    pub(crate) accounts: Option<Vec<String>>,
}

/// `[mesh]`: a proxy in front names the caller in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MeshSettings {
    pub(crate) header: MeshHeader,
    /// The header counts only from peers in these networks (never empty).
    pub(crate) trusted_proxies: Vec<IpNet>,
}

/// The header a mesh's proxy names the caller in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MeshHeader {
    /// Envoy's (and Istio's) `x-forwarded-client-cert`: the caller is the `URI` of the element
    /// the proxy in front added.
    ForwardedClientCert,
    /// Linkerd's `l5d-client-id`: the caller is the whole value.
    LinkerdClientId,
}

impl MeshHeader {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MeshHeader::ForwardedClientCert => "x-forwarded-client-cert",
            MeshHeader::LinkerdClientId => "l5d-client-id",
        }
    }
}

/// The algorithms an issuer may use when its entry names none.
const DEFAULT_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    jwt: Vec<RawIssuer>,
    iam: Option<RawIam>,
    mesh: Option<RawMesh>,
    console: Option<RawConsole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    jwt_header: Option<String>,
    user_header: Option<String>,
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: Option<String>,
    jwks_uri: Option<String>,
    audiences: Option<Vec<String>>,
    principal: Option<String>,
    algorithms: Option<Vec<String>>,
    max_lifetime: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIam {
    server_id: Option<String>,
    accounts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMesh {
    header: Option<String>,
    trusted_proxies: Option<Vec<String>>,
}

impl IdentityFile {
    /// Parses and checks an identity file's text; the error names the entry and says why.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let raw: RawFile = crate::files::parse_toml(text)?;
        let mut jwt = Vec::with_capacity(raw.jwt.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, entry) in raw.jwt.into_iter().enumerate() {
            let position = index + 1;
            let issuer = entry.issuer.clone().unwrap_or_default();
            let name = if issuer.is_empty() {
                format!("jwt[{position}]")
            } else {
                format!("jwt[{position}] (issuer {issuer:?})")
            };
            let settings = IssuerSettings::check(entry).map_err(|why| format!("{name}: {why}"))?;
            if let Some(first) = seen.insert(settings.issuer.clone(), position) {
                return Err(format!(
                    "{name}: the same issuer as jwt[{first}]; give each issuer one entry"
                ));
            }
            jwt.push(settings);
        }
        let iam = raw
            .iam
            .map(IamSettings::check)
            .transpose()
            .map_err(|why| format!("iam: {why}"))?;
        let mesh = raw
            .mesh
            .map(MeshSettings::check)
            .transpose()
            .map_err(|why| format!("mesh: {why}"))?;
        let console = raw
            .console
            .map(ConsoleSettings::check)
            .transpose()
            .map_err(|why| format!("console: {why}"))?
            .unwrap_or_default();
        Ok(Self {
            jwt,
            iam,
            mesh,
            console,
        })
    }
}

impl IssuerSettings {
    fn check(raw: RawIssuer) -> Result<Self, String> {
        let issuer = raw
            .issuer
            .ok_or("issuer is required (the exact `iss` of its tokens)")?;
        check_url(&issuer).map_err(|why| format!("issuer {why}"))?;
        if issuer.contains(['?', '#']) {
            return Err("issuer must not have a query or a fragment".into());
        }
        let jwks = match raw.jwks_uri {
            Some(uri) => {
                check_url(&uri).map_err(|why| format!("jwks_uri {why}"))?;
                JwksLocation::Uri(uri)
            }
            None => JwksLocation::Discovery(format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            )),
        };
        let audiences = raw
            .audiences
            .ok_or("audiences is required: `aud` must hold one of them")?;
        if audiences.is_empty() {
            return Err("audiences must not be empty".into());
        }
        if audiences.iter().any(String::is_empty) {
            return Err("an audience must not be empty".into());
        }
        let principal = PrincipalTemplate::parse(raw.principal.as_deref().unwrap_or("{sub}"))
            .map_err(|why| format!("principal {why}"))?;
        let algorithms = match raw.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(names) if names.is_empty() => {
                return Err(
                    "algorithms must not be empty (leave it out for RS256, ES256 and EdDSA)".into(),
                );
            }
            Some(names) => names
                .iter()
                .map(|name| algorithm(name))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let max_lifetime = raw
            .max_lifetime
            .map(|text| match humantime::parse_duration(&text) {
                Ok(lifetime) if !lifetime.is_zero() => Ok(lifetime),
                Ok(_) => Err("max_lifetime must be longer than zero".to_string()),
                Err(e) => Err(format!("max_lifetime {text:?}: {e} (e.g. \"24h\")")),
            })
            .transpose()?;
        Ok(Self {
            issuer,
            jwks,
            audiences,
            principal,
            algorithms,
            max_lifetime,
        })
    }
}

/// The algorithm a token or the file names, if this service accepts it at all: never `none`,
/// never HMAC (an issuer's keys are public, so anyone could sign).
pub(crate) fn algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        "EdDSA" => Ok(Algorithm::EdDSA),
        _ if name.eq_ignore_ascii_case("none") => {
            Err("algorithm \"none\" is never accepted: it signs nothing".into())
        }
        _ if name.to_ascii_uppercase().starts_with("HS") => Err(format!(
            "algorithm {name:?} is never accepted: HMAC needs a shared secret, and an issuer's keys are public"
        )),
        _ => Err(format!(
            "unknown algorithm {name:?} (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
        )),
    }
}

/// Why `url` cannot be used: it must be https, or http on a loopback address (a test's or a
/// sidecar's), with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(format!(
            "{url:?} must be https (http only on a loopback address)"
        )),
        _ => Err(format!("{url:?} must be an https URL")),
    }
}

/// Whether a URL's host is a loopback address (`localhost`, 127.0.0.0/8, `[::1]`).
pub(crate) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks a URL found at run time (an issuer's discovery document names its key set's).
pub(crate) fn usable_url(url: &str) -> Result<(), String> {
    check_url(url)
}

impl IamSettings {
    fn check(raw: RawIam) -> Result<Self, String> {
        let server_id = raw
            .server_id
            .ok_or("server_id is required (the value callers sign)")?;
        if server_id.trim().is_empty() {
            return Err("server_id must not be empty".into());
        }
        if let Some(accounts) = &raw.accounts {
            if accounts.is_empty() {
                return Err(
                    "accounts must not be empty (leave it out to accept every account)".into(),
                );
            }
            if let Some(bad) = accounts
                .iter()
                .find(|a| a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(format!("account {bad:?} is not 12 digits"));
            }
        }
        Ok(Self {
            server_id,
            accounts: raw.accounts,
        })
    }
}

impl MeshSettings {
    fn check(raw: RawMesh) -> Result<Self, String> {
        let header = match raw
            .header
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("x-forwarded-client-cert") => MeshHeader::ForwardedClientCert,
            Some("l5d-client-id") => MeshHeader::LinkerdClientId,
            Some(other) => {
                return Err(format!(
                    "header {other:?} is not one this service reads: \"x-forwarded-client-cert\" (Envoy, Istio) or \"l5d-client-id\" (Linkerd)"
                ));
            }
            None => {
                return Err("header is required: \"x-forwarded-client-cert\" (Envoy, Istio) or \"l5d-client-id\" (Linkerd)".into());
            }
        };
        Ok(Self {
            header,
            trusted_proxies: trusted_proxies(raw.trusted_proxies)?,
        })
    }
}

impl ConsoleSettings {
    fn check(raw: RawConsole) -> Result<Self, String> {
        let header = |field: &str, name: &str| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{field} {name:?} is not a header name"))
        };
        Ok(Self {
            jwt_header: match raw.jwt_header.as_deref() {
                Some(name) => header("jwt_header", name)?,
                None => http::header::AUTHORIZATION,
            },
            user_header: raw
                .user_header
                .as_deref()
                .map(|name| header("user_header", name))
                .transpose()?,
            trusted_proxies: trusted_proxies(raw.trusted_proxies)?,
        })
    }
}

/// A `trusted_proxies` list, checked: networks or single addresses; the loopback addresses
/// when it is left out.
fn trusted_proxies(list: Option<Vec<String>>) -> Result<Vec<IpNet>, String> {
    match list {
        None => Ok(LOOPBACK.to_vec()),
        Some(list) if list.is_empty() => Err(
            "trusted_proxies must not be empty (leave it out for the loopback addresses)".into(),
        ),
        Some(list) => list
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        format!(
                            "trusted_proxies entry {entry:?} is neither a network (\"10.0.0.0/8\") nor an address"
                        )
                    })
            })
            .collect(),
    }
}

/// The proxies trusted when `[mesh]` names none: a sidecar on the same host.
const LOOPBACK: [IpNet; 2] = [
    IpNet::new_assert(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)), 8),
    IpNet::new_assert(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128),
];

/// A principal made of a token's string claims: `{sub}`, or text around claims, as in
/// `k8s:{sub}`. Checked when the file is read: it names at least one claim and its braces
/// pair up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrincipalTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Claim(String),
}

impl PrincipalTemplate {
    pub(crate) fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_string()));
                    rest = "";
                }
                Some(at) if rest[at..].starts_with('}') => {
                    return Err(format!("{template:?} has a `}}` that closes nothing"));
                }
                Some(at) => {
                    if at > 0 {
                        parts.push(Part::Text(rest[..at].to_string()));
                    }
                    let after = &rest[at + 1..];
                    let end = after
                        .find(['{', '}'])
                        .filter(|end| after[*end..].starts_with('}'))
                        .ok_or_else(|| format!("{template:?} has a `{{` that is not closed"))?;
                    let claim = &after[..end];
                    if claim.is_empty()
                        || !claim
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c))
                    {
                        return Err(format!(
                            "{template:?}: {{{claim}}} is not a claim name (letters, digits, `_-.:/`)"
                        ));
                    }
                    parts.push(Part::Claim(claim.to_string()));
                    rest = &after[end + 1..];
                }
            }
        }
        if !parts.iter().any(|part| matches!(part, Part::Claim(_))) {
            return Err(format!(
                "{template:?} names no claim (write claims in braces, e.g. \"{{sub}}\")"
            ));
        }
        Ok(Self { parts })
    }

    /// The principal's text from a token's claims, or the claim that is missing or is not a
    /// string.
    pub(crate) fn render(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Claim(name) => match claims.get(name) {
                    Some(serde_json::Value::String(value)) => out.push_str(value),
                    Some(_) => return Err(format!("the claim {name:?} is not a string")),
                    None => return Err(format!("the token has no {name:?} claim")),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[jwt]]
        issuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE"
        audiences = ["pipeline-control"]

        [[jwt]]
        issuer = "http://127.0.0.1:8080/"
        jwks_uri = "http://localhost:8080/keys?v=1"
        audiences = ["a", "b"]
        principal = "dev:{sub}@{tenant}"
        algorithms = ["ES256", "PS256"]
        max_lifetime = "1h"

        [iam]
        server_id = "pipeline-control.prod"
        accounts = ["111111111111"]

        [mesh]
        header = "l5d-client-id"
        trusted_proxies = ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]
    "#;

    #[test]
    fn a_good_file_is_read_with_its_defaults() {
        let file = IdentityFile::parse(GOOD).unwrap();
        let [eks, dev] = &file.jwt[..] else {
            panic!("two issuers: {:?}", file.jwt)
        };
        assert_eq!(
            eks.jwks,
            JwksLocation::Discovery(
                "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE/.well-known/openid-configuration".into()
            )
        );
        assert_eq!(eks.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(eks.principal, PrincipalTemplate::parse("{sub}").unwrap());
        assert_eq!(eks.max_lifetime, None);
        assert_eq!(
            dev.jwks,
            JwksLocation::Uri("http://localhost:8080/keys?v=1".into())
        );
        assert_eq!(dev.algorithms, vec![Algorithm::ES256, Algorithm::PS256]);
        assert_eq!(dev.max_lifetime, Some(Duration::from_secs(3600)));
        let iam = file.iam.unwrap();
        assert_eq!(iam.server_id, "pipeline-control.prod");
        assert_eq!(iam.accounts, Some(vec!["111111111111".to_string()]));
        let mesh = file.mesh.unwrap();
        assert_eq!(mesh.header, MeshHeader::LinkerdClientId);
        assert_eq!(
            mesh.trusted_proxies,
            ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
                .map(|n| n.parse::<IpNet>().unwrap())
                .to_vec()
        );

        let mesh = IdentityFile::parse("[mesh]\nheader = \"x-forwarded-client-cert\"\n")
            .unwrap()
            .mesh
            .unwrap();
        assert_eq!(
            mesh.trusted_proxies,
            ["127.0.0.0/8", "::1/128"]
                .map(|n| n.parse::<IpNet>().unwrap())
                .to_vec()
        );
        let empty = IdentityFile::parse("").unwrap();
        assert!(empty.jwt.is_empty() && empty.iam.is_none() && empty.mesh.is_none());
    }

    #[test]
    fn each_bad_entry_is_refused_in_one_line_that_names_it() {
        let issuer = "issuer = \"https://issuer.example\"\n";
        let audiences = "audiences = [\"pc\"]\n";
        for (text, expected) in [
            (
                format!("[[jwt]]\n{issuer}audiences = []\n"),
                "jwt[1] (issuer \"https://issuer.example\"): audiences must not be empty",
            ),
            (
                format!("[[jwt]]\n{issuer}"),
                "jwt[1] (issuer \"https://issuer.example\"): audiences is required",
            ),
            (
                format!("[[jwt]]\n{audiences}"),
                "jwt[1]: issuer is required",
            ),
            (
                format!("[[jwt]]\nissuer = \"http://issuer.example\"\n{audiences}"),
                "must be https (http only on a loopback address)",
            ),
            (
                format!("[[jwt]]\nissuer = \"ftp://127.0.0.1\"\n{audiences}"),
                "must be an https URL",
            ),
            (
                format!("[[jwt]]\nissuer = \"not a url\"\n{audiences}"),
                "is not a URL",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}jwks_uri = \"http://10.0.0.1/keys\"\n"),
                "jwt[1] (issuer \"https://issuer.example\"): jwks_uri \"http://10.0.0.1/keys\" must be https",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}algorithms = [\"HS256\"]\n"),
                "algorithm \"HS256\" is never accepted",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}algorithms = [\"RS256\", \"none\"]\n"),
                "algorithm \"none\" is never accepted",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}algorithms = [\"RS257\"]\n"),
                "unknown algorithm \"RS257\"",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}algorithms = []\n"),
                "algorithms must not be empty",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}principal = \"billing\"\n"),
                "names no claim",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}principal = \"{{sub\"\n"),
                "is not closed",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}principal = \"sub}}\"\n"),
                "closes nothing",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}principal = \"{{}}\"\n"),
                "is not a claim name",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}max_lifetime = \"soon\"\n"),
                "max_lifetime \"soon\"",
            ),
            (
                format!(
                    "[[jwt]]\n{issuer}{audiences}[[jwt]]\nissuer = \"https://other.example\"\n{audiences}[[jwt]]\n{issuer}{audiences}"
                ),
                "jwt[3] (issuer \"https://issuer.example\"): the same issuer as jwt[1]",
            ),
            (
                format!("[[jwt]]\n{issuer}{audiences}audience = \"x\"\n"),
                "line 4: unknown field `audience`",
            ),
            (
                "[iam]\naccounts = [\"111111111111\"]\n".into(),
                "iam: server_id is required",
            ),
            (
                "[iam]\nserver_id = \"x\"\naccounts = [\"12\"]\n".into(),
                "iam: account \"12\" is not 12 digits",
            ),
            ("[mesh]\n".into(), "mesh: header is required"),
            (
                "[mesh]\nheader = \"x-user\"\n".into(),
                "mesh: header \"x-user\" is not one",
            ),
            (
                "[mesh]\nheader = \"l5d-client-id\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n".into(),
                "mesh: trusted_proxies entry \"10.0.0.0/33\"",
            ),
            (
                "[mesh]\nheader = \"l5d-client-id\"\ntrusted_proxies = []\n".into(),
                "mesh: trusted_proxies must not be empty",
            ),
            (
                "[mesh]\nheader = \"l5d-client-id\"\nport = 1\n".into(),
                "unknown field `port`",
            ),
        ] {
            let error = IdentityFile::parse(&text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn loopback_hosts_may_use_http() {
        for host in ["localhost", "127.0.0.1", "127.8.9.10", "[::1]"] {
            assert!(
                check_url(&format!("http://{host}:8080/x")).is_ok(),
                "{host}"
            );
        }
        for host in ["example.com", "10.0.0.1", "[::2]", "0.0.0.0"] {
            assert!(check_url(&format!("http://{host}/x")).is_err(), "{host}");
            assert!(check_url(&format!("https://{host}/x")).is_ok(), "{host}");
        }
    }

    #[test]
    fn a_template_renders_string_claims_and_names_what_is_missing() {
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({
                "sub": "system:serviceaccount:billing:reporter",
                "tenant": "acme",
                "iat": 12,
            }))
            .unwrap();
        let render = |template: &str| PrincipalTemplate::parse(template).unwrap().render(&claims);
        assert_eq!(
            render("{sub}").unwrap(),
            "system:serviceaccount:billing:reporter"
        );
        assert_eq!(
            render("t/{tenant}/{sub}!").unwrap(),
            "t/acme/system:serviceaccount:billing:reporter!"
        );
        assert!(render("{iat}").unwrap_err().contains("not a string"));
        assert!(
            render("{email}")
                .unwrap_err()
                .contains("no \"email\" claim")
        );
    }
}
