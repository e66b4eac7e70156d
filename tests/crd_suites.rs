//! The upstream CRD validation suites (openshift/api `config/{v1,v1alpha1}/tests/
//! {clusterimagepolicies,imagepolicies}.config.openshift.io/SigstoreImageVerification{,PKI}.yaml`),
//! rewritten as a table: every `expected` case must validate (exit 0) and every
//! `expectedError` case must be rejected (exit 1) with the same field path and
//! message. Each case runs the real `agentctl validate` on a file.

use base64::Engine;
use std::process::Command;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn key() -> String {
    b64("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+Ki7B7+kiLWOJdPYpYjtjRkWVpqF\n-----END PUBLIC KEY-----")
}

fn cert() -> String {
    b64("-----BEGIN CERTIFICATE-----\nMIIFvzCCA6egAwIBAgIUD5n/7T0k3PpUzC/dNBEEiXxChUcwDQYJKoZIhvcNAQEL\n-----END CERTIFICATE-----")
}

/// Starts and ends with the markers, but has two BEGINs and one END.
fn unbalanced_cert() -> String {
    b64("-----BEGIN CERTIFICATE-----\nMIIFvzCCA6egAwIBAgIUD5n/7T0k3PpUzC/dNBEEiXxChUcwDQYJKoZIhvcNAQEL\n-----BEGIN CERTIFICATE-----\nMIIFvzCCA6egAwIBAgIUD5n/7T0k3PpUzC/dNBEEiXxChUcwDQYJKoZIhvcNAQEL\n-----END CERTIFICATE-----\n")
}

#[derive(Clone, Copy, PartialEq)]
enum V {
    V1,
    V1Alpha1,
}

struct Case {
    name: &'static str,
    /// The spec, as a YAML flow mapping.
    spec: String,
    /// `None`: accepted. `Some(list)`: rejected with each `FIELD: MESSAGE`.
    errors: Option<Vec<String>>,
}

fn invalid(field: &str, ty: &str, msg: &str) -> String {
    format!("{field}: Invalid value: \"{ty}\": {msg}")
}

fn identity_errors(v: V, field: &str) -> Vec<String> {
    let second = match v {
        V::V1 => "invalid repository or prefix in the signedIdentity. The repository or prefix must starts with 'localhost' or a valid '.' separated domain. If contains registry paths, the path component names must start with at least one letter or number, with following parts able to be separated by one period, one or two underscore and multiple dashes.",
        V::V1Alpha1 => "invalid repository or prefix in the signedIdentity",
    };
    vec![
        invalid(field, "string", "invalid repository or prefix in the signedIdentity, should not include the tag or digest"),
        invalid(field, "string", second),
    ]
}

