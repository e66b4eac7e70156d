//! Status: what the daemon reports, and the socket protocol that carries it:
//! one JSON request per line, one JSON response per line, versioned.

use crate::render::{Condition, Outcome};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub version: u32,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceStatus {
    pub kind: String,
    pub path: String,
    /// Files or documents that could not be read; the last good content of
    /// such a file is kept in force.
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeSourceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machineconfig: Option<McSourceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KubeSourceStatus {
    /// The API server's URL.
    pub server: Option<String>,
    /// The API version in use (`config.openshift.io/v1` or `…/v1alpha1`).
    pub api_version: Option<String>,
    pub connected: bool,
    /// RFC 3339: since when connected, or since when not.
    pub since: Option<String>,
    pub last_event: Option<String>,
    /// Watch events received since the daemon started.
    pub events: u64,
    pub last_error: Option<String>,
    /// Both kinds listed at least once; before that the node's files are
    /// left as they are.
    pub synced: bool,
    pub cluster_image_policies: usize,
    pub image_policies: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct McSourceStatus {
    /// `metadata.name` of the MachineConfig (none for a bare Ignition config).
    pub name: Option<String>,
    /// Managed files the config carries.
    pub files: usize,
    /// Entries under managed directories that were not written.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastReconcile {
    /// RFC 3339, UTC.
    pub time: String,
    /// "ok" or "error".
    pub outcome: String,
    pub error: Option<String>,
    pub files_written: usize,
    pub files_restored: usize,
    pub files_removed: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyStatus {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub condition: Condition,
    pub message: String,
}

impl From<&Outcome> for PolicyStatus {
    fn from(o: &Outcome) -> Self {
        PolicyStatus {
            kind: o.id.kind.to_string(),
            namespace: o.id.namespace.clone(),
            name: o.id.name.clone(),
            condition: o.condition,
            message: o.message.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileStatus {
    /// As on the node, e.g. `/etc/containers/policy.json`.
    pub path: String,
    pub sha256: String,
    /// True when the agent wrote it (false: the node's own policy.json).
    pub managed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CrioStatus {
    pub version: crate::crio::VersionInfo,
    /// Which policy features the node's CRI-O can read.
    pub gates: Vec<String>,
    /// The last check of CRI-O's running configuration.
    pub verification: Option<crate::crio::Verification>,
    /// The last failure of the reload or verify command, if any.
    pub hook_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub healthy: bool,
    /// One line, also sent to systemd as STATUS=.
    pub summary: String,
    pub source: SourceStatus,
    pub root: String,
    pub last_reconcile: Option<LastReconcile>,
    /// Reconciles since the daemon started.
    #[serde(default)]
    pub reconciles: u64,
    pub policies: Vec<PolicyStatus>,
    pub files: Vec<FileStatus>,
    pub crio: CrioStatus,
    /// Node files the agent reads but does not own and could not use
    /// (registries.conf, other registries.d files).
    pub warnings: Vec<String>,
}

impl Status {
    /// Every object Applied and the daemon healthy.
    pub fn all_applied(&self) -> bool {
        self.healthy
            && self
                .policies
                .iter()
                .all(|p| p.condition == Condition::Applied)
    }
}

/// "applied 12 policies, 3 namespaces; 1 pending, 2 invalid".
pub fn summary(outcomes: &[Outcome], namespaces: usize, error: Option<&str>) -> String {
    let count = |c| outcomes.iter().filter(|o| o.condition == c).count();
    let mut s = format!(
        "applied {} policies, {} namespaces",
        count(Condition::Applied),
        namespaces
    );
    let mut extra = Vec::new();
    for (c, word) in [
        (Condition::Pending, "pending"),
        (Condition::Invalid, "invalid"),
    ] {
        let n = count(c);
        if n > 0 {
            extra.push(format!("{n} {word}"));
        }
    }
    if !extra.is_empty() {
        s.push_str("; ");
        s.push_str(&extra.join(", "));
    }
    if let Some(e) = error {
        s.push_str("; last reconcile failed: ");
        s.push_str(e);
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source}")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error("bad response from the daemon: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and reads one response.
pub fn call(socket: &Path, command: &str) -> Result<Response, ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        path: socket.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(unreachable)?;
    let req = Request {
        version: PROTOCOL_VERSION,
        command: command.to_string(),
    };
    let mut line = serde_json::to_string(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut resp = String::new();
    BufReader::new(&s)
        .read_line(&mut resp)
        .map_err(unreachable)?;
    let r: Response =
        serde_json::from_str(&resp).map_err(|e| ClientError::Protocol(format!("{e}: {resp:?}")))?;
    if !r.ok {
        return Err(ClientError::Refused(
            r.error.unwrap_or_else(|| "request failed".into()),
        ));
    }
    Ok(r)
}
