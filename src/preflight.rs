//! Preflight: every rendered file is parsed back with the strict parser and
//! checked against what the node's CRI-O can read, before anything is written.
//! A failure here is a renderer bug; it must never reach disk.

use crate::policy::{self, Policy, Requirement};
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

fn gate_of(p: &Policy) -> Option<CrioVersion> {
    let mut need = None;
    let all = p
        .default
        .iter()
        .chain(p.transports.values().flat_map(|s| s.values().flatten()));
    for r in all {
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
pub fn check(r: &Rendered, crio: Option<CrioVersion>) -> Result<(), PreflightError> {
    for (path, bytes) in &r.files {
        let fail = |message: String| PreflightError {
            path: path.clone(),
            message,
        };
        if path.ends_with(".json") {
            let p = policy::parse(bytes).map_err(|e| fail(e.to_string()))?;
            if let Some(node) = crio {
                let is_ns = path.starts_with(CRIO_POLICIES_DIR);
                if is_ns && node < GATE_NAMESPACE_FILES {
                    return Err(fail(format!("namespace policy files need CRI-O ≥ {GATE_NAMESPACE_FILES} (node has {node})")));
                }
                // The base is the node's own file: only what we add is gated.
                if !(path.ends_with("/policy.json") && r.policy_json_is_base) {
                    if let Some(need) = gate_of(&p).filter(|need| node < *need) {
                        return Err(fail(format!(
                            "uses a field that needs CRI-O ≥ {need} (node has {node})"
                        )));
                    }
                }
            }
        } else {
            registries_d::parse_keys(bytes).map_err(fail)?;
        }
    }
    Ok(())
}
