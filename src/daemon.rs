//! The daemon: watches the manifests directory, reconciles (full render of the
//! latest snapshot, apply of the difference), serves status on a unix socket,
//! and talks to systemd (READY/STATUS/WATCHDOG/STOPPING).

use crate::apply::{Applier, ApplyReport, Desired};
use crate::config::{Config, SourceKind};
use crate::crio::{self, VerifyOutcome};
use crate::logging::*;
use crate::manifests::{self, Loaded, ManifestSet};
use crate::model::ObjectRef;
use crate::render::{
    self, Condition, Rendered, Snapshot, CRIO_POLICIES_DIR, POLICY_JSON, REGISTRIES_D_FILE,
};
use crate::status::CrioStatus;
use crate::status::{
    self, FileStatus, LastReconcile, McSourceStatus, PolicyStatus, Request, Response, SourceStatus,
    Status,
};
use anyhow::{Context, Result};
use notify::Watcher;
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// Command line of `image-policy-agent`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "image-policy-agent",
    version,
    about = "Node agent: turns ClusterImagePolicy/ImagePolicy into CRI-O signature policies",
    long_about = "Watches ClusterImagePolicy and ImagePolicy manifests and writes /etc/containers/policy.json, \
/etc/crio/policies/<namespace>.json and /etc/containers/registries.d/sigstore-registries.yaml atomically, \
restoring the node's original policy.json when no policy is left. Runs in the foreground under systemd \
(Type=notify); status is served on a unix socket (see agentctl(8)); configuration in image-policy-agent.toml(5)."
)]
pub struct Args {
    /// Main configuration file (default /etc/image-policy-agent/config.toml);
    /// drop-ins are read from /usr/lib/image-policy-agent/config.d and from
    /// config.d beside this file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The longest a burst of changes can delay a reconcile.
const MAX_DEBOUNCE_FACTOR: u32 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

enum Event {
    /// Something changed in the manifests directory or a managed directory.
    Changed,
    /// `agentctl resync`: reconcile now, answer when done.
    Resync(oneshot::Sender<()>),
}

/// The reconciler: everything but the event loop, so tests can drive it.
pub struct Reconciler {
    pub config: Config,
    pub applier: Applier,
    /// Last good objects of each manifest file, kept in force while the file
    /// cannot be read (a half-edited file must not drop its policies).
    cache: BTreeMap<PathBuf, Vec<Loaded>>,
    /// The kube source's objects (set by the daemon in kube mode).
    pub kube: Option<crate::kubesource::Shared>,
    last_outcomes: BTreeMap<ObjectRef, (Condition, String)>,
    /// The CRI-O version in force (configured or detected).
    crio_version: Option<render::CrioVersion>,
    pub status: Status,
}

/// What status shows as the source's location.
fn source_path(c: &Config) -> String {
    match c.source_kind {
        SourceKind::Kube => match &c.kubeconfig {
            Some(p) => format!("kubeconfig {}", p.display()),
            None => "kubeconfig from $KUBECONFIG or in-cluster".into(),
        },
        _ => c.source_path.display().to_string(),
    }
}

/// What a reconcile did, for status.
struct Done {
    report: ApplyReport,
    policy_json_is_base: bool,
    summary: String,
}

fn gates(v: Option<render::CrioVersion>) -> Vec<String> {
    [
        ("sigstoreSigned", render::GATE_SIGSTORE),
        ("fulcio and Rekor keys", render::GATE_REKOR_FULCIO),
        ("namespace policy files", render::GATE_NAMESPACE_FILES),
        ("pki", render::GATE_PKI),
    ]
    .iter()
    .map(|(what, need)| {
        let ok = v.is_none_or(|v| v >= *need);
        format!(
            "{what} (CRI-O ≥ {need}): {}",
            if ok { "allowed" } else { "not written" }
        )
    })
    .collect()
}

impl Reconciler {
    pub fn new(config: Config) -> Reconciler {
        let applier = Applier::new(&config.root, &config.state_dir);
        let (crio_version, version_info) =
            crio::detect_version(config.render.crio_version, &config.crio_binary);
        let status = Status {
            healthy: false,
            summary: "starting".into(),
            source: SourceStatus {
                kind: config.source_kind.as_str().into(),
                path: source_path(&config),
                errors: Vec::new(),
                kube: None,
                machineconfig: None,
            },
            root: config.root.display().to_string(),
            last_reconcile: None,
            reconciles: 0,
            policies: Vec::new(),
            files: Vec::new(),
            crio: CrioStatus {
                version: version_info,
                gates: gates(crio_version),
                verification: None,
                hook_error: None,
            },
            warnings: Vec::new(),
        };
        Reconciler {
            config,
            applier,
            kube: None,
            cache: BTreeMap::new(),
            last_outcomes: BTreeMap::new(),
            crio_version,
            status,
        }
    }

