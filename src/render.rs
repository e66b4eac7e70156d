//! The renderer: a pure function from a [`Snapshot`] to the managed files and
//! one outcome per object. No I/O, no clock: the same snapshot always gives
//! the same bytes, whatever order its objects came in.

use crate::model::{Kind, ObjectRef, PolicyObject, RootOfTrust, SignedIdentity};
use crate::policy::{self, Fulcio, Match, Pki, Policy, Requirement, Sigstore};
use crate::registries_d::{self, MirrorSource};
use crate::scope;
use crate::validate::{InvalidObject, Validated};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub const POLICY_JSON: &str = "/etc/containers/policy.json";
pub const CRIO_POLICIES_DIR: &str = "/etc/crio/policies";
pub const REGISTRIES_D_FILE: &str = "/etc/containers/registries.d/sigstore-registries.yaml";

/// OpenShift's release payload repositories: policies on them (or broader) are
/// never written, so a mistake cannot stop the node from pulling its own images.
pub const DEFAULT_PAYLOAD_REPOSITORIES: &[&str] = &[
    "quay.io/openshift-release-dev/ocp-release",
    "quay.io/openshift-release-dev/ocp-v4.0-art-dev",
];

/// The machine-config-operator's template policy, the base when none is given.
pub const OPENSHIFT_TEMPLATE_POLICY: &str = r#"{
    "default": [
        {
            "type": "insecureAcceptAnything"
        }
    ],
    "transports":
        {
            "docker-daemon":
                {
                    "": [{"type":"insecureAcceptAnything"}]
                }
        }
}
"#;

/// `major.minor` of the node's CRI-O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CrioVersion(pub u32, pub u32);

impl fmt::Display for CrioVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl CrioVersion {
    /// Parses `1.30`, `1.30.2`, `v1.30.2-rc1`.
    pub fn parse(s: &str) -> Option<CrioVersion> {
        let s = s.trim().trim_start_matches('v');
        let mut it = s.split(|c: char| !c.is_ascii_digit());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some(CrioVersion(major, minor))
    }
}

/// Minimum CRI-O versions (containers/image vendored by them) per feature.
pub const GATE_SIGSTORE: CrioVersion = CrioVersion(1, 25);
pub const GATE_REKOR_FULCIO: CrioVersion = CrioVersion(1, 27);
pub const GATE_NAMESPACE_FILES: CrioVersion = CrioVersion(1, 28);
pub const GATE_PKI: CrioVersion = CrioVersion(1, 33);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    pub payload_repositories: Vec<String>,
    /// `None`: unknown, treated as the newest (every feature allowed).
    pub crio_version: Option<CrioVersion>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            payload_repositories: DEFAULT_PAYLOAD_REPOSITORIES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            crio_version: None,
        }
    }
}

/// Everything the renderer needs, as plain data.
pub struct Snapshot<'a> {
    pub objects: Vec<Validated>,
    /// The base ("original") policy.json bytes.
    pub base_policy: Vec<u8>,
    pub options: RenderOptions,
    pub mirrors: &'a dyn MirrorSource,
    /// `docker:` scopes other registries.d files already define → that file.
    /// A scope defined in two files breaks every pull, so ours leaves them out.
    pub foreign_registries_d: BTreeMap<String, String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Condition {
    Applied,
    Pending,
    Invalid,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Condition::Applied => "Applied",
            Condition::Pending => "Pending",
            Condition::Invalid => "Invalid",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: ObjectRef,
    pub condition: Condition,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// policy.json: the base verbatim when no cluster scope is deployed.
    policy_json: Vec<u8>,
    /// True when policy.json is the base, byte for byte: nothing to deploy there.
    pub policy_json_is_base: bool,
    /// The merged cluster policy, from which namespace files are written.
    cluster: Policy,
    /// Namespace → its deployed scopes (ANDed onto the cluster policy).
    namespaces: BTreeMap<String, ScopeReqs>,
    registries_d: Option<Vec<u8>>,
    /// Sorted by object identity.
    pub outcomes: Vec<Outcome>,
}

