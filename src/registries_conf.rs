//! The node's `registries.conf` (v2) and `registries.conf.d/*.conf`: where each
//! deployed scope is pulled from, so that signatures on mirrors are looked up
//! as sigstore attachments too. The expansion follows the machine-config-operator
//! (`addScopeMirrorsSigstoreRegistriesdConfig`) on top of containers/image's
//! prefix matching and reference rewriting (`sysregistriesv2`).

use crate::registries_d::MirrorSource;
use serde::Deserialize;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullFrom {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub location: String,
    pub pull_from: PullFrom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// `prefix`, or `location` when no prefix is set.
    pub prefix: String,
    pub location: String,
    pub mirror_by_digest_only: bool,
    pub mirrors: Vec<Mirror>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    pub registries: Vec<Registry>,
}

// The file is not ours: unknown keys are ignored, as containers/image does
// for the parts it does not use here.
#[derive(Deserialize)]
struct FileV2 {
    #[serde(default)]
    registry: Vec<RawRegistry>,
}

#[derive(Deserialize)]
struct RawRegistry {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    location: String,
    #[serde(default, rename = "mirror-by-digest-only")]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<RawMirror>,
}

#[derive(Deserialize)]
struct RawMirror {
    location: String,
    #[serde(default, rename = "pull-from-mirror")]
    pull_from_mirror: String,
}

impl RegistriesConf {
    /// Parses one file and lays it over `self`: an entry with the same prefix
    /// replaces the earlier one (drop-ins are applied in name order).
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        let f: FileV2 = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        for r in f.registry {
            let prefix = if r.prefix.is_empty() {
                r.location.clone()
            } else {
                r.prefix
            };
            if prefix.is_empty() {
                return Err("a [[registry]] has neither prefix nor location".into());
            }
            let mut mirrors = Vec::new();
            for m in r.mirror {
                let pull_from = match m.pull_from_mirror.as_str() {
                    "" | "all" => PullFrom::All,
                    "digest-only" => PullFrom::DigestOnly,
                    "tag-only" => PullFrom::TagOnly,
                    other => {
                        return Err(format!(
                            "mirror {:?}: unknown pull-from-mirror {other:?}",
                            m.location
                        ))
                    }
                };
                mirrors.push(Mirror {
                    location: m.location,
                    pull_from,
                });
            }
            let reg = Registry {
                prefix,
                location: r.location,
                mirror_by_digest_only: r.mirror_by_digest_only,
                mirrors,
            };
            match self.registries.iter_mut().find(|x| x.prefix == reg.prefix) {
                Some(x) => *x = reg,
                None => self.registries.push(reg),
            }
        }
        Ok(())
    }

    /// containers/image `FindRegistry`: the entry with the longest matching prefix.
    pub fn find(&self, reference: &str) -> Option<&Registry> {
        self.registries
            .iter()
            .filter_map(|r| matching_prefix(reference, &r.prefix).map(|n| (n, r)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, r)| r)
    }
}

