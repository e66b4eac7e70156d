//! Per-object validation: a generic document (from YAML, JSON or the API
//! server) becomes a [`PolicyObject`] or the complete list of its problems.
//!
//! The rules are those of the CRD schemas and their CEL rules in
//! `openshift/api` (`config/v1` and `config/v1alpha1`), with the same field
//! paths and messages, formatted as the API server formats them. On top of
//! that: unknown fields are errors (the API server would silently prune them),
//! `metadata.name` must be set, and an ImagePolicy namespace must be a DNS-1123
//! label because it becomes a file name.

use crate::model::{ApiVersion, Kind, ObjectRef, PolicyObject, RootOfTrust, SignedIdentity};
use crate::scope;
use base64::Engine;
use regex::Regex;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::OnceLock;

/// One problem, at one field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub detail: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorDetail {
    Required,
    /// A rule failed; `ty` is the JSON type of the value ("string", "object").
    Invalid {
        ty: &'static str,
        message: String,
    },
    Unsupported {
        value: String,
        supported: &'static [&'static str],
    },
    TooLong {
        max: usize,
    },
    TooShort {
        min: usize,
    },
    TooMany {
        count: usize,
        max: usize,
    },
    Duplicate {
        value: String,
    },
    UnknownField,
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorDetail::Required => f.write_str("Required value"),
            ErrorDetail::Invalid { ty, message } => {
                write!(f, "Invalid value: \"{ty}\": {message}")
            }
            ErrorDetail::Unsupported { value, supported } => {
                write!(f, "Unsupported value: {value:?}: supported values: ")?;
                for (i, s) in supported.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "\"{s}\"")?;
                }
                Ok(())
            }
            ErrorDetail::TooLong { max } => {
                write!(f, "Too long: may not be more than {max} bytes")
            }
            ErrorDetail::TooShort { min } => {
                write!(
                    f,
                    "Invalid value: \"string\": should be at least {min} chars long"
                )
            }
            ErrorDetail::TooMany { count, max } => {
                write!(f, "Too many: {count}: must have at most {max} items")
            }
            ErrorDetail::Duplicate { value } => write!(f, "Duplicate value: {value:?}"),
            ErrorDetail::UnknownField => f.write_str("unknown field"),
            ErrorDetail::WrongType { expected, got } => {
                write!(f, "Invalid value: \"{got}\": must be of type {expected}")
            }
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

/// A document that is a ClusterImagePolicy or ImagePolicy but not a valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidObject {
    pub id: ObjectRef,
    pub errors: Vec<FieldError>,
}

/// Outcome of validating one document that claims one of our kinds.
pub type Validated = Result<PolicyObject, InvalidObject>;

pub(crate) const POLICY_TYPES: &[&str] = &["PublicKey", "FulcioCAWithRekor", "PKI"];
pub(crate) const MATCH_POLICIES: &[&str] = &[
    "MatchRepoDigestOrExact",
    "MatchRepository",
    "ExactRepository",
    "RemapIdentity",
];
const API_VERSIONS: &[&str] = &["config.openshift.io/v1", "config.openshift.io/v1alpha1"];

/// The unions' members and the discriminator value each belongs to, in the
/// CRD's rule order.
pub(crate) const ROOT_OF_TRUST_MEMBERS: [(&str, &str); 3] = [
    ("pki", "PKI"),
    ("publicKey", "PublicKey"),
    ("fulcioCAWithRekor", "FulcioCAWithRekor"),
];
pub(crate) const IDENTITY_MEMBERS: [(&str, &str); 2] = [
    ("exactRepository", "ExactRepository"),
    ("remapIdentity", "RemapIdentity"),
];

pub(crate) fn union_message(member: &str, discriminator: &str, value: &str) -> String {
    format!("{member} is required when {discriminator} is {value}, and forbidden otherwise")
}

