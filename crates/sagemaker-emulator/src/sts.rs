//! STS on the emulator's own port, in STS's awsQuery protocol: a form-encoded `POST /`
//! (`Action=AssumeRole&Version=2011-06-15&RoleArn=...`) answered with the XML STS writes.
//!
//! AssumeRole issues temporary credentials of the role's account (the account in its ARN),
//! valid for DurationSeconds (900-43200, default 3600) of *emulated* time. The `Expiration` it
//! reports is the wall-clock moment that emulated expiry happens (now + DurationSeconds /
//! time scale), so an SDK's credential cache, which reads a real clock, refreshes in time.
//! Roles may refuse every AssumeRole or demand an ExternalId (see `identity`).
//!
//! AssumeRoleWithWebIdentity issues the same credentials for a web identity token (a JWT, such
//! as the service-account token EKS projects into a pod for IRSA) instead of the caller's own
//! credentials: the call needs none, and SDKs send it unsigned. The token is read (see `jwt`)
//! and checked as STS checks it, but for its signature: its issuer must be one the emulator
//! trusts (all, unless `--web-identity-issuer` names some), its audience STS's
//! ([`WEB_IDENTITY_AUDIENCE`]), and its `exp` still ahead on the emulated clock. It is
//! counted in the role's account, where AWS logs it.
//!
//! GetCallerIdentity names the caller. Errors are STS's `ErrorResponse` documents: HTTP 400,
//! 403 for AccessDenied and for refused credentials (InvalidClientTokenId,
//! SignatureDoesNotMatch; see `identity`). STS allows signatures dated up to
//! [`SIGNATURE_WINDOW`] minutes from its clock.

use std::collections::HashMap;

use axum::http::StatusCode;

use super::{
    clock::iso8601,
    error::AwsError,
    identity::{Caller, Principal, Refusal, RoleRule, Scope, Session},
    jwt::{self, Unreadable},
    state::{Call, Emulator, StsAction},
    validate::{Validator, patterns},
};

const VERSION: &str = "2011-06-15";
const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
const DEFAULT_DURATION: i64 = 3600;

/// The audience (`aud`) a web identity token must be for: STS's, the client id of the OpenID
/// Connect provider that EKS's IRSA and GitHub's workflows name.
pub(crate) const WEB_IDENTITY_AUDIENCE: &str = "sts.amazonaws.com";

/// How many minutes before or after STS's clock a signature may be dated (its "Signature
/// expired: ... (... - 15 min.)").
pub(crate) const SIGNATURE_WINDOW: i64 = 15;

/// An error as STS answers it.
#[derive(Debug, Clone, PartialEq)]
struct StsError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl StsError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationError", message)
    }

    /// A validator's verdict in STS's words: STS calls it ValidationError.
    fn from_validation(error: AwsError) -> Self {
        if error.code == "ValidationException" {
            Self::validation(error.message)
        } else {
            Self::new(error.status, "InternalFailure", error.message)
        }
    }

    fn access_denied(caller_arn: &str, role_arn: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!(
                "User: {caller_arn} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
            ),
        )
    }

    /// The caller's credentials are refused, as STS answers it: 400 for an expired key, 403
    /// for the others.
    fn refused(refusal: &Refusal) -> Self {
        let (status, code) = match refusal {
            Refusal::ExpiredToken => (StatusCode::BAD_REQUEST, "ExpiredToken"),
            Refusal::InvalidToken => (StatusCode::FORBIDDEN, "InvalidClientTokenId"),
            Refusal::SignatureExpired { .. }
            | Refusal::SignatureNotYetCurrent { .. }
            | Refusal::SignatureMismatch => (StatusCode::FORBIDDEN, "SignatureDoesNotMatch"),
        };
        Self::new(status, code, refusal.message())
    }

    /// A web identity token STS does not accept (HTTP 400).
    fn invalid_identity_token(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidIdentityToken", message)
    }

    /// Why a token that cannot be read is refused. Missing claims are named as STS names
    /// them; for a token that is no JWT at all, the words are the emulator's.
    fn unreadable_token(unreadable: Unreadable) -> Self {
        Self::invalid_identity_token(match unreadable {
            Unreadable::Malformed => "The web identity token is not a valid JWT.".to_string(),
            Unreadable::Missing(claim) => format!("Missing a required claim: {claim}"),
        })
    }

    fn invalid_action(action: &str, version: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("Could not find operation {action} for version {version}"),
        )
    }

    fn to_xml(&self, request_id: &str) -> String {
        // STS blames the caller for 4xx and itself for 5xx.
        let kind = if self.status.is_server_error() {
            "Receiver"
        } else {
            "Sender"
        };
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{kind}</Type><Code>{}</Code>\
             <Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
            self.code,
            escape(&self.message),
            escape(request_id)
        )
    }
}