    /// Takes a new configuration (SIGHUP), detecting the CRI-O version again.
    pub fn set_config(&mut self, config: Config) {
        let (v, info) = crio::detect_version(config.render.crio_version, &config.crio_binary);
        self.crio_version = v;
        self.status.crio.version = info;
        self.status.crio.gates = gates(v);
        self.status.crio.verification = None;
        self.status.source.kind = config.source_kind.as_str().into();
        self.status.source.path = source_path(&config);
        self.status.source.kube = None;
        self.status.source.machineconfig = None;
        self.status.root = config.root.display().to_string();
        self.applier = Applier::new(&config.root, &config.state_dir);
        self.config = config;
    }

    /// True when CRI-O could not be asked and should be asked again later.
    pub fn verification_pending(&self) -> bool {
        matches!(&self.status.crio.verification, Some(v) if v.outcome == VerifyOutcome::Unreachable)
    }

    fn load(&mut self) -> Result<(Vec<Loaded>, Vec<String>)> {
        let dir = &self.config.source_path;
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating manifests directory {}", dir.display()))?;
        }
        let set = manifests::load_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        let errors: Vec<String> = set.errors.iter().map(|e| e.to_string()).collect();
        let broken: std::collections::BTreeSet<&PathBuf> =
            set.errors.iter().map(|e| &e.file).collect();
        let mut by_file: BTreeMap<PathBuf, Vec<Loaded>> = BTreeMap::new();
        for l in &set.objects {
            by_file
                .entry(l.source.file.clone())
                .or_default()
                .push(l.clone());
        }
        let mut objects = Vec::new();
        let mut cache = BTreeMap::new();
        for f in &broken {
            if let Some(prev) = self.cache.get(*f) {
                warn!(file_path = %f.display(), "{} cannot be read; keeping its last good content in force", f.display());
                objects.extend(prev.iter().cloned());
                cache.insert((*f).clone(), prev.clone());
            }
        }
        for (f, objs) in by_file {
            if !broken.contains(&f) {
                objects.extend(objs.iter().cloned());
                cache.insert(f, objs);
            }
        }
        self.cache = cache;
        Ok((objects, errors))
    }

    /// One full reconcile. Errors leave the node's files as they were.
    pub fn reconcile(&mut self) -> Result<ApplyReport> {
        let result = self.try_reconcile();
        self.status.reconciles += 1;
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        match &result {
            Ok(None) => {
                // Nothing known yet: the node's files stay as they are.
                self.status.healthy = false;
                self.status.summary =
                    "waiting for the first complete list from the API server; node files left as they are"
                        .into();
            }
            Ok(Some(done)) => {
                let report = &done.report;
                self.status.healthy = !matches!(&self.status.crio.verification, Some(v) if v.outcome == VerifyOutcome::Mismatch)
                    && self.status.crio.hook_error.is_none();
                self.status.last_reconcile = Some(LastReconcile {
                    time: now,
                    outcome: "ok".into(),
                    error: None,
                    files_written: report.written.len(),
                    files_restored: report.restored.len(),
                    files_removed: report.removed.len(),
                });
                self.status.files = report
                    .digests
                    .iter()
                    .map(|(p, sha)| FileStatus {
                        path: p.clone(),
                        sha256: sha.clone(),
                        managed: !(p == POLICY_JSON && done.policy_json_is_base),
                    })
                    .collect();
                self.status.summary = done.summary.clone();
            }
            Err(e) => {
                let msg = format!("{e:#}");
                error!(error = %msg, "reconcile failed: {msg}");
                self.status.healthy = false;
                self.status.last_reconcile = Some(LastReconcile {
                    time: now,
                    outcome: "error".into(),
                    error: Some(msg.clone()),
                    files_written: 0,
                    files_restored: 0,
                    files_removed: 0,
                });
                let first = self
                    .status
                    .summary
                    .split("; last reconcile failed")
                    .next()
                    .and_then(|s| s.split("; API server unreachable").next())
                    .unwrap_or("")
                    .to_string();
                self.status.summary = format!("{first}; last reconcile failed: {msg}");
            }
        }
        if let Some(k) = &self.kube {
            if let Ok(st) = k.lock() {
                with_kube_status(&mut self.status, st.status());
            }
        }
        result.map(|d| d.map(|d| d.report).unwrap_or_default())
    }

