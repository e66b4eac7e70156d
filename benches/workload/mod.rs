//! Generated workloads shared by the benchmarks and the measurement examples.
#![allow(dead_code)]

use image_policy_agent::model::{
    ApiVersion, Kind, ObjectRef, PolicyObject, RootOfTrust, SignedIdentity,
};
use image_policy_agent::registries_d::NoMirrors;
use image_policy_agent::render::{RenderOptions, Snapshot, OPENSHIFT_TEMPLATE_POLICY};
use image_policy_agent::validate::Validated;

fn key(i: usize) -> Vec<u8> {
    format!(
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE{i:08}Ki7B7kiLWOJdPYpYjtjRkWVpqFn4yuN56V6GhgKFnRf2jzipxAVGO8rm/YEPSwvrPNDrjvp4bZh6nMGFt78A==\n-----END PUBLIC KEY-----\n"
    )
    .into_bytes()
}

fn object(
    kind: Kind,
    ns: Option<String>,
    name: String,
    scopes: Vec<String>,
    i: usize,
) -> Validated {
    Ok(PolicyObject {
        id: ObjectRef {
            kind,
            namespace: ns,
            name,
        },
        api_version: ApiVersion::V1,
        scopes,
        root_of_trust: RootOfTrust::PublicKey {
            key_data: key(i),
            rekor_key_data: None,
        },
        signed_identity: if i % 2 == 0 {
            SignedIdentity::MatchRepoDigestOrExact
        } else {
            SignedIdentity::MatchRepository
        },
    })
}

/// `cips` ClusterImagePolicies × `scopes_per_cip` scopes, `ips` ImagePolicies
/// (one scope each) over `namespaces` namespaces.
pub fn objects(
    cips: usize,
    scopes_per_cip: usize,
    ips: usize,
    namespaces: usize,
) -> Vec<Validated> {
    let mut v = Vec::new();
    for c in 0..cips {
        let scopes = (0..scopes_per_cip)
            .map(|s| format!("registry{s}.example.com/org{c}/repo{s}"))
            .collect();
        v.push(object(
            Kind::ClusterImagePolicy,
            None,
            format!("cluster-{c}"),
            scopes,
            c,
        ));
    }
    for i in 0..ips {
        let ns = format!("team-{}", i % namespaces.max(1));
        v.push(object(
            Kind::ImagePolicy,
            Some(ns),
            format!("policy-{i}"),
            vec![format!("quay.example.org/team{i}/app")],
            i,
        ));
    }
    v
}

/// S1 typical: 5 ClusterImagePolicies × 4 scopes, 50 ImagePolicies over 20 namespaces.
pub fn s1() -> Vec<Validated> {
    objects(5, 4, 50, 20)
}

/// S2 large: 1,000 cluster scopes, 2,000 ImagePolicies over 500 namespaces.
pub fn s2() -> Vec<Validated> {
    objects(250, 4, 2000, 500)
}

/// S3 API limits: 100 ClusterImagePolicies × 256 scopes.
pub fn s3() -> Vec<Validated> {
    objects(100, 256, 0, 1)
}

pub fn snapshot(objects: Vec<Validated>) -> Snapshot<'static> {
    Snapshot {
        objects,
        base_policy: OPENSHIFT_TEMPLATE_POLICY.as_bytes().to_vec(),
        options: RenderOptions::default(),
        mirrors: &NoMirrors,
        foreign_registries_d: Default::default(),
    }
}
