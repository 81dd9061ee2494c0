//! The bearer-token file: which principal each token stands for. Only SHA-256 digests are
//! stored, so the file (and this process's memory) never holds a usable token.
//!
//! ```toml
//! [[token]]
//! principal = "billing-service"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::domain::Principal;

/// The tokens in force: digest → principal.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokens {
    by_digest: HashMap<[u8; 32], Principal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    principal: String,
    sha256: String,
}

impl Tokens {
    /// Parses a token file's text; the error says which entry is wrong and why.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let file: TokenFile = crate::files::parse_toml(text)?;
        let mut by_digest = HashMap::with_capacity(file.token.len());
        for (index, entry) in file.token.iter().enumerate() {
            let position = index + 1;
            let principal = Principal::parse(&entry.principal)
                .map_err(|e| format!("[[token]] #{position}: {e}"))?;
            let digest = parse_digest(&entry.sha256).ok_or_else(|| {
                format!(
                    "[[token]] #{position} ({principal}): sha256 must be 64 hex digits (the SHA-256 of the token, e.g. `printf %s TOKEN | sha256sum`)"
                )
            })?;
            if by_digest.insert(digest, principal).is_some() {
                return Err(format!(
                    "[[token]] #{position}: the same sha256 is listed twice"
                ));
            }
        }
        Ok(Self { by_digest })
    }

    /// The digest under which a presented token is looked up.
    pub(crate) fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The principal a presented token stands for.
    #[cfg(test)]
    pub(crate) fn principal(&self, token: &str) -> Option<&Principal> {
        self.principal_of(&Self::digest(token))
    }

    /// The principal of a token's digest.
    pub(crate) fn principal_of(&self, digest: &[u8; 32]) -> Option<&Principal> {
        self.by_digest.get(digest)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_digest.len()
    }
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut digest).ok()?;
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn tokens_map_to_their_principals_by_digest() {
        let text = format!(
            "[[token]]\nprincipal = \"billing\"\nsha256 = \"{}\"\n\n[[token]]\nprincipal = \"ops\"\nsha256 = \"{}\"\n",
            sha256_hex("billing-secret"),
            sha256_hex("ops-secret").to_uppercase(),
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.principal("billing-secret").map(Principal::as_str),
            Some("billing")
        );
        assert_eq!(
            tokens.principal("ops-secret").map(Principal::as_str),
            Some("ops")
        );
        assert!(tokens.principal("guess").is_none());
        assert!(tokens.principal("").is_none());
        assert_eq!(Tokens::parse("").unwrap().len(), 0);
    }

    #[test]
    fn bad_token_files_say_what_is_wrong() {
        let digest = sha256_hex("x");
        for (text, expected) in [
            (
                "[[token]]\nprincipal = \"a\"\nsha256 = \"abc\"\n",
                "64 hex digits",
            ),
            (
                &*format!("[[token]]\nprincipal = \"\"\nsha256 = \"{digest}\"\n"),
                "must not be empty",
            ),
            (
                &*format!("[[token]]\nprincipal = \"a\"\nsha265 = \"{digest}\"\n"),
                "unknown field",
            ),
            (
                &*format!(
                    "[[token]]\nprincipal = \"a\"\nsha256 = \"{digest}\"\n[[token]]\nprincipal = \"b\"\nsha256 = \"{digest}\"\n"
                ),
                "listed twice",
            ),
            ("[[token]]\nprincipal = \"a\"\n", "missing field"),
            ("not toml at all", ""),
        ] {
            let error = Tokens::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
