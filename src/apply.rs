//! Apply: bring the node's managed files to a [`Rendered`] state, touching
//! only what differs; save each file's original before first replacing it;
//! restore originals (byte for byte) or remove the files the agent created
//! when they are no longer wanted. What the agent owns is kept in the state
//! directory, so a restarted daemon knows it.

use crate::fsroot::{self, FsError, Root};
use crate::render::{Rendered, OPENSHIFT_TEMPLATE_POLICY, POLICY_JSON};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub fn sha256_hex(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("state {path}: {message}")]
    State { path: PathBuf, message: String },
}

/// What was on disk before the agent first wrote a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Original {
    Absent,
    /// Saved under `<state_dir>/originals/<backup>`.
    Saved {
        backup: String,
        sha256: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub original: Original,
    /// sha256 of the bytes the agent last wrote (confirmed on disk).
    pub written: Option<String>,
    /// sha256 of bytes about to be written; set before the rename, cleared
    /// after, so a crash in between is not mistaken for an admin's edit.
    pub pending: Option<String>,
}

impl FileState {
    fn is_ours(&self, sha: &str) -> bool {
        self.written.as_deref() == Some(sha) || self.pending.as_deref() == Some(sha)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Node path → what the agent knows about it. A path is here exactly
    /// while the agent has (or is about to have) written it.
    pub files: BTreeMap<String, FileState>,
}

/// The state directory: `state.json` plus `originals/`.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    fn err(&self, message: impl Into<String>) -> ApplyError {
        ApplyError::State {
            path: self.dir.clone(),
            message: message.into(),
        }
    }

    fn ensure(&self) -> Result<(), ApplyError> {
        use std::os::unix::fs::DirBuilderExt;
        for d in [self.dir.clone(), self.dir.join("originals")] {
            if !d.is_dir() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&d)
                    .map_err(|e| self.err(format!("creating {}: {e}", d.display())))?;
            }
        }
        Ok(())
    }

    pub fn load(&self) -> Result<State, ApplyError> {
        match fsroot::read_nofollow(&self.dir.join("state.json"))? {
            None => Ok(State {
                version: 1,
                files: BTreeMap::new(),
            }),
            Some(b) => serde_json::from_slice(&b).map_err(|e| self.err(format!("state.json: {e}"))),
        }
    }

    pub fn save(&self, s: &State) -> Result<(), ApplyError> {
        self.ensure()?;
        let b = serde_json::to_vec_pretty(s).map_err(|e| self.err(e.to_string()))?;
        fsroot::atomic_write(&self.dir.join("state.json"), &b, 0o600)?;
        Ok(())
    }

    fn backup_name(node: &str) -> String {
        node.trim_start_matches('/').replace('/', "_")
    }

    fn save_original(&self, node: &str, bytes: &[u8]) -> Result<Original, ApplyError> {
        self.ensure()?;
        let name = Self::backup_name(node);
        fsroot::atomic_write(&self.dir.join("originals").join(&name), bytes, 0o600)?;
        Ok(Original::Saved {
            backup: name,
            sha256: sha256_hex(bytes),
        })
    }

    fn read_original(&self, o: &Original) -> Result<Option<Vec<u8>>, ApplyError> {
        match o {
            Original::Absent => Ok(None),
            Original::Saved { backup, sha256 } => {
                let b = fsroot::read_nofollow(&self.dir.join("originals").join(backup))?
                    .ok_or_else(|| self.err(format!("backup {backup} is missing")))?;
                if sha256_hex(&b) != *sha256 {
                    return Err(self.err(format!("backup {backup} does not match its checksum")));
                }
                Ok(Some(b))
            }
        }
    }

    fn drop_original(&self, o: &Original) {
        if let Original::Saved { backup, .. } = o {
            let _ = std::fs::remove_file(self.dir.join("originals").join(backup));
        }
    }
}

/// What a reconcile changed on disk, by node path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// sha256 of every file the render wants on disk (policy.json included
    /// when it is the node's own).
    pub digests: BTreeMap<String, String>,
    pub written: Vec<String>,
    /// Originals put back.
    pub restored: Vec<String>,
    /// Files the agent had created, removed.
    pub removed: Vec<String>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        !(self.written.is_empty() && self.restored.is_empty() && self.removed.is_empty())
    }
}

/// Files and state before an apply, for a rollback.
pub struct Checkpoint {
    files: Vec<(String, Option<Vec<u8>>)>,
    state: State,
}

/// The base for rendering policy.json, plus whether it drifted.
pub struct Base {
    pub bytes: Vec<u8>,
    /// policy.json was changed by someone else since the agent wrote it.
    pub drifted: bool,
}

