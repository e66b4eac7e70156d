//! CRI-O: which version the node runs (it decides which policy fields may be
//! written), whether its running configuration reads the files where the
//! agent writes them (`GET /config` on its socket), and the optional hooks
//! (reload command, external verify command).

use crate::render::{CrioVersion, CRIO_POLICIES_DIR, POLICY_JSON};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const DEFAULT_SOCKET: &str = "/var/run/crio/crio.sock";

/// The version in force and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// `None`: unknown; every feature is allowed (treated as the newest).
    pub version: Option<String>,
    /// "config", "crio --version", or why it is unknown.
    pub source: String,
}

/// Finds the first `MAJOR.MINOR` after the word "version" in `crio --version` output.
pub fn parse_version_output(out: &str) -> Option<CrioVersion> {
    out.lines()
        .filter(|l| l.to_ascii_lowercase().contains("version"))
        .find_map(|l| {
            l.split(|c: char| c.is_whitespace() || c == ':')
                .filter(|w| w.starts_with(|c: char| c.is_ascii_digit() || c == 'v'))
                .find_map(CrioVersion::parse)
        })
}

/// The node's CRI-O version: the configured one wins, else `crio --version`.
pub fn detect_version(
    configured: Option<CrioVersion>,
    binary: &str,
) -> (Option<CrioVersion>, VersionInfo) {
    if let Some(v) = configured {
        return (
            Some(v),
            VersionInfo {
                version: Some(v.to_string()),
                source: "config".into(),
            },
        );
    }
    let unknown = |why: String| {
        (
            None,
            VersionInfo {
                version: None,
                source: format!("{why}; treated as the newest"),
            },
        )
    };
    match Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            match parse_version_output(&text) {
                Some(v) => (
                    Some(v),
                    VersionInfo {
                        version: Some(v.to_string()),
                        source: format!("{binary} --version"),
                    },
                ),
                None => unknown(format!("{binary} --version printed no version")),
            }
        }
        Err(e) => unknown(format!("{binary} --version: {e}")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyOutcome {
    /// CRI-O reads the files where the agent writes them.
    Ok,
    /// It does not: the files have no effect (or a partial one).
    Mismatch,
    /// CRI-O could not be asked; nothing is concluded.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub outcome: VerifyOutcome,
    pub message: String,
    /// RFC 3339 time of the check.
    pub time: String,
}

/// `GET path` over a unix socket (HTTP/1.1, `Connection: close`); the body.
pub fn http_get(socket: &Path, path: &str, timeout: Duration) -> Result<String, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: crio\r\nAccept: application/toml\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    s.take(16 * 1024 * 1024)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the response: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP response (no header end)")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("GET {path}: {status}"));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|e| format!("response is not UTF-8: {e}"))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("malformed chunk")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("malformed chunk size {size_text:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Checks CRI-O's running configuration against where the agent writes.
/// `root` is the prefix of every managed path; `namespace_files` whether
/// any `/etc/crio/policies/<ns>.json` is deployed.
pub fn verify(socket: &Path, root: &Path, namespace_files: bool) -> Verification {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let body = match http_get(socket, "/config", Duration::from_secs(5)) {
        Ok(b) => b,
        Err(e) => {
            return Verification {
                outcome: VerifyOutcome::Unreachable,
                message: format!("CRI-O not reachable: {e}"),
                time: now,
            }
        }
    };
    let table: toml::Table = match toml::from_str(&body) {
        Ok(t) => t,
        Err(e) => {
            return Verification {
                outcome: VerifyOutcome::Unreachable,
                message: format!("CRI-O /config is not TOML: {}", e.to_string().trim_end()),
                time: now,
            }
        }
    };
    let image = table
        .get("crio")
        .and_then(|c| c.get("image"))
        .and_then(|i| i.as_table());
    let get = |k: &str| {
        image
            .and_then(|i| i.get(k))
            .and_then(|v| v.as_str().map(str::to_string))
    };
    let expect_policy = crate::fsroot::display_path(root, POLICY_JSON);
    let expect_dir = crate::fsroot::display_path(root, CRIO_POLICIES_DIR);
    let mut problems = Vec::new();
    let policy = get("signature_policy").unwrap_or_default();
    let effective = if policy.is_empty() {
        POLICY_JSON.to_string()
    } else {
        policy.clone()
    };
    if Path::new(&effective) != expect_policy {
        problems.push(format!(
            "crio.image.signature_policy is {:?} (effective {effective}), but the agent writes {}",
            policy,
            expect_policy.display()
        ));
    }
    match get("signature_policy_dir") {
        Some(d) if Path::new(d.trim_end_matches('/')) == expect_dir => {}
        Some(d) => problems.push(format!(
            "crio.image.signature_policy_dir is {d:?}, but the agent writes namespace policies to {}",
            expect_dir.display()
        )),
        None if namespace_files => problems.push(
            "crio.image.signature_policy_dir is not in CRI-O's configuration (CRI-O older than 1.28): namespace policy files have no effect".into(),
        ),
        None => {}
    }
    if problems.is_empty() {
        Verification {
            outcome: VerifyOutcome::Ok,
            message: format!(
                "CRI-O reads {} and {}",
                expect_policy.display(),
                expect_dir.display()
            ),
            time: now,
        }
    } else {
        Verification {
            outcome: VerifyOutcome::Mismatch,
            message: problems.join("; "),
            time: now,
        }
    }
}

/// Runs `argv` (plus `extra` as the last argument); Err with its output on failure.
pub fn run_command(argv: &[String], extra: Option<&Path>) -> Result<(), String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut c = Command::new(prog);
    c.args(args).stdin(Stdio::null());
    if let Some(p) = extra {
        c.arg(p);
    }
    let o = c.output().map_err(|e| format!("{prog}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        let mut msg = format!("{} exited with {}", argv.join(" "), o.status);
        let err = String::from_utf8_lossy(&o.stderr);
        let err = err.trim();
        if !err.is_empty() {
            msg.push_str(": ");
            msg.push_str(&err.chars().take(2000).collect::<String>());
        }
        Err(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_output() {
        assert_eq!(
            parse_version_output("crio version 1.30.2\n"),
            Some(CrioVersion(1, 30))
        );
        assert_eq!(
            parse_version_output("INFO[0000] Starting\nVersion:        1.33.1\nGitCommit:  abc\n"),
            Some(CrioVersion(1, 33))
        );
        assert_eq!(parse_version_output("nothing here"), None);
    }

    #[test]
    fn chunked() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\n").is_err());
    }
}
