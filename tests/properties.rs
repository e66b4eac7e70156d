//! Properties of the renderer over generated object sets:
//! - any permutation of the objects renders identical bytes;
//! - every rendered file passes the strict parser (preflight);
//! - an ImagePolicy never changes the requirements an image gets when a
//!   ClusterImagePolicy scope covers it (checked by evaluating the files the
//!   way containers/image looks scopes up).

use image_policy_agent::model::{
    ApiVersion, Kind, ObjectRef, PolicyObject, RootOfTrust, SignedIdentity,
};
use image_policy_agent::policy::{self, Policy, Requirement};
use image_policy_agent::registries_d::NoMirrors;
use image_policy_agent::render::{self, RenderOptions, Snapshot};
use image_policy_agent::scope::strip_tag_digest;
use proptest::prelude::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn scope_pool() -> Vec<String> {
    vec![
        "example.com".into(),
        "example.com/app".into(),
        "example.com/app:v1".into(),
        format!("example.com/app@{DIGEST}"),
        "*.example.com".into(),
        "foo.example.com/app".into(),
        "foo.example.com/app:v2".into(),
        "registry.example.com/prod".into(),
        "registry.example.com/prod/app".into(),
        "quay.io".into(),
        "quay.io/openshift-release-dev/ocp-release".into(),
        "quay.io/team/x".into(),
        "localhost:5000/a/b/c".into(),
    ]
}

fn image_pool() -> Vec<String> {
    let mut v = Vec::new();
    for repo in [
        "example.com/app",
        "example.com/other",
        "foo.example.com/app",
        "bar.foo.example.com/app",
        "registry.example.com/prod/app",
        "registry.example.com/prod/x",
        "quay.io/team/x",
        "quay.io/openshift-release-dev/ocp-release",
        "localhost:5000/a/b/c",
    ] {
        v.push(format!("{repo}:v1"));
        v.push(format!("{repo}:v2"));
        v.push(format!("{repo}@{DIGEST}"));
    }
    v
}

fn root_of_trust(i: u8) -> RootOfTrust {
    let pem = |label: &str, body: u8| {
        format!("-----BEGIN {label}-----\nBODY{body}\n-----END {label}-----\n").into_bytes()
    };
    match i % 4 {
        0 => RootOfTrust::PublicKey {
            key_data: pem("PUBLIC KEY", i),
            rekor_key_data: None,
        },
        1 => RootOfTrust::PublicKey {
            key_data: pem("PUBLIC KEY", i),
            rekor_key_data: Some(pem("PUBLIC KEY", 99)),
        },
        2 => RootOfTrust::FulcioCAWithRekor {
            fulcio_ca_data: pem("CERTIFICATE", i),
            rekor_key_data: pem("PUBLIC KEY", 98),
            oidc_issuer: "https://issuer.example.com/<x>&y".into(),
            signed_email: "a@example.com".into(),
        },
        _ => RootOfTrust::Pki {
            ca_roots_data: pem("CERTIFICATE", i),
            ca_intermediates_data: (i % 2 == 0).then(|| pem("CERTIFICATE", 7)),
            email: Some("a@example.com".into()),
            hostname: (i % 3 == 0).then(|| "signer.example.com".into()),
        },
    }
}

fn identity(i: u8) -> SignedIdentity {
    match i % 4 {
        0 => SignedIdentity::MatchRepoDigestOrExact,
        1 => SignedIdentity::MatchRepository,
        2 => SignedIdentity::ExactRepository {
            repository: "example.com/golden".into(),
        },
        _ => SignedIdentity::RemapIdentity {
            prefix: "example.com".into(),
            signed_prefix: "mirror.example.com/x".into(),
        },
    }
}

fn object() -> impl Strategy<Value = PolicyObject> {
    let n = scope_pool().len();
    (
        any::<bool>(),
        0u8..3,
        0u8..6,
        proptest::sample::subsequence((0..n).collect::<Vec<_>>(), 1..4),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(cluster, ns, name, scopes, rot, ident)| {
            let pool = scope_pool();
            PolicyObject {
                id: ObjectRef {
                    kind: if cluster {
                        Kind::ClusterImagePolicy
                    } else {
                        Kind::ImagePolicy
                    },
                    namespace: (!cluster).then(|| format!("ns{ns}")),
                    name: format!("p{name}"),
                },
                api_version: ApiVersion::V1,
                scopes: scopes.into_iter().map(|i| pool[i].clone()).collect(),
                root_of_trust: root_of_trust(rot),
                signed_identity: identity(ident),
            }
        })
}