/// Called with each desired file's node path and bytes.
pub type FileVisitor<'a> = dyn FnMut(&str, &[u8]) -> Result<(), ApplyError> + 'a;

/// What should be on disk: the renderer's output, or files taken verbatim
/// from a MachineConfig.
pub trait Desired {
    /// Node paths of every managed file that should exist.
    fn paths(&self) -> Vec<String>;
    /// policy.json is the node's own: nothing of ours to deploy there.
    fn policy_json_is_base(&self) -> bool;
    fn file(&self, path: &str) -> Option<Vec<u8>>;
    /// Calls `f` with each file, one at a time.
    fn each_file(&self, f: &mut FileVisitor) -> Result<(), ApplyError>;
}

impl Desired for Rendered {
    fn paths(&self) -> Vec<String> {
        Rendered::paths(self)
    }
    fn policy_json_is_base(&self) -> bool {
        self.policy_json_is_base
    }
    fn file(&self, path: &str) -> Option<Vec<u8>> {
        Rendered::file(self, path)
    }
    fn each_file(&self, f: &mut FileVisitor) -> Result<(), ApplyError> {
        self.for_each_file(f)
    }
}

/// Files to deploy exactly as given (node path → bytes). A policy.json that
/// is not among them means the node's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSet(pub BTreeMap<String, Vec<u8>>);

impl Desired for FileSet {
    fn paths(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
    fn policy_json_is_base(&self) -> bool {
        !self.0.contains_key(POLICY_JSON)
    }
    fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.0.get(path).cloned()
    }
    fn each_file(&self, f: &mut FileVisitor) -> Result<(), ApplyError> {
        for (p, b) in &self.0 {
            f(p, b)?;
        }
        Ok(())
    }
}

pub struct Applier {
    pub root: Root,
    pub state_dir: StateDir,
}

