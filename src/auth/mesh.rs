//! A mesh's proxy in front names the caller in a header (`[mesh]` in the identity file). The
//! header is believed only from a trusted proxy: anyone else could write it. From another peer
//! it is ignored, and that is logged once per peer address, not once per call.
//!
//! - Envoy's (and Istio's) `x-forwarded-client-cert` (XFCC) is a list of elements separated by
//!   `,`, each of `key=value` pairs separated by `;`, values possibly in double quotes (which
//!   may hold `,`, `;` and `=`, and `\"`). Each proxy that forwards the call appends the
//!   element describing the client it verified, so the last element is the one the proxy in
//!   front of this service added: the caller is its `URI`.
//! - Linkerd's `l5d-client-id` is the caller's whole identity.

use std::{collections::HashSet, net::IpAddr, sync::Mutex};

use super::identity::{MeshHeader, MeshSettings};
use crate::domain::Principal;

/// How many peers' ignored headers are remembered (and each logged once); beyond that, the
/// next is logged once more and the memory starts again.
const REMEMBERED_PEERS: usize = 1024;

/// What the mesh header of a call says.
#[derive(Debug)]
pub(crate) enum MeshWord {
    /// No mesh header, or one from a peer that is not a trusted proxy (ignored).
    Absent,
    /// A trusted proxy names the caller.
    Caller(Principal),
    /// A trusted proxy sent a header that names nobody usable: why.
    Unusable(String),
}

/// The peers whose mesh header was ignored and logged.
#[derive(Debug, Default)]
pub(crate) struct IgnoredPeers(Mutex<HashSet<IpAddr>>);

impl IgnoredPeers {
    /// Logs that `peer`'s header was ignored, unless that was logged before.
    pub(crate) fn note(&self, peer: Option<IpAddr>, header: &str) {
        let first = match peer {
            None => true,
            Some(peer) => {
                // A poisoned lock only means a panic elsewhere; the set is still a set.
                let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
                if seen.len() >= REMEMBERED_PEERS {
                    seen.clear();
                }
                seen.insert(peer)
            }
        };
        if first {
            tracing::info!(
                peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                header,
                "ignored a mesh header from a peer that is not a trusted proxy (logged once per peer)"
            );
        }
    }
}

/// What the configured header of a call says about its caller, given the connection's peer.
pub(crate) fn word(
    settings: &MeshSettings,
    headers: &http::HeaderMap,
    peer: Option<IpAddr>,
    ignored: &IgnoredPeers,
) -> MeshWord {
    let name = settings.header.name();
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return MeshWord::Absent;
    }
    // An IPv4 peer of a dual-stack listener shows as ::ffff:a.b.c.d.
    let peer = peer.map(|ip| ip.to_canonical());
    let trusted =
        peer.is_some_and(|ip| settings.trusted_proxies.iter().any(|net| net.contains(&ip)));
    if !trusted {
        ignored.note(peer, name);
        return MeshWord::Absent;
    }
    let values: Vec<&str> = match values.map(|value| value.to_str()).collect() {
        Ok(values) => values,
        Err(_) => return MeshWord::Unusable(format!("{name} is not visible ASCII")),
    };
    let identity = match settings.header {
        // Several XFCC fields are one list, in order.
        MeshHeader::ForwardedClientCert => values
            .last()
            .ok_or_else(|| format!("{name} is empty"))
            .and_then(|value| last_element_uri(value)),
        MeshHeader::LinkerdClientId => match values[..] {
            [one] => Ok(one.trim().to_string()),
            _ => Err(format!("{name} is sent more than once")),
        },
    };
    match identity.and_then(|identity| Principal::parse(&identity)) {
        Ok(principal) => MeshWord::Caller(principal),
        Err(why) => MeshWord::Unusable(format!("{name}: {why}")),
    }
}

/// The `URI` of the last element of an XFCC value: the client the nearest proxy verified.
fn last_element_uri(value: &str) -> Result<String, String> {
    let elements = split_outside_quotes(value, ',');
    let last = elements
        .iter()
        .rev()
        .find(|element| !element.trim().is_empty())
        .ok_or("the header has no element")?;
    for pair in split_outside_quotes(last, ';') {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{:?} is not key=value", pair.trim()));
        };
        if key.trim().eq_ignore_ascii_case("uri") {
            return Ok(unquote(value.trim()));
        }
    }
    Err(
        "the element the proxy in front added has no URI (the client certificate has no URI SAN)"
            .into(),
    )
}