/// The SigstoreImageVerification suite. v1alpha1's accepted cases use key
/// data that is not PEM at all (that version has no PEM rules), v1's use PEM.
fn sigstore_cases(v: V) -> Vec<Case> {
    let k = match v {
        V::V1 => key(),
        V::V1Alpha1 => "Zm9vIGJhcg==".to_string(),
    };
    let c = match v {
        V::V1 => cert(),
        V::V1Alpha1 => "Zm9vIGJhcg==".to_string(),
    };
    let pk = format!("{{policyType: PublicKey, publicKey: {{keyData: {k}}}}}");
    let fulcio_body = format!("{{fulcioCAData: {c}, rekorKeyData: {k}, fulcioSubject: {{oidcIssuer: 'https://oidc.localhost', signedEmail: test-user@example.com}}}}");
    let with_scope = |s: &str| format!("{{scopes: ['{s}'], policy: {{rootOfTrust: {pk}}}}}");
    let with_ident = |ident: &str| {
        format!("{{scopes: [example.com], policy: {{rootOfTrust: {pk}, signedIdentity: {ident}}}}}")
    };
    let rot = "spec.policy.rootOfTrust";
    let pk_msg = invalid(
        rot,
        "object",
        "publicKey is required when policyType is PublicKey, and forbidden otherwise",
    );
    let fulcio_msg = invalid(rot, "object", "fulcioCAWithRekor is required when policyType is FulcioCAWithRekor, and forbidden otherwise");
    let digest = "sha256:ab7d1f6f03aa0f1a7ebc57fd0d8ee8eb7a8a7fa7d7fe4d7e0c0c0d0e0f0a0b0c";
    vec![
        Case { name: "minimal PublicKey", spec: with_scope("example.com"), errors: None },
        Case {
            name: "minimal FulcioCAWithRekor",
            spec: format!("{{scopes: [example.com], policy: {{rootOfTrust: {{policyType: FulcioCAWithRekor, fulcioCAWithRekor: {fulcio_body}}}}}}}"),
            errors: None,
        },
        Case {
            name: "policyType PublicKey with a (misspelt) FulcioCAWithRekor block",
            spec: format!("{{scopes: [example.com], policy: {{rootOfTrust: {{policyType: PublicKey, FulcioCAWithRekor: {fulcio_body}}}}}}}"),
            errors: Some(vec![pk_msg.clone(), format!("{rot}.FulcioCAWithRekor: unknown field")]),
        },
        Case {
            name: "policyType FulcioCAWithRekor with a (misspelt) PublicKey block",
            spec: format!("{{scopes: [example.com], policy: {{rootOfTrust: {{policyType: FulcioCAWithRekor, PublicKey: {{keyData: {k}}}}}}}}}"),
            errors: Some(vec![fulcio_msg.clone(), format!("{rot}.PublicKey: unknown field")]),
        },
        Case {
            name: "policyType PublicKey without publicKey",
            spec: "{scopes: [example.com], policy: {rootOfTrust: {policyType: PublicKey}}}".into(),
            errors: Some(vec![pk_msg]),
        },
        Case {
            name: "policyType FulcioCAWithRekor without fulcioCAWithRekor",
            spec: "{scopes: [example.com], policy: {rootOfTrust: {policyType: FulcioCAWithRekor}}}".into(),
            errors: Some(vec![fulcio_msg]),
        },
        Case {
            name: "ExactRepository without exactRepository",
            spec: with_ident("{matchPolicy: ExactRepository}"),
            errors: Some(vec![invalid("spec.policy.signedIdentity", "object", "exactRepository is required when matchPolicy is ExactRepository, and forbidden otherwise")]),
        },
        Case {
            name: "RemapIdentity without remapIdentity",
            spec: with_ident("{matchPolicy: RemapIdentity}"),
            errors: Some(vec![invalid("spec.policy.signedIdentity", "object", "remapIdentity is required when matchPolicy is RemapIdentity, and forbidden otherwise")]),
        },
        Case {
            name: "scope busybox",
            spec: with_scope("busybox"),
            errors: Some(vec![invalid("spec.scopes[0]", "string", "invalid image scope format, scope must contain a fully qualified domain name or 'localhost'")]),
        },
        Case {
            name: "wildcard scope with a path",
            spec: with_scope("*.example.com/test"),
            errors: Some(vec![invalid("spec.scopes[0]", "string", "invalid image scope with wildcard, a wildcard can only be at the start of the domain and is only supported for subdomain matching, not path matching")]),
        },
        Case {
            name: "scope with an invalid digest",
            spec: with_scope("example.com/namespace/namespace@sha256:12dsdf"),
            errors: Some(vec![invalid("spec.scopes[0]", "string", "invalid repository namespace or image specification in the image scope")]),
        },
        Case {
            name: "tag in exactRepository",
            spec: with_ident("{matchPolicy: ExactRepository, exactRepository: {repository: 'example.com/namespace/namespace:latest'}}"),
            errors: Some(identity_errors(v, "spec.policy.signedIdentity.exactRepository.repository")),
        },
        Case {
            name: "localhost tag in exactRepository",
            spec: with_ident("{matchPolicy: ExactRepository, exactRepository: {repository: 'localhost:1234/namespace/namespace:latest'}}"),
            errors: Some(identity_errors(v, "spec.policy.signedIdentity.exactRepository.repository")),
        },
        Case {
            name: "digest in exactRepository",
            spec: with_ident(&format!("{{matchPolicy: ExactRepository, exactRepository: {{repository: 'localhost:1234/namespace/namespace@{digest}'}}}}")),
            errors: Some(identity_errors(v, "spec.policy.signedIdentity.exactRepository.repository")),
        },
        Case {
            name: "tag in remapIdentity prefix",
            spec: with_ident("{matchPolicy: RemapIdentity, remapIdentity: {prefix: 'example.com/namespace:latest', signedPrefix: example.com/namespace}}"),
            errors: Some(identity_errors(v, "spec.policy.signedIdentity.remapIdentity.prefix")),
        },
        Case {
            name: "valid exactRepository",
            spec: with_ident("{matchPolicy: ExactRepository, exactRepository: {repository: example.com}}"),
            errors: None,
        },
        Case {
            name: "valid remapIdentity",
            spec: with_ident("{matchPolicy: RemapIdentity, remapIdentity: {prefix: example.com, signedPrefix: mirror.com}}"),
            errors: None,
        },
        Case { name: "scope localhost with port", spec: with_scope("localhost:1234/namespace/namespace"), errors: None },
        Case { name: "scope localhost", spec: with_scope("localhost/foo/bar"), errors: None },
        Case { name: "scope with path", spec: with_scope("example.com/foo/bar"), errors: None },
        Case { name: "scope with tag", spec: with_scope("example.com/foo/bar:latest"), errors: None },
        Case { name: "scope with digest", spec: with_scope(&format!("example.com/namespace/namespace@{digest}")), errors: None },
        Case { name: "wildcard scope", spec: with_scope("*.example.com"), errors: None },
    ]
}