/// Answers one STS call (its form-encoded body) by `caller`: the HTTP status and the XML.
pub(crate) fn answer(
    emulator: &Emulator,
    caller: &Caller,
    body: &[u8],
    request_id: &str,
) -> (StatusCode, String) {
    let params: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    match act(emulator, caller, &params, request_id) {
        Ok(xml) => (StatusCode::OK, xml),
        Err(error) => (error.status, error.to_xml(request_id)),
    }
}

fn act(
    emulator: &Emulator,
    caller: &Caller,
    params: &HashMap<String, String>,
    request_id: &str,
) -> Result<String, StsError> {
    let param = |name: &str| params.get(name).map(String::as_str);
    let (name, version) = (
        param("Action").unwrap_or_default(),
        param("Version").unwrap_or_default(),
    );
    let action = StsAction::from_name(name)
        .filter(|_| version == VERSION)
        .ok_or_else(|| StsError::invalid_action(name, version))?;
    emulator.stats.count(
        &counted_in(action, caller, param("RoleArn")),
        Call::Sts(action),
    );
    if let Some(refusal) = &caller.refusal {
        return Err(StsError::refused(refusal));
    }
    let result = match action {
        StsAction::AssumeRole => assume_role(emulator, caller, &param)?,
        StsAction::AssumeRoleWithWebIdentity => assume_role_with_web_identity(emulator, &param)?,
        StsAction::GetCallerIdentity => format!(
            "<Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account>",
            escape(&caller.arn),
            escape(&caller.user_id),
            escape(&caller.scope.account)
        ),
    };
    let action = action.name();
    Ok(format!(
        "<{action}Response xmlns=\"{XMLNS}\"><{action}Result>{result}</{action}Result>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
        escape(request_id)
    ))
}

/// Where a call is counted: in its caller's account and region, but for
/// AssumeRoleWithWebIdentity, which comes with no credentials of its own (the token proves
/// who calls): that one is counted in the account of the role it names (in the caller's
/// region), as AWS logs it there.
fn counted_in(action: StsAction, caller: &Caller, role_arn: Option<&str>) -> Scope {
    let role_account = role_arn
        .and_then(Scope::of_arn)
        .map(|scope| scope.account)
        .filter(|account| account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()));
    match (action, role_account) {
        (StsAction::AssumeRoleWithWebIdentity, Some(account)) => Scope {
            account,
            region: caller.scope.region.clone(),
        },
        _ => caller.scope.clone(),
    }
}

/// The constraints of STS's model on what names a role: its ARN, and the external id.
fn check_role(v: &mut Validator, role_arn: Option<&str>, external_id: Option<&str>) {
    v.required_string("RoleArn", role_arn, 20, 2048, Some(&patterns::ROLE_ARN));
    v.string(
        "ExternalId",
        external_id,
        2,
        1224,
        Some(&patterns::EXTERNAL_ID),
    );
}