    /// None: the source has nothing to say yet (kube before its first list).
    fn try_reconcile(&mut self) -> Result<Option<Done>> {
        if self.config.source_kind == SourceKind::MachineConfig {
            return self.reconcile_machineconfig().map(Some);
        }
        let (objects, errors) = match self.config.source_kind {
            SourceKind::Kube => {
                let loaded = match &self.kube {
                    Some(k) => k
                        .lock()
                        .map_err(|_| anyhow::anyhow!("kube state lock poisoned"))?
                        .loaded(),
                    None => None,
                };
                match loaded {
                    Some(o) => (o, Vec::new()),
                    None => return Ok(None),
                }
            }
            _ => self.load()?,
        };
        self.status.source.errors = errors;
        for e in &self.status.source.errors {
            warn!("{e}");
        }
        let root = crate::fsroot::Root::new(&self.config.root);
        let (mirrors, mut warnings) = crate::registries_conf::load(&root);
        let (foreign, foreign_errors) = crate::registries_d::foreign_scopes(&root);
        warnings.extend(foreign_errors);
        for w in &warnings {
            warn!("{w}");
        }
        self.status.warnings = warnings;

        let base = self.applier.base(self.config.base_policy.as_deref())?;
        if base.drifted {
            warn!(
                message_id = MSG_DRIFT,
                file_path = POLICY_JSON,
                "{POLICY_JSON} was changed by someone else; taking its content as the new base"
            );
        }
        let set = ManifestSet {
            objects,
            ..Default::default()
        };
        let mut options = self.config.render.clone();
        options.crio_version = self.crio_version;
        let snap = Snapshot {
            objects: set.validated(),
            base_policy: base.bytes,
            options,
            mirrors: &mirrors,
            foreign_registries_d: foreign,
        };
        let rendered = render::render(&snap)?;
        crate::preflight::check(&rendered, self.crio_version)?;
        let report = self.deploy(&rendered, rendered.namespace_count() > 0)?;
        self.log_outcomes(&rendered);
        self.status.policies = rendered.outcomes.iter().map(PolicyStatus::from).collect();
        Ok(Some(Done {
            report,
            policy_json_is_base: rendered.policy_json_is_base,
            summary: status::summary(&rendered.outcomes, rendered.namespace_count(), None),
        }))
    }

    /// The machineconfig source: the files as the MachineConfig carries
    /// them. Anything undecodable fails the reconcile before any write.
    fn reconcile_machineconfig(&mut self) -> Result<Done> {
        self.status.policies.clear();
        let mc = match crate::machineconfig::load(&self.config.source_path) {
            Ok(mc) => mc,
            Err(e) => {
                self.status.source.errors = vec![e.to_string()];
                return Err(e.into());
            }
        };
        self.status.source.errors.clear();
        for s in &mc.skipped {
            warn!("{s}");
        }
        self.status.source.machineconfig = Some(McSourceStatus {
            name: mc.name.clone(),
            files: mc.files.0.len(),
            skipped: mc.skipped.clone(),
        });
        let ns_files = mc
            .files
            .0
            .keys()
            .filter(|p| p.starts_with(CRIO_POLICIES_DIR))
            .count();
        crate::preflight::check_files(&mc.files, self.crio_version)?;
        // Drift is still noticed (and logged), but the MachineConfig's
        // policy.json is deployed as it is: it was rendered by the cluster.
        let base = self.applier.base(None)?;
        if base.drifted {
            warn!(
                message_id = MSG_DRIFT,
                file_path = POLICY_JSON,
                "{POLICY_JSON} was changed by someone else; taking its content as the node's original"
            );
        }
        let report = self.deploy(&mc.files, ns_files > 0)?;
        let what = match &mc.name {
            Some(n) => format!("MachineConfig {n}"),
            None => "Ignition config".into(),
        };
        Ok(Done {
            report,
            policy_json_is_base: !mc.files.0.contains_key(POLICY_JSON),
            summary: format!(
                "deployed {} files of {what} ({ns_files} namespaces)",
                mc.files.0.len()
            ),
        })
    }

