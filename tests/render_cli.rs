//! `agentctl render` end to end: exact bytes on disk, per-object outcomes, exit codes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KEY: &str = "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KTUZrd0V3WUhLb1pJemowQ0FRWUlLb1pJemowREFRY0RRZ0FFCi0tLS0tRU5EIFBVQkxJQyBLRVktLS0tLQo=";
const CERT: &str =
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJyb290Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";
const REKOR: &str =
    "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KUkVLT1JLRVlSRUtPUktFWQotLS0tLUVORCBQVUJMSUMgS0VZLS0tLS0K";

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/mco-2.6")
}

/// Every file under `dir`, relative path → bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

fn render(manifests: &Path, root: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .arg("render")
        .arg("--manifests")
        .arg(manifests)
        .arg("--root")
        .arg(root)
        .args(extra)
        .output()
        .unwrap()
}

fn cip(name: &str, scopes: &[&str], root_of_trust: &str) -> String {
    format!(
        "apiVersion: config.openshift.io/v1\nkind: ClusterImagePolicy\nmetadata: {{name: {name}}}\nspec:\n  scopes: {scopes:?}\n  policy:\n    rootOfTrust: {root_of_trust}\n"
    )
}

fn ip(ns: &str, name: &str, scopes: &[&str], root_of_trust: &str) -> String {
    format!(
        "apiVersion: config.openshift.io/v1\nkind: ImagePolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  scopes: {scopes:?}\n  policy:\n    rootOfTrust: {root_of_trust}\n"
    )
}

fn public_key() -> String {
    format!("{{policyType: PublicKey, publicKey: {{keyData: {KEY}}}}}")
}

fn fulcio() -> String {
    format!("{{policyType: FulcioCAWithRekor, fulcioCAWithRekor: {{fulcioCAData: {CERT}, rekorKeyData: {REKOR}, fulcioSubject: {{oidcIssuer: 'https://oidc.example.com', signedEmail: a@example.com}}}}}}")
}

fn pki() -> String {
    format!("{{policyType: PKI, pki: {{caRootsData: {CERT}, pkiCertificateSubject: {{email: a@example.com}}}}}}")
}