fn pki_cases(v: V) -> Vec<Case> {
    let p = "spec.policy.rootOfTrust.pki";
    let (email_msg, host_msg) = match v {
        V::V1 => ("invalid email address", "hostname must be a valid dns 1123 subdomain name, optionally prefixed by '*.'. It must consist only of lowercase alphanumeric characters, hyphens, periods and the optional preceding asterisk."),
        V::V1Alpha1 => ("invalid email address in pkiCertificateSubject", "hostname should be a valid dns 1123 subdomain name, optionally prefixed by '*.'. It should consist only of lowercase alphanumeric characters, hyphens, periods and the optional preceding asterisk."),
    };
    let pki = |roots: &str, subject: &str| {
        format!("{{scopes: [example.com], policy: {{rootOfTrust: {{policyType: PKI, pki: {{caRootsData: {roots}, pkiCertificateSubject: {subject}}}}}}}}}")
    };
    vec![
        Case { name: "minimal PKI", spec: pki(&cert(), "{email: test-user@example.com}"), errors: None },
        Case {
            name: "policyType PKI without pki",
            spec: "{scopes: [example.com], policy: {rootOfTrust: {policyType: PKI}}}".into(),
            errors: Some(vec![invalid("spec.policy.rootOfTrust", "object", "pki is required when policyType is PKI, and forbidden otherwise")]),
        },
        Case {
            name: "invalid email",
            spec: pki(&cert(), "{email: invalid-email}"),
            errors: Some(vec![invalid(&format!("{p}.pkiCertificateSubject.email"), "string", email_msg)]),
        },
        Case {
            name: "invalid hostname",
            spec: pki(&cert(), "{hostname: invaild-.com}"),
            errors: Some(vec![invalid(&format!("{p}.pkiCertificateSubject.hostname"), "string", host_msg)]),
        },
        Case {
            name: "empty pki",
            spec: "{scopes: [example.com], policy: {rootOfTrust: {policyType: PKI, pki: {}}}}".into(),
            errors: Some(vec![
                format!("{p}.caRootsData: Required value"),
                format!("{p}.pkiCertificateSubject: Required value"),
            ]),
        },
        Case {
            name: "caRootsData not PEM",
            spec: pki("Zm9vIGJhcg==", "{email: test-user@example.com}"),
            errors: Some(vec![invalid(&format!("{p}.caRootsData"), "string", "the caRootsData must start with base64 encoding of '-----BEGIN CERTIFICATE-----'.")]),
        },
        Case {
            name: "unbalanced PEM markers",
            spec: pki(&unbalanced_cert(), "{email: test-user@example.com}"),
            errors: Some(vec![invalid(&format!("{p}.caRootsData"), "string", "caRootsData must be base64 encoding of valid PEM format data contain the same number of '-----BEGIN CERTIFICATE-----' and '-----END CERTIFICATE-----' markers.")]),
        },
    ]
}