/// Limits of the CRD schemas (the same in both versions); `crd` builds the
/// CustomResourceDefinitions from them.
pub(crate) const MAX_SCOPES: usize = 256;
pub(crate) const MAX_SCOPE_LEN: usize = 512;
pub(crate) const MAX_KEY_LEN: usize = 8192;
pub(crate) const MAX_OIDC_ISSUER_LEN: usize = 2048;
pub(crate) const MAX_EMAIL_LEN: usize = 320;
pub(crate) const MAX_HOSTNAME_LEN: usize = 253;
pub(crate) const MAX_IDENTITY_LEN: usize = 512;

/// The messages and limits that differ between the API versions.
pub(crate) struct Rules {
    pem_checks_on_keys: bool,
    pub(crate) key_data_min: Option<usize>,
    pub(crate) ca_min: Option<usize>,
    email_message: &'static str,
    hostname_message: &'static str,
    identity_message: &'static str,
}

const IDENTITY_TAG_MESSAGE: &str =
    "invalid repository or prefix in the signedIdentity, should not include the tag or digest";

pub(crate) fn rules(v: ApiVersion) -> Rules {
    match v {
        ApiVersion::V1 => Rules {
            pem_checks_on_keys: true,
            key_data_min: Some(68),
            ca_min: Some(72),
            email_message: "invalid email address",
            hostname_message: "hostname must be a valid dns 1123 subdomain name, optionally prefixed by '*.'. It must consist only of lowercase alphanumeric characters, hyphens, periods and the optional preceding asterisk.",
            identity_message: "invalid repository or prefix in the signedIdentity. The repository or prefix must starts with 'localhost' or a valid '.' separated domain. If contains registry paths, the path component names must start with at least one letter or number, with following parts able to be separated by one period, one or two underscore and multiple dashes.",
        },
        ApiVersion::V1Alpha1 => Rules {
            pem_checks_on_keys: false,
            key_data_min: None,
            ca_min: None,
            email_message: "invalid email address in pkiCertificateSubject",
            hostname_message: "hostname should be a valid dns 1123 subdomain name, optionally prefixed by '*.'. It should consist only of lowercase alphanumeric characters, hyphens, periods and the optional preceding asterisk.",
            identity_message: "invalid repository or prefix in the signedIdentity",
        },
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Collects errors while walking one object.
struct Walk {
    errors: Vec<FieldError>,
}

impl Walk {
    fn err(&mut self, field: impl Into<String>, detail: ErrorDetail) {
        self.errors.push(FieldError {
            field: field.into(),
            detail,
        });
    }

    fn invalid(&mut self, field: &str, ty: &'static str, message: impl Into<String>) {
        self.err(
            field,
            ErrorDetail::Invalid {
                ty,
                message: message.into(),
            },
        );
    }

    /// Reports every key of `map` not in `known`.
    fn known_fields(&mut self, path: &str, map: &Map<String, Value>, known: &[&str]) {
        for k in map.keys() {
            if !known.contains(&k.as_str()) {
                self.err(join(path, k), ErrorDetail::UnknownField);
            }
        }
    }

    /// `map[key]` as an object; `None` when absent (reporting Required if `required`) or wrongly typed.
    fn object<'a>(
        &mut self,
        path: &str,
        map: &'a Map<String, Value>,
        key: &str,
        required: bool,
    ) -> Option<&'a Map<String, Value>> {
        match map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.err(join(path, key), ErrorDetail::Required);
                }
                None
            }
            Some(Value::Object(o)) => Some(o),
            Some(other) => {
                self.err(
                    join(path, key),
                    ErrorDetail::WrongType {
                        expected: "object",
                        got: type_name(other),
                    },
                );
                None
            }
        }
    }

    fn string<'a>(
        &mut self,
        path: &str,
        map: &'a Map<String, Value>,
        key: &str,
        required: bool,
    ) -> Option<&'a str> {
        match map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.err(join(path, key), ErrorDetail::Required);
                }
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.err(
                    join(path, key),
                    ErrorDetail::WrongType {
                        expected: "string",
                        got: type_name(other),
                    },
                );
                None
            }
        }
    }

    fn max_len(&mut self, field: &str, s: &str, max: usize) -> bool {
        if s.len() > max {
            self.err(field, ErrorDetail::TooLong { max });
            false
        } else {
            true
        }
    }

    /// A `format: byte` field: length limits on the base64 text, then decoding.
    fn bytes(&mut self, field: &str, s: &str, min: Option<usize>, max: usize) -> Option<Vec<u8>> {
        if let Some(min) = min {
            if s.len() < min {
                self.err(field, ErrorDetail::TooShort { min });
            }
        }
        self.max_len(field, s, max);
        match base64::engine::general_purpose::STANDARD.decode(s) {
            Ok(b) => Some(b),
            Err(e) => {
                self.invalid(field, "string", format!("must be base64-encoded: {e}"));
                None
            }
        }
    }

    /// The CRD's PEM marker rules: `string(self).startsWith(BEGIN)`, ends with
    /// END (with or without a newline), and optionally equal marker counts.
    fn pem(&mut self, field: &str, name: &str, data: &[u8], label: &str, count_rule: bool) {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let Ok(text) = std::str::from_utf8(data) else {
            self.invalid(
                field,
                "string",
                format!("the {name} must be base64 encoding of PEM text (UTF-8)"),
            );
            return;
        };
        if !text.starts_with(&begin) {
            self.invalid(
                field,
                "string",
                format!("the {name} must start with base64 encoding of '{begin}'."),
            );
        }
        if !(text.ends_with(&format!("{end}\n")) || text.ends_with(&end)) {
            self.invalid(
                field,
                "string",
                format!("the {name} must end with base64 encoding of '{end}'."),
            );
        }
        if count_rule && text.matches(&begin).count() != text.matches(&end).count() {
            self.invalid(
                field,
                "string",
                format!("{name} must be base64 encoding of valid PEM format data contain the same number of '{begin}' and '{end}' markers."),
            );
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn dns1123_label_ok(s: &str) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    s.len() <= 63
        && R.get_or_init(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("static regex"))
            .is_match(s)
}

fn dns1123_subdomain_ok(s: &str) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    s.len() <= 253
        && R.get_or_init(|| {
            Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
                .expect("static regex")
        })
        .is_match(s)
}