fn dir_with(files: &[(&str, String)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

/// The worked example of the MCO reference (§2.6) renders byte for byte to its
/// Appendix A, with our (name-sorted) requirement order.
#[test]
fn golden_mco_worked_example() {
    let out = tempfile::tempdir().unwrap();
    let o = render(&golden().join("manifests"), out.path(), &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "team-a-pki is pending:\n{stdout}");
    let got = tree(out.path());
    let want = tree(&golden().join("expected"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        assert!(
            got[k] == *v,
            "{k} differs:\n{}",
            String::from_utf8_lossy(&got[k])
        );
    }
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(
        lines[0],
        "ClusterImagePolicy prod-keyless: Applied: 1 scope(s) applied"
    );
    assert_eq!(
        lines[1],
        "ClusterImagePolicy prod-keys: Applied: 2 scope(s) applied"
    );
    assert!(
        lines[2].starts_with("ImagePolicy team-a/team-a-pki: Pending: "),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].contains("[\"registry.example.com/prod/app\"]"),
        "{}",
        lines[2]
    );
}

#[test]
fn rendering_twice_gives_identical_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    render(&golden().join("manifests"), a.path(), &[]);
    render(&golden().join("manifests"), b.path(), &[]);
    assert_eq!(tree(a.path()), tree(b.path()));
}

/// Only ImagePolicies: policy.json is the base, byte for byte (4-space
/// template with its trailing newline); the namespace file is re-serialized.
#[test]
fn image_policies_only_keep_base_verbatim() {
    let m = dir_with(&[("a.yaml", ip("team", "p", &["quay.io/team"], &public_key()))]);
    let out = tempfile::tempdir().unwrap();
    let o = render(m.path(), out.path(), &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let t = tree(out.path());
    assert_eq!(
        t["etc/containers/policy.json"],
        image_policy_agent::render::OPENSHIFT_TEMPLATE_POLICY.as_bytes()
    );
    let ns = String::from_utf8(t["etc/crio/policies/team.json"].clone()).unwrap();
    assert!(ns.starts_with("{\n  \"default\": [\n"), "{ns}");
    assert!(ns.contains("\"quay.io/team\": ["));
    assert!(!ns.ends_with('\n'));
    assert_eq!(
        String::from_utf8(t["etc/containers/registries.d/sigstore-registries.yaml"].clone())
            .unwrap(),
        "docker:\n  quay.io/team:\n    use-sigstore-attachments: true\n"
    );
}

/// A RHEL-like base: its docker rules stay, a cluster scope with the same name
/// replaces the base's entry, a namespace scope on a base scope is ANDed.
#[test]
fn base_policy_merge() {
    let base = r#"{
    "default": [{"type": "reject"}],
    "transports": {
        "docker": {
            "registry.access.redhat.com": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release"}],
            "registry.redhat.io": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release"}],
            "": [{"type": "insecureAcceptAnything"}]
        },
        "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}
    }
}
"#;
    let m = dir_with(&[
        ("c.yaml", cip("rh", &["registry.redhat.io"], &public_key())),
        (
            "n.yaml",
            ip("team", "p", &["registry.access.redhat.com"], &public_key()),
        ),
    ]);
    let bd = tempfile::tempdir().unwrap();
    std::fs::write(bd.path().join("policy.json"), base).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = render(
        m.path(),
        out.path(),
        &[
            "--base-policy",
            bd.path().join("policy.json").to_str().unwrap(),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let t = tree(out.path());
    let p: serde_json::Value = serde_json::from_slice(&t["etc/containers/policy.json"]).unwrap();
    assert_eq!(p["default"], serde_json::json!([{"type": "reject"}]));
    let docker = &p["transports"]["docker"];
    assert_eq!(docker["registry.redhat.io"][0]["type"], "sigstoreSigned");
    assert_eq!(docker["registry.redhat.io"].as_array().unwrap().len(), 1);
    assert_eq!(docker["registry.access.redhat.com"][0]["type"], "signedBy");
    assert_eq!(
        docker["registry.access.redhat.com"][0]["signedIdentity"]["type"],
        "matchRepoDigestOrExact"
    );
    assert_eq!(docker[""][0]["type"], "insecureAcceptAnything");
    assert_eq!(
        p["transports"]["docker-daemon"][""][0]["type"],
        "insecureAcceptAnything"
    );
    let n: serde_json::Value = serde_json::from_slice(&t["etc/crio/policies/team.json"]).unwrap();
    let l = n["transports"]["docker"]["registry.access.redhat.com"]
        .as_array()
        .unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0]["type"], "signedBy");
    assert_eq!(l[1]["type"], "sigstoreSigned");
}

#[test]
fn payload_repositories_are_protected() {
    let m = dir_with(&[(
        "c.yaml",
        cip("broad", &["quay.io", "example.com/app"], &public_key()),
    )]);
    let out = tempfile::tempdir().unwrap();
    let o = render(m.path(), out.path(), &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("ClusterImagePolicy broad: Pending: scope(s) [\"quay.io\"] equal to or broader than an OpenShift payload repository"), "{stdout}");
    let p = String::from_utf8(tree(out.path())["etc/containers/policy.json"].clone()).unwrap();
    assert!(!p.contains("\"quay.io\""), "{p}");
    assert!(p.contains("\"example.com/app\""), "{p}");

    // An empty list turns the protection off.
    let out2 = tempfile::tempdir().unwrap();
    let o = render(m.path(), out2.path(), &["--payload-repository", ""]);
    assert_eq!(o.status.code(), Some(0));
    let p = String::from_utf8(tree(out2.path())["etc/containers/policy.json"].clone()).unwrap();
    assert!(p.contains("\"quay.io\""), "{p}");
}

#[test]
fn atomic_transport_gets_only_scopes_it_accepts() {
    let m = dir_with(&[(
        "c.yaml",
        cip(
            "a",
            &[
                "docker.io/library/busybox:latest",
                "docker.io/busybox:latest",
                "a.example.com/x/y/z",
            ],
            &public_key(),
        ),
    )]);
    let out = tempfile::tempdir().unwrap();
    assert_eq!(render(m.path(), out.path(), &[]).status.code(), Some(0));
    let p: serde_json::Value =
        serde_json::from_slice(&tree(out.path())["etc/containers/policy.json"]).unwrap();
    let atomic: Vec<&String> = p["transports"]["atomic"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let docker: Vec<&String> = p["transports"]["docker"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(atomic, vec!["docker.io/library/busybox:latest"]);
    assert_eq!(docker.len(), 3);
}

#[test]
fn crio_feature_gates() {
    let m = dir_with(&[
        ("a.yaml", cip("keys", &["a.example.com"], &public_key())),
        ("b.yaml", cip("keyless", &["b.example.com"], &fulcio())),
        ("c.yaml", cip("pki", &["c.example.com"], &pki())),
        (
            "d.yaml",
            ip("team", "ns", &["d.example.com"], &public_key()),
        ),
    ]);
    let run = |v: &str| {
        let out = tempfile::tempdir().unwrap();
        let o = render(m.path(), out.path(), &["--crio-version", v]);
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        let files = tree(out.path());
        (o.status.code(), stdout, files)
    };

    let (code, stdout, files) = run("1.30");
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("ClusterImagePolicy pki: Pending: requires CRI-O ≥ 1.33 (node has 1.30)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ClusterImagePolicy keyless: Applied"),
        "{stdout}"
    );
    assert!(stdout.contains("ImagePolicy team/ns: Applied"), "{stdout}");
    for (path, bytes) in &files {
        assert!(
            !String::from_utf8_lossy(bytes).contains("\"pki\""),
            "{path} has pki"
        );
    }

    let (_, stdout, files) = run("1.26");
    assert!(
        stdout
            .contains("ClusterImagePolicy keyless: Pending: requires CRI-O ≥ 1.27 (node has 1.26)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ImagePolicy team/ns: Pending: requires CRI-O ≥ 1.28 (node has 1.26)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ClusterImagePolicy keys: Applied"),
        "{stdout}"
    );
    assert!(
        !files.keys().any(|k| k.starts_with("etc/crio/policies")),
        "{files:?}"
    );
    assert!(!String::from_utf8_lossy(&files["etc/containers/policy.json"]).contains("fulcio"));

    let (code, stdout, files) = run("1.33");
    assert_eq!(code, Some(0), "{stdout}");
    let p = String::from_utf8_lossy(&files["etc/containers/policy.json"]).to_string();
    assert!(p.contains("\"pki\"") && p.contains("\"fulcio\""));
}

/// Invalid objects are reported and skipped; the valid ones still render.
#[test]
fn invalid_objects_do_not_block_valid_ones() {
    let m = dir_with(&[
        (
            "good.yaml",
            cip("good", &["good.example.com"], &public_key()),
        ),
        ("bad.yaml", cip("bad", &["Not A Scope"], &public_key())),
        ("broken.yaml", "kind: [unclosed\n".to_string()),
    ]);
    let out = tempfile::tempdir().unwrap();
    let o = render(m.path(), out.path(), &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout.contains("ClusterImagePolicy bad: Invalid: spec.scopes[0]: Invalid value"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ClusterImagePolicy good: Applied"),
        "{stdout}"
    );
    assert!(
        stdout.contains("broken.yaml: document 1: invalid YAML"),
        "{stdout}"
    );
    let p = String::from_utf8(tree(out.path())["etc/containers/policy.json"].clone()).unwrap();
    assert!(p.contains("good.example.com"));
}

/// Two ClusterImagePolicies on one scope are ANDed in name order, whatever
/// the file order.
#[test]
fn same_scope_requirements_are_anded_in_name_order() {
    let m = dir_with(&[
        ("1.yaml", cip("zeta", &["x.example.com"], &public_key())),
        ("2.yaml", cip("alpha", &["x.example.com"], &fulcio())),
    ]);
    let out = tempfile::tempdir().unwrap();
    assert_eq!(render(m.path(), out.path(), &[]).status.code(), Some(0));
    let p: serde_json::Value =
        serde_json::from_slice(&tree(out.path())["etc/containers/policy.json"]).unwrap();
    let l = p["transports"]["docker"]["x.example.com"]
        .as_array()
        .unwrap();
    assert_eq!(l.len(), 2);
    assert!(l[0].get("fulcio").is_some(), "alpha first");
    assert!(l[1].get("keyData").is_some());
}

#[test]
fn help_on_every_command() {
    for args in [
        &["--help"][..],
        &["validate", "--help"],
        &["render", "--help"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage:"));
    }
}
