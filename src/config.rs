//! Daemon configuration: TOML, read from the vendor drop-ins
//! (`/usr/lib/image-policy-agent/config.d/*.toml`), then the main file, then
//! the drop-ins beside it (`<dir of main file>/config.d/*.toml`); later files
//! win key by key. Unknown keys are errors that name the key and the file.

use crate::render::{CrioVersion, RenderOptions, DEFAULT_PAYLOAD_REPOSITORIES};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/image-policy-agent/config.toml";
pub const VENDOR_DROPINS: &str = "/usr/lib/image-policy-agent/config.d";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory of YAML/JSON manifests.
    Manifests,
    /// The Kubernetes API (watch).
    Kube,
    /// A MachineConfig or Ignition file with the files already rendered.
    #[serde(rename = "machineconfig")]
    MachineConfig,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Manifests => "manifests",
            SourceKind::Kube => "kube",
            SourceKind::MachineConfig => "machineconfig",
        }
    }
}

pub const DEFAULT_MANIFESTS_DIR: &str = "/etc/image-policy-agent/policies.d";
/// Where OpenShift's machine-config-daemon keeps the node's current
/// (rendered) MachineConfig; the default file of the machineconfig source.
pub const DEFAULT_MACHINECONFIG_FILE: &str = "/etc/machine-config-daemon/currentconfig";