/// Namespace files are produced one at a time when asked for, so memory
/// stays near one file's size however many namespaces there are.
impl Rendered {
    /// Node paths of every managed file that should exist, in order.
    pub fn paths(&self) -> Vec<String> {
        let mut v = vec![POLICY_JSON.to_string()];
        if self.registries_d.is_some() {
            v.push(REGISTRIES_D_FILE.to_string());
        }
        v.extend(self.namespaces.keys().map(|ns| namespace_path(ns)));
        v
    }

    pub fn namespace_count(&self) -> usize {
        self.namespaces.len()
    }

    /// One file's bytes.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        if path == POLICY_JSON {
            return Some(self.policy_json.clone());
        }
        if path == REGISTRIES_D_FILE {
            return self.registries_d.clone();
        }
        let ns = path
            .strip_prefix(CRIO_POLICIES_DIR)?
            .strip_prefix('/')?
            .strip_suffix(".json")?;
        self.namespaces
            .get(ns)
            .map(|scopes| self.cluster.to_bytes_with(scopes))
    }

    /// Calls `f` with each file in [`Rendered::paths`] order, one at a time.
    pub fn for_each_file<E>(
        &self,
        mut f: impl FnMut(&str, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        f(POLICY_JSON, &self.policy_json)?;
        if let Some(y) = &self.registries_d {
            f(REGISTRIES_D_FILE, y)?;
        }
        for (ns, scopes) in &self.namespaces {
            f(&namespace_path(ns), &self.cluster.to_bytes_with(scopes))?;
        }
        Ok(())
    }

    /// The requirements the agent adds, by the file they go to (policy.json
    /// unless it is the node's own, and each namespace's own scopes).
    pub fn added_requirements(&self) -> Vec<(String, Vec<&Requirement>)> {
        let mut v = Vec::new();
        if !self.policy_json_is_base {
            let c = &self.cluster;
            let all = c
                .default
                .iter()
                .chain(c.transports.values().flat_map(|s| s.values().flatten()));
            v.push((POLICY_JSON.to_string(), all.collect()));
        }
        for (ns, scopes) in &self.namespaces {
            v.push((namespace_path(ns), scopes.values().flatten().collect()));
        }
        v
    }

    /// Every file at once (tests and small renders).
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        let _ = self.for_each_file(|p, b| {
            m.insert(p.to_string(), b.to_vec());
            Ok::<(), ()>(())
        });
        m
    }
}

pub fn namespace_path(ns: &str) -> String {
    format!("{CRIO_POLICIES_DIR}/{ns}.json")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("base policy is not a valid containers-policy.json: {0}")]
    BasePolicy(policy::PolicyError),
}

/// The requirement one policy object stands for.
pub fn requirement(obj: &PolicyObject) -> Requirement {
    let mut s = Sigstore::default();
    match &obj.root_of_trust {
        RootOfTrust::PublicKey {
            key_data,
            rekor_key_data,
        } => {
            s.key_data = Some(key_data.clone());
            s.rekor_public_key_data = rekor_key_data.clone();
        }
        RootOfTrust::FulcioCAWithRekor {
            fulcio_ca_data,
            rekor_key_data,
            oidc_issuer,
            signed_email,
        } => {
            s.fulcio = Some(Fulcio {
                ca_path: None,
                ca_data: Some(fulcio_ca_data.clone()),
                oidc_issuer: oidc_issuer.clone(),
                subject_email: signed_email.clone(),
            });
            s.rekor_public_key_data = Some(rekor_key_data.clone());
        }
        RootOfTrust::Pki {
            ca_roots_data,
            ca_intermediates_data,
            email,
            hostname,
        } => {
            s.pki = Some(Pki {
                ca_roots_data: Some(ca_roots_data.clone()),
                ca_intermediates_data: ca_intermediates_data.clone(),
                subject_email: email.clone(),
                subject_hostname: hostname.clone(),
                ..Default::default()
            });
        }
    }
    s.signed_identity = match &obj.signed_identity {
        SignedIdentity::MatchRepoDigestOrExact => Match::MatchRepoDigestOrExact,
        SignedIdentity::MatchRepository => Match::MatchRepository,
        SignedIdentity::ExactRepository { repository } => Match::ExactRepository {
            docker_repository: repository.clone(),
        },
        SignedIdentity::RemapIdentity {
            prefix,
            signed_prefix,
        } => Match::RemapIdentity {
            prefix: prefix.clone(),
            signed_prefix: signed_prefix.clone(),
        },
    };
    Requirement::SigstoreSigned(Box::new(s))
}