impl Applier {
    pub fn new(root: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Applier {
        Applier {
            root: Root::new(root),
            state_dir: StateDir::new(state_dir),
        }
    }

    /// The base policy: the node's original policy.json. When it changed
    /// under the agent, the new content becomes the original (and the base).
    /// Without any policy.json, OpenShift's template is the base.
    pub fn base(&self, configured: Option<&Path>) -> Result<Base, ApplyError> {
        let mut st = self.state_dir.load()?;
        let disk = self.root.read(POLICY_JSON)?;
        let mut drifted = false;
        let original = match st.files.get(POLICY_JSON) {
            None => disk,
            Some(fs) => {
                let sha = disk.as_deref().map(sha256_hex);
                if sha.as_deref().is_some_and(|s| fs.is_ours(s)) {
                    self.state_dir.read_original(&fs.original)?
                } else {
                    drifted = true;
                    let old = fs.original.clone();
                    let new = match &disk {
                        Some(b) => self.state_dir.save_original(POLICY_JSON, b)?,
                        None => Original::Absent,
                    };
                    if let Some(fs) = st.files.get_mut(POLICY_JSON) {
                        fs.original = new;
                    }
                    self.state_dir.save(&st)?;
                    if let Original::Saved { backup, .. } = &old {
                        if !matches!(&st.files[POLICY_JSON].original, Original::Saved { backup: b, .. } if b == backup)
                        {
                            self.state_dir.drop_original(&old);
                        }
                    }
                    disk
                }
            }
        };
        let bytes = match configured {
            Some(p) => std::fs::read(p).map_err(|e| FsError::Io {
                path: p.to_path_buf(),
                source: e,
            })?,
            None => original.unwrap_or_else(|| OPENSHIFT_TEMPLATE_POLICY.as_bytes().to_vec()),
        };
        Ok(Base { bytes, drifted })
    }

    /// Node paths of every file the agent currently owns.
    pub fn owned(&self) -> Result<BTreeSet<String>, ApplyError> {
        Ok(self.state_dir.load()?.files.into_keys().collect())
    }

    /// Brings disk to `r`. policy.json is restored when `r` says it is the
    /// base; every other owned file that `r` no longer has is restored
    /// (usually: removed).
    pub fn apply(&self, r: &impl Desired) -> Result<ApplyReport, ApplyError> {
        let mut st = self.state_dir.load()?;
        self.settle(&mut st)?;
        let before = st.clone();
        let mut report = ApplyReport::default();
        // 1. Before any managed file is touched, in one state update: the
        //    originals of paths written for the first time, and policy.json's
        //    pending digest (the only file whose content later serves as a
        //    base, so the only one that must never look like someone else's).
        let paths: Vec<String> = r
            .paths()
            .into_iter()
            .filter(|p| !(p == POLICY_JSON && r.policy_json_is_base()))
            .collect();
        for path in &paths {
            if !st.files.contains_key(path) {
                let original = match self.root.read(path)? {
                    Some(b) => self.state_dir.save_original(path, &b)?,
                    None => Original::Absent,
                };
                st.files.insert(
                    path.clone(),
                    FileState {
                        original,
                        written: None,
                        pending: None,
                    },
                );
            }
        }
        if !r.policy_json_is_base() {
            if let (Some(fs), Some(bytes)) = (st.files.get_mut(POLICY_JSON), r.file(POLICY_JSON)) {
                let want = sha256_hex(&bytes);
                if fs.written.as_deref() != Some(want.as_str()) {
                    fs.pending = Some(want);
                }
            }
        }
        if st != before {
            self.state_dir.save(&st)?;
        }

        // 2. Each file produced once, compared with disk without a copy, and
        //    written (atomically) only where it differs; 3. confirmed below.
        let desired: BTreeSet<String> = paths.into_iter().collect();
        r.each_file(&mut |path, bytes| -> Result<(), ApplyError> {
            let want = sha256_hex(bytes);
            report.digests.insert(path.to_string(), want.clone());
            if !desired.contains(path) {
                return Ok(());
            }
            if !self.root.same_as(path, bytes)? {
                self.root.write(path, bytes)?;
                report.written.push(path.to_string());
            }
            if let Some(fs) = st.files.get_mut(path) {
                fs.written = Some(want);
                fs.pending = None;
            }
            Ok(())
        })?;

        // 4. Owned files no longer wanted: original back, or removed.
        let stale: Vec<String> = st
            .files
            .keys()
            .filter(|p| !desired.contains(p.as_str()))
            .cloned()
            .collect();
        let mut dropped = Vec::new();
        for path in stale {
            let Some(fs) = st.files.get(&path).cloned() else {
                continue;
            };
            let disk = self.root.read(&path)?;
            let edited = match &disk {
                Some(b) => !fs.is_ours(&sha256_hex(b)),
                None => false,
            };
            if path == POLICY_JSON && edited {
                // Someone else's content now: it is the node's policy, keep it.
            } else {
                match self.state_dir.read_original(&fs.original)? {
                    Some(orig) => {
                        if disk.as_deref() != Some(orig.as_slice()) {
                            self.root.write(&path, &orig)?;
                            report.restored.push(path.clone());
                        }
                    }
                    None => {
                        if self.root.remove(&path)? {
                            report.removed.push(path.clone());
                        }
                    }
                }
            }
            st.files.remove(&path);
            dropped.push(fs.original);
        }
        if st != before {
            self.state_dir.save(&st)?;
        }
        for o in &dropped {
            self.state_dir.drop_original(o);
        }
        Ok(report)
    }

    /// After a crash between marking writes pending and confirming them:
    /// whatever of ours is on disk becomes `written`, so that a new pending
    /// value never makes our own earlier bytes look like someone else's.
    fn settle(&self, st: &mut State) -> Result<(), ApplyError> {
        let mut changed = false;
        for (path, fs) in st.files.iter_mut() {
            let Some(pending) = fs.pending.clone() else {
                continue;
            };
            let disk = self.root.read(path)?.map(|b| sha256_hex(&b));
            if disk.as_deref() == Some(pending.as_str()) {
                fs.written = Some(pending);
            }
            fs.pending = None;
            changed = true;
        }
        if changed {
            self.state_dir.save(st)?;
        }
        Ok(())
    }

    /// Records the current bytes of `paths` (and the state) so that
    /// [`Applier::rollback`] can put them back.
    pub fn checkpoint<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> Result<Checkpoint, ApplyError> {
        let mut files = Vec::new();
        for p in paths {
            files.push((p.to_string(), self.root.read(p)?));
        }
        Ok(Checkpoint {
            files,
            state: self.state_dir.load()?,
        })
    }

    /// Puts back what [`Applier::checkpoint`] recorded.
    pub fn rollback(&self, cp: &Checkpoint) -> Result<(), ApplyError> {
        for (path, bytes) in &cp.files {
            let now = self.root.read(path)?;
            if now != *bytes {
                match bytes {
                    Some(b) => self.root.write(path, b)?,
                    None => {
                        self.root.remove(path)?;
                    }
                }
            }
        }
        self.state_dir.save(&cp.state)
    }

    /// Removes temporaries a killed writer left next to managed files.
    pub fn clean_temporaries(&self, paths: &[&str]) -> Result<usize, ApplyError> {
        let mut n = 0;
        for p in paths {
            n += self.root.clean_temporaries(p)?;
        }
        Ok(n)
    }
}