    /// Writes `d` (verify command, rollback), runs the reload command, and
    /// checks CRI-O's configuration.
    fn deploy(&mut self, d: &impl Desired, ns_files: bool) -> Result<ApplyReport> {
        let checkpoint = match &self.config.verify_command {
            Some(_) => {
                let owned = self.applier.owned()?;
                let paths: std::collections::BTreeSet<String> =
                    d.paths().into_iter().chain(owned).collect();
                Some(self.applier.checkpoint(paths.iter().map(String::as_str))?)
            }
            None => None,
        };
        let report = self.applier.apply(d)?;
        self.status.crio.hook_error = None;
        if let (Some(cmd), Some(cp)) = (&self.config.verify_command, &checkpoint) {
            for p in &report.written {
                let real = crate::fsroot::display_path(&self.config.root, p);
                if let Err(e) = crio::run_command(cmd, Some(&real)) {
                    let msg = format!(
                        "verify command rejected {p}: {e}; the previous files were put back"
                    );
                    error!(message_id = MSG_VERIFY_FAILED, file_path = %p, "{msg}");
                    self.applier.rollback(cp)?;
                    self.status.crio.hook_error = Some(msg.clone());
                    anyhow::bail!(msg);
                }
            }
        }
        for p in &report.written {
            info!(message_id = MSG_FILE_WRITTEN, file_path = %p, "wrote {p}");
        }
        for p in report.restored.iter().chain(&report.removed) {
            info!(message_id = MSG_FILE_RESTORED, file_path = %p, "restored {p} to its original state");
        }
        if report.changed() {
            if let Some(cmd) = &self.config.reload_command {
                if let Err(e) = crio::run_command(cmd, None) {
                    warn!("reload command failed: {e}");
                    self.status.crio.hook_error = Some(format!("reload command failed: {e}"));
                }
            }
        }
        let verified_ok =
            matches!(&self.status.crio.verification, Some(v) if v.outcome == VerifyOutcome::Ok);
        if self.config.crio_check_config && (report.changed() || !verified_ok) {
            let v = crio::verify(&self.config.crio_socket, &self.config.root, ns_files);
            match v.outcome {
                VerifyOutcome::Ok => debug!("{}", v.message),
                VerifyOutcome::Unreachable => warn!("{}", v.message),
                VerifyOutcome::Mismatch => {
                    error!(
                        message_id = MSG_VERIFY_FAILED,
                        "CRI-O configuration mismatch: {}", v.message
                    )
                }
            }
            self.status.crio.verification = Some(v);
        }
        Ok(report)
    }

    /// Logs outcomes that changed since the last reconcile.
    fn log_outcomes(&mut self, r: &Rendered) {
        let mut now = BTreeMap::new();
        for o in &r.outcomes {
            let key = (o.condition, o.message.clone());
            if self.last_outcomes.get(&o.id) != Some(&key) {
                let ns = o.id.namespace.as_deref().unwrap_or("");
                match o.condition {
                    Condition::Applied => debug!(policy_kind = %o.id.kind, policy_namespace = ns,
                        policy_name = %o.id.name, "{}: applied", o.id),
                    Condition::Pending => {
                        warn!(message_id = MSG_POLICY_PENDING, policy_kind = %o.id.kind,
                        policy_namespace = ns, policy_name = %o.id.name, "{}: pending: {}", o.id, o.message)
                    }
                    Condition::Invalid => {
                        warn!(message_id = MSG_POLICY_INVALID, policy_kind = %o.id.kind,
                        policy_namespace = ns, policy_name = %o.id.name, "{}: invalid: {}", o.id, o.message)
                    }
                }
            }
            now.insert(o.id.clone(), key);
        }
        self.last_outcomes = now;
    }
}

fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!("sd_notify: {e}");
    }
}

fn group_id(name: &str) -> Result<nix::unistd::Gid> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    nix::unistd::Group::from_name(name)
        .with_context(|| format!("looking up group {name:?}"))?
        .map(|g| g.gid)
        .with_context(|| format!("socket_group {name:?}: no such group"))
}

/// Binds the status socket: directory 0750 (when we create it), socket 0660,
/// both in `group` when given.
fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    let dir = path.parent().context("socket path has no directory")?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        if let Some(g) = group {
            nix::unistd::chown(dir, None, Some(group_id(g)?))
                .with_context(|| format!("chown {}", dir.display()))?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket",
            path.display()
        );
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(path).is_err(),
            "another daemon is listening on {}",
            path.display()
        );
        std::fs::remove_file(path)?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(g) = group {
        nix::unistd::chown(path, None, Some(group_id(g)?))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(listener)
}

/// The kube source's state, read live by `status` (its connection changes
/// between reconciles).
type LiveKube = Arc<Mutex<Option<crate::kubesource::Shared>>>;

fn current_status(shared: &Arc<Mutex<Status>>, live_kube: &LiveKube) -> Option<Status> {
    let mut st = shared.lock().ok()?.clone();
    if let Some(k) = live_kube.lock().ok().and_then(|k| k.clone()) {
        if let Ok(k) = k.lock() {
            with_kube_status(&mut st, k.status());
        }
    }
    Some(st)
}

/// Puts the kube source's state into `st`: while the API server cannot be
/// reached the files stay as last listed, which status says (degraded).
fn with_kube_status(st: &mut Status, ks: crate::status::KubeSourceStatus) {
    if !ks.connected && ks.synced && !st.summary.contains("; API server unreachable") {
        st.healthy = false;
        st.summary.push_str(&format!(
            "; API server unreachable since {}, files kept as last listed",
            ks.since.as_deref().unwrap_or("start")
        ));
    }
    st.source.kube = Some(ks);
}