/// CEL `isURL`: Go's `url.ParseRequestURI` accepts an absolute URL or an absolute path.
fn is_url(s: &str) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    s.starts_with('/')
        || R.get_or_init(|| Regex::new(r"^[A-Za-z][A-Za-z0-9+.-]*:.").expect("static regex"))
            .is_match(s)
}

fn email_ok(s: &str) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    // RE2's \S excludes only ASCII whitespace.
    R.get_or_init(|| Regex::new(r"^[^\t\n\x0C\r ]+@[^\t\n\x0C\r ]+$").expect("static regex"))
        .is_match(s)
}

/// The identity an unparsable document is reported under.
fn best_effort_ref(kind: Kind, doc: &Value) -> ObjectRef {
    let meta = doc.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    ObjectRef {
        kind,
        namespace: match kind {
            Kind::ImagePolicy => Some(field("namespace").unwrap_or_default()),
            Kind::ClusterImagePolicy => None,
        },
        name: field("name").unwrap_or_default(),
    }
}

/// Validates one document whose `kind` is `kind`.
pub fn validate_object(kind: Kind, doc: &Value) -> Validated {
    let id = best_effort_ref(kind, doc);
    let mut w = Walk { errors: Vec::new() };
    let Value::Object(top) = doc else {
        w.err(
            "<root>",
            ErrorDetail::WrongType {
                expected: "object",
                got: type_name(doc),
            },
        );
        return Err(InvalidObject {
            id,
            errors: w.errors,
        });
    };
    w.known_fields(
        "",
        top,
        &["apiVersion", "kind", "metadata", "spec", "status"],
    );

    let api_version = match w.string("", top, "apiVersion", true) {
        Some(s) => match ApiVersion::parse(s) {
            Some(v) => Some(v),
            None => {
                w.err(
                    "apiVersion",
                    ErrorDetail::Unsupported {
                        value: s.to_string(),
                        supported: API_VERSIONS,
                    },
                );
                None
            }
        },
        None => None,
    };

    if let Some(meta) = w.object("", top, "metadata", true) {
        validate_metadata(&mut w, kind, meta);
    }
    if let Some(status) = top.get("status") {
        if !status.is_object() && !status.is_null() {
            w.err(
                "status",
                ErrorDetail::WrongType {
                    expected: "object",
                    got: type_name(status),
                },
            );
        }
    }

    // Without a known version the spec is still checked, with the stricter v1 rules.
    let r = rules(api_version.unwrap_or(ApiVersion::V1));
    let spec = w
        .object("", top, "spec", true)
        .and_then(|spec| validate_spec(&mut w, &r, spec));

    match (w.errors.is_empty(), api_version, spec) {
        (true, Some(api_version), Some((scopes, root_of_trust, signed_identity))) => {
            Ok(PolicyObject {
                id,
                api_version,
                scopes,
                root_of_trust,
                signed_identity,
            })
        }
        _ => Err(InvalidObject {
            id,
            errors: w.errors,
        }),
    }
}

