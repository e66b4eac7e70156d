//! All filesystem access to managed files goes through [`Root`]: paths are
//! node paths (`/etc/containers/policy.json`) resolved under one root
//! directory, symlinks below the root are never followed, and writes are
//! atomic (temp file in the same directory, fsync, rename, fsync directory).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Suffix of every temporary file; never `.json`/`.yaml`, so CRI-O and
/// containers/image (which read `*.yaml` in registries.d) never see one.
const TMP_SUFFIX: &str = ".ipa-tmp";

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: refusing to follow a symlink in a managed location")]
    Symlink { path: PathBuf },
    #[error("{0:?} is not a plain absolute path")]
    BadPath(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct Root {
    root: PathBuf,
}

impl Root {
    pub fn new(root: impl Into<PathBuf>) -> Root {
        Root { root: root.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The real path of a node path, checking that no existing component
    /// below the root is a symlink.
    pub fn resolve(&self, node: &str) -> Result<PathBuf, FsError> {
        let rel = Path::new(
            node.strip_prefix('/')
                .ok_or_else(|| FsError::BadPath(node.into()))?,
        );
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(FsError::BadPath(node.into()));
        }
        let mut p = self.root.clone();
        for c in rel.components() {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => return Err(FsError::Symlink { path: p }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        Ok(self.root.join(rel))
    }

    /// The file's bytes, or `None` when it does not exist.
    pub fn read(&self, node: &str) -> Result<Option<Vec<u8>>, FsError> {
        let p = self.resolve(node)?;
        read_nofollow(&p)
    }

    /// Whether the file holds exactly `bytes`, compared in chunks (no copy).
    pub fn same_as(&self, node: &str, bytes: &[u8]) -> Result<bool, FsError> {
        let p = self.resolve(node)?;
        let mut f = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(FsError::Symlink { path: p })
            }
            Err(e) => return Err(io_err(&p)(e)),
        };
        if f.metadata().map_err(io_err(&p))?.len() != bytes.len() as u64 {
            return Ok(false);
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut off = 0;
        loop {
            let n = f.read(&mut buf).map_err(io_err(&p))?;
            if n == 0 {
                return Ok(off == bytes.len());
            }
            if off + n > bytes.len() || buf[..n] != bytes[off..off + n] {
                return Ok(false);
            }
            off += n;
        }
    }

    /// Atomically replaces (or creates) the file with `bytes`, mode 0644;
    /// missing parent directories are created with mode 0755.
    pub fn write(&self, node: &str, bytes: &[u8]) -> Result<(), FsError> {
        let p = self.resolve(node)?;
        if let Some(dir) = p.parent() {
            create_dirs(dir)?;
        }
        // Parents may have been created just now: check again.
        let p = self.resolve(node)?;
        atomic_write(&p, bytes, 0o644)
    }

    /// Removes the file; `Ok(false)` when it did not exist.
    pub fn remove(&self, node: &str) -> Result<bool, FsError> {
        let p = self.resolve(node)?;
        match fs::remove_file(&p) {
            Ok(()) => {
                if let Some(dir) = p.parent() {
                    sync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Removes temporary files a killed writer left in the directory of `node`.
    pub fn clean_temporaries(&self, node: &str) -> Result<usize, FsError> {
        let p = self.resolve(node)?;
        let Some(dir) = p.parent() else { return Ok(0) };
        clean_temporaries(dir)
    }
}

pub fn clean_temporaries(dir: &Path) -> Result<usize, FsError> {
    let mut n = 0;
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TMP_SUFFIX) {
            let _ = fs::remove_file(e.path());
            n += 1;
        }
    }
    Ok(n)
}

pub fn read_nofollow(p: &Path) -> Result<Option<Vec<u8>>, FsError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(p);
    match f {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(io_err(p))?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            Err(FsError::Symlink { path: p.into() })
        }
        Err(e) => Err(io_err(p)(e)),
    }
}

fn create_dirs(dir: &Path) -> Result<(), FsError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_err(dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write to a temporary file beside `path`, fsync it, rename it over `path`,
/// fsync the directory. A reader sees the old or the new file, never a torn
/// one; a crash at any point leaves one of the two.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let dir = path
        .parent()
        .ok_or_else(|| FsError::BadPath(path.display().to_string()))?;
    let name = path
        .file_name()
        .ok_or_else(|| FsError::BadPath(path.display().to_string()))?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}-{}{TMP_SUFFIX}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // The mode given to open is masked by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        // Owned by root, as on a node; chown only when that is not already so
        // (the sandbox filters the chown calls as privileged).
        if nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::MetadataExt;
            let m = f.metadata().map_err(io_err(&tmp))?;
            if m.uid() != 0 || m.gid() != 0 {
                nix::unistd::fchown(&f, Some(0.into()), Some(0.into()))
                    .map_err(|e| io_err(&tmp)(e.into()))?;
            }
        }
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Joins a node path under a root without any checks (for reporting).
pub fn display_path(root: &Path, node: &str) -> PathBuf {
    root.join(node.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reads_and_refuses_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let r = Root::new(d.path());
        assert_eq!(r.read("/etc/containers/policy.json").unwrap(), None);
        r.write("/etc/containers/policy.json", b"{}").unwrap();
        assert_eq!(
            r.read("/etc/containers/policy.json").unwrap().unwrap(),
            b"{}"
        );
        let meta = fs::metadata(d.path().join("etc/containers/policy.json")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        let meta = fs::metadata(d.path().join("etc/containers")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);

        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("etc/crio")).unwrap();
        assert!(matches!(
            r.write("/etc/crio/policies/a.json", b"x"),
            Err(FsError::Symlink { .. })
        ));
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/containers/x.json")).unwrap();
        assert!(matches!(
            r.read("/etc/containers/x.json"),
            Err(FsError::Symlink { .. })
        ));
        assert!(matches!(r.resolve("/etc/../x"), Err(FsError::BadPath(_))));
        assert!(r.remove("/etc/containers/policy.json").unwrap());
        assert!(!r.remove("/etc/containers/policy.json").unwrap());
    }
}