/// Checks a role rule (from the admin surface or the command line) as AssumeRole checks what
/// it names, so that a rule no AssumeRole could ever satisfy is refused when it is set.
pub(crate) fn check_role_rule(rule: &RoleRule) -> Result<(), String> {
    let mut v = Validator::default();
    check_role(&mut v, Some(&rule.role_arn), rule.external_id.as_deref());
    v.finish().map_err(|e| e.message)
}

/// DurationSeconds, as given or STS's default.
fn duration(text: Option<&str>) -> Result<i64, StsError> {
    match text {
        None => Ok(DEFAULT_DURATION),
        Some(text) => text.parse::<i64>().map_err(|_| {
            StsError::validation(format!(
                "1 validation error detected: Value '{text}' at 'durationSeconds' failed to satisfy constraint: Member must be a number"
            ))
        }),
    }
}

/// The constraints of STS's model on a session: its name and its duration.
fn check_session(v: &mut Validator, session_name: Option<&str>, duration: i64) {
    v.required_string(
        "RoleSessionName",
        session_name,
        2,
        64,
        Some(&patterns::ROLE_SESSION_NAME),
    );
    v.range("DurationSeconds", Some(duration), 900, Some(43_200));
}

/// AssumeRole's result members.
fn assume_role<'a>(
    emulator: &Emulator,
    caller: &Caller,
    param: &impl Fn(&str) -> Option<&'a str>,
) -> Result<String, StsError> {
    let (role_arn, session_name, external_id) = (
        param("RoleArn"),
        param("RoleSessionName"),
        param("ExternalId"),
    );
    let duration = duration(param("DurationSeconds"))?;
    let mut v = Validator::default();
    check_role(&mut v, role_arn, external_id);
    check_session(&mut v, session_name, duration);
    v.finish().map_err(StsError::from_validation)?;
    let (role_arn, session_name) = (
        role_arn.unwrap_or_default(),
        session_name.unwrap_or_default(),
    );
    if !emulator.identity.may_assume(role_arn, external_id) {
        return Err(StsError::access_denied(&caller.arn, role_arn));
    }
    let issued = issue(emulator, role_arn, session_name, duration)?;
    Ok(format!(
        "{}{}",
        issued.assumed_role_user, issued.credentials
    ))
}

/// AssumeRoleWithWebIdentity's result members. The token is checked before the role, whose
/// trust rests on the token's claims: readable, of a trusted issuer, for STS's audience, not
/// expired on the emulated clock. Its signature is not verified (see `jwt`).
fn assume_role_with_web_identity<'a>(
    emulator: &Emulator,
    param: &impl Fn(&str) -> Option<&'a str>,
) -> Result<String, StsError> {
    let (role_arn, session_name, token) = (
        param("RoleArn"),
        param("RoleSessionName"),
        param("WebIdentityToken"),
    );
    let duration = duration(param("DurationSeconds"))?;
    let mut v = Validator::default();
    check_role(&mut v, role_arn, None);
    check_session(&mut v, session_name, duration);
    v.required_string("WebIdentityToken", token, 4, 20_000, None);
    v.finish().map_err(StsError::from_validation)?;
    let (role_arn, session_name, token) = (
        role_arn.unwrap_or_default(),
        session_name.unwrap_or_default(),
        token.unwrap_or_default(),
    );

    let claims = jwt::claims(token).map_err(StsError::unreadable_token)?;
    if !emulator.identity.trusts_issuer(&claims.issuer) {
        return Err(StsError::invalid_identity_token(format!(
            "No OpenIDConnect provider found in your account for {}",
            claims.issuer
        )));
    }
    if !claims.audiences.iter().any(|a| a == WEB_IDENTITY_AUDIENCE) {
        return Err(StsError::invalid_identity_token("Incorrect token audience"));
    }
    let now = emulator.clock.now();
    if now >= claims.expires_at {
        return Err(StsError::new(
            StatusCode::BAD_REQUEST,
            "ExpiredTokenException",
            format!(
                "Token expired: current date/time {} must be before the expiration date/time {}",
                now.floor(),
                claims.expires_at.floor()
            ),
        ));
    }
    if !emulator.identity.may_assume_with_web_identity(role_arn) {
        return Err(StsError::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        ));
    }

    let issued = issue(emulator, role_arn, session_name, duration)?;
    // The provider as IAM names it: an OpenID Connect provider of the role's account, named
    // by its issuer without the scheme.
    let provider = claims
        .issuer
        .split_once("://")
        .map_or(claims.issuer.as_str(), |(_, rest)| rest);
    Ok(format!(
        "<SubjectFromWebIdentityToken>{}</SubjectFromWebIdentityToken>\
         <Audience>{WEB_IDENTITY_AUDIENCE}</Audience>{}{}\
         <Provider>arn:{}:iam::{}:oidc-provider/{}</Provider>",
        escape(&claims.subject),
        issued.assumed_role_user,
        issued.credentials,
        issued.partition,
        issued.account,
        escape(provider),
    ))
}