/// One file's content: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Partial {
    root: Option<PathBuf>,
    base_policy: Option<PathBuf>,
    payload_repositories: Option<Vec<String>>,
    source: Option<PartialSource>,
    agent: Option<PartialAgent>,
    crio: Option<PartialCrio>,
    verify: Option<PartialVerify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialSource {
    kind: Option<SourceKind>,
    path: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialAgent {
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    state_dir: Option<PathBuf>,
    debounce_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialCrio {
    version: Option<String>,
    socket: Option<PathBuf>,
    binary: Option<String>,
    check_config: Option<bool>,
    reload_command: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialVerify {
    command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Prefix of every managed path (`/` on a node).
    pub root: PathBuf,
    /// A base policy to merge into instead of the node's original policy.json
    /// (a real path, not under `root`).
    pub base_policy: Option<PathBuf>,
    pub source_kind: SourceKind,
    /// Manifests directory, or the MachineConfig file (a real path).
    pub source_path: PathBuf,
    /// kube source: kubeconfig file; None: `KUBECONFIG`, else in-cluster.
    pub kubeconfig: Option<PathBuf>,
    pub socket: PathBuf,
    /// Group allowed to read status (name or numeric gid); default: ours.
    pub socket_group: Option<String>,
    pub state_dir: PathBuf,
    pub debounce_ms: u64,
    pub render: RenderOptions,
    /// CRI-O's socket, for `GET /config` (a real path).
    pub crio_socket: PathBuf,
    /// Program asked for the version when `crio.version` is not set.
    pub crio_binary: String,
    /// Check CRI-O's running configuration after writing.
    pub crio_check_config: bool,
    /// Run after files changed (e.g. `["systemctl", "reload", "crio"]`).
    pub reload_command: Option<Vec<String>>,
    /// Run with each written file's path as last argument; a failure puts
    /// the previous files back.
    pub verify_command: Option<Vec<String>>,
    /// The files the configuration was read from, in order.
    pub files: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/"),
            base_policy: None,
            source_kind: SourceKind::Manifests,
            source_path: PathBuf::from(DEFAULT_MANIFESTS_DIR),
            kubeconfig: None,
            socket: PathBuf::from("/run/image-policy-agent/agent.sock"),
            socket_group: None,
            state_dir: PathBuf::from("/var/lib/image-policy-agent"),
            debounce_ms: 20,
            render: RenderOptions {
                payload_repositories: DEFAULT_PAYLOAD_REPOSITORIES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                crio_version: None,
            },
            crio_socket: PathBuf::from(crate::crio::DEFAULT_SOCKET),
            crio_binary: "crio".into(),
            crio_check_config: true,
            reload_command: None,
            verify_command: None,
            files: Vec::new(),
        }
    }
}

fn dropins(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let p = e
                    .with_context(|| format!("reading {}", dir.display()))?
                    .path();
                if p.extension().is_some_and(|x| x == "toml") {
                    v.push(p);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    v.sort();
    Ok(v)
}

impl Config {
    fn apply(&mut self, p: Partial, file: &Path) -> Result<()> {
        let dir = file.parent().unwrap_or(Path::new("/"));
        // Relative paths in a file are relative to that file's directory.
        let abs = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
        if let Some(v) = p.root {
            self.root = abs(v);
        }
        if let Some(v) = p.base_policy {
            self.base_policy = Some(abs(v));
        }
        if let Some(v) = p.payload_repositories {
            self.render.payload_repositories = v;
        }
        if let Some(s) = p.source {
            if let Some(v) = s.kind {
                self.source_kind = v;
            }
            if let Some(v) = s.path {
                self.source_path = abs(v);
            }
            if let Some(v) = s.kubeconfig {
                self.kubeconfig = Some(abs(v));
            }
        }
        if let Some(a) = p.agent {
            if let Some(v) = a.socket {
                self.socket = abs(v);
            }
            if let Some(v) = a.socket_group {
                self.socket_group = Some(v);
            }
            if let Some(v) = a.state_dir {
                self.state_dir = abs(v);
            }
            if let Some(v) = a.debounce_ms {
                self.debounce_ms = v;
            }
        }
        if let Some(c) = p.crio {
            if let Some(v) = c.version {
                match CrioVersion::parse(&v) {
                    Some(cv) => self.render.crio_version = Some(cv),
                    None => bail!(
                        "{}: crio.version {v:?}: expected MAJOR.MINOR[.PATCH]",
                        file.display()
                    ),
                }
            }
            if let Some(v) = c.socket {
                self.crio_socket = abs(v);
            }
            if let Some(v) = c.binary {
                self.crio_binary = v;
            }
            if let Some(v) = c.check_config {
                self.crio_check_config = v;
            }
            if let Some(v) = c.reload_command {
                if v.is_empty() {
                    bail!("{}: crio.reload_command must not be empty", file.display());
                }
                self.reload_command = Some(v);
            }
        }
        if let Some(v) = p.verify {
            if let Some(cmd) = v.command {
                if cmd.is_empty() {
                    bail!("{}: verify.command must not be empty", file.display());
                }
                self.verify_command = Some(cmd);
            }
        }
        self.files.push(file.to_path_buf());
        Ok(())
    }

    fn read_file(&mut self, file: &Path) -> Result<()> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading config {}", file.display()))?;
        let p: Partial = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
        self.apply(p, file)
    }

    /// Loads the configuration. `main` is `--config`; when it is `None` the
    /// default file is used if it exists.
    pub fn load(main: Option<&Path>) -> Result<Config> {
        Self::load_with_vendor(main, Path::new(VENDOR_DROPINS))
    }

    pub fn load_with_vendor(main: Option<&Path>, vendor: &Path) -> Result<Config> {
        let mut c = Config::default();
        for f in dropins(vendor)? {
            c.read_file(&f)?;
        }
        let main_path = main
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let main_path = std::path::absolute(&main_path)
            .with_context(|| format!("config path {}", main_path.display()))?;
        if main.is_some() || main_path.exists() {
            c.read_file(&main_path)?;
        }
        if let Some(dir) = main_path.parent() {
            for f in dropins(&dir.join("config.d"))? {
                c.read_file(&f)?;
            }
        }
        if c.source_kind == SourceKind::MachineConfig
            && c.source_path == Path::new(DEFAULT_MANIFESTS_DIR)
        {
            c.source_path = PathBuf::from(DEFAULT_MACHINECONFIG_FILE);
        }
        if !c.root.is_absolute() {
            bail!("root {:?} must be an absolute path", c.root);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layering_and_unknown_keys() {
        let d = tempfile::tempdir().unwrap();
        let vendor = d.path().join("vendor");
        std::fs::create_dir_all(&vendor).unwrap();
        std::fs::write(
            vendor.join("10-defaults.toml"),
            "[agent]\ndebounce_ms = 20\n",
        )
        .unwrap();
        let main = d.path().join("config.toml");
        std::fs::write(
            &main,
            "root = \"root\"\n[source]\npath = \"/m\"\n[crio]\nversion = \"1.30.2\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("config.d")).unwrap();
        std::fs::write(
            d.path().join("config.d/50-x.toml"),
            "[source]\npath = \"/n\"\n",
        )
        .unwrap();
        let c = Config::load_with_vendor(Some(&main), &vendor).unwrap();
        assert_eq!(c.root, d.path().join("root"));
        assert_eq!(c.source_path, PathBuf::from("/n"));
        assert_eq!(c.debounce_ms, 20);
        assert_eq!(c.render.crio_version, Some(CrioVersion(1, 30)));
        assert_eq!(c.files.len(), 3);

        std::fs::write(
            d.path().join("config.d/60-bad.toml"),
            "[agent]\nsockett = \"/x\"\n",
        )
        .unwrap();
        let e = Config::load_with_vendor(Some(&main), &vendor)
            .unwrap_err()
            .to_string();
        assert!(e.contains("60-bad.toml"), "{e}");
        assert!(e.contains("unknown field `sockett`"), "{e}");
    }
}
