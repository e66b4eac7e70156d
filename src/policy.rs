//! containers-policy.json(5): the typed document, a strict parser as paranoid
//! as containers/image's (unknown and duplicate keys, bad base64, missing or
//! conflicting fields, scopes the transport rejects), and a serializer that
//! writes the bytes Go's `json.MarshalIndent(policy, "", "  ")` would write for
//! containers/image's types (field order as declared there, map keys sorted,
//! `<>&` escaped, no trailing newline).

use base64::Engine;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

pub type Scopes = BTreeMap<String, Vec<Requirement>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub default: Vec<Requirement>,
    pub transports: BTreeMap<String, Scopes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    InsecureAcceptAnything,
    Reject,
    SignedBy {
        key_type: String,
        key_path: Option<String>,
        key_paths: Option<Vec<String>>,
        key_data: Option<Vec<u8>>,
        signed_identity: Match,
    },
    SignedBaseLayer {
        base_layer_identity: Match,
    },
    SigstoreSigned(Box<Sigstore>),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sigstore {
    pub key_path: Option<String>,
    pub key_paths: Option<Vec<String>>,
    pub key_data: Option<Vec<u8>>,
    pub key_datas: Option<Vec<Vec<u8>>>,
    pub fulcio: Option<Fulcio>,
    pub rekor_public_key_path: Option<String>,
    pub rekor_public_key_paths: Option<Vec<String>>,
    pub rekor_public_key_data: Option<Vec<u8>>,
    pub rekor_public_key_datas: Option<Vec<Vec<u8>>>,
    pub pki: Option<Pki>,
    pub signed_identity: Match,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fulcio {
    pub ca_path: Option<String>,
    pub ca_data: Option<Vec<u8>>,
    pub oidc_issuer: String,
    pub subject_email: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pki {
    pub ca_roots_path: Option<String>,
    pub ca_roots_data: Option<Vec<u8>>,
    pub ca_intermediates_path: Option<String>,
    pub ca_intermediates_data: Option<Vec<u8>>,
    pub subject_email: Option<String>,
    pub subject_hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Match {
    MatchExact,
    #[default]
    MatchRepoDigestOrExact,
    MatchRepository,
    ExactReference {
        docker_reference: String,
    },
    ExactRepository {
        docker_repository: String,
    },
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

/// A policy file that containers/image would refuse to load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    /// JSON path of the offending value, e.g. `transports.docker["a.com"][0]`.
    pub path: String,
    pub message: String,
}

// ---------------------------------------------------------------------------
// Strict parsing

/// A JSON value whose objects keep their key order and reject duplicate keys.
#[derive(Debug, Clone)]
enum Sv {
    Null,
    Bool,
    Num,
    Str(String),
    Arr(Vec<Sv>),
    Obj(Vec<(String, Sv)>),
}

impl<'de> Deserialize<'de> for Sv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sv, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Sv;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Sv, E> {
                Ok(Sv::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Sv, E> {
                Ok(Sv::Bool)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Sv, E> {
                Ok(Sv::Num)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Sv, E> {
                Ok(Sv::Num)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Sv, E> {
                Ok(Sv::Num)
            }
            fn visit_str<E>(self, s: &str) -> Result<Sv, E> {
                Ok(Sv::Str(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Sv, E> {
                Ok(Sv::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Sv, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Sv::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Sv, A::Error> {
                let mut v: Vec<(String, Sv)> = Vec::new();
                while let Some(k) = a.next_key::<String>()? {
                    if v.iter().any(|(e, _)| *e == k) {
                        return Err(de::Error::custom(format!("Duplicate key {k:?}")));
                    }
                    let val = a.next_value()?;
                    v.push((k, val));
                }
                Ok(Sv::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn kind_of(v: &Sv) -> &'static str {
    match v {
        Sv::Null => "null",
        Sv::Bool => "bool",
        Sv::Num => "number",
        Sv::Str(_) => "string",
        Sv::Arr(_) => "array",
        Sv::Obj(_) => "object",
    }
}

struct P<'a> {
    path: &'a str,
}

fn err(path: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.to_string(),
        message: message.into(),
    }
}

impl P<'_> {
    fn obj<'v>(&self, v: &'v Sv) -> Result<&'v [(String, Sv)], PolicyError> {
        match v {
            Sv::Obj(o) => Ok(o),
            other => Err(err(
                self.path,
                format!("expected an object, got {}", kind_of(other)),
            )),
        }
    }
}

/// Checks the keys of an object against `known` and returns a lookup.
fn fields<'v>(
    path: &str,
    o: &'v [(String, Sv)],
    known: &[&str],
) -> Result<BTreeMap<&'v str, &'v Sv>, PolicyError> {
    let mut m = BTreeMap::new();
    for (k, v) in o {
        if !known.contains(&k.as_str()) {
            return Err(err(path, format!("Unknown key {k:?}")));
        }
        m.insert(k.as_str(), v);
    }
    Ok(m)
}

fn string(path: &str, v: &Sv) -> Result<String, PolicyError> {
    match v {
        Sv::Str(s) => Ok(s.clone()),
        other => Err(err(
            path,
            format!("expected a string, got {}", kind_of(other)),
        )),
    }
}

fn nonempty_string(path: &str, v: &Sv) -> Result<String, PolicyError> {
    let s = string(path, v)?;
    if s.is_empty() {
        return Err(err(path, "must not be empty"));
    }
    Ok(s)
}

fn bytes(path: &str, v: &Sv) -> Result<Vec<u8>, PolicyError> {
    let s = string(path, v)?;
    let b = base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|e| err(path, format!("illegal base64 data: {e}")))?;
    if b.is_empty() {
        return Err(err(path, "must not be empty"));
    }
    Ok(b)
}

fn list<T>(
    path: &str,
    v: &Sv,
    name: &str,
    each: impl Fn(&str, &Sv) -> Result<T, PolicyError>,
) -> Result<Vec<T>, PolicyError> {
    let Sv::Arr(a) = v else {
        return Err(err(path, format!("expected an array, got {}", kind_of(v))));
    };
    if a.is_empty() {
        return Err(err(path, format!("{name:?} contains no entries")));
    }
    a.iter()
        .enumerate()
        .map(|(i, x)| each(&format!("{path}[{i}]"), x))
        .collect()
}

/// Parses a policy file exactly as strictly as containers/image, and a bit
/// more (empty key material and malformed docker scopes are errors too).
pub fn parse(bytes: &[u8]) -> Result<Policy, PolicyError> {
    parse_with(bytes, true)
}

/// The same checks as [`parse`], keeping nothing: memory stays at one
/// scope's requirement list whatever the file's size (the preflight check).
pub fn check(bytes: &[u8]) -> Result<(), PolicyError> {
    parse_with(bytes, false).map(|_| ())
}

fn parse_with(bytes: &[u8], keep: bool) -> Result<Policy, PolicyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let p = de::DeserializeSeed::deserialize(Top { keep }, &mut de).map_err(to_policy_error)?;
    de.end().map_err(to_policy_error)?;
    Ok(p)
}

/// Errors raised inside the visitors carry their path as "path: message".
fn to_policy_error(e: serde_json::Error) -> PolicyError {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((path, msg))
            if path.starts_with("transports")
                || path.starts_with("default")
                || path == "<file>" =>
        {
            err(path, msg)
        }
        _ => err("<file>", text),
    }
}

fn de_err<E: de::Error>(e: PolicyError) -> E {
    E::custom(format!("{}: {}", e.path, e.message))
}

struct Top {
    keep: bool,
}

impl<'de> de::DeserializeSeed<'de> for Top {
    type Value = Policy;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Policy, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top {
    type Value = Policy;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a policy object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Policy, A::Error> {
        let mut default = None;
        let mut transports = BTreeMap::new();
        let mut seen = Vec::new();
        while let Some(k) = a.next_key::<String>()? {
            if seen.contains(&k) {
                return Err(de::Error::custom(format!("<file>: Duplicate key {k:?}")));
            }
            match k.as_str() {
                "default" => {
                    let v: Sv = a.next_value()?;
                    default = Some(requirements("default", &v).map_err(de_err)?);
                }
                "transports" => {
                    transports = a.next_value_seed(Transports { keep: self.keep })?;
                }
                other => return Err(de::Error::custom(format!("<file>: Unknown key {other:?}"))),
            }
            seen.push(k);
        }
        let default =
            default.ok_or_else(|| de::Error::custom("<file>: Default policy is missing"))?;
        Ok(Policy {
            default,
            transports,
        })
    }
}

struct Transports {
    keep: bool,
}

impl<'de> de::DeserializeSeed<'de> for Transports {
    type Value = BTreeMap<String, Scopes>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Transports {
    type Value = BTreeMap<String, Scopes>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of transports")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        let mut seen = Vec::new();
        while let Some(name) = a.next_key::<String>()? {
            if seen.contains(&name) {
                return Err(de::Error::custom(format!(
                    "transports: Duplicate key {name:?}"
                )));
            }
            let scopes = a.next_value_seed(ScopeMap {
                transport: &name,
                keep: self.keep,
            })?;
            if self.keep {
                out.insert(name.clone(), scopes);
            }
            seen.push(name);
        }
        Ok(out)
    }
}

struct ScopeMap<'t> {
    transport: &'t str,
    keep: bool,
}

impl<'de> de::DeserializeSeed<'de> for ScopeMap<'_> {
    type Value = Scopes;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scopes, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScopeMap<'_> {
    type Value = Scopes;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of scopes")
    }
    fn visit_unit<E>(self) -> Result<Scopes, E> {
        Ok(BTreeMap::new())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Scopes, A::Error> {
        let tpath = format!("transports.{}", self.transport);
        let mut out = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(scope) = a.next_key::<String>()? {
            let spath = format!("{tpath}[{scope:?}]");
            if !seen.insert(scope.clone()) {
                return Err(de::Error::custom(format!(
                    "{tpath}: Duplicate key {scope:?}"
                )));
            }
            check_scope(self.transport, &scope).map_err(|m| de_err(err(&spath, m)))?;
            let v: Sv = a.next_value()?;
            let reqs = requirements(&spath, &v).map_err(de_err)?;
            if self.keep {
                out.insert(scope, reqs);
            }
        }
        Ok(out)
    }
}

/// Scope validation per transport, as containers/image does it (plus a sanity
/// check on docker scopes, which containers/image silently never matches).
fn check_scope(transport: &str, scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        return Ok(());
    }
    let bad = || Err(format!("Unknown key {scope:?}"));
    match transport {
        "atomic" if !crate::scope::atomic_scope_ok(scope) => return bad(),
        "docker" => {
            let ok = !scope.chars().any(|c| c.is_whitespace() || c.is_control())
                && !scope.starts_with('/')
                && (!scope.contains('*') || crate::scope::wildcard_scope_ok(scope));
            if !ok {
                return Err(format!("invalid docker scope {scope:?}"));
            }
        }
        "dir" | "oci" | "oci-archive" | "docker-archive" | "tarball" | "sif"
            if !scope.starts_with('/') || scope.split('/').any(|c| c == "." || c == "..") =>
        {
            return bad()
        }
        _ => {}
    }
    Ok(())
}

fn requirements(path: &str, v: &Sv) -> Result<Vec<Requirement>, PolicyError> {
    match v {
        Sv::Arr(a) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, r)| requirement(&format!("{path}[{i}]"), r))
            .collect(),
        Sv::Arr(_) | Sv::Null => Err(err(
            path,
            "List of verification policy requirements must not be empty",
        )),
        other => Err(err(
            path,
            format!("expected an array, got {}", kind_of(other)),
        )),
    }
}

fn requirement(path: &str, v: &Sv) -> Result<Requirement, PolicyError> {
    let o = P { path }.obj(v)?;
    let ty = match o.iter().find(|(k, _)| k == "type") {
        Some((_, t)) => string(path, t)?,
        None => return Err(err(path, "Missing \"type\" field")),
    };
    let sub = |k: &str| format!("{path}.{k}");
    match ty.as_str() {
        "insecureAcceptAnything" => {
            fields(path, o, &["type"])?;
            Ok(Requirement::InsecureAcceptAnything)
        }
        "reject" => {
            fields(path, o, &["type"])?;
            Ok(Requirement::Reject)
        }
        "signedBy" => {
            let f = fields(
                path,
                o,
                &[
                    "type",
                    "keyType",
                    "keyPath",
                    "keyPaths",
                    "keyData",
                    "signedIdentity",
                ],
            )?;
            let key_type = match f.get("keyType") {
                Some(v) => string(&sub("keyType"), v)?,
                None => return Err(err(path, "keyType field missing in signedBy")),
            };
            if ![
                "GPGKeys",
                "signedByGPGKeys",
                "X509Certificates",
                "signedByX509CAs",
            ]
            .contains(&key_type.as_str())
            {
                return Err(err(
                    &sub("keyType"),
                    format!("Unknown key type {key_type:?}"),
                ));
            }
            let key_path = f
                .get("keyPath")
                .map(|v| nonempty_string(&sub("keyPath"), v))
                .transpose()?;
            let key_paths = f
                .get("keyPaths")
                .map(|v| list(&sub("keyPaths"), v, "keyPaths", nonempty_string))
                .transpose()?;
            let key_data = f
                .get("keyData")
                .map(|v| bytes(&sub("keyData"), v))
                .transpose()?;
            let n = key_path.is_some() as u8 + key_paths.is_some() as u8 + key_data.is_some() as u8;
            if n != 1 {
                return Err(err(
                    path,
                    "exactly one of keyPath, keyPaths and keyData must be specified",
                ));
            }
            let signed_identity = f
                .get("signedIdentity")
                .map(|v| match_(&sub("signedIdentity"), v))
                .transpose()?
                .unwrap_or_default();
            Ok(Requirement::SignedBy {
                key_type,
                key_path,
                key_paths,
                key_data,
                signed_identity,
            })
        }
        "signedBaseLayer" => {
            let f = fields(path, o, &["type", "baseLayerIdentity"])?;
            let base_layer_identity = match f.get("baseLayerIdentity") {
                Some(v) => match_(&sub("baseLayerIdentity"), v)?,
                None => return Err(err(path, "baseLayerIdentity field missing")),
            };
            Ok(Requirement::SignedBaseLayer {
                base_layer_identity,
            })
        }
        "sigstoreSigned" => sigstore(path, o).map(|s| Requirement::SigstoreSigned(Box::new(s))),
        other => Err(err(
            path,
            format!("Unknown policy requirement type {other:?}"),
        )),
    }
}

fn sigstore(path: &str, o: &[(String, Sv)]) -> Result<Sigstore, PolicyError> {
    let f = fields(
        path,
        o,
        &[
            "type",
            "keyPath",
            "keyPaths",
            "keyData",
            "keyDatas",
            "fulcio",
            "rekorPublicKeyPath",
            "rekorPublicKeyPaths",
            "rekorPublicKeyData",
            "rekorPublicKeyDatas",
            "pki",
            "signedIdentity",
        ],
    )?;
    let sub = |k: &str| format!("{path}.{k}");
    let s_opt = |k: &str| f.get(k).map(|v| nonempty_string(&sub(k), v)).transpose();
    let b_opt = |k: &str| f.get(k).map(|v| bytes(&sub(k), v)).transpose();
    let sl_opt = |k: &str| {
        f.get(k)
            .map(|v| list(&sub(k), v, k, nonempty_string))
            .transpose()
    };
    let bl_opt = |k: &str| f.get(k).map(|v| list(&sub(k), v, k, bytes)).transpose();
    let mut s = Sigstore {
        key_path: s_opt("keyPath")?,
        key_paths: sl_opt("keyPaths")?,
        key_data: b_opt("keyData")?,
        key_datas: bl_opt("keyDatas")?,
        rekor_public_key_path: s_opt("rekorPublicKeyPath")?,
        rekor_public_key_paths: sl_opt("rekorPublicKeyPaths")?,
        rekor_public_key_data: b_opt("rekorPublicKeyData")?,
        rekor_public_key_datas: bl_opt("rekorPublicKeyDatas")?,
        ..Default::default()
    };
    if let Some(v) = f.get("fulcio") {
        let fp = sub("fulcio");
        let fo = P { path: &fp }.obj(v)?;
        let ff = fields(&fp, fo, &["caPath", "caData", "oidcIssuer", "subjectEmail"])?;
        let ca_path = ff
            .get("caPath")
            .map(|v| nonempty_string(&format!("{fp}.caPath"), v))
            .transpose()?;
        let ca_data = ff
            .get("caData")
            .map(|v| bytes(&format!("{fp}.caData"), v))
            .transpose()?;
        match (&ca_path, &ca_data) {
            (Some(_), Some(_)) => {
                return Err(err(&fp, "caPath and caData cannot be used simultaneously"))
            }
            (None, None) => {
                return Err(err(
                    &fp,
                    "At least one of caPath and caData must be specified",
                ))
            }
            _ => {}
        }
        let oidc_issuer = match ff.get("oidcIssuer") {
            Some(v) => nonempty_string(&format!("{fp}.oidcIssuer"), v)?,
            None => return Err(err(&fp, "oidcIssuer not specified")),
        };
        let subject_email = match ff.get("subjectEmail") {
            Some(v) => nonempty_string(&format!("{fp}.subjectEmail"), v)?,
            None => return Err(err(&fp, "subjectEmail not specified")),
        };
        s.fulcio = Some(Fulcio {
            ca_path,
            ca_data,
            oidc_issuer,
            subject_email,
        });
    }
    if let Some(v) = f.get("pki") {
        let pp = sub("pki");
        let po = P { path: &pp }.obj(v)?;
        let pf = fields(
            &pp,
            po,
            &[
                "caRootsPath",
                "caRootsData",
                "caIntermediatesPath",
                "caIntermediatesData",
                "subjectEmail",
                "subjectHostname",
            ],
        )?;
        let so = |k: &str| {
            pf.get(k)
                .map(|v| nonempty_string(&format!("{pp}.{k}"), v))
                .transpose()
        };
        let bo = |k: &str| {
            pf.get(k)
                .map(|v| bytes(&format!("{pp}.{k}"), v))
                .transpose()
        };
        let pki = Pki {
            ca_roots_path: so("caRootsPath")?,
            ca_roots_data: bo("caRootsData")?,
            ca_intermediates_path: so("caIntermediatesPath")?,
            ca_intermediates_data: bo("caIntermediatesData")?,
            subject_email: so("subjectEmail")?,
            subject_hostname: so("subjectHostname")?,
        };
        match (&pki.ca_roots_path, &pki.ca_roots_data) {
            (Some(_), Some(_)) => {
                return Err(err(
                    &pp,
                    "caRootsPath and caRootsData cannot be used simultaneously",
                ))
            }
            (None, None) => {
                return Err(err(
                    &pp,
                    "At least one of caRootsPath and caRootsData must be specified",
                ))
            }
            _ => {}
        }
        if pki.ca_intermediates_path.is_some() && pki.ca_intermediates_data.is_some() {
            return Err(err(
                &pp,
                "caIntermediatesPath and caIntermediatesData cannot be used simultaneously",
            ));
        }
        if pki.subject_email.is_none() && pki.subject_hostname.is_none() {
            return Err(err(
                &pp,
                "At least one of subjectEmail, subjectHostname must be specified",
            ));
        }
        s.pki = Some(pki);
    }
    let sources = s.key_path.is_some() as u8
        + s.key_paths.is_some() as u8
        + s.key_data.is_some() as u8
        + s.key_datas.is_some() as u8
        + s.fulcio.is_some() as u8
        + s.pki.is_some() as u8;
    if sources != 1 {
        return Err(err(
            path,
            "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, and pki must be specified",
        ));
    }
    let rekors = s.rekor_public_key_path.is_some() as u8
        + s.rekor_public_key_paths.is_some() as u8
        + s.rekor_public_key_data.is_some() as u8
        + s.rekor_public_key_datas.is_some() as u8;
    if rekors > 1 {
        return Err(err(path, "at most one of rekorPublicKeyPath, rekorPublicKeyPaths, rekorPublicKeyData and rekorPublicKeyDatas can be used"));
    }
    if s.fulcio.is_some() && rekors == 0 {
        return Err(err(path, "At least one of rekorPublickeyPath, rekorPublicKeyPaths, rekorPublickeyData and rekorPublicKeyDatas must be specified if fulcio is used"));
    }
    if s.pki.is_some() && rekors > 0 {
        return Err(err(path, "rekorPublicKeyPath, rekorPublicKeyPaths, rekorPublicKeyData and rekorPublicKeyDatas are not supported for pki"));
    }
    s.signed_identity = f
        .get("signedIdentity")
        .map(|v| match_(&sub("signedIdentity"), v))
        .transpose()?
        .unwrap_or_default();
    Ok(s)
}

fn match_(path: &str, v: &Sv) -> Result<Match, PolicyError> {
    let o = P { path }.obj(v)?;
    let ty = match o.iter().find(|(k, _)| k == "type") {
        Some((_, t)) => string(path, t)?,
        None => return Err(err(path, "Missing \"type\" field")),
    };
    let get = |f: &BTreeMap<&str, &Sv>, k: &str| -> Result<String, PolicyError> {
        match f.get(k) {
            Some(v) => nonempty_string(&format!("{path}.{k}"), v),
            None => Err(err(path, format!("{k} field missing"))),
        }
    };
    match ty.as_str() {
        "matchExact" => fields(path, o, &["type"]).map(|_| Match::MatchExact),
        "matchRepoDigestOrExact" => {
            fields(path, o, &["type"]).map(|_| Match::MatchRepoDigestOrExact)
        }
        "matchRepository" => fields(path, o, &["type"]).map(|_| Match::MatchRepository),
        "exactReference" => {
            let f = fields(path, o, &["type", "dockerReference"])?;
            let r = get(&f, "dockerReference")?;
            let (repo, rest) = split_reference(&r);
            if rest.is_empty() || !repository_ok(repo) {
                return Err(err(
                    path,
                    format!("dockerReference {r:?} contains neither a tag nor digest"),
                ));
            }
            Ok(Match::ExactReference {
                docker_reference: r,
            })
        }
        "exactRepository" => {
            let f = fields(path, o, &["type", "dockerRepository"])?;
            let r = get(&f, "dockerRepository")?;
            if !repository_ok(&r) {
                return Err(err(
                    path,
                    format!("Invalid format of dockerRepository {r:?}"),
                ));
            }
            Ok(Match::ExactRepository {
                docker_repository: r,
            })
        }
        "remapIdentity" => {
            let f = fields(path, o, &["type", "prefix", "signedPrefix"])?;
            let prefix = get(&f, "prefix")?;
            let signed_prefix = get(&f, "signedPrefix")?;
            for p in [&prefix, &signed_prefix] {
                if !remap_prefix_ok(p) {
                    return Err(err(path, format!("prefix {p:?} is not valid")));
                }
            }
            Ok(Match::RemapIdentity {
                prefix,
                signed_prefix,
            })
        }
        other => Err(err(
            path,
            format!("Unknown policy reference match type {other:?}"),
        )),
    }
}

/// Splits `repo[:tag][@digest]` into the repository and the rest.
fn split_reference(r: &str) -> (&str, &str) {
    let bare = crate::scope::strip_tag_digest(r);
    (bare, &r[bare.len()..])
}

/// A named repository reference without tag or digest (lenient on case of the
/// host, strict on path components, like docker/distribution's grammar).
fn repository_ok(r: &str) -> bool {
    crate::scope::identity_prefix_ok(r) || {
        // Single-component names ("busybox") are normalized by containers/image.
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
    }
}

/// containers/image accepts `host[:port]`, or a name without tag or digest.
fn remap_prefix_ok(p: &str) -> bool {
    crate::scope::identity_has_no_tag(p)
        && (crate::scope::identity_prefix_ok(p) || repository_ok(p))
        || {
            // bare host[:port] (any host the reference grammar accepts)
            let (host, port) = p.split_once(':').unwrap_or((p, ""));
            !host.is_empty()
                && !p.contains('/')
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && port.bytes().all(|b| b.is_ascii_digit())
        }
}

// ---------------------------------------------------------------------------
// Serialization (Go encoding/json MarshalIndent compatible)

/// A JSON tree with explicit field order.
enum J {
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

fn b64(b: &[u8]) -> J {
    J::Str(base64::engine::general_purpose::STANDARD.encode(b))
}

fn strs(v: &[String]) -> J {
    J::Arr(v.iter().map(|s| J::Str(s.clone())).collect())
}

fn match_json(m: &Match) -> J {
    let t = |s: &str| ("type", J::Str(s.to_string()));
    J::Obj(match m {
        Match::MatchExact => vec![t("matchExact")],
        Match::MatchRepoDigestOrExact => vec![t("matchRepoDigestOrExact")],
        Match::MatchRepository => vec![t("matchRepository")],
        Match::ExactReference { docker_reference } => vec![
            t("exactReference"),
            ("dockerReference", J::Str(docker_reference.clone())),
        ],
        Match::ExactRepository { docker_repository } => vec![
            t("exactRepository"),
            ("dockerRepository", J::Str(docker_repository.clone())),
        ],
        Match::RemapIdentity {
            prefix,
            signed_prefix,
        } => vec![
            t("remapIdentity"),
            ("prefix", J::Str(prefix.clone())),
            ("signedPrefix", J::Str(signed_prefix.clone())),
        ],
    })
}

fn requirement_json(r: &Requirement) -> J {
    let t = |s: &str| ("type", J::Str(s.to_string()));
    let mut o: Vec<(&'static str, J)> = Vec::new();
    fn opt<T>(o: &mut Vec<(&'static str, J)>, k: &'static str, v: &Option<T>, f: impl Fn(&T) -> J) {
        if let Some(v) = v {
            o.push((k, f(v)));
        }
    }
    match r {
        Requirement::InsecureAcceptAnything => o.push(t("insecureAcceptAnything")),
        Requirement::Reject => o.push(t("reject")),
        Requirement::SignedBy {
            key_type,
            key_path,
            key_paths,
            key_data,
            signed_identity,
        } => {
            o.push(t("signedBy"));
            o.push(("keyType", J::Str(key_type.clone())));
            opt(&mut o, "keyPath", key_path, |s| J::Str(s.clone()));
            opt(&mut o, "keyPaths", key_paths, |v| strs(v));
            opt(&mut o, "keyData", key_data, |b| b64(b));
            o.push(("signedIdentity", match_json(signed_identity)));
        }
        Requirement::SignedBaseLayer {
            base_layer_identity,
        } => {
            o.push(t("signedBaseLayer"));
            o.push(("baseLayerIdentity", match_json(base_layer_identity)));
        }
        Requirement::SigstoreSigned(s) => {
            o.push(t("sigstoreSigned"));
            opt(&mut o, "keyPath", &s.key_path, |s| J::Str(s.clone()));
            opt(&mut o, "keyPaths", &s.key_paths, |v| strs(v));
            opt(&mut o, "keyData", &s.key_data, |b| b64(b));
            opt(&mut o, "keyDatas", &s.key_datas, |v| {
                J::Arr(v.iter().map(|b| b64(b)).collect())
            });
            opt(&mut o, "fulcio", &s.fulcio, |f| {
                let mut fo = Vec::new();
                opt(&mut fo, "caPath", &f.ca_path, |s| J::Str(s.clone()));
                opt(&mut fo, "caData", &f.ca_data, |b| b64(b));
                fo.push(("oidcIssuer", J::Str(f.oidc_issuer.clone())));
                fo.push(("subjectEmail", J::Str(f.subject_email.clone())));
                J::Obj(fo)
            });
            opt(
                &mut o,
                "rekorPublicKeyPath",
                &s.rekor_public_key_path,
                |s| J::Str(s.clone()),
            );
            opt(
                &mut o,
                "rekorPublicKeyPaths",
                &s.rekor_public_key_paths,
                |v| strs(v),
            );
            opt(
                &mut o,
                "rekorPublicKeyData",
                &s.rekor_public_key_data,
                |b| b64(b),
            );
            opt(
                &mut o,
                "rekorPublicKeyDatas",
                &s.rekor_public_key_datas,
                |v| J::Arr(v.iter().map(|b| b64(b)).collect()),
            );
            opt(&mut o, "pki", &s.pki, |p| {
                let mut po = Vec::new();
                opt(&mut po, "caRootsPath", &p.ca_roots_path, |s| {
                    J::Str(s.clone())
                });
                opt(&mut po, "caRootsData", &p.ca_roots_data, |b| b64(b));
                opt(
                    &mut po,
                    "caIntermediatesPath",
                    &p.ca_intermediates_path,
                    |s| J::Str(s.clone()),
                );
                opt(
                    &mut po,
                    "caIntermediatesData",
                    &p.ca_intermediates_data,
                    |b| b64(b),
                );
                opt(&mut po, "subjectEmail", &p.subject_email, |s| {
                    J::Str(s.clone())
                });
                opt(&mut po, "subjectHostname", &p.subject_hostname, |s| {
                    J::Str(s.clone())
                });
                J::Obj(po)
            });
            o.push(("signedIdentity", match_json(&s.signed_identity)));
        }
    }
    J::Obj(o)
}

fn reqs_json(v: &[Requirement]) -> J {
    J::Arr(v.iter().map(requirement_json).collect())
}

/// Go's string escaping: HTML-safe, U+2028/U+2029 escaped, `\b`/`\f` short forms.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(out: &mut String, j: &J, indent: usize) {
    let pad = |out: &mut String, n: usize| {
        out.push('\n');
        for _ in 0..n {
            out.push_str("  ");
        }
    };
    let write_members = |out: &mut String, members: Vec<(&str, &J)>| {
        if members.is_empty() {
            out.push_str("{}");
            return;
        }
        out.push('{');
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            pad(out, indent + 1);
            write_str(out, k);
            out.push_str(": ");
            write_json(out, v, indent + 1);
        }
        pad(out, indent);
        out.push('}');
    };
    match j {
        J::Str(s) => write_str(out, s),
        J::Arr(a) if a.is_empty() => out.push_str("[]"),
        J::Arr(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pad(out, indent + 1);
                write_json(out, v, indent + 1);
            }
            pad(out, indent);
            out.push(']');
        }
        J::Obj(o) => write_members(out, o.iter().map(|(k, v)| (*k, v)).collect()),
    }
}

fn pad(out: &mut String, n: usize) {
    out.push('\n');
    for _ in 0..n {
        out.push_str("  ");
    }
}

impl Policy {
    /// The file bytes: 2-space indentation, keys in containers/image order,
    /// maps sorted bytewise, no trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with(&BTreeMap::new())
    }

    /// The bytes of this policy with `extra` scopes ANDed in: appended to
    /// `docker`, and to `atomic` where that transport accepts the scope.
    /// Written straight from both, without building the merged document.
    pub fn to_bytes_with(&self, extra: &Scopes) -> Vec<u8> {
        let extra_for = |t: &str| -> Vec<&String> {
            match t {
                "docker" => extra.keys().collect(),
                "atomic" => extra
                    .keys()
                    .filter(|s| crate::scope::atomic_scope_ok(s))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let mut names: std::collections::BTreeSet<&str> =
            self.transports.keys().map(String::as_str).collect();
        for t in ["docker", "atomic"] {
            if !extra_for(t).is_empty() {
                names.insert(t);
            }
        }
        let empty = BTreeMap::new();
        let mut out = String::new();
        out.push_str("{\n  \"default\": ");
        write_json(&mut out, &reqs_json(&self.default), 1);
        out.push_str(",\n  \"transports\": ");
        if names.is_empty() {
            out.push_str("{}");
        } else {
            out.push('{');
            for (i, t) in names.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                pad(&mut out, 2);
                write_str(&mut out, t);
                out.push_str(": ");
                let base = self.transports.get(*t).unwrap_or(&empty);
                let add = extra_for(t);
                let keys: std::collections::BTreeSet<&String> =
                    base.keys().chain(add.iter().copied()).collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    continue;
                }
                out.push('{');
                for (j, k) in keys.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    pad(&mut out, 3);
                    write_str(&mut out, k);
                    out.push_str(": [");
                    let reqs = base.get(*k).into_iter().flatten().chain(
                        if add.contains(k) { extra.get(*k) } else { None }
                            .into_iter()
                            .flatten(),
                    );
                    for (n, r) in reqs.enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        pad(&mut out, 4);
                        write_json(&mut out, &requirement_json(r), 4);
                    }
                    pad(&mut out, 3);
                    out.push(']');
                }
                pad(&mut out, 2);
                out.push('}');
            }
            pad(&mut out, 1);
            out.push('}');
        }
        out.push_str("\n}");
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> String {
        parse(s.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn strictness() {
        assert!(e(r#"{}"#).contains("Default policy is missing"));
        assert!(e(r#"{"default":[{"type":"reject"}],"foo":1}"#).contains("Unknown key \"foo\""));
        assert!(e(r#"{"default":[{"type":"reject"}],"default":[]}"#).contains("Duplicate key"));
        assert!(e(r#"{"default":[]}"#).contains("must not be empty"));
        assert!(e(r#"{"default":[{"type":"cosignSigned"}]}"#)
            .contains("Unknown policy requirement type"));
        assert!(
            e(r#"{"default":[{"type":"sigstoreSigned","keyPATH":"/x"}]}"#)
                .contains("Unknown key \"keyPATH\"")
        );
        assert!(
            e(r#"{"default":[{"type":"sigstoreSigned","keyData":"%%%"}]}"#)
                .contains("illegal base64")
        );
        assert!(e(r#"{"default":[{"type":"sigstoreSigned"}]}"#).contains("exactly one of"));
        assert!(e(r#"{"default":[{"type":"sigstoreSigned","fulcio":{"caData":"eA==","oidcIssuer":"i","subjectEmail":"e"}}]}"#)
            .contains("must be specified if fulcio is used"));
        assert!(
            e(r#"{"default":[{"type":"sigstoreSigned","pki":{"caRootsData":"eA=="}}]}"#)
                .contains("At least one of subjectEmail, subjectHostname")
        );
        assert!(e(r#"{"default":[{"type":"reject"}]} x"#).contains("trailing"));
        assert!(e(r#"{"default":[{"type":"reject"}],"transports":{"atomic":{"docker.io/busybox:latest":[{"type":"reject"}]}}}"#)
            .contains("Unknown key \"docker.io/busybox:latest\""));
        assert!(e(r#"{"default":[{"type":"sigstoreSigned","keyData":"eA==","signedIdentity":{"type":"remapIdentity","prefix":"a.com/x:v1","signedPrefix":"b.com"}}]}"#)
            .contains("is not valid"));
        assert!(e(r#"{"default":[{"type":"sigstoreSigned","keyData":"eA==","signedIdentity":{"type":"exactReference","dockerReference":"a.com/x"}}]}"#)
            .contains("neither a tag nor digest"));
    }

    #[test]
    fn round_trip_go_format() {
        let src = br#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"registry.redhat.io":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/etc/pki/key"}]},"docker-daemon":{"":[{"type":"insecureAcceptAnything"}]}}}"#;
        let p = parse(src).unwrap();
        let out = String::from_utf8(p.to_bytes()).unwrap();
        let want = "{\n  \"default\": [\n    {\n      \"type\": \"insecureAcceptAnything\"\n    }\n  ],\n  \"transports\": {\n    \"docker\": {\n      \"registry.redhat.io\": [\n        {\n          \"type\": \"signedBy\",\n          \"keyType\": \"GPGKeys\",\n          \"keyPath\": \"/etc/pki/key\",\n          \"signedIdentity\": {\n            \"type\": \"matchRepoDigestOrExact\"\n          }\n        }\n      ]\n    },\n    \"docker-daemon\": {\n      \"\": [\n        {\n          \"type\": \"insecureAcceptAnything\"\n        }\n      ]\n    }\n  }\n}";
        assert_eq!(out, want);
        assert_eq!(parse(out.as_bytes()).unwrap(), p);
    }

    #[test]
    fn go_escaping() {
        let mut s = String::new();
        write_str(&mut s, "a<b>&\u{2028}\"\\\n\u{1}é");
        assert_eq!(s, "\"a\\u003cb\\u003e\\u0026\\u2028\\\"\\\\\\n\\u0001é\"");
    }
}