async fn serve_client(
    stream: UnixStream,
    shared: Arc<Mutex<Status>>,
    live_kube: LiveKube,
    tx: mpsc::UnboundedSender<Event>,
) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response {
                version: status::PROTOCOL_VERSION,
                ok: false,
                error: Some(format!("bad request: {e}")),
                status: None,
            },
            Ok(r) if r.version != status::PROTOCOL_VERSION => Response {
                version: status::PROTOCOL_VERSION,
                ok: false,
                error: Some(format!(
                    "unsupported protocol version {} (this daemon speaks {})",
                    r.version,
                    status::PROTOCOL_VERSION
                )),
                status: None,
            },
            Ok(r) => match r.command.as_str() {
                "status" => Response {
                    version: status::PROTOCOL_VERSION,
                    ok: true,
                    error: None,
                    status: current_status(&shared, &live_kube),
                },
                "resync" => {
                    let me = nix::unistd::geteuid().as_raw();
                    if uid.is_some_and(|u| u == 0 || u == me) {
                        let (done_tx, done_rx) = oneshot::channel();
                        let _ = tx.send(Event::Resync(done_tx));
                        let _ = done_rx.await;
                        Response {
                            version: status::PROTOCOL_VERSION,
                            ok: true,
                            error: None,
                            status: current_status(&shared, &live_kube),
                        }
                    } else {
                        Response {
                            version: status::PROTOCOL_VERSION,
                            ok: false,
                            error: Some(format!(
                                "permission denied: resync needs uid 0 (caller has uid {})",
                                uid.map(|u| u.to_string())
                                    .unwrap_or_else(|| "unknown".into())
                            )),
                            status: None,
                        }
                    }
                }
                other => Response {
                    version: status::PROTOCOL_VERSION,
                    ok: false,
                    error: Some(format!("unknown command {other:?}")),
                    status: None,
                },
            },
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{}".into());
        out.push('\n');
        if wr.write_all(out.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Watches the source (manifests directory, or the MachineConfig file's
/// directory) and the managed directories. Missing directories are skipped
/// (the manifests one is created by the reconciler).
fn watch(config: &Config, tx: mpsc::UnboundedSender<Event>) -> Option<notify::RecommendedWatcher> {
    // The MachineConfig file is replaced atomically by its writer, so its
    // directory is watched, for that one name.
    let mc_name = (config.source_kind == SourceKind::MachineConfig)
        .then(|| config.source_path.file_name().map(|n| n.to_os_string()))
        .flatten();
    let mc_dir = config.source_path.parent().map(Path::to_path_buf);
    let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = ev.paths.iter().any(|p| {
            let name = p.file_name();
            if let Some(mc) = &mc_name {
                if p.parent() == mc_dir.as_deref() {
                    return name == Some(mc.as_os_str());
                }
            }
            name.and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        });
        if relevant {
            let _ = tx.send(Event::Changed);
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch files: {e}");
            return None;
        }
    };
    let root = crate::fsroot::Root::new(&config.root);
    let mut dirs = match config.source_kind {
        SourceKind::Manifests => vec![config.source_path.clone()],
        SourceKind::MachineConfig => config
            .source_path
            .parent()
            .map(|d| vec![d.to_path_buf()])
            .unwrap_or_default(),
        SourceKind::Kube => Vec::new(),
    };
    for node in [
        POLICY_JSON,
        REGISTRIES_D_FILE,
        &format!("{CRIO_POLICIES_DIR}/x.json"),
    ] {
        if let Some(d) = root
            .resolve(node)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            dirs.push(d);
        }
    }
    for d in dirs {
        if d.is_dir() {
            if let Err(e) = w.watch(&d, notify::RecursiveMode::NonRecursive) {
                warn!("cannot watch {}: {e}", d.display());
            }
        }
    }
    Some(w)
}

/// The kube source's task, when that is the source.
struct KubeTask {
    handle: tokio::task::JoinHandle<()>,
    kubeconfig: Option<PathBuf>,
}

impl Drop for KubeTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts (or keeps, or stops) the kube source to match `rec.config`.
fn kube_task(
    rec: &mut Reconciler,
    current: Option<KubeTask>,
    tx: &mpsc::UnboundedSender<Event>,
) -> Option<KubeTask> {
    if rec.config.source_kind != SourceKind::Kube {
        rec.kube = None;
        return None;
    }
    if let Some(t) = current {
        if t.kubeconfig == rec.config.kubeconfig && rec.kube.is_some() {
            return Some(t);
        }
    }
    let shared = crate::kubesource::Shared::default();
    rec.kube = Some(shared.clone());
    let tx = tx.clone();
    let kubeconfig = rec.config.kubeconfig.clone();
    let handle = tokio::spawn(crate::kubesource::run(
        kubeconfig.clone(),
        shared,
        Box::new(move || {
            let _ = tx.send(Event::Changed);
        }),
    ));
    Some(KubeTask { handle, kubeconfig })
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(config_path: Option<PathBuf>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(config_path))
}

