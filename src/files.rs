//! The settings files (tokens, policy, accounts): read whole, parsed as TOML, and any error
//! said in one line that names the file and the line.

use anyhow::Context as _;
use serde::de::DeserializeOwned;

/// Parses TOML text; the error names the line.
pub(crate) fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|error| {
        let message = error.message().trim().replace('\n', "; ");
        match error.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = 1 + before.matches('\n').count();
                format!("line {line}: {message}")
            }
            None => message,
        }
    })
}

/// Reads `path` and parses it with `parse`; the error names the file.
pub(crate) fn read<T>(
    path: &std::path::Path,
    parse: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))
}