/// Temporary credentials of a role, issued and recorded: the XML members that describe them.
struct Issued {
    partition: String,
    account: String,
    /// `<AssumedRoleUser>...</AssumedRoleUser>`.
    assumed_role_user: String,
    /// `<Credentials>...</Credentials>`.
    credentials: String,
}

/// Issues credentials of `role_arn` (checked against STS's pattern) for `duration` emulated
/// seconds, and records them, so that their calls act in the role's account until they
/// expire (see `identity`).
fn issue(
    emulator: &Emulator,
    role_arn: &str,
    session_name: &str,
    duration: i64,
) -> Result<Issued, StsError> {
    // The pattern checked makes it `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
    let fields: Vec<&str> = role_arn.splitn(6, ':').collect();
    let ["arn", partition, "iam", "", account, resource] = fields.as_slice() else {
        return Err(StsError::validation(format!(
            "{role_arn} is not a role ARN."
        )));
    };
    let role_name = resource.rsplit('/').next().unwrap_or(resource);

    let user_id = format!(
        "{}:{session_name}",
        emulator.ids.unique_id("AROA", role_arn)
    );
    let arn = format!("arn:{partition}:sts::{account}:assumed-role/{role_name}/{session_name}");
    let expires_at = emulator.clock.now() + duration as f64;
    let access_key_id = emulator.ids.access_key_id();
    let secret_access_key = emulator.ids.secret_access_key();
    let session_token = emulator.ids.session_token();
    let assumed_role_user = format!(
        "<AssumedRoleUser><AssumedRoleId>{}</AssumedRoleId><Arn>{}</Arn></AssumedRoleUser>",
        escape(&user_id),
        escape(&arn),
    );
    let credentials = format!(
        "<Credentials><AccessKeyId>{access_key_id}</AccessKeyId>\
         <SecretAccessKey>{secret_access_key}</SecretAccessKey>\
         <SessionToken>{session_token}</SessionToken><Expiration>{}</Expiration></Credentials>",
        iso8601(emulator.clock.wall_time_at(expires_at)),
    );
    emulator.identity.issue(
        access_key_id,
        Session {
            principal: Principal {
                account: (*account).to_string(),
                arn,
                user_id,
            },
            secret_access_key,
            session_token,
            expires_at,
        },
    );
    Ok(Issued {
        partition: (*partition).to_string(),
        account: (*account).to_string(),
        assumed_role_user,
        credentials,
    })
}

