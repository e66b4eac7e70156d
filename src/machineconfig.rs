//! The machineconfig source: a MachineConfig (JSON or YAML) or a bare
//! Ignition 3.x config whose `storage.files` already hold the rendered files,
//! as OpenShift's machine-config-controller produces them. The agent takes
//! the entries for the paths it manages and decodes their data URLs; nothing
//! is rendered.

use crate::apply::FileSet;
use crate::manifests;
use crate::render::{CRIO_POLICIES_DIR, POLICY_JSON, REGISTRIES_D_FILE};
use base64::Engine;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A decoded file larger than this is refused (a gzip bomb must not fill
/// memory); rendered policies of thousands of scopes stay far below it.
pub const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;

/// A MachineConfig or Ignition config that could not be used, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {location}: {message}")]
pub struct McError {
    pub file: String,
    /// `MachineConfig NAME` or `Ignition config`, then the field, e.g.
    /// `spec.config.storage.files[2] (/etc/containers/policy.json): contents.source`.
    pub location: String,
    pub message: String,
}

/// What a MachineConfig file deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McContent {
    /// `metadata.name` of the MachineConfig (None for a bare Ignition config).
    pub name: Option<String>,
    pub files: FileSet,
    /// Entries under a managed directory that are not files the agent
    /// manages (reported, not written).
    pub skipped: Vec<String>,
}

/// Is `path` one of the files the agent manages?
pub fn is_managed(path: &str) -> bool {
    path == POLICY_JSON || path == REGISTRIES_D_FILE || namespace_of(path).is_some()
}

/// `/etc/crio/policies/<namespace>.json` → the namespace, when it is a
/// DNS-1123 label (which also rules out `..` and further slashes).
fn namespace_of(path: &str) -> Option<&str> {
    let ns = path
        .strip_prefix(CRIO_POLICIES_DIR)?
        .strip_prefix('/')?
        .strip_suffix(".json")?;
    crate::validate::dns1123_label_ok(ns).then_some(ns)
}

/// Decodes an RFC 2397 data URL: `data:[<mediatype>][;base64],<data>`.
pub fn decode_data_url(url: &str) -> Result<Vec<u8>, String> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| match url.split_once(':') {
            Some((scheme, _)) if !scheme.is_empty() && !scheme.contains('/') => format!(
                "{scheme}: URLs are not fetched by the agent; only data: URLs are supported"
            ),
            _ => "not a data: URL".to_string(),
        })?;
    let (header, data) = rest
        .split_once(',')
        .ok_or("data URL without a \",\" before the data")?;
    let is_base64 = header
        .rsplit(';')
        .next()
        .is_some_and(|p| p.eq_ignore_ascii_case("base64"));
    let raw = percent_decode(data)?;
    if !is_base64 {
        return Ok(raw);
    }
    // Base64 data may itself be percent-encoded (and carry no whitespace).
    base64::engine::general_purpose::STANDARD
        .decode(&raw)
        .map_err(|e| format!("invalid base64 data: {e}"))
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn gunzip(b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .take(MAX_DECODED_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("invalid gzip data: {e}"))?;
    if out.len() > MAX_DECODED_BYTES {
        return Err(format!(
            "gzip data expands beyond the limit of {MAX_DECODED_BYTES} bytes"
        ));
    }
    Ok(out)
}

/// Decodes one `storage.files` entry's `contents`. No contents means an
/// empty file (Ignition's rule).
fn decode_contents(entry: &Value) -> Result<Vec<u8>, (String, String)> {
    let Some(contents) = entry.get("contents").filter(|c| !c.is_null()) else {
        return Ok(Vec::new());
    };
    let field = |f: &str| format!("contents.{f}");
    let source = match contents.get("source") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => s,
        Some(_) => return Err((field("source"), "must be a string".into())),
    };
    let bytes = decode_data_url(source).map_err(|m| (field("source"), m))?;
    match contents.get("compression") {
        None | Some(Value::Null) => Ok(bytes),
        Some(Value::String(c)) if c.is_empty() => Ok(bytes),
        Some(Value::String(c)) if c == "gzip" => gunzip(&bytes).map_err(|m| (field("source"), m)),
        Some(other) => Err((
            field("compression"),
            format!("unsupported compression {other} (only \"gzip\" or none)"),
        )),
    }
}

