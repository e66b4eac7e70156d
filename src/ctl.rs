//! `agentctl`: the command-line client. Offline commands (`validate`,
//! `render`) work without a daemon.

use crate::manifests::{self, Loaded, ManifestSet};
use crate::render::{self, CrioVersion, RenderOptions, Snapshot};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "agentctl",
    version,
    about = "Inspect and drive image-policy-agent; validate and render policies offline"
)]
pub struct Cli {
    /// The daemon's status socket.
    #[arg(
        long,
        global = true,
        default_value = "/run/image-policy-agent/agent.sock"
    )]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the daemon's health, last reconcile, per-object conditions and
    /// managed files. Exit 0 healthy, 1 degraded or any object not applied,
    /// 2 daemon unreachable.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the daemon to reconcile now (root only); prints the new status.
    Resync,
    /// Validate ClusterImagePolicy / ImagePolicy manifests; one line per problem,
    /// `FILE: KIND NAMESPACE/NAME: FIELD: MESSAGE`; exit 1 if there is any.
    Validate {
        /// Manifest files or directories (YAML or JSON, multi-document, kind: List).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Render the files the daemon would write, under a local root directory.
    Render {
        /// Directory of manifests.
        #[arg(long)]
        manifests: PathBuf,
        /// Base policy.json (default: OpenShift's template policy).
        #[arg(long)]
        base_policy: Option<PathBuf>,
        /// The node's registries.conf: mirrors of each scope are added to
        /// sigstore-registries.yaml.
        #[arg(long)]
        registries_conf: Option<PathBuf>,
        /// Output root: files go to ROOT/etc/containers/policy.json and so on.
        #[arg(long)]
        root: PathBuf,
        /// CRI-O version of the target node (e.g. 1.30); default: newest.
        #[arg(long)]
        crio_version: Option<String>,
        /// Payload repositories protected from policies (repeatable); default:
        /// OpenShift's release repositories. `--payload-repository ''` turns it off.
        #[arg(long = "payload-repository")]
        payload_repositories: Vec<String>,
    },
    /// Print CustomResourceDefinitions for ClusterImagePolicy and ImagePolicy
    /// (config.openshift.io, v1 stored, v1alpha1 served), for clusters that
    /// do not have them: `agentctl crd | kubectl apply -f -`.
    Crd,
}

/// Runs the CLI and returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Status { json } => status_cmd(&cli.socket, "status", json),
        Command::Resync => status_cmd(&cli.socket, "resync", false),
        Command::Validate { files } => validate(&files),
        Command::Crd => {
            std::io::stdout().write_all(crate::crd::yaml().as_bytes())?;
            Ok(0)
        }
        Command::Render {
            manifests,
            base_policy,
            registries_conf,
            root,
            crio_version,
            payload_repositories,
        } => {
            let mut options = RenderOptions::default();
            if let Some(v) = crio_version {
                options.crio_version = Some(
                    CrioVersion::parse(&v)
                        .with_context(|| format!("--crio-version {v:?}: expected MAJOR.MINOR"))?,
                );
            }
            if !payload_repositories.is_empty() {
                options.payload_repositories = payload_repositories
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect();
            }
            let mut mirrors = crate::registries_conf::RegistriesConf::default();
            if let Some(f) = &registries_conf {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?;
                mirrors
                    .add_file(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            }
            render_cmd(&manifests, base_policy.as_deref(), &root, options, &mirrors)
        }
    }
}

