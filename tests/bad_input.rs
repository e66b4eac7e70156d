//! Malformed manifests: each gives a clear error naming the file or the object
//! and field, exit code 1, and never a panic or a hang.

use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad")
}

fn validate(file: &Path) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .arg("validate")
        .arg(file)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).to_string(),
    )
}

#[test]
fn every_corpus_file_is_rejected_clearly() {
    let cases: &[(&str, &[&str])] = &[
        ("broken-syntax.yaml", &["broken-syntax.yaml: document 1: invalid YAML: did not find expected ',' or ']'"]),
        ("alias-bomb.yaml", &["alias-bomb.yaml: document 1: invalid YAML: repetition limit exceeded"]),
        ("deep-nesting.yaml", &["deep-nesting.yaml: document 1: invalid YAML: recursion limit exceeded"]),
        ("not-a-mapping.yaml", &["not-a-mapping.yaml: document 1: document is not a mapping"]),
        ("wrong-types.yaml", &[
            "ClusterImagePolicy wrong-types: spec.scopes: Invalid value: \"string\": must be of type array",
            "ClusterImagePolicy wrong-types: spec.policy.rootOfTrust: Invalid value: \"array\": must be of type object",
            "ClusterImagePolicy wrong-types: spec.policy.signedIdentity: Invalid value: \"integer\": must be of type object",
        ]),
        ("path-namespace.yaml", &[
            "ImagePolicy ../../etc/containers/policy/escape: metadata.namespace: Invalid value: \"string\": a lowercase RFC 1123 label",
            "ImagePolicy team/a/slash: metadata.namespace: Invalid value: \"string\": a lowercase RFC 1123 label",
            "ImagePolicy /no-namespace: metadata.namespace: Required value",
        ]),
        ("bad-base64.yaml", &["ClusterImagePolicy bad-base64: spec.policy.rootOfTrust.publicKey.keyData: Invalid value: \"string\": must be base64-encoded"]),
        ("bad-pem.yaml", &[
            "spec.policy.rootOfTrust.fulcioCAWithRekor.fulcioCAData: Invalid value: \"string\": the fulcioCAData must start with base64 encoding of '-----BEGIN CERTIFICATE-----'.",
            "spec.policy.rootOfTrust.fulcioCAWithRekor.rekorKeyData: Invalid value: \"string\": the rekorKeyData must start with base64 encoding of '-----BEGIN PUBLIC KEY-----'.",
            "spec.policy.rootOfTrust.fulcioCAWithRekor.fulcioSubject.oidcIssuer: Invalid value: \"string\": oidcIssuer must be a valid URL",
            "spec.policy.rootOfTrust.fulcioCAWithRekor.fulcioSubject.signedEmail: Invalid value: \"string\": invalid email address",
        ]),
        // Every problem of an object, not only the first.
        ("unknown-and-invalid.yaml", &[
            "ClusterImagePolicy two-problems: spec.scope: unknown field",
            "ClusterImagePolicy two-problems: spec.scopes[0]: Invalid value: \"string\": invalid image scope with wildcard",
        ]),
        ("wrong-version.yaml", &[
            "ClusterImagePolicy future: apiVersion: Unsupported value: \"config.openshift.io/v2\"",
            "ClusterImagePolicy future: spec.policy.rootOfTrust.policyType: Unsupported value: \"Sigstore\"",
        ]),
        ("list-with-bad-item.json", &["ClusterImagePolicy in-list: spec.policy.rootOfTrust.pki.pkiCertificateSubject: Invalid value: \"object\": at least one of email or hostname must be set in pkiCertificateSubject"]),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (name, expected) in cases {
        seen.insert(name.to_string());
        let (code, out) = validate(&corpus().join(name));
        assert_eq!(code, Some(1), "{name}:\n{out}");
        for e in *expected {
            assert!(out.contains(e), "{name}: expected {e:?} in:\n{out}");
        }
    }
    // The corpus has no file this table forgot.
    for e in std::fs::read_dir(corpus()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(seen.contains(&n), "corpus file {n} has no expectation");
    }
}

#[test]
fn huge_file_is_refused_unread() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("huge.yaml");
    let file = std::fs::File::create(&f).unwrap();
    file.set_len(16 * 1024 * 1024 + 1).unwrap();
    let (code, out) = validate(&f);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("huge.yaml: file is 16777217 bytes, larger than the limit of 16777216 bytes"),
        "{out}"
    );
}

/// Rendering the whole corpus: errors reported, nothing panics, and the base
/// policy is left as it was since nothing valid is deployed.
#[test]
fn rendering_the_corpus_deploys_nothing() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["render", "--manifests"])
        .arg(corpus())
        .arg("--root")
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let policy = std::fs::read(out.path().join("etc/containers/policy.json")).unwrap();
    assert_eq!(
        policy,
        image_policy_agent::render::OPENSHIFT_TEMPLATE_POLICY.as_bytes()
    );
    assert!(!out.path().join("etc/crio/policies").exists());
    assert!(!out.path().join("etc/containers/registries.d").exists());
}