/// Parses the text of a MachineConfig or Ignition file. `name` is what
/// errors are reported under.
pub fn parse(name: &Path, text: &str) -> Result<McContent, McError> {
    let file = name.display().to_string();
    let err = |location: &str, message: String| McError {
        file: file.clone(),
        location: location.to_string(),
        message,
    };
    let json = text.trim_start().starts_with('{');
    let mut docs = manifests::parse_documents(text, json)
        .into_iter()
        .filter(|d| !matches!(d, Ok(Value::Null)));
    let doc = match (docs.next(), docs.next()) {
        (Some(Ok(v)), None) => v,
        (Some(Err((_, m))), _) => return Err(err("file", m)),
        (None, _) => return Err(err("file", "empty file".into())),
        (Some(Ok(_)), Some(_)) => {
            return Err(err(
                "file",
                "holds more than one document (one MachineConfig was expected)".into(),
            ))
        }
    };
    let (label, name, ignition, prefix) = match doc.get("kind").and_then(Value::as_str) {
        Some("MachineConfig") => {
            let n = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string);
            let label = format!("MachineConfig {}", n.as_deref().unwrap_or("(unnamed)"));
            match doc.pointer("/spec/config") {
                Some(c) if c.is_object() => (label, n, c.clone(), "spec.config."),
                // A MachineConfig without an Ignition config writes nothing.
                None | Some(Value::Null) => (label, n, Value::Null, "spec.config."),
                Some(_) => {
                    return Err(err(
                        &format!("{label}: spec.config"),
                        "must be an object".into(),
                    ))
                }
            }
        }
        Some(other) => {
            return Err(err(
                "kind",
                format!("{other:?} is neither MachineConfig nor an Ignition config"),
            ))
        }
        None => ("Ignition config".to_string(), None, doc, ""),
    };
    if !ignition.is_null() {
        let version = ignition
            .pointer("/ignition/version")
            .and_then(Value::as_str);
        match version {
            Some(v) if v.starts_with("3.") => {}
            Some(v) => {
                return Err(err(
                    &format!("{label}: {prefix}ignition.version"),
                    format!("Ignition spec {v} is not supported (3.x is)"),
                ))
            }
            None => {
                return Err(err(
                    &format!("{label}: {prefix}ignition.version"),
                    "Required value".into(),
                ))
            }
        }
    }
    let mut files = BTreeMap::new();
    let mut skipped = Vec::new();
    let entries = match ignition.pointer("/storage/files") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => {
            return Err(err(
                &format!("{label}: {prefix}storage.files"),
                "must be a list".into(),
            ))
        }
    };
    for (i, e) in entries.iter().enumerate() {
        let Some(path) = e.get("path").and_then(Value::as_str) else {
            return Err(err(
                &format!("{label}: {prefix}storage.files[{i}].path"),
                "Required value".into(),
            ));
        };
        let at = |field: &str| format!("{label}: {prefix}storage.files[{i}] ({path}): {field}");
        if !is_managed(path) {
            if path.starts_with(&format!("{CRIO_POLICIES_DIR}/")) {
                skipped.push(format!(
                    "{}: not a namespace policy file (/etc/crio/policies/<namespace>.json); not written",
                    at("path")
                ));
            }
            continue;
        }
        if e.get("append")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return Err(err(
                &at("append"),
                "appending to a managed file is not supported".into(),
            ));
        }
        let bytes = decode_contents(e).map_err(|(f, m)| err(&at(&f), m))?;
        if bytes.len() > MAX_DECODED_BYTES {
            return Err(err(
                &at("contents.source"),
                format!("decodes to more than {MAX_DECODED_BYTES} bytes"),
            ));
        }
        if files.insert(path.to_string(), bytes).is_some() {
            return Err(err(&at("path"), "path listed more than once".into()));
        }
    }
    Ok(McContent {
        name,
        files: FileSet(files),
        skipped,
    })
}

/// Reads and parses a MachineConfig file.
pub fn load(path: &Path) -> Result<McContent, McError> {
    let text = manifests::read_bounded(path).map_err(|message| McError {
        file: path.display().to_string(),
        location: "file".into(),
        message,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        assert_eq!(decode_data_url("data:,a%20b%7B").unwrap(), b"a b{");
        assert_eq!(
            decode_data_url("data:text/plain;charset=utf-8;base64,aGVsbG8=").unwrap(),
            b"hello"
        );
        assert_eq!(
            decode_data_url("data:;base64,aGVsbG8%3D").unwrap(),
            b"hello"
        );
        assert!(decode_data_url("data:,%zz").is_err());
        assert!(decode_data_url("data:;base64,***").is_err());
        assert!(decode_data_url("https://example.com/x")
            .unwrap_err()
            .contains("not fetched"));
        assert!(decode_data_url("data:text/plain").is_err());
    }

    #[test]
    fn managed_paths() {
        assert!(is_managed("/etc/containers/policy.json"));
        assert!(is_managed("/etc/crio/policies/team-a.json"));
        assert!(!is_managed("/etc/crio/policies/../x.json"));
        assert!(!is_managed("/etc/crio/policies/a/b.json"));
        assert!(!is_managed("/etc/crio/policies/Team.json"));
        assert!(!is_managed("/etc/containers/registries.conf"));
    }
}