fn run_suite(v: V, kind: &str, cases: Vec<Case>) {
    let dir = tempfile::tempdir().unwrap();
    let version = match v {
        V::V1 => "v1",
        V::V1Alpha1 => "v1alpha1",
    };
    let (meta, id) = match kind {
        "ImagePolicy" => ("{name: test, namespace: ns1}", "ImagePolicy ns1/test"),
        _ => ("{name: test}", "ClusterImagePolicy test"),
    };
    for (i, c) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case-{i}.yaml"));
        let doc = format!(
            "apiVersion: config.openshift.io/{version}\nkind: {kind}\nmetadata: {meta}\nspec: {}\n",
            c.spec
        );
        std::fs::write(&file, &doc).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let label = format!("{version} {kind} {:?}", c.name);
        match &c.errors {
            None => {
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{label} must be accepted, got:\n{stdout}"
                );
                assert!(stdout.is_empty(), "{label}: {stdout}");
            }
            Some(expected) => {
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{label} must be rejected, got:\n{stdout}"
                );
                for e in expected {
                    let line = format!("{}: {id}: {e}", file.display());
                    assert!(
                        stdout.lines().any(|l| l == line),
                        "{label}: missing line\n  {line}\nin output:\n{stdout}"
                    );
                }
            }
        }
    }
}

#[test]
fn v1_cluster_image_policy() {
    run_suite(V::V1, "ClusterImagePolicy", sigstore_cases(V::V1));
    run_suite(V::V1, "ClusterImagePolicy", pki_cases(V::V1));
}

#[test]
fn v1_image_policy() {
    run_suite(V::V1, "ImagePolicy", sigstore_cases(V::V1));
    run_suite(V::V1, "ImagePolicy", pki_cases(V::V1));
}

#[test]
fn v1alpha1_cluster_image_policy() {
    run_suite(
        V::V1Alpha1,
        "ClusterImagePolicy",
        sigstore_cases(V::V1Alpha1),
    );
    run_suite(V::V1Alpha1, "ClusterImagePolicy", pki_cases(V::V1Alpha1));
}

#[test]
fn v1alpha1_image_policy() {
    run_suite(V::V1Alpha1, "ImagePolicy", sigstore_cases(V::V1Alpha1));
    run_suite(V::V1Alpha1, "ImagePolicy", pki_cases(V::V1Alpha1));
}

/// v1 requires PEM key data where v1alpha1 does not.
#[test]
fn v1_rejects_non_pem_key() {
    let cases = vec![Case {
        name: "non-PEM keyData",
        spec: "{scopes: [example.com], policy: {rootOfTrust: {policyType: PublicKey, publicKey: {keyData: Zm9vIGJhcg==}}}}".into(),
        errors: Some(vec![
            "spec.policy.rootOfTrust.publicKey.keyData: Invalid value: \"string\": should be at least 68 chars long".into(),
            invalid("spec.policy.rootOfTrust.publicKey.keyData", "string", "the keyData must start with base64 encoding of '-----BEGIN PUBLIC KEY-----'."),
            invalid("spec.policy.rootOfTrust.publicKey.keyData", "string", "the keyData must end with base64 encoding of '-----END PUBLIC KEY-----'."),
        ]),
    }];
    run_suite(V::V1, "ClusterImagePolicy", cases);
}