/// The node's registries.conf and its drop-ins (`registries.conf.d/*.conf`,
/// in name order), and the files that could not be used.
pub fn load(root: &crate::fsroot::Root) -> (RegistriesConf, Vec<String>) {
    let mut conf = RegistriesConf::default();
    let mut errors = Vec::new();
    let mut files = vec!["/etc/containers/registries.conf".to_string()];
    if let Some(dir) = root
        .resolve("/etc/containers/registries.conf.d/x")
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
    {
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".conf") && !n.starts_with('.'))
                .collect();
            names.sort();
            files.extend(
                names
                    .into_iter()
                    .map(|n| format!("/etc/containers/registries.conf.d/{n}")),
            );
        }
    }
    for f in files {
        match root.read(&f) {
            Ok(Some(b)) => {
                if let Err(e) = conf.add_file(&String::from_utf8_lossy(&b)) {
                    errors.push(format!("{f}: {e}"));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    (conf, errors)
}

/// containers/image `refMatchingPrefix`: length of the match, or None.
fn matching_prefix(reference: &str, prefix: &str) -> Option<usize> {
    let boundary =
        |i: usize| i == reference.len() || matches!(reference.as_bytes()[i], b':' | b'/' | b'@');
    if let Some(sub) = prefix.strip_prefix('*') {
        let idx = reference.find(sub)?;
        if reference[..idx].contains('/') {
            return None;
        }
        let end = idx + sub.len();
        return boundary(end).then_some(end);
    }
    (reference.starts_with(prefix) && boundary(prefix.len())).then_some(prefix.len())
}

/// The pull sources of `reference` through `r` (mirrors, then the primary),
/// as rewritten references; `None` for an endpoint without a location.
fn pull_sources(r: &Registry, reference: &str, digested: bool) -> Vec<Option<String>> {
    let mut endpoints: Vec<&str> = Vec::new();
    if r.mirror_by_digest_only {
        if digested {
            endpoints.extend(r.mirrors.iter().map(|m| m.location.as_str()));
        }
    } else {
        for m in &r.mirrors {
            match m.pull_from {
                PullFrom::DigestOnly if !digested => continue,
                PullFrom::TagOnly if digested => continue,
                _ => endpoints.push(&m.location),
            }
        }
    }
    endpoints.push(&r.location);
    let Some(n) = matching_prefix(reference, &r.prefix) else {
        return Vec::new();
    };
    endpoints
        .into_iter()
        .map(|loc| (!loc.is_empty()).then(|| format!("{loc}{}", &reference[n..])))
        .collect()
}

/// MCO's `addScopeMirrors(scope, registry)`: every endpoint `scope` can be
/// pulled from through `r`, as a repository name.
fn scope_endpoints(scope: &str, r: &Registry, out: &mut BTreeSet<String>) {
    let mut probe = match scope.strip_prefix('*') {
        Some(rest) => format!("matched{rest}"),
        None => scope.to_string(),
    };
    let dummy = !probe.contains('/');
    if dummy {
        probe.push_str("/a");
    }
    let probe = crate::scope::strip_tag_digest(&probe).to_string();
    let digest = format!("{probe}@sha256:{}", "a".repeat(64));
    let tag = format!("{probe}:aaa");
    for (reference, digested) in [(digest, true), (tag, false)] {
        for src in pull_sources(r, &reference, digested).into_iter().flatten() {
            let mut name = crate::scope::strip_tag_digest(&src).to_string();
            if dummy {
                if let Some(s) = name.strip_suffix("/a") {
                    name = s.to_string();
                }
            }
            out.insert(name);
        }
    }
}

impl MirrorSource for RegistriesConf {
    fn mirror_scopes(&self, scope: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        if let Some(r) = self.find(scope) {
            scope_endpoints(scope, r, &mut out);
        }
        for r in &self.registries {
            if r.prefix != scope && crate::scope::nested_upstream(&r.prefix, scope) {
                if let Some(found) = self.find(&r.prefix) {
                    scope_endpoints(&r.prefix, found, &mut out);
                }
            }
        }
        out.remove(scope);
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(conf: &str, scopes: &[&str]) -> BTreeSet<String> {
        let mut c = RegistriesConf::default();
        c.add_file(conf).unwrap();
        let mut out: BTreeSet<String> = scopes.iter().map(|s| s.to_string()).collect();
        for s in scopes {
            out.extend(c.mirror_scopes(s));
        }
        for s in scopes {
            out.remove(*s);
        }
        out
    }

    fn idms(pairs: &[(&str, &[&str])]) -> String {
        let mut s = String::new();
        for (source, mirrors) in pairs {
            s.push_str(&format!(
                "[[registry]]\nprefix = \"\"\nlocation = \"{source}\"\n"
            ));
            for m in *mirrors {
                s.push_str(&format!(
                    "[[registry.mirror]]\nlocation = \"{m}\"\npull-from-mirror = \"digest-only\"\n"
                ));
            }
        }
        s
    }

    const SCOPES: &[&str] = &[
        "a.com/a1/a2",
        "a.com/a1/a2@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "*.example.com",
        "policy.scope",
        "foo.example.com/ns/repo",
    ];

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The expected key sets of MCO's TestGenerateSigstoreRegistriesConfig.
    #[test]
    fn mco_cases() {
        let c = idms(&[
            ("a.com/a1/a2", &["a-a1-a2.mirror/a1/a2"]),
            ("a.com/a1/a2/a3", &["a-a1-a2-a3.mirror/m1/m2/m3"]),
            ("a.com/a1/a2/a3-1", &["a-a1-a2-a3-1.mirror/m1/m2/m3"]),
        ]);
        assert_eq!(
            expand(&c, SCOPES),
            set(&[
                "a-a1-a2.mirror/a1/a2",
                "a.com/a1/a2/a3",
                "a-a1-a2-a3.mirror/m1/m2/m3",
                "a.com/a1/a2/a3-1",
                "a-a1-a2-a3-1.mirror/m1/m2/m3"
            ])
        );
        let c = idms(&[("a.com", &["a.mirror"]), ("a.com/a1", &["a-a1.mirror/a1"])]);
        assert_eq!(expand(&c, SCOPES), set(&["a-a1.mirror/a1/a2"]));
        let c = idms(&[("*.example.com", &["our.mirror/example"])]);
        assert_eq!(
            expand(
                &c.replace(
                    "prefix = \"\"\nlocation = \"*.example.com\"",
                    "prefix = \"*.example.com\"\nlocation = \"\""
                ),
                SCOPES
            ),
            set(&["our.mirror/example", "our.mirror/example/ns/repo"])
        );
        let c = "[[registry]]\nlocation = \"a.example.com\"\n[[registry.mirror]]\nlocation = \"a-example.mirror\"\npull-from-mirror = \"digest-only\"\n\
                 [[registry]]\nprefix = \"*.x.example.com\"\nlocation = \"\"\n[[registry.mirror]]\nlocation = \"matched.example.mirror\"\npull-from-mirror = \"digest-only\"\n[[registry.mirror]]\nlocation = \"star-x.example.mirror\"\npull-from-mirror = \"digest-only\"\n\
                 [[registry]]\nprefix = \"*.scope\"\nlocation = \"\"\n[[registry.mirror]]\nlocation = \"start-scope.mirror\"\npull-from-mirror = \"digest-only\"\n";
        assert_eq!(
            expand(c, SCOPES),
            set(&[
                "a.example.com",
                "a-example.mirror",
                "matched.example.mirror",
                "star-x.example.mirror",
                "start-scope.mirror"
            ])
        );
    }

    #[test]
    fn tag_only_and_digest_only() {
        let c = "[[registry]]\nlocation = \"r.example.com/app\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"m.example.com/app\"\n";
        assert_eq!(
            expand(c, &["r.example.com/app"]),
            set(&["m.example.com/app"])
        );
        let c = "[[registry]]\nlocation = \"r.example.com/app\"\n[[registry.mirror]]\nlocation = \"t.example.com/app\"\npull-from-mirror = \"tag-only\"\n";
        assert_eq!(
            expand(c, &["r.example.com/app:v1"]),
            set(&["r.example.com/app", "t.example.com/app"])
        );
        let mut base = RegistriesConf::default();
        base.add_file(c).unwrap();
        base.add_file(
            "[[registry]]\nprefix = \"r.example.com/app\"\nlocation = \"other.example.com/app\"\n",
        )
        .unwrap();
        assert_eq!(
            base.registries.len(),
            1,
            "a drop-in replaces the entry with the same prefix"
        );
        assert_eq!(
            base.mirror_scopes("r.example.com/app"),
            vec!["other.example.com/app".to_string()]
        );
        assert!(RegistriesConf::default().add_file("[[registry]]\nlocation = \"x\"\n[[registry.mirror]]\nlocation = \"y\"\npull-from-mirror = \"sometimes\"\n").is_err());
    }
}
