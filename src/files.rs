//! The settings files (tokens, policy, identity, accounts): read whole, parsed as TOML, and any
//! error said in one line that names the file and the line; and a stamp that tells when one
//! changed on disk.

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

/// What tells a file's contents apart on disk without reading it: the device and inode its path
/// resolves to (a mounted ConfigMap or Secret is updated by swapping a `..data` symlink, so the
/// path then resolves to another file), its size and its modification time. `None` while it
/// cannot be read.
pub(crate) fn stamp(path: &std::path::Path) -> Option<(u64, u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    Some((
        metadata.dev(),
        metadata.ino(),
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec(),
    ))
}
