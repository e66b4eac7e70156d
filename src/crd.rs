//! CustomResourceDefinitions for ClusterImagePolicy and ImagePolicy, built
//! from the validator's own tables (enums, limits, unions, the per-version
//! differences), so that a plain Kubernetes or MicroShift cluster can serve
//! the kinds the agent watches (`agentctl crd | kubectl apply -f -`).
//!
//! The API server then enforces types, required fields, enums, lengths and
//! the union rules. The finer rules of OpenShift's CRDs (scope syntax, PEM
//! markers, e-mail and hostname formats) are the agent's: it reports such an
//! object Invalid with the same message OpenShift's API server would give.

use crate::model::{ApiVersion, Kind, API_GROUP};
use crate::validate::{
    rules, union_message, IDENTITY_MEMBERS, MATCH_POLICIES, MAX_EMAIL_LEN, MAX_HOSTNAME_LEN,
    MAX_IDENTITY_LEN, MAX_KEY_LEN, MAX_OIDC_ISSUER_LEN, MAX_SCOPES, MAX_SCOPE_LEN, POLICY_TYPES,
    ROOT_OF_TRUST_MEMBERS,
};
use serde_json::{json, Map, Value};

fn string(max: usize) -> Value {
    json!({ "type": "string", "maxLength": max })
}

/// A `[]byte` field: base64 text in JSON.
fn bytes(min: Option<usize>) -> Value {
    let mut v = json!({ "type": "string", "format": "byte", "maxLength": MAX_KEY_LEN });
    if let Some(min) = min {
        v["minLength"] = json!(min);
    }
    v
}

fn object(props: &[(&str, Value)], required: &[&str]) -> Value {
    let props: Map<String, Value> = props
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut v = json!({ "type": "object", "properties": props });
    if !required.is_empty() {
        v["required"] = json!(required);
    }
    v
}

/// The CEL rules of a discriminated union, with the validator's messages.
fn union_rules(discriminator: &str, members: &[(&str, &str)]) -> Value {
    members
        .iter()
        .map(|(member, value)| {
            json!({
                "rule": format!(
                    "has(self.{discriminator}) && self.{discriminator} == '{value}' ? has(self.{member}) : !has(self.{member})"
                ),
                "message": union_message(member, discriminator, value),
            })
        })
        .collect()
}

fn spec_schema(version: ApiVersion) -> Value {
    let r = rules(version);
    let public_key = object(
        &[
            ("keyData", bytes(r.key_data_min)),
            ("rekorKeyData", bytes(None)),
        ],
        &["keyData"],
    );
    let fulcio = object(
        &[
            ("fulcioCAData", bytes(None)),
            ("rekorKeyData", bytes(None)),
            (
                "fulcioSubject",
                object(
                    &[
                        ("oidcIssuer", string(MAX_OIDC_ISSUER_LEN)),
                        ("signedEmail", string(MAX_EMAIL_LEN)),
                    ],
                    &["oidcIssuer", "signedEmail"],
                ),
            ),
        ],
        &["fulcioCAData", "fulcioSubject", "rekorKeyData"],
    );
    let mut subject = object(
        &[
            ("email", string(MAX_EMAIL_LEN)),
            ("hostname", string(MAX_HOSTNAME_LEN)),
        ],
        &[],
    );
    subject["x-kubernetes-validations"] = json!([{
        "rule": "has(self.email) || has(self.hostname)",
        "message": "at least one of email or hostname must be set in pkiCertificateSubject",
    }]);
    let pki = object(
        &[
            ("caRootsData", bytes(r.ca_min)),
            ("caIntermediatesData", bytes(r.ca_min)),
            ("pkiCertificateSubject", subject),
        ],
        &["caRootsData", "pkiCertificateSubject"],
    );
    let mut root_of_trust = object(
        &[
            (
                "policyType",
                json!({ "type": "string", "enum": POLICY_TYPES }),
            ),
            ("publicKey", public_key),
            ("fulcioCAWithRekor", fulcio),
            ("pki", pki),
        ],
        &["policyType"],
    );
    root_of_trust["x-kubernetes-validations"] = union_rules("policyType", &ROOT_OF_TRUST_MEMBERS);
    let mut identity = object(
        &[
            (
                "matchPolicy",
                json!({ "type": "string", "enum": MATCH_POLICIES }),
            ),
            (
                "exactRepository",
                object(&[("repository", string(MAX_IDENTITY_LEN))], &["repository"]),
            ),
            (
                "remapIdentity",
                object(
                    &[
                        ("prefix", string(MAX_IDENTITY_LEN)),
                        ("signedPrefix", string(MAX_IDENTITY_LEN)),
                    ],
                    &["prefix", "signedPrefix"],
                ),
            ),
        ],
        &["matchPolicy"],
    );
    identity["x-kubernetes-validations"] = union_rules("matchPolicy", &IDENTITY_MEMBERS);
    let scopes = json!({
        "type": "array",
        "maxItems": MAX_SCOPES,
        "items": string(MAX_SCOPE_LEN),
        "x-kubernetes-list-type": "set",
    });
    object(
        &[
            ("scopes", scopes),
            (
                "policy",
                object(
                    &[("rootOfTrust", root_of_trust), ("signedIdentity", identity)],
                    &["rootOfTrust"],
                ),
            ),
        ],
        &["policy", "scopes"],
    )
}

fn names(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::ClusterImagePolicy => ("clusterimagepolicies", "clusterimagepolicy"),
        Kind::ImagePolicy => ("imagepolicies", "imagepolicy"),
    }
}

/// The CRD of `kind`: `v1` served and stored, `v1alpha1` served.
pub fn crd(kind: Kind) -> Value {
    let (plural, singular) = names(kind);
    let versions: Vec<Value> = [ApiVersion::V1, ApiVersion::V1Alpha1]
        .into_iter()
        .map(|v| {
            let name = v.as_str().rsplit('/').next().unwrap_or_default();
            json!({
                "name": name,
                "served": true,
                "storage": v == ApiVersion::V1,
                "schema": { "openAPIV3Schema": object(
                    &[
                        ("apiVersion", json!({ "type": "string" })),
                        ("kind", json!({ "type": "string" })),
                        ("metadata", json!({ "type": "object" })),
                        ("spec", spec_schema(v)),
                        ("status", json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })),
                    ],
                    &["spec"],
                ) },
                "subresources": { "status": {} },
            })
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{plural}.{API_GROUP}") },
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": kind.as_str(),
                "listKind": format!("{}List", kind.as_str()),
                "plural": plural,
                "singular": singular,
            },
            "scope": match kind {
                Kind::ClusterImagePolicy => "Cluster",
                Kind::ImagePolicy => "Namespaced",
            },
            // Both versions have the same fields: no conversion webhook.
            "conversion": { "strategy": "None" },
            "versions": versions,
        }
    })
}

/// Both CRDs as one YAML stream.
pub fn yaml() -> String {
    let mut out = String::new();
    for kind in [Kind::ClusterImagePolicy, Kind::ImagePolicy] {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd(kind)).unwrap_or_default());
    }
    out
}