fn validate_metadata(w: &mut Walk, kind: Kind, meta: &Map<String, Value>) {
    match w.string("metadata", meta, "name", true) {
        Some("") => w.err("metadata.name", ErrorDetail::Required),
        Some(name) if !dns1123_subdomain_ok(name) => w.invalid(
            "metadata.name",
            "string",
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ),
        _ => {}
    }
    match kind {
        Kind::ImagePolicy => match w.string("metadata", meta, "namespace", true) {
            Some("") => w.err("metadata.namespace", ErrorDetail::Required),
            Some(ns) if !dns1123_label_ok(ns) => w.invalid(
                "metadata.namespace",
                "string",
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', start and end with an alphanumeric character, and be at most 63 characters (it names the file /etc/crio/policies/<namespace>.json)",
            ),
            _ => {}
        },
        Kind::ClusterImagePolicy => {
            if let Some(Value::String(ns)) = meta.get("namespace") {
                if !ns.is_empty() {
                    w.invalid(
                        "metadata.namespace",
                        "string",
                        "ClusterImagePolicy is cluster-scoped and has no namespace",
                    );
                }
            }
        }
    }
}

type Spec = (Vec<String>, RootOfTrust, SignedIdentity);

fn validate_spec(w: &mut Walk, r: &Rules, spec: &Map<String, Value>) -> Option<Spec> {
    w.known_fields("spec", spec, &["scopes", "policy"]);
    let scopes = validate_scopes(w, spec);
    let policy = w.object("spec", spec, "policy", true);
    let (rot, ident) = match policy {
        Some(p) => {
            w.known_fields("spec.policy", p, &["rootOfTrust", "signedIdentity"]);
            let rot = w
                .object("spec.policy", p, "rootOfTrust", true)
                .and_then(|rot| validate_root_of_trust(w, r, rot));
            let ident = match w.object("spec.policy", p, "signedIdentity", false) {
                Some(si) => validate_signed_identity(w, r, si),
                None if matches!(p.get("signedIdentity"), None | Some(Value::Null)) => {
                    Some(SignedIdentity::MatchRepoDigestOrExact)
                }
                None => None,
            };
            (rot, ident)
        }
        None => (None, None),
    };
    Some((scopes?, rot?, ident?))
}