/// Unique identities (the manifests loader turns duplicates into errors).
fn objects() -> impl Strategy<Value = Vec<PolicyObject>> {
    proptest::collection::vec(object(), 0..12).prop_map(|mut v| {
        let mut seen = std::collections::BTreeSet::new();
        v.retain(|o| seen.insert(o.id.clone()));
        v
    })
}

fn snapshot(objs: &[PolicyObject]) -> Snapshot<'static> {
    Snapshot {
        objects: objs.iter().cloned().map(Ok).collect(),
        base_policy: render::OPENSHIFT_TEMPLATE_POLICY.as_bytes().to_vec(),
        options: RenderOptions::default(),
        mirrors: &NoMirrors,
        foreign_registries_d: Default::default(),
    }
}

/// containers/image's lookup order for a docker reference; returns the
/// matching scope ("" for the transport default) or None for `default`.
fn lookup<'p>(p: &'p Policy, image: &str) -> (Option<String>, &'p [Requirement]) {
    let Some(docker) = p.transports.get("docker") else {
        return (None, &p.default);
    };
    let repo = strip_tag_digest(image);
    let mut candidates = vec![image.to_string(), repo.to_string()];
    let mut cur = repo;
    while let Some(i) = cur.rfind('/') {
        cur = &cur[..i];
        candidates.push(cur.to_string());
    }
    let host = repo.split('/').next().unwrap();
    let host = host.split(':').next().unwrap();
    let labels: Vec<&str> = host.split('.').collect();
    for i in 1..labels.len() {
        candidates.push(format!("*.{}", labels[i..].join(".")));
    }
    candidates.push(String::new());
    for c in candidates {
        if let Some(r) = docker.get(&c) {
            return (Some(c), r);
        }
    }
    (None, &p.default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn permutations_render_identical_bytes(objs in objects(), seed in any::<u64>()) {
        let a = render::render(&snapshot(&objs)).unwrap();
        let mut shuffled = objs.clone();
        // Deterministic Fisher-Yates from the seed.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let b = render::render(&snapshot(&shuffled)).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn every_rendered_file_passes_the_strict_parser(objs in objects()) {
        let r = render::render(&snapshot(&objs)).unwrap();
        prop_assert!(image_policy_agent::preflight::check(&r, None).is_ok());
        for (path, bytes) in &r.files() {
            if path.ends_with(".json") {
                let p = policy::parse(bytes).unwrap();
                // Parsing and writing again is the identity on our own output.
                if !(path == render::POLICY_JSON && r.policy_json_is_base) {
                    prop_assert_eq!(&p.to_bytes(), bytes);
                }
            }
        }
    }

    #[test]
    fn namespaces_cannot_change_cluster_covered_images(objs in objects()) {
        let r = render::render(&snapshot(&objs)).unwrap();
        let cluster = policy::parse(&r.file(render::POLICY_JSON).unwrap()).unwrap();
        let base = policy::parse(render::OPENSHIFT_TEMPLATE_POLICY.as_bytes()).unwrap();
        let base_docker = base.transports.get("docker").cloned().unwrap_or_default();
        for (path, bytes) in &r.files() {
            if !path.starts_with(render::CRIO_POLICIES_DIR) {
                continue;
            }
            let ns = policy::parse(bytes).unwrap();
            for image in image_pool() {
                let (scope, reqs) = lookup(&cluster, &image);
                let covered_by_cluster = scope.as_ref().is_some_and(|s| !base_docker.contains_key(s));
                if covered_by_cluster {
                    let (ns_scope, ns_reqs) = lookup(&ns, &image);
                    prop_assert_eq!(&ns_scope, &scope, "{} in {}", image, path);
                    prop_assert_eq!(ns_reqs, reqs, "{} in {}", image, path);
                }
            }
        }
    }
}
