//! Incremental work: a reconcile touches only the files whose bytes change.
//! (A count of writes, not a timing.)

#[path = "../benches/workload/mod.rs"]
mod workload;

use image_policy_agent::apply::Applier;
use image_policy_agent::model::RootOfTrust;
use image_policy_agent::render::render;

#[test]
fn one_image_policy_change_rewrites_one_namespace_file() {
    let dir = tempfile::tempdir().unwrap();
    let applier = Applier::new(dir.path().join("root"), dir.path().join("state"));
    let mut objects = workload::s1();
    let first = applier
        .apply(&render(&workload::snapshot(objects.clone())).unwrap())
        .unwrap();
    assert_eq!(
        first.written.len(),
        2 + 20,
        "policy.json, registries.d and 20 namespace files"
    );

    let again = applier
        .apply(&render(&workload::snapshot(objects.clone())).unwrap())
        .unwrap();
    assert!(
        again.written.is_empty() && !again.changed(),
        "nothing changed, nothing written"
    );

    // Change the key of one ImagePolicy (policy-7, namespace team-7).
    let target = objects
        .iter_mut()
        .flatten()
        .find(|o| o.id.name == "policy-7")
        .unwrap();
    if let RootOfTrust::PublicKey { key_data, .. } = &mut target.root_of_trust {
        key_data.insert(27, b'Z');
    }
    let one = applier
        .apply(&render(&workload::snapshot(objects)).unwrap())
        .unwrap();
    assert_eq!(
        one.written,
        vec!["/etc/crio/policies/team-7.json".to_string()]
    );
    assert!(one.restored.is_empty() && one.removed.is_empty());
}