fn validate_scopes(w: &mut Walk, spec: &Map<String, Value>) -> Option<Vec<String>> {
    let list = match spec.get("scopes") {
        None | Some(Value::Null) => {
            w.err("spec.scopes", ErrorDetail::Required);
            return None;
        }
        Some(Value::Array(a)) => a,
        Some(other) => {
            w.err(
                "spec.scopes",
                ErrorDetail::WrongType {
                    expected: "array",
                    got: type_name(other),
                },
            );
            return None;
        }
    };
    if list.is_empty() {
        w.invalid("spec.scopes", "array", "at least one scope is required");
    }
    if list.len() > MAX_SCOPES {
        w.err(
            "spec.scopes",
            ErrorDetail::TooMany {
                count: list.len(),
                max: MAX_SCOPES,
            },
        );
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let field = format!("spec.scopes[{i}]");
        let Value::String(s) = item else {
            w.err(
                &field,
                ErrorDetail::WrongType {
                    expected: "string",
                    got: type_name(item),
                },
            );
            continue;
        };
        if !w.max_len(&field, s, MAX_SCOPE_LEN) {
            continue;
        }
        if !scope::fqdn_or_localhost(s) {
            w.invalid(&field, "string", "invalid image scope format, scope must contain a fully qualified domain name or 'localhost'");
        }
        if s.contains('*') {
            if !scope::wildcard_scope_ok(s) {
                w.invalid(&field, "string", "invalid image scope with wildcard, a wildcard can only be at the start of the domain and is only supported for subdomain matching, not path matching");
            }
        } else if !scope::plain_scope_ok(s) {
            w.invalid(
                &field,
                "string",
                "invalid repository namespace or image specification in the image scope",
            );
        }
        if out.contains(s) {
            w.err(&field, ErrorDetail::Duplicate { value: s.clone() });
        }
        out.push(s.clone());
    }
    Some(out)
}

fn validate_root_of_trust(
    w: &mut Walk,
    r: &Rules,
    rot: &Map<String, Value>,
) -> Option<RootOfTrust> {
    const P: &str = "spec.policy.rootOfTrust";
    w.known_fields(
        P,
        rot,
        &["policyType", "publicKey", "fulcioCAWithRekor", "pki"],
    );
    let policy_type = w.string(P, rot, "policyType", true);
    if let Some(t) = policy_type {
        if !POLICY_TYPES.contains(&t) {
            w.err(
                format!("{P}.policyType"),
                ErrorDetail::Unsupported {
                    value: t.to_string(),
                    supported: POLICY_TYPES,
                },
            );
        }
    }
    // The union rules, in the CRD's order.
    let has = |k: &str| !matches!(rot.get(k), None | Some(Value::Null));
    for (member, ty) in ROOT_OF_TRUST_MEMBERS {
        if (policy_type == Some(ty)) != has(member) {
            w.invalid(P, "object", union_message(member, "policyType", ty));
        }
    }

    let public_key = w
        .object(P, rot, "publicKey", false)
        .map(|pk| validate_public_key(w, r, pk));
    let fulcio = w
        .object(P, rot, "fulcioCAWithRekor", false)
        .map(|f| validate_fulcio(w, r, f));
    let pki = w
        .object(P, rot, "pki", false)
        .map(|p| validate_pki(w, r, p));

    match policy_type? {
        "PublicKey" => public_key.flatten(),
        "FulcioCAWithRekor" => fulcio.flatten(),
        "PKI" => pki.flatten(),
        _ => None,
    }
}

fn validate_public_key(w: &mut Walk, r: &Rules, pk: &Map<String, Value>) -> Option<RootOfTrust> {
    const P: &str = "spec.policy.rootOfTrust.publicKey";
    w.known_fields(P, pk, &["keyData", "rekorKeyData"]);
    let key = w.string(P, pk, "keyData", true).and_then(|s| {
        let f = format!("{P}.keyData");
        let b = w.bytes(&f, s, r.key_data_min, MAX_KEY_LEN)?;
        if r.pem_checks_on_keys {
            w.pem(&f, "keyData", &b, "PUBLIC KEY", false);
        }
        Some(b)
    });
    let rekor = match w.string(P, pk, "rekorKeyData", false) {
        Some(s) => {
            let f = format!("{P}.rekorKeyData");
            let b = w.bytes(&f, s, None, MAX_KEY_LEN);
            if let (true, Some(b)) = (r.pem_checks_on_keys, &b) {
                w.pem(&f, "rekorKeyData", b, "PUBLIC KEY", false);
            }
            Some(b?)
        }
        None => None,
    };
    Some(RootOfTrust::PublicKey {
        key_data: key?,
        rekor_key_data: rekor,
    })
}

