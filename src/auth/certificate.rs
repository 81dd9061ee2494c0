//! The principal a verified client certificate names: its URI SAN (a SPIFFE ID, say), else its
//! first DNS SAN, else its subject's CN. The TLS layer has already verified the chain against
//! `--tls-client-ca`; this only reads names.

use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _};

use crate::domain::Principal;

/// The principal of a client certificate (DER), or why it names none.
pub(crate) fn principal(der: &[u8]) -> Result<Principal, String> {
    let (_, certificate) = X509Certificate::from_der(der)
        .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
    let names = certificate
        .subject_alternative_name()
        .map_err(|e| format!("the client certificate's subjectAltName cannot be read: {e}"))?
        .map(|extension| extension.value.general_names.clone())
        .unwrap_or_default();
    let uri = names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
    };
    let common_name = || {
        certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
    };
    let name = uri.or_else(dns).or_else(common_name).ok_or_else(|| {
        "the client certificate names no identity (no URI or DNS subjectAltName, no CN)".to_string()
    })?;
    Principal::parse(name).map_err(|e| format!("the client certificate's identity: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn certificate(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.try_into().unwrap())
    }

    fn dns(text: &str) -> SanType {
        SanType::DnsName(text.try_into().unwrap())
    }

    #[test]
    fn the_uri_san_wins_then_the_first_dns_san_then_the_cn() {
        let both = certificate(
            Some("cn-name"),
            vec![
                dns("first.example.org"),
                uri("spiffe://example.org/ns/prod/sa/stopper"),
                dns("second.example.org"),
            ],
        );
        assert_eq!(
            principal(&both).unwrap().as_str(),
            "spiffe://example.org/ns/prod/sa/stopper"
        );
        let dns_only = certificate(
            Some("cn-name"),
            vec![dns("first.example.org"), dns("second.example.org")],
        );
        assert_eq!(principal(&dns_only).unwrap().as_str(), "first.example.org");
        let cn_only = certificate(Some("cn-name"), vec![]);
        assert_eq!(principal(&cn_only).unwrap().as_str(), "cn-name");
    }

    #[test]
    fn a_certificate_without_a_name_or_unreadable_is_refused() {
        let nameless = certificate(None, vec![]);
        assert!(principal(&nameless).unwrap_err().contains("no identity"));
        assert!(principal(b"not a certificate").is_err());
    }
}
