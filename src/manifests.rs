//! Loading manifests: YAML (multi-document) or JSON files, `kind: List`,
//! bounded input. Documents of other kinds are ignored; ours are validated.

use crate::model::{Kind, ObjectRef, API_GROUP};
use crate::validate::{validate_object, ErrorDetail, FieldError, InvalidObject, Validated};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Larger manifest files are refused unread.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Where a document came from: file, 1-based document index, and the 1-based
/// item index inside a `kind: List`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub file: PathBuf,
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)?;
        if let Some(i) = self.item {
            write!(f, " item {i}")?;
        }
        Ok(())
    }
}

/// A file, or a document in it, that could not be read as data at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based document index, when the error is inside one document.
    pub document: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            Some(d) => write!(
                f,
                "{}: document {}: {}",
                self.file.display(),
                d,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Loaded {
    pub source: Source,
    pub result: Validated,
}

#[derive(Debug, Clone, Default)]
pub struct ManifestSet {
    pub objects: Vec<Loaded>,
    pub errors: Vec<LoadError>,
    /// Documents of other kinds, skipped.
    pub ignored: usize,
}

impl ManifestSet {
    /// Validated objects, with objects defined more than once turned invalid
    /// (picking one would make the result depend on file order).
    pub fn validated(&self) -> Vec<Validated> {
        let mut seen: BTreeMap<&ObjectRef, Vec<&Source>> = BTreeMap::new();
        for l in &self.objects {
            seen.entry(id_of(&l.result)).or_default().push(&l.source);
        }
        let mut out = Vec::new();
        let mut dup_done = std::collections::BTreeSet::new();
        for l in &self.objects {
            let id = id_of(&l.result);
            let sources = &seen[id];
            if sources.len() == 1 {
                out.push(l.result.clone());
            } else if dup_done.insert(id.clone()) {
                let list: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
                out.push(Err(InvalidObject {
                    id: id.clone(),
                    errors: vec![FieldError {
                        field: "metadata.name".into(),
                        detail: ErrorDetail::Invalid {
                            ty: "string",
                            message: format!("defined more than once: {}", list.join(", ")),
                        },
                    }],
                }));
            }
        }
        out
    }
}

pub fn id_of(v: &Validated) -> &ObjectRef {
    match v {
        Ok(p) => &p.id,
        Err(e) => &e.id,
    }
}

pub fn read_bounded(path: &Path) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, larger than the limit of {} bytes",
            meta.len(),
            MAX_FILE_BYTES
        ));
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "file is larger than the limit of {MAX_FILE_BYTES} bytes"
        ));
    }
    String::from_utf8(buf).map_err(|e| format!("not UTF-8 text: {e}"))
}

/// Parses the documents of one file's text. JSON files hold one document.
pub fn parse_documents(text: &str, json: bool) -> Vec<Result<Value, (usize, String)>> {
    if json {
        return vec![serde_json::from_str(text).map_err(|e| (1, format!("invalid JSON: {e}")))];
    }
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(v) => out.push(Ok(v)),
            Err(e) => {
                // The stream cannot be resumed after a syntax error.
                out.push(Err((i + 1, format!("invalid YAML: {e}"))));
                break;
            }
        }
    }
    out
}

fn our_kind(doc: &Value) -> Option<Kind> {
    let kind = Kind::from_kind(doc.get("kind")?.as_str()?)?;
    // Same kind name in another API group is someone else's resource.
    match doc.get("apiVersion").and_then(Value::as_str) {
        Some(av) if av.contains('/') && av.split('/').next() != Some(API_GROUP) => None,
        _ => Some(kind),
    }
}

impl ManifestSet {
    fn add_document(&mut self, source: Source, doc: Value) {
        if doc.is_null() {
            return;
        }
        if !doc.is_object() {
            self.errors.push(LoadError {
                file: source.file,
                document: Some(source.document),
                message: "document is not a mapping (a Kubernetes object was expected)".into(),
            });
            return;
        }
        if doc.get("kind").and_then(Value::as_str) == Some("List") && source.item.is_none() {
            match doc.get("items") {
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let s = Source {
                            item: Some(i + 1),
                            ..source.clone()
                        };
                        self.add_document(s, item.clone());
                    }
                }
                _ => self.errors.push(LoadError {
                    file: source.file,
                    document: Some(source.document),
                    message: "kind List without an \"items\" array".into(),
                }),
            }
            return;
        }
        match our_kind(&doc) {
            Some(kind) => self.objects.push(Loaded {
                result: validate_object(kind, &doc),
                source,
            }),
            None => self.ignored += 1,
        }
    }

    /// Loads one file's text (`name` is what errors are reported under).
    pub fn add_text(&mut self, name: &Path, text: &str) {
        let json = name.extension().is_some_and(|e| e == "json");
        for (i, d) in parse_documents(text, json).into_iter().enumerate() {
            match d {
                Ok(v) => self.add_document(
                    Source {
                        file: name.to_path_buf(),
                        document: i + 1,
                        item: None,
                    },
                    v,
                ),
                Err((doc, message)) => self.errors.push(LoadError {
                    file: name.to_path_buf(),
                    document: Some(doc),
                    message,
                }),
            }
        }
    }

    pub fn add_file(&mut self, path: &Path) {
        match read_bounded(path) {
            Ok(text) => self.add_text(path, &text),
            Err(message) => self.errors.push(LoadError {
                file: path.to_path_buf(),
                document: None,
                message,
            }),
        }
    }
}

/// Is this directory entry a manifest? Hidden files (editor and atomic-write
/// temporaries) and other extensions are not.
pub fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e))
}

/// Loads every manifest file of a directory (not recursive), in name order.
pub fn load_dir(dir: &Path) -> std::io::Result<ManifestSet> {
    let mut names: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_manifest_name(name) && e.path().is_file() {
            names.push(e.path());
        }
    }
    names.sort();
    let mut set = ManifestSet::default();
    for p in names {
        set.add_file(&p);
    }
    Ok(set)
}

/// Loads a list of files and directories, as given on a command line.
pub fn load_paths(paths: &[PathBuf]) -> std::io::Result<ManifestSet> {
    let mut set = ManifestSet::default();
    for p in paths {
        if p.is_dir() {
            let sub = load_dir(p)?;
            set.objects.extend(sub.objects);
            set.errors.extend(sub.errors);
            set.ignored += sub.ignored;
        } else {
            set.add_file(p);
        }
    }
    Ok(set)
}