fn status_cmd(socket: &Path, command: &str, json: bool) -> Result<i32> {
    let resp = match crate::status::call(socket, command) {
        Ok(r) => r,
        Err(e @ crate::status::ClientError::Unreachable { .. }) => {
            eprintln!("agentctl: {e}");
            return Ok(2);
        }
        Err(e) => {
            eprintln!("agentctl: {e}");
            return Ok(1);
        }
    };
    let Some(st) = resp.status else {
        eprintln!("agentctl: the daemon sent no status");
        return Ok(1);
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &st)?;
        writeln!(out)?;
    } else {
        let health = if st.healthy { "healthy" } else { "DEGRADED" };
        writeln!(out, "image-policy-agent: {health}: {}", st.summary)?;
        writeln!(out, "source: {} {}", st.source.kind, st.source.path)?;
        if let Some(k) = &st.source.kube {
            let state = if k.connected {
                "connected"
            } else {
                "DISCONNECTED"
            };
            writeln!(
                out,
                "  server: {} ({})",
                k.server.as_deref().unwrap_or("not known yet"),
                k.api_version
                    .as_deref()
                    .unwrap_or("API version not discovered yet")
            )?;
            writeln!(
                out,
                "  {state} since {}; last event {}",
                k.since.as_deref().unwrap_or("start"),
                k.last_event.as_deref().unwrap_or("none")
            )?;
            if !k.synced {
                writeln!(out, "  not listed yet: node files left as they are")?;
            }
            if let Some(e) = &k.last_error {
                writeln!(out, "  last error: {e}")?;
            }
            writeln!(
                out,
                "  objects: {} ClusterImagePolicy, {} ImagePolicy",
                k.cluster_image_policies, k.image_policies
            )?;
        }
        if let Some(m) = &st.source.machineconfig {
            match &m.name {
                Some(n) => writeln!(out, "  MachineConfig {n}: {} managed files", m.files)?,
                None => writeln!(out, "  Ignition config: {} managed files", m.files)?,
            }
            for s in &m.skipped {
                writeln!(out, "  skipped: {s}")?;
            }
        }
        for e in &st.source.errors {
            writeln!(out, "  error: {e}")?;
        }
        writeln!(out, "root: {}", st.root)?;
        let v = &st.crio.version;
        writeln!(
            out,
            "CRI-O: {} ({})",
            v.version.as_deref().unwrap_or("unknown"),
            v.source
        )?;
        for g in &st.crio.gates {
            writeln!(out, "  {g}")?;
        }
        match &st.crio.verification {
            Some(ver) => writeln!(
                out,
                "  configuration check: {:?} at {}: {}",
                ver.outcome, ver.time, ver.message
            )?,
            None => writeln!(out, "  configuration check: not done")?,
        }
        if let Some(e) = &st.crio.hook_error {
            writeln!(out, "  hook: {e}")?;
        }
        for w in &st.warnings {
            writeln!(out, "warning: {w}")?;
        }
        if let Some(l) = &st.last_reconcile {
            write!(out, "last reconcile: {} {}", l.time, l.outcome)?;
            if let Some(e) = &l.error {
                write!(out, ": {e}")?;
            }
            writeln!(
                out,
                " ({} written, {} restored, {} removed)",
                l.files_written, l.files_restored, l.files_removed
            )?;
        }
        writeln!(out, "policies:")?;
        for p in &st.policies {
            let id = match &p.namespace {
                Some(ns) => format!("{} {}/{}", p.kind, ns, p.name),
                None => format!("{} {}", p.kind, p.name),
            };
            writeln!(out, "  {:<8} {id}: {}", p.condition.to_string(), p.message)?;
        }
        writeln!(out, "files:")?;
        for f in &st.files {
            let note = if f.managed { "" } else { " (node's own)" };
            writeln!(out, "  {} sha256:{}{note}", f.path, f.sha256)?;
        }
    }
    Ok(if st.all_applied() { 0 } else { 1 })
}

/// Validated objects with their sources; objects defined twice become invalid.
pub fn objects_with_sources(set: &ManifestSet) -> Vec<Loaded> {
    let merged = set.validated();
    merged
        .into_iter()
        .map(|result| {
            let id = manifests::id_of(&result).clone();
            let source = set
                .objects
                .iter()
                .find(|l| *manifests::id_of(&l.result) == id)
                .map(|l| l.source.clone())
                .expect("every validated object comes from a loaded one");
            Loaded { source, result }
        })
        .collect()
}

fn validate(paths: &[PathBuf]) -> Result<i32> {
    let set = manifests::load_paths(paths).context("reading manifests")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut problems = 0usize;
    for e in &set.errors {
        writeln!(out, "{e}")?;
        problems += 1;
    }
    let objects = objects_with_sources(&set);
    for l in &objects {
        if let Err(inv) = &l.result {
            for fe in &inv.errors {
                writeln!(out, "{}: {}: {}", l.source.file.display(), inv.id, fe)?;
                problems += 1;
            }
        }
    }
    let valid = objects.iter().filter(|l| l.result.is_ok()).count();
    eprintln!(
        "{} object(s) valid, {} invalid, {} problem(s)",
        valid,
        objects.len() - valid,
        problems
    );
    Ok(if problems > 0 { 1 } else { 0 })
}

/// Joins a node path (`/etc/...`) under `root`, refusing anything that
/// would leave it.
pub fn under_root(root: &Path, node_path: &str) -> Result<PathBuf> {
    let rel = node_path.trim_start_matches('/');
    let rel = Path::new(rel);
    anyhow::ensure!(
        rel.components()
            .all(|c| matches!(c, std::path::Component::Normal(_))),
        "path {node_path:?} is not a plain absolute path"
    );
    Ok(root.join(rel))
}

fn render_cmd(
    manifest_dir: &Path,
    base_policy: Option<&Path>,
    root: &Path,
    options: RenderOptions,
    mirrors: &crate::registries_conf::RegistriesConf,
) -> Result<i32> {
    let set = manifests::load_dir(manifest_dir)
        .with_context(|| format!("reading manifests directory {}", manifest_dir.display()))?;
    let base = match base_policy {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("reading base policy {}", p.display()))?
        }
        None => render::OPENSHIFT_TEMPLATE_POLICY.as_bytes().to_vec(),
    };
    let crio = options.crio_version;
    let snap = Snapshot {
        objects: set.validated(),
        base_policy: base,
        options,
        mirrors,
        foreign_registries_d: Default::default(),
    };
    let rendered = render::render(&snap)?;
    crate::preflight::check(&rendered, crio)?;
    rendered.for_each_file(|path, bytes| -> Result<()> {
        let dest = under_root(root, path)?;
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&dest, bytes).with_context(|| format!("writing {}", dest.display()))
    })?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = !set.errors.is_empty();
    for e in &set.errors {
        writeln!(out, "error: {e}")?;
    }
    for o in &rendered.outcomes {
        writeln!(out, "{}: {}: {}", o.id, o.condition, o.message)?;
        failed |= o.condition != render::Condition::Applied;
    }
    for path in rendered.paths() {
        eprintln!("wrote {}", under_root(root, &path)?.display());
    }
    Ok(if failed { 1 } else { 0 })
}
