//! Image scope grammar and the scope relations the renderer relies on.
//! Regular expressions are the CRD's (RE2 syntax; `\w` is ASCII there, so it is
//! spelled out as `[0-9A-Za-z_]` here).

use regex::Regex;
use std::sync::OnceLock;

const LABEL: &str = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const PATH: &str = r"(?:(?:/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?)+)?";
const TAG: &str = r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}";

fn re(cell: &'static OnceLock<Regex>, build: impl FnOnce() -> String) -> &'static Regex {
    cell.get_or_init(|| Regex::new(&build()).expect("static regex"))
}

fn host_re() -> String {
    format!(r"(?:(?:{LABEL}(?:\.{LABEL})+(?::[0-9]+)?)|(?:localhost(?::[0-9]+)?))")
}

/// CRD rule 2: `*.label(.label)*`, no port, no path.
pub fn wildcard_scope_ok(s: &str) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, || format!(r"^\*(?:\.{LABEL})+$")).is_match(s)
}

/// CRD rule 3: host + optional lowercase path + optional tag + optional digest.
pub fn plain_scope_ok(s: &str) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, || {
        format!(
            r"^(?:{host}{PATH})(?::(?:{TAG}))?(?:@(?:[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}}))?$",
            host = host_re()
        )
    })
    .is_match(s)
}

/// CRD rule 1: the host part needs a dot unless it is `localhost[:port]`.
pub fn fqdn_or_localhost(s: &str) -> bool {
    let first = s.split('/').next().unwrap_or("");
    let labels: Vec<&str> = first.split('.').collect();
    if labels.len() == 1 {
        labels[0].split(':').next().unwrap_or("") == "localhost"
    } else {
        true
    }
}

/// IdentityRepositoryPrefix rule 1: a trailing `:tag` is only allowed as `localhost:PORT`.
pub fn identity_has_no_tag(s: &str) -> bool {
    static TAGGED: OnceLock<Regex> = OnceLock::new();
    static LOCALHOST_PORT: OnceLock<Regex> = OnceLock::new();
    if re(&TAGGED, || format!(r".*:(?:{TAG})$")).is_match(s) {
        re(&LOCALHOST_PORT, || r"^(?:localhost:[0-9]+)$".to_string()).is_match(s)
    } else {
        true
    }
}

/// IdentityRepositoryPrefix rule 2: host + optional lowercase path, nothing else.
pub fn identity_prefix_ok(s: &str) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, || format!(r"^(?:{host}){PATH}$", host = host_re())).is_match(s)
}

/// Scopes the `atomic` (openshift) transport accepts; any other scope under
/// `transports.atomic` makes containers/image reject the whole file.
pub fn atomic_scope_ok(s: &str) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, || r"^[^/]*(/[^:/]*(/[^:/]*(:[^:/]*)?)?)?$".to_string()).is_match(s)
}

/// The scope with its tag or digest removed (`host:port` is kept).
pub fn strip_tag_digest(s: &str) -> &str {
    let s = match s.find('@') {
        Some(i) => &s[..i],
        None => s,
    };
    // A tag is a ':' after the last '/'; a ':' before any '/' is a port.
    match s.rfind('/') {
        Some(slash) => match s[slash..].find(':') {
            Some(c) => &s[..slash + c],
            None => s,
        },
        None => s,
    }
}

/// OpenShift's `ScopeIsNestedInsideScope`: `sub` equal to, or below, `sup`.
pub fn nested_upstream(sub: &str, sup: &str) -> bool {
    if sub == sup {
        return true;
    }
    if let Some(rest) = sub.strip_prefix(sup) {
        if rest.starts_with('/') {
            return true;
        }
    }
    if let Some(suffix) = sup.strip_prefix('*') {
        if !suffix.starts_with('.') {
            return false;
        }
        if let Some(colon) = sub.find(':') {
            let before = &sub[..colon];
            return before.ends_with(suffix) && !before.contains('/');
        }
        let host = sub.split('/').next().unwrap_or("");
        return host.ends_with(suffix);
    }
    false
}