async fn run_async(config_path: Option<PathBuf>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = Config::load(config_path.as_deref())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let mut rec = Reconciler::new(config);
    let _ = rec.applier.clean_temporaries(&[
        POLICY_JSON,
        REGISTRIES_D_FILE,
        &format!("{CRIO_POLICIES_DIR}/x.json"),
    ]);
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut kube = kube_task(&mut rec, None, &tx);
    // The first reconcile happens before the socket is served and before
    // watching (so we do not react to our own writes); then READY.
    let first = rec.reconcile();
    let mut watcher = watch(&rec.config, tx.clone());
    let listener = bind_socket(&rec.config.socket, rec.config.socket_group.as_deref())?;
    let socket_path = rec.config.socket.clone();
    let shared = Arc::new(Mutex::new(rec.status.clone()));
    let live_kube = Arc::new(Mutex::new(rec.kube.clone()));
    {
        let shared = shared.clone();
        let tx = tx.clone();
        let live_kube = live_kube.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(serve_client(
                            s,
                            shared.clone(),
                            live_kube.clone(),
                            tx.clone(),
                        ));
                    }
                    Err(e) => warn!("accept: {e}"),
                }
            }
        });
    }

    let mut backoff: Option<Duration> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    if first.is_err() {
        backoff = Some(Duration::from_secs(1));
        retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
    } else if rec.verification_pending() {
        retry_at = Some(tokio::time::Instant::now() + VERIFY_RETRY);
    }
    publish(&shared, &rec);
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&rec.status.summary),
    ]);
    info!("ready: {}", rec.status.summary);

    let mut usec = 0u64;
    let watchdog =
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec) / 2);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let debounce = Duration::from_millis(rec.config.debounce_ms);
    let mut due: Option<tokio::time::Instant> = None;
    let mut burst_start: Option<Instant> = None;

    loop {
        let reconcile_now;
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Changed) => {
                    let now = Instant::now();
                    let start = *burst_start.get_or_insert(now);
                    let latest = start + debounce * MAX_DEBOUNCE_FACTOR;
                    due = Some(tokio::time::Instant::from_std((now + debounce).min(latest)));
                    reconcile_now = false;
                }
                Some(Event::Resync(done)) => {
                    run_reconcile(&mut rec, &mut backoff, &mut retry_at);
                    publish(&shared, &rec);
                    let _ = done.send(());
                    reconcile_now = false;
                }
                None => break,
            },
            _ = sleep_until(due), if due.is_some() => { due = None; burst_start = None; reconcile_now = true; }
            _ = sleep_until(retry_at), if retry_at.is_some() => { retry_at = None; reconcile_now = true; }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                reconcile_now = false;
            }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading configuration");
                match Config::load(config_path.as_deref()) {
                    Ok(c) => {
                        let rewatch = c.source_path != rec.config.source_path
                            || c.source_kind != rec.config.source_kind
                            || c.root != rec.config.root;
                        if c.socket != rec.config.socket {
                            warn!("socket path changes need a restart; keeping {}", rec.config.socket.display());
                        }
                        let mut c = c;
                        c.socket = rec.config.socket.clone();
                        rec.set_config(c);
                        kube = kube_task(&mut rec, kube.take(), &tx);
                        if let Ok(mut l) = live_kube.lock() {
                            l.clone_from(&rec.kube);
                        }
                        if rewatch {
                            watcher = watch(&rec.config, tx.clone());
                        }
                    }
                    Err(e) => error!("keeping the old configuration: {e:#}"),
                }
                reconcile_now = true;
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        if reconcile_now {
            run_reconcile(&mut rec, &mut backoff, &mut retry_at);
            publish(&shared, &rec);
            notify_systemd(&[sd_notify::NotifyState::Status(&rec.status.summary)]);
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    info!("stopping");
    drop(watcher);
    drop(kube);
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// While CRI-O cannot be asked (it may start after us), ask again this often.
const VERIFY_RETRY: Duration = Duration::from_secs(30);

fn run_reconcile(
    rec: &mut Reconciler,
    backoff: &mut Option<Duration>,
    retry_at: &mut Option<tokio::time::Instant>,
) {
    match rec.reconcile() {
        Ok(_) => {
            *backoff = None;
            *retry_at = rec
                .verification_pending()
                .then(|| tokio::time::Instant::now() + VERIFY_RETRY);
        }
        Err(_) => {
            let b = backoff
                .map(|b| (b * 2).min(MAX_BACKOFF))
                .unwrap_or(Duration::from_secs(1));
            *backoff = Some(b);
            *retry_at = Some(tokio::time::Instant::now() + b);
            warn!("retrying in {}s", b.as_secs());
        }
    }
}

fn publish(shared: &Arc<Mutex<Status>>, rec: &Reconciler) {
    if let Ok(mut s) = shared.lock() {
        *s = rec.status.clone();
    }
}