fn validate_fulcio(w: &mut Walk, r: &Rules, f: &Map<String, Value>) -> Option<RootOfTrust> {
    const P: &str = "spec.policy.rootOfTrust.fulcioCAWithRekor";
    w.known_fields(P, f, &["fulcioCAData", "rekorKeyData", "fulcioSubject"]);
    let ca = w.string(P, f, "fulcioCAData", true).and_then(|s| {
        let field = format!("{P}.fulcioCAData");
        let b = w.bytes(&field, s, None, MAX_KEY_LEN)?;
        if r.pem_checks_on_keys {
            w.pem(&field, "fulcioCAData", &b, "CERTIFICATE", false);
        }
        Some(b)
    });
    let rekor = w.string(P, f, "rekorKeyData", true).and_then(|s| {
        let field = format!("{P}.rekorKeyData");
        let b = w.bytes(&field, s, None, MAX_KEY_LEN)?;
        if r.pem_checks_on_keys {
            w.pem(&field, "rekorKeyData", &b, "PUBLIC KEY", false);
        }
        Some(b)
    });
    let subject = w.object(P, f, "fulcioSubject", true).map(|subj| {
        let sp = format!("{P}.fulcioSubject");
        w.known_fields(&sp, subj, &["oidcIssuer", "signedEmail"]);
        let issuer = w.string(&sp, subj, "oidcIssuer", true).filter(|s| {
            let field = format!("{sp}.oidcIssuer");
            let ok = w.max_len(&field, s, MAX_OIDC_ISSUER_LEN);
            if !is_url(s) {
                w.invalid(&field, "string", "oidcIssuer must be a valid URL");
                return false;
            }
            ok
        });
        let email = w.string(&sp, subj, "signedEmail", true).filter(|s| {
            let field = format!("{sp}.signedEmail");
            let ok = w.max_len(&field, s, MAX_EMAIL_LEN);
            if !email_ok(s) {
                w.invalid(&field, "string", "invalid email address");
                return false;
            }
            ok
        });
        (issuer, email)
    });
    let (issuer, email) = subject?;
    Some(RootOfTrust::FulcioCAWithRekor {
        fulcio_ca_data: ca?,
        rekor_key_data: rekor?,
        oidc_issuer: issuer?.to_string(),
        signed_email: email?.to_string(),
    })
}

fn validate_pki(w: &mut Walk, r: &Rules, p: &Map<String, Value>) -> Option<RootOfTrust> {
    const P: &str = "spec.policy.rootOfTrust.pki";
    w.known_fields(
        P,
        p,
        &[
            "caRootsData",
            "caIntermediatesData",
            "pkiCertificateSubject",
        ],
    );
    let ca = |w: &mut Walk, key: &str, required: bool| -> Option<Option<Vec<u8>>> {
        match w.string(P, p, key, required) {
            Some(s) => {
                let field = format!("{P}.{key}");
                let b = w.bytes(&field, s, r.ca_min, MAX_KEY_LEN)?;
                w.pem(&field, key, &b, "CERTIFICATE", true);
                Some(Some(b))
            }
            None if required => None,
            None => Some(None),
        }
    };
    let roots = ca(w, "caRootsData", true).flatten();
    let inter = ca(w, "caIntermediatesData", false);
    let subject = w.object(P, p, "pkiCertificateSubject", true).map(|s| {
        let sp = format!("{P}.pkiCertificateSubject");
        w.known_fields(&sp, s, &["email", "hostname"]);
        if matches!(s.get("email"), None | Some(Value::Null))
            && matches!(s.get("hostname"), None | Some(Value::Null))
        {
            w.invalid(
                &sp,
                "object",
                "at least one of email or hostname must be set in pkiCertificateSubject",
            );
        }
        let email = w.string(&sp, s, "email", false).map(|e| {
            let field = format!("{sp}.email");
            w.max_len(&field, e, MAX_EMAIL_LEN);
            if !email_ok(e) {
                w.invalid(&field, "string", r.email_message);
            }
            e.to_string()
        });
        let hostname = w.string(&sp, s, "hostname", false).map(|h| {
            let field = format!("{sp}.hostname");
            w.max_len(&field, h, MAX_HOSTNAME_LEN);
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if !dns1123_subdomain_ok(bare) {
                w.invalid(&field, "string", r.hostname_message);
            }
            h.to_string()
        });
        (email, hostname)
    });
    let (email, hostname) = subject?;
    Some(RootOfTrust::Pki {
        ca_roots_data: roots?,
        ca_intermediates_data: inter?,
        email,
        hostname,
    })
}