/// The oldest CRI-O that can parse what `obj` needs.
pub fn required_crio(obj: &PolicyObject) -> CrioVersion {
    let req = match &obj.root_of_trust {
        RootOfTrust::PublicKey {
            rekor_key_data: None,
            ..
        } => GATE_SIGSTORE,
        RootOfTrust::PublicKey { .. } | RootOfTrust::FulcioCAWithRekor { .. } => GATE_REKOR_FULCIO,
        RootOfTrust::Pki { .. } => GATE_PKI,
    };
    match obj.id.kind {
        Kind::ImagePolicy => req.max(GATE_NAMESPACE_FILES),
        Kind::ClusterImagePolicy => req,
    }
}

fn quote_list<'a>(v: impl IntoIterator<Item = &'a String>) -> String {
    let items: Vec<String> = v.into_iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

/// Why an object is not (fully) deployed.
#[derive(Default)]
struct Skips {
    payload: Vec<String>,
    conflicts: Vec<String>,
    conflicting_cluster_scopes: BTreeSet<String>,
    gate: Option<CrioVersion>,
    /// (registries.d key, the other file defining it)
    collisions: BTreeSet<(String, String)>,
}

impl Skips {
    fn message(
        &self,
        total: usize,
        node: Option<CrioVersion>,
        payload_repos: &[String],
    ) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(need) = self.gate {
            let node = node
                .map(|v| v.to_string())
                .unwrap_or_else(|| "unknown".into());
            parts.push(format!(
                "requires CRI-O ≥ {need} (node has {node}); nothing written"
            ));
        }
        if !self.payload.is_empty() {
            parts.push(format!(
                "scope(s) {} equal to or broader than an OpenShift payload repository {} are not written",
                quote_list(&self.payload),
                quote_list(payload_repos)
            ));
        }
        if !self.conflicts.is_empty() {
            parts.push(format!(
                "scope(s) {} equal to or nested in ClusterImagePolicy scope(s) {} are not written; only the cluster policy applies there",
                quote_list(&self.conflicts),
                quote_list(&self.conflicting_cluster_scopes)
            ));
        }
        if !self.collisions.is_empty() {
            let list: Vec<String> = self
                .collisions
                .iter()
                .map(|(k, f)| format!("{k:?} (defined in {f})"))
                .collect();
            parts.push(format!(
                "registries.d scope(s) {} already defined by another file are left out of sigstore-registries.yaml (one scope in two files breaks every pull); signature lookup there follows that file",
                list.join(", ")
            ));
        }
        if parts.is_empty() {
            return None;
        }
        let skipped = if self.gate.is_some() {
            total
        } else {
            self.payload.len() + self.conflicts.len()
        };
        let applied = total - skipped.min(total);
        parts.push(format!("{applied} of {total} scope(s) applied"));
        Some(parts.join("; "))
    }
}

type ScopeReqs = BTreeMap<String, Vec<Requirement>>;