/// Text for XML content.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::{
        EmulatorOptions,
        clock::{Clock, amz_date},
        identity::CallTime,
        sigv4::{Request, authorization_for},
    };

    /// One call with `headers` (none: unsigned), now.
    fn call(emulator: &Emulator, headers: &HeaderMap, body: &str) -> (u16, String) {
        let request = Request {
            method: "POST",
            path: "/",
            query: "",
            headers,
            body: body.as_bytes(),
        };
        let time = CallTime {
            now: emulator.clock.now(),
            wall_now: emulator.clock.wall_now(),
            window: SIGNATURE_WINDOW,
        };
        let caller = emulator.identity.caller(&request, time);
        let (status, xml) = answer(emulator, &caller, body.as_bytes(), "req-1");
        (status.as_u16(), xml)
    }

    /// Headers signed as an SDK signs them, now, for `body`.
    fn signed(key: &str, secret: &str, token: &str, body: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:9380"));
        let now = amz_date(Clock::new(1.0).wall_now());
        headers.insert("x-amz-date", HeaderValue::from_str(&now).unwrap());
        headers.insert(
            "x-amz-security-token",
            HeaderValue::from_str(token).unwrap(),
        );
        let request = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: body.as_bytes(),
        };
        let authorization = authorization_for(&request, key, secret, "eu-west-1", "sts");
        headers.insert(
            "authorization",
            HeaderValue::from_str(&authorization).unwrap(),
        );
        headers
    }

    fn between<'a>(xml: &'a str, tag: &str) -> &'a str {
        let open = format!("<{tag}>");
        let start = xml.find(&open).map(|i| i + open.len()).unwrap_or_default();
        let end = xml[start..].find('<').map_or(xml.len(), |i| start + i);
        &xml[start..end]
    }

    #[test]
    fn an_assumed_roles_key_names_its_session() {
        let emulator = Emulator::new(&EmulatorOptions::default());
        let (status, xml) = call(
            &emulator,
            &HeaderMap::new(),
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A222222222222%3Arole%2Fteam%2Fdeployer&RoleSessionName=ci%40build",
        );
        assert_eq!(status, 200, "{xml}");
        assert!(xml.starts_with(&format!("<AssumeRoleResponse xmlns=\"{XMLNS}\">")));
        assert_eq!(
            between(&xml, "Arn"),
            "arn:aws:sts::222222222222:assumed-role/deployer/ci@build"
        );
        let role_id = between(&xml, "AssumedRoleId");
        assert!(role_id.starts_with("AROA") && role_id.ends_with(":ci@build"));
        let (key, secret, token) = (
            between(&xml, "AccessKeyId"),
            between(&xml, "SecretAccessKey"),
            between(&xml, "SessionToken"),
        );
        let body = "Action=GetCallerIdentity&Version=2011-06-15";
        let (status, answer) = call(&emulator, &signed(key, secret, token, body), body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(between(&answer, "Account"), "222222222222");
        assert_eq!(between(&answer, "UserId"), role_id);
        assert_eq!(between(&answer, "RequestId"), "req-1");

        // Its secret, and its token, and nothing else.
        for (headers, status, code) in [
            (
                signed(key, "wrong", token, body),
                403,
                "SignatureDoesNotMatch",
            ),
            (
                signed(key, secret, "wrong", body),
                403,
                "InvalidClientTokenId",
            ),
        ] {
            let (got, answer) = call(&emulator, &headers, body);
            assert_eq!((got, between(&answer, "Code")), (status, code), "{answer}");
            assert!(answer.starts_with(&format!(
                "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type>"
            )));
        }
    }

    /// A token of `issuer` for `audience`, expiring at `exp`, signed with nothing checked.
    fn web_identity_token(issuer: &str, audience: &str, exp: f64) -> String {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let claims = serde_json::json!({
            "iss": issuer, "sub": "system:serviceaccount:ml:runner", "aud": [audience], "exp": exp,
        });
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn a_web_identity_becomes_a_session_of_the_role_counted_in_its_account() {
        let issuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE";
        let emulator = Emulator::new(&EmulatorOptions {
            web_identity_issuers: vec![issuer.into()],
            ..EmulatorOptions::default()
        });
        let token = web_identity_token(issuer, WEB_IDENTITY_AUDIENCE, emulator.clock.now() + 60.0);
        let (status, xml) = call(
            &emulator,
            &HeaderMap::new(),
            &format!(
                "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A222222222222%3Arole%2Fml&RoleSessionName=runner&WebIdentityToken={token}"
            ),
        );
        assert_eq!(status, 200, "{xml}");
        let (role_id, key) = (between(&xml, "AssumedRoleId"), between(&xml, "AccessKeyId"));
        let (secret, session_token) = (
            between(&xml, "SecretAccessKey"),
            between(&xml, "SessionToken"),
        );
        let expiration = between(&xml, "Expiration");
        assert_eq!(
            xml,
            format!(
                "<AssumeRoleWithWebIdentityResponse xmlns=\"{XMLNS}\"><AssumeRoleWithWebIdentityResult>\
                 <SubjectFromWebIdentityToken>system:serviceaccount:ml:runner</SubjectFromWebIdentityToken>\
                 <Audience>sts.amazonaws.com</Audience>\
                 <AssumedRoleUser><AssumedRoleId>{role_id}</AssumedRoleId><Arn>arn:aws:sts::222222222222:assumed-role/ml/runner</Arn></AssumedRoleUser>\
                 <Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
                 <SessionToken>{session_token}</SessionToken><Expiration>{expiration}</Expiration></Credentials>\
                 <Provider>arn:aws:iam::222222222222:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE</Provider>\
                 </AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>req-1</RequestId></ResponseMetadata>\
                 </AssumeRoleWithWebIdentityResponse>"
            )
        );
        assert!(role_id.starts_with("AROA") && role_id.ends_with(":runner"));

        // Its keys are the role's session's, and their signatures are checked.
        let body = "Action=GetCallerIdentity&Version=2011-06-15";
        let (status, answer) = call(&emulator, &signed(key, secret, session_token, body), body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(between(&answer, "Account"), "222222222222");
        assert_eq!(
            between(&answer, "Arn"),
            "arn:aws:sts::222222222222:assumed-role/ml/runner"
        );
        let (status, answer) = call(&emulator, &signed(key, "wrong", session_token, body), body);
        assert_eq!(
            (status, between(&answer, "Code")),
            (403, "SignatureDoesNotMatch")
        );

        // Unsigned, it is counted in the role's account and the default region; the signed
        // GetCallerIdentity calls, in the session's account and their scope's region.
        let counted = emulator.stats.by_scope();
        assert_eq!(
            counted["222222222222"]["us-east-1"]["AssumeRoleWithWebIdentity"],
            1
        );
        assert_eq!(counted["222222222222"]["eu-west-1"]["GetCallerIdentity"], 2);
        assert!(!counted.contains_key("123456789012"), "{counted:?}");
    }

    #[test]
    fn refusals_are_sts_error_documents() {
        let emulator = Emulator::new(&EmulatorOptions::default());
        let (status, xml) = call(
            &emulator,
            &HeaderMap::new(),
            "Action=Nope&Version=2011-06-15",
        );
        assert_eq!(status, 400);
        assert_eq!(
            xml,
            format!(
                "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>Could not find operation Nope for version 2011-06-15</Message></Error><RequestId>req-1</RequestId></ErrorResponse>"
            )
        );
        let (status, xml) = call(
            &emulator,
            &HeaderMap::new(),
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn:aws:iam::222222222222:role/R&RoleSessionName=s&DurationSeconds=899",
        );
        assert_eq!(status, 400);
        assert_eq!(between(&xml, "Code"), "ValidationError");
        assert_eq!(
            between(&xml, "Message"),
            "2 validation errors detected: Value &apos;s&apos; at &apos;roleSessionName&apos; failed to satisfy constraint: Member must have length greater than or equal to 2; Value &apos;899&apos; at &apos;durationSeconds&apos; failed to satisfy constraint: Member must have value greater than or equal to 900"
        );
        assert!(
            check_role_rule(&RoleRule {
                role_arn: "arn:aws:iam::222222222222:role/R".into(),
                external_id: Some("x".into()),
                refuse: false,
            })
            .is_err()
        );
    }
}
