//! `/etc/containers/registries.d/sigstore-registries.yaml`: every deployed
//! scope (and, through [`MirrorSource`], its mirrors) gets
//! `use-sigstore-attachments: true`. Bytes match what the machine-config-operator
//! writes through go-yaml v2: keys in go-yaml's "natural" order, 2-space
//! indentation, keys that start with a YAML indicator single-quoted.

use std::cmp::Ordering;
use std::collections::BTreeSet;

/// Where mirror locations for a scope come from (the node's registries.conf).
/// The renderer stays pure: the mirror table is part of the snapshot.
pub trait MirrorSource {
    /// Extra registries.d keys for `scope` (mirror locations), may be empty.
    fn mirror_scopes(&self, scope: &str) -> Vec<String>;
}

/// No registries.conf mirrors.
pub struct NoMirrors;

impl MirrorSource for NoMirrors {
    fn mirror_scopes(&self, _scope: &str) -> Vec<String> {
        Vec::new()
    }
}

/// go-yaml v2 (`sorter.go`, v2.4.0) key order for two string keys.
pub fn go_yaml_less(a: &str, b: &str) -> bool {
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let mut digits = false;
    let n = ar.len().min(br.len());
    for i in 0..n {
        if ar[i] == br[i] {
            digits = ar[i].is_ascii_digit();
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i] < br[i];
        }
        if al || bl {
            return if digits { al } else { bl };
        }
        let (mut an, mut bn): (i64, i64) = (0, 0);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an
                .saturating_mul(10)
                .saturating_add(ar[ai] as i64 - '0' as i64);
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn
                .saturating_mul(10)
                .saturating_add(br[bi] as i64 - '0' as i64);
            bi += 1;
        }
        if an != bn {
            return an < bn;
        }
        if ai != bi {
            return ai < bi;
        }
        return ar[i] < br[i];
    }
    ar.len() < br.len()
}

/// A plain YAML scalar unless go-yaml would have to quote it.
fn yaml_key(k: &str) -> String {
    let first = k.chars().next().unwrap_or(' ');
    let needs_quote = k.is_empty()
        || "*&!|>'\"%@`#,[]{}?:-".contains(first)
        || k.contains(": ")
        || k.contains(" #")
        || k.ends_with(':')
        || k.starts_with(' ')
        || k.ends_with(' ')
        || matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "yes" | "n" | "no" | "true" | "false" | "on" | "off" | "null" | "~"
        )
        || k.parse::<f64>().is_ok();
    if needs_quote {
        format!("'{}'", k.replace('\'', "''"))
    } else {
        k.to_string()
    }
}

/// The file for `scopes` (deployed scopes, already including mirrors), or
/// `None` when there is nothing to write.
pub fn render(scopes: &BTreeSet<String>) -> Option<Vec<u8>> {
    if scopes.is_empty() {
        return None;
    }
    let mut keys: Vec<&String> = scopes.iter().collect();
    keys.sort_by(|a, b| {
        if go_yaml_less(a, b) {
            Ordering::Less
        } else if go_yaml_less(b, a) {
            Ordering::Greater
        } else {
            a.cmp(b)
        }
    });
    let mut out = String::from("docker:\n");
    for k in keys {
        out.push_str("  ");
        out.push_str(&yaml_key(k));
        out.push_str(":\n    use-sigstore-attachments: true\n");
    }
    Some(out.into_bytes())
}

/// `docker:` keys that other `*.yaml` files in the node's registries.d define
/// (key → node path of the file), and the files that could not be read.
pub fn foreign_scopes(
    root: &crate::fsroot::Root,
) -> (std::collections::BTreeMap<String, String>, Vec<String>) {
    let mut keys = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    let ours = crate::render::REGISTRIES_D_FILE;
    let Some(dir) = root
        .resolve(ours)
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
    else {
        return (keys, errors);
    };
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return (keys, errors);
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yaml") && format!("/etc/containers/registries.d/{n}") != ours)
        .collect();
    names.sort();
    for n in names {
        let node = format!("/etc/containers/registries.d/{n}");
        let parsed = root
            .read(&node)
            .map_err(|e| e.to_string())
            .and_then(|b| b.ok_or_else(|| "vanished".to_string()))
            .and_then(|b| {
                serde_yaml_ng::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(v) => {
                if let Some(d) = v.get("docker").and_then(|d| d.as_object()) {
                    for k in d.keys() {
                        keys.entry(k.clone()).or_insert_with(|| node.clone());
                    }
                }
            }
            Err(e) => errors.push(format!("{node}: {e}")),
        }
    }
    (keys, errors)
}

/// Re-reads a file this module wrote; the preflight check for registries.d.
pub fn parse_keys(bytes: &[u8]) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_yaml_ng::from_slice(bytes).map_err(|e| e.to_string())?;
    let top = v.as_object().ok_or("top level is not a mapping")?;
    if top.keys().any(|k| k != "docker") {
        return Err("only a \"docker\" section is expected".into());
    }
    let docker = top
        .get("docker")
        .and_then(|d| d.as_object())
        .ok_or("\"docker\" is not a mapping")?;
    let mut keys = Vec::new();
    for (k, v) in docker {
        let ok = v.as_object().is_some_and(|o| {
            o.len() == 1
                && o.get("use-sigstore-attachments") == Some(&serde_json::Value::Bool(true))
        });
        if !ok {
            return Err(format!(
                "scope {k:?} is not {{use-sigstore-attachments: true}}"
            ));
        }
        keys.push(k.clone());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        assert!(go_yaml_less("test9.com", "test10.com"));
        assert!(!go_yaml_less("test10.com", "test9.com"));
        assert!(go_yaml_less(
            "*.signed.example.com",
            "quay.example.org/team-a"
        ));
        assert!(go_yaml_less("a.com", "a.com/x"));
        assert!(go_yaml_less("a-b.com", "ab.com"));
    }

    #[test]
    fn bytes() {
        let s: BTreeSet<String> = [
            "registry.example.com/prod",
            "*.signed.example.com",
            "quay.example.org/team-a",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = String::from_utf8(render(&s).unwrap()).unwrap();
        assert_eq!(
            out,
            "docker:\n  '*.signed.example.com':\n    use-sigstore-attachments: true\n  quay.example.org/team-a:\n    use-sigstore-attachments: true\n  registry.example.com/prod:\n    use-sigstore-attachments: true\n"
        );
        let keys = parse_keys(out.as_bytes()).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(render(&BTreeSet::new()).is_none());
    }
}