/// `text` split at `separator` where it is not inside double quotes.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A value without its surrounding double quotes and with `\"` and `\\` unescaped.
fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        None => value.to_string(),
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(header: MeshHeader, trusted: &[&str]) -> MeshSettings {
        MeshSettings {
            header,
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    fn headers(name: &str, values: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    fn said(word: MeshWord) -> Result<String, String> {
        match word {
            MeshWord::Caller(principal) => Ok(principal.as_str().to_string()),
            MeshWord::Absent => Err("absent".into()),
            MeshWord::Unusable(why) => Err(why),
        }
    }

    #[test]
    fn the_caller_is_the_uri_of_the_element_the_nearest_proxy_added() {
        for (value, expected) in [
            (
                "By=spiffe://cluster.local/ns/pc/sa/pipeline-control;Hash=abc;URI=spiffe://cluster.local/ns/billing/sa/reporter",
                "spiffe://cluster.local/ns/billing/sa/reporter",
            ),
            // Two hops: the last element is the nearest proxy's.
            (
                "By=spiffe://a;URI=spiffe://edge,By=spiffe://pc;Hash=1;URI=spiffe://cluster.local/ns/ops/sa/console",
                "spiffe://cluster.local/ns/ops/sa/console",
            ),
            // Quoted values may hold the separators.
            (
                r#"Hash=1;Subject="CN=x,O=a;b=c";URI="spiffe://quoted/\"id\"""#,
                r#"spiffe://quoted/"id""#,
            ),
            (
                r#"URI=spiffe://first, Hash=2;Subject="x,y";uri=spiffe://second"#,
                "spiffe://second",
            ),
        ] {
            assert_eq!(last_element_uri(value).as_deref(), Ok(expected), "{value}");
        }
        for bad in [
            "Hash=1;DNS=example.com",
            "",
            "URI",
            r#"By=x;URI=spiffe://a,Hash=2"#,
        ] {
            assert!(last_element_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_header_counts_only_from_trusted_proxies() {
        let ignored = IgnoredPeers::default();
        let xfcc = settings(MeshHeader::ForwardedClientCert, &["127.0.0.0/8", "::1/128"]);
        let call = headers(
            "x-forwarded-client-cert",
            &["Hash=1;URI=spiffe://x/billing"],
        );
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            said(word(&xfcc, &call, Some(loopback), &ignored)),
            Ok("spiffe://x/billing".into())
        );
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            said(word(&xfcc, &call, Some(mapped), &ignored)),
            Ok("spiffe://x/billing".into())
        );
        for untrusted in [Some("192.0.2.1".parse().unwrap()), None] {
            assert_eq!(
                said(word(&xfcc, &call, untrusted, &ignored)),
                Err("absent".into())
            );
        }
        assert_eq!(
            said(word(
                &xfcc,
                &http::HeaderMap::new(),
                Some(loopback),
                &ignored
            )),
            Err("absent".into())
        );
        // Several XFCC fields are one list: the last field's last element.
        let two = headers(
            "x-forwarded-client-cert",
            &["URI=spiffe://far", "Hash=2;URI=spiffe://near"],
        );
        assert_eq!(
            said(word(&xfcc, &two, Some(loopback), &ignored)),
            Ok("spiffe://near".into())
        );
        let no_uri = headers("x-forwarded-client-cert", &["Hash=1;DNS=billing.example"]);
        assert!(matches!(
            word(&xfcc, &no_uri, Some(loopback), &ignored),
            MeshWord::Unusable(_)
        ));
    }

    #[test]
    fn linkerd_names_the_caller_in_the_whole_value() {
        let ignored = IgnoredPeers::default();
        let linkerd = settings(MeshHeader::LinkerdClientId, &["10.1.0.0/16"]);
        let peer = Some("10.1.2.3".parse().unwrap());
        let call = headers(
            "l5d-client-id",
            &["web.emojivoto.serviceaccount.identity.linkerd.cluster.local"],
        );
        assert_eq!(
            said(word(&linkerd, &call, peer, &ignored)),
            Ok("web.emojivoto.serviceaccount.identity.linkerd.cluster.local".into())
        );
        let twice = headers("l5d-client-id", &["a", "b"]);
        assert!(matches!(
            word(&linkerd, &twice, peer, &ignored),
            MeshWord::Unusable(_)
        ));
        let empty = headers("l5d-client-id", &[""]);
        assert!(matches!(
            word(&linkerd, &empty, peer, &ignored),
            MeshWord::Unusable(_)
        ));
        // The other mesh's header means nothing.
        let xfcc = headers("x-forwarded-client-cert", &["URI=spiffe://x"]);
        assert_eq!(
            said(word(&linkerd, &xfcc, peer, &ignored)),
            Err("absent".into())
        );
    }

    #[test]
    fn an_ignored_peer_is_remembered_once() {
        let ignored = IgnoredPeers::default();
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        ignored.note(Some(peer), "l5d-client-id");
        ignored.note(Some(peer), "l5d-client-id");
        assert_eq!(ignored.0.lock().unwrap().len(), 1);
        for i in 0..(REMEMBERED_PEERS as u32 + 5) {
            ignored.note(Some(IpAddr::from(i.to_be_bytes())), "l5d-client-id");
        }
        assert!(ignored.0.lock().unwrap().len() <= REMEMBERED_PEERS);
    }
}
