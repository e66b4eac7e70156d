//! Preflight: every rendered file is parsed back with the strict parser and
//! checked against what the node's CRI-O can read, before anything is written.
//! A failure here is a renderer bug; it must never reach disk.

use crate::apply::FileSet;
use crate::policy::{self, Requirement};
use crate::registries_d;
use crate::render::{
    CrioVersion, Rendered, CRIO_POLICIES_DIR, GATE_NAMESPACE_FILES, GATE_PKI, GATE_REKOR_FULCIO,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("preflight: {path}: {message}")]
pub struct PreflightError {
    pub path: String,
    pub message: String,
}

/// The newest gate any requirement of `p` needs.
fn gate_of<'a>(reqs: impl Iterator<Item = &'a Requirement>) -> Option<CrioVersion> {
    let mut need = None;
    for r in reqs {
        if let Requirement::SigstoreSigned(s) = r {
            let v = if s.pki.is_some() {
                GATE_PKI
            } else if s.fulcio.is_some() || s.rekor_public_key_data.is_some() {
                GATE_REKOR_FULCIO
            } else {
                continue;
            };
            need = need.max(Some(v));
        }
    }
    need
}

/// Checks every file of `r`; `crio` is the node's CRI-O version when known.
/// Every file is parsed back with the strict parser, one at a time.
pub fn check(r: &Rendered, crio: Option<CrioVersion>) -> Result<(), PreflightError> {
    // The gates are checked on what the agent adds, not on the node's base.
    if let Some(node) = crio {
        let fail = |path: &str, message: String| PreflightError {
            path: path.to_string(),
            message,
        };
        if r.namespace_count() > 0 && node < GATE_NAMESPACE_FILES {
            return Err(fail(
                CRIO_POLICIES_DIR,
                format!(
                    "namespace policy files need CRI-O ≥ {GATE_NAMESPACE_FILES} (node has {node})"
                ),
            ));
        }
        for (path, reqs) in r.added_requirements() {
            if let Some(need) = gate_of(reqs.into_iter()).filter(|need| node < *need) {
                return Err(fail(
                    &path,
                    format!("uses a field that needs CRI-O ≥ {need} (node has {node})"),
                ));
            }
        }
    }
    r.for_each_file(|path, bytes| {
        let fail = |message: String| PreflightError {
            path: path.to_string(),
            message,
        };
        if path.ends_with(".json") {
            policy::check(bytes).map_err(|e| fail(e.to_string()))
        } else {
            registries_d::parse_keys(bytes).map(|_| ()).map_err(fail)
        }
    })
}

/// Checks files deployed verbatim (a MachineConfig's): each parsed with the
/// strict parser, and every requirement in them held against the node's
/// CRI-O, since all of it is new to the node.
pub fn check_files(files: &FileSet, crio: Option<CrioVersion>) -> Result<(), PreflightError> {
    for (path, bytes) in &files.0 {
        let fail = |message: String| PreflightError {
            path: path.to_string(),
            message,
        };
        if !path.ends_with(".json") {
            registries_d::parse_keys(bytes).map_err(fail)?;
            continue;
        }
        let p = policy::parse(bytes).map_err(|e| fail(e.to_string()))?;
        let Some(node) = crio else { continue };
        if path.starts_with(CRIO_POLICIES_DIR) && node < GATE_NAMESPACE_FILES {
            return Err(fail(format!(
                "namespace policy files need CRI-O ≥ {GATE_NAMESPACE_FILES} (node has {node})"
            )));
        }
        let all = p
            .default
            .iter()
            .chain(p.transports.values().flat_map(|s| s.values().flatten()));
        if let Some(need) = gate_of(all).filter(|need| node < *need) {
            return Err(fail(format!(
                "uses a field that needs CRI-O ≥ {need} (node has {node})"
            )));
        }
    }
    Ok(())
}