/// Renders the snapshot. Fails only when the base policy itself is unusable.
pub fn render(snap: &Snapshot) -> Result<Rendered, RenderError> {
    let base = policy::parse(&snap.base_policy).map_err(RenderError::BasePolicy)?;
    let opts = &snap.options;

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut valid: Vec<&PolicyObject> = Vec::new();
    for o in &snap.objects {
        match o {
            Ok(p) => valid.push(p),
            Err(InvalidObject { id, errors }) => outcomes.push(Outcome {
                id: id.clone(),
                condition: Condition::Invalid,
                message: errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }
    // Requirement order (and so the bytes) depend only on identities.
    valid.sort_by(|a, b| a.id.cmp(&b.id));

    let mut skips: BTreeMap<&ObjectRef, Skips> = BTreeMap::new();
    // Deployed scope → the objects that put it there.
    let mut owners: BTreeMap<String, BTreeSet<&ObjectRef>> = BTreeMap::new();
    let mut cluster: ScopeReqs = BTreeMap::new();
    let mut candidates: Vec<(&PolicyObject, Vec<&String>)> = Vec::new();
    for obj in &valid {
        let sk = skips.entry(&obj.id).or_default();
        let need = required_crio(obj);
        if opts.crio_version.is_some_and(|node| node < need) {
            sk.gate = Some(need);
            continue;
        }
        let mut keep = Vec::new();
        for s in &obj.scopes {
            if opts
                .payload_repositories
                .iter()
                .any(|p| scope::nested(p, s))
            {
                sk.payload.push(s.clone());
            } else {
                keep.push(s);
            }
        }
        match obj.id.kind {
            Kind::ClusterImagePolicy => {
                let req = requirement(obj);
                for s in keep {
                    cluster.entry(s.clone()).or_default().push(req.clone());
                    owners.entry(s.clone()).or_default().insert(&obj.id);
                }
            }
            Kind::ImagePolicy => candidates.push((obj, keep)),
        }
    }

    // Namespace scopes covered by a deployed cluster scope are not deployed.
    let mut namespaces: BTreeMap<&str, ScopeReqs> = BTreeMap::new();
    for (obj, keep) in candidates {
        let sk = skips.entry(&obj.id).or_default();
        let req = requirement(obj);
        let ns = obj.id.namespace.as_deref().unwrap_or_default();
        for s in keep {
            let covering: Vec<&String> = cluster.keys().filter(|c| scope::nested(s, c)).collect();
            if covering.is_empty() {
                owners.entry(s.clone()).or_default().insert(&obj.id);
                namespaces
                    .entry(ns)
                    .or_default()
                    .entry(s.clone())
                    .or_default()
                    .push(req.clone());
            } else {
                sk.conflicts.push(s.clone());
                sk.conflicting_cluster_scopes
                    .extend(covering.into_iter().cloned());
            }
        }
    }

    // registries.d: every deployed scope and its mirrors, minus keys another
    // file already defines (reported on the objects they come from).
    let mut registries_d_keys: BTreeSet<String> = BTreeSet::new();
    for (scope, objs) in &owners {
        let keys = std::iter::once(scope.clone()).chain(snap.mirrors.mirror_scopes(scope));
        for k in keys {
            match snap.foreign_registries_d.get(&k) {
                Some(file) => {
                    for id in objs {
                        if let Some(sk) = skips.get_mut(*id) {
                            sk.collisions.insert((k.clone(), file.clone()));
                        }
                    }
                }
                None => {
                    registries_d_keys.insert(k);
                }
            }
        }
    }

    for obj in &valid {
        let sk = &skips[&obj.id];
        let (condition, message) = match sk.message(
            obj.scopes.len(),
            opts.crio_version,
            &opts.payload_repositories,
        ) {
            None => (
                Condition::Applied,
                format!("{} scope(s) applied", obj.scopes.len()),
            ),
            Some(m) => (Condition::Pending, m),
        };
        outcomes.push(Outcome {
            id: obj.id.clone(),
            condition,
            message,
        });
    }
    outcomes.sort_by(|a, b| a.id.cmp(&b.id).then(a.condition.cmp(&b.condition)));

    let merged = merge_cluster(base, &cluster);
    let policy_json_is_base = cluster.is_empty();
    let policy_json = if policy_json_is_base {
        snap.base_policy.clone()
    } else {
        merged.to_bytes()
    };
    let namespaces = namespaces
        .into_iter()
        .map(|(ns, scopes)| (ns.to_string(), scopes))
        .collect();
    Ok(Rendered {
        policy_json,
        policy_json_is_base,
        cluster: merged,
        namespaces,
        registries_d: registries_d::render(&registries_d_keys),
        outcomes,
    })
}

/// policy.json: cluster scopes replace a base entry of the same name (in
/// `docker`, and in `atomic` where that transport accepts the scope).
/// Namespace scopes are ANDed on at write time (`Policy::to_bytes_with`).
fn merge_cluster(mut doc: Policy, scopes: &ScopeReqs) -> Policy {
    if scopes.is_empty() {
        return doc;
    }
    for (transport, filter) in [("docker", false), ("atomic", true)] {
        let t = doc.transports.entry(transport.to_string()).or_default();
        for (s, reqs) in scopes {
            if !filter || scope::atomic_scope_ok(s) {
                t.insert(s.clone(), reqs.clone());
            }
        }
        if t.is_empty() {
            doc.transports.remove(transport);
        }
    }
    doc
}