/// "Equal to or broader": `sub` is covered by `sup`. Deliberately stricter than
/// OpenShift: a scope with a tag or digest is also covered when its repository
/// is, so a namespace can never replace the cluster requirement for one image.
pub fn nested(sub: &str, sup: &str) -> bool {
    if nested_upstream(sub, sup) {
        return true;
    }
    let bare = strip_tag_digest(sub);
    bare != sub && nested_upstream(bare, sup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_truth_table() {
        // (sub, super, nested) — the reference's truth table, with the
        // tag/digest rows flipped by our stricter rule.
        let cases = [
            ("example.com", "example.com", true),
            ("example.com/ns", "example.com", true),
            ("example.com/ns/repo", "example.com/ns", true),
            ("example.com.evil.io", "example.com", false),
            ("example.comx/ns", "example.com", false),
            ("example.com:5000/ns", "example.com", false),
            ("example.com/ns/repo:tag", "example.com/ns/repo", true),
            (
                "example.com/ns/repo@sha256:abc",
                "example.com/ns/repo",
                true,
            ),
            ("example.com/ns/repo:tag", "example.com/ns", true),
            ("example.com", "example.com/ns", false),
            ("foo.example.com", "*.example.com", true),
            ("a.b.example.com/ns", "*.example.com", true),
            ("example.com", "*.example.com", false),
            ("*.foo.example.com", "*.example.com", true),
            ("*.example.com", "*.example.com", true),
            ("foo.example.com:5000/ns", "*.example.com", true),
            ("foo.example.com/ns:tag", "*.example.com", true),
            ("foo.example.com/ns@sha256:abc", "*.example.com", true),
            ("fooexample.com", "*.example.com", false),
            ("*.example.com", "example.com", false),
            ("foo.example.com", "*.com", true),
            ("example.com:5000", "example.com", false),
            ("example.com/app:v1", "example.com/ap", false),
        ];
        for (sub, sup, want) in cases {
            assert_eq!(nested(sub, sup), want, "nested({sub:?}, {sup:?})");
        }
        assert!(!nested_upstream(
            "example.com/ns/repo:tag",
            "example.com/ns/repo"
        ));
    }

    #[test]
    fn strip() {
        assert_eq!(strip_tag_digest("a.com:5000/x/y:v1"), "a.com:5000/x/y");
        assert_eq!(strip_tag_digest("a.com:5000"), "a.com:5000");
        assert_eq!(strip_tag_digest("a.com/x@sha256:00"), "a.com/x");
        assert_eq!(strip_tag_digest("a.com/x:v1@sha256:00"), "a.com/x");
    }

    #[test]
    fn atomic_grammar() {
        assert!(atomic_scope_ok("example.com"));
        assert!(atomic_scope_ok("*.example.com"));
        assert!(atomic_scope_ok("example.com/ns/repo:tag"));
        assert!(!atomic_scope_ok("example.com/a/b/c"));
        assert!(!atomic_scope_ok("docker.io/busybox:latest"));
        assert!(!atomic_scope_ok("example.com:5000/foo:latest"));
        assert!(!atomic_scope_ok("example.com/repo@sha256:0123"));
    }

    #[test]
    fn crd_scope_rules() {
        assert!(plain_scope_ok("example.com/namespace/namespace@sha256:ab7d1f6f03aa0f1a7ebc57fd0d8ee8eb7a8a7fa7d7fe4d7e0c0c0d0e0f0a0b0c"));
        assert!(!plain_scope_ok(
            "example.com/namespace/namespace@sha256:12dsdf"
        ));
        assert!(plain_scope_ok("localhost:1234/namespace/namespace"));
        assert!(plain_scope_ok("example.com/foo/bar:latest"));
        assert!(!plain_scope_ok("Example.com/Foo"));
        assert!(!fqdn_or_localhost("busybox"));
        assert!(fqdn_or_localhost("localhost:5000/x"));
        assert!(wildcard_scope_ok("*.example.com"));
        assert!(!wildcard_scope_ok("*.example.com/test"));
        assert!(!wildcard_scope_ok("*.example.com:5000"));
        assert!(identity_has_no_tag("localhost:1234"));
        assert!(!identity_has_no_tag("localhost:1234/ns/ns:latest"));
        assert!(identity_prefix_ok("example.com"));
        assert!(!identity_prefix_ok("example.com/namespace:latest"));
    }
}