fn validate_signed_identity(
    w: &mut Walk,
    r: &Rules,
    si: &Map<String, Value>,
) -> Option<SignedIdentity> {
    const P: &str = "spec.policy.signedIdentity";
    w.known_fields(P, si, &["matchPolicy", "exactRepository", "remapIdentity"]);
    let mp = w.string(P, si, "matchPolicy", true);
    if let Some(m) = mp {
        if !MATCH_POLICIES.contains(&m) {
            w.err(
                format!("{P}.matchPolicy"),
                ErrorDetail::Unsupported {
                    value: m.to_string(),
                    supported: MATCH_POLICIES,
                },
            );
        }
    }
    let has = |k: &str| !matches!(si.get(k), None | Some(Value::Null));
    for (member, ty) in IDENTITY_MEMBERS {
        if (mp == Some(ty)) != has(member) {
            w.invalid(P, "object", union_message(member, "matchPolicy", ty));
        }
    }
    let prefix = |w: &mut Walk, path: &str, m: &Map<String, Value>, key: &str| {
        w.string(path, m, key, true).and_then(|s| {
            let field = join(path, key);
            let mut ok = w.max_len(&field, s, MAX_IDENTITY_LEN);
            if !scope::identity_has_no_tag(s) {
                w.invalid(&field, "string", IDENTITY_TAG_MESSAGE);
                ok = false;
            }
            if !scope::identity_prefix_ok(s) {
                w.invalid(&field, "string", r.identity_message);
                ok = false;
            }
            ok.then(|| s.to_string())
        })
    };
    let exact = w.object(P, si, "exactRepository", false).map(|e| {
        let ep = format!("{P}.exactRepository");
        w.known_fields(&ep, e, &["repository"]);
        prefix(w, &ep, e, "repository")
    });
    let remap = w.object(P, si, "remapIdentity", false).map(|m| {
        let rp = format!("{P}.remapIdentity");
        w.known_fields(&rp, m, &["prefix", "signedPrefix"]);
        let a = prefix(w, &rp, m, "prefix");
        let b = prefix(w, &rp, m, "signedPrefix");
        (a, b)
    });
    match mp? {
        "MatchRepoDigestOrExact" => Some(SignedIdentity::MatchRepoDigestOrExact),
        "MatchRepository" => Some(SignedIdentity::MatchRepository),
        "ExactRepository" => Some(SignedIdentity::ExactRepository {
            repository: exact??,
        }),
        "RemapIdentity" => {
            let (a, b) = remap?;
            Some(SignedIdentity::RemapIdentity {
                prefix: a?,
                signed_prefix: b?,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_rules() {
        assert!(email_ok("a@b"));
        assert!(email_ok("ü@b.c"));
        assert!(!email_ok("invalid-email"));
        assert!(!email_ok("a b@c"));
        assert!(is_url("https://oidc.localhost"));
        assert!(is_url("/path"));
        assert!(!is_url("not a url"));
        assert!(!is_url("example.com"));
        assert!(dns1123_label_ok("team-a"));
        assert!(!dns1123_label_ok("../etc"));
        assert!(!dns1123_label_ok("a/b"));
        assert!(dns1123_subdomain_ok("signer.example.org"));
        assert!(!dns1123_subdomain_ok("invaild-.com"));
    }
}