/// Checks `v` against a structural OpenAPI schema: types, properties (no
/// unknown field may be pruned), required, enums, lengths, item counts, and
/// the union rules' `has()` form. Returns the problems found.
fn schema_problems(path: &str, v: &serde_json::Value, s: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut out = Vec::new();
    let ty = s["type"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: schema without a type"));
    match (ty, v) {
        ("object", Value::Object(m)) => {
            if let Some(props) = s["properties"].as_object() {
                for (k, x) in m {
                    match props.get(k) {
                        Some(ps) => out.extend(schema_problems(&format!("{path}.{k}"), x, ps)),
                        None => out.push(format!("{path}.{k}: not in the schema")),
                    }
                }
            }
            for r in s["required"].as_array().into_iter().flatten() {
                if !m.contains_key(r.as_str().unwrap()) {
                    out.push(format!("{path}.{}: required", r.as_str().unwrap()));
                }
            }
            for rule in s["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                // has(self.D) && self.D == 'X' ? has(self.M) : !has(self.M)
                let r = rule["rule"].as_str().unwrap();
                let Some((cond, then)) = r.split_once(" ? ") else {
                    continue;
                };
                let field = |t: &str| {
                    t.split("self.").nth(1).map(|f| {
                        f.split(')')
                            .next()
                            .unwrap()
                            .split(' ')
                            .next()
                            .unwrap()
                            .to_string()
                    })
                };
                let (Some(d), Some(member)) = (field(cond), field(then)) else {
                    continue;
                };
                let Some(want) = cond.split('\'').nth(1) else {
                    continue;
                };
                let holds =
                    (m.get(&d).and_then(Value::as_str) == Some(want)) == m.contains_key(&member);
                if r.starts_with("has(self.") && r.contains("== '") && !holds {
                    out.push(format!("{path}: {}", rule["message"]));
                }
            }
        }
        ("array", Value::Array(a)) => {
            if let Some(max) = s["maxItems"].as_u64() {
                if a.len() as u64 > max {
                    out.push(format!("{path}: more than {max} items"));
                }
            }
            for (i, x) in a.iter().enumerate() {
                out.extend(schema_problems(&format!("{path}[{i}]"), x, &s["items"]));
            }
        }
        ("string", Value::String(t)) => {
            if let Some(e) = s["enum"].as_array() {
                if !e.iter().any(|x| x == v) {
                    out.push(format!("{path}: {t:?} not in the enum"));
                }
            }
            if s["maxLength"].as_u64().is_some_and(|m| t.len() as u64 > m) {
                out.push(format!("{path}: too long"));
            }
            if s["minLength"]
                .as_u64()
                .is_some_and(|m| (t.len() as u64) < m)
            {
                out.push(format!("{path}: too short"));
            }
            if s["format"] == "byte" && base64::engine::general_purpose::STANDARD.decode(t).is_err()
            {
                out.push(format!("{path}: not base64"));
            }
        }
        _ => out.push(format!("{path}: not of type {ty}")),
    }
    out
}

/// `agentctl crd` gives two CRDs a cluster can install, and each version's
/// schema accepts every case the upstream suites accept (an API server
/// with these CRDs would neither reject nor prune a valid object) and
/// rejects the union violations.
#[test]
fn agentctl_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .arg("crd")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    for (doc, kind, plural, singular, scope) in [
        (
            &docs[0],
            "ClusterImagePolicy",
            "clusterimagepolicies",
            "clusterimagepolicy",
            "Cluster",
        ),
        (
            &docs[1],
            "ImagePolicy",
            "imagepolicies",
            "imagepolicy",
            "Namespaced",
        ),
    ] {
        assert_eq!(doc["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(doc["kind"], "CustomResourceDefinition");
        assert_eq!(
            doc["metadata"]["name"],
            format!("{plural}.config.openshift.io")
        );
        let spec = &doc["spec"];
        assert_eq!(spec["group"], "config.openshift.io");
        assert_eq!(spec["scope"], scope);
        assert_eq!(spec["names"]["kind"], kind);
        assert_eq!(spec["names"]["listKind"], format!("{kind}List"));
        assert_eq!(spec["names"]["plural"], plural);
        assert_eq!(spec["names"]["singular"], singular);
        let versions = spec["versions"].as_array().unwrap();
        let names: Vec<&str> = versions
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["v1", "v1alpha1"]);
        // Exactly one storage version; all served; status a subresource.
        assert_eq!(versions.iter().filter(|v| v["storage"] == true).count(), 1);
        assert_eq!(versions[0]["storage"], true);
        for (ver, v) in [(&versions[0], V::V1), (&versions[1], V::V1Alpha1)] {
            assert_eq!(ver["served"], true);
            assert!(ver["subresources"]["status"].is_object());
            let root = &ver["schema"]["openAPIV3Schema"];
            assert_eq!(root["required"], serde_json::json!(["spec"]));
            let spec_schema = &root["properties"]["spec"];
            for case in sigstore_cases(v).into_iter().chain(pki_cases(v)) {
                let spec: serde_json::Value = serde_yaml_ng::from_str(&case.spec).unwrap();
                let problems = schema_problems("spec", &spec, spec_schema);
                if case.errors.is_none() {
                    assert!(
                        problems.is_empty(),
                        "{kind} {} {:?}: {problems:?}",
                        ver["name"],
                        case.name
                    );
                }
            }
            // A union violation is rejected by the schema's rules.
            let spec: serde_json::Value = serde_yaml_ng::from_str(
                "{scopes: [example.com], policy: {rootOfTrust: {policyType: PKI, publicKey: {keyData: Zm9v}}}}",
            )
            .unwrap();
            let problems = schema_problems("spec", &spec, spec_schema);
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("pki is required when policyType is PKI")),
                "{problems:?}"
            );
        }
    }
}
