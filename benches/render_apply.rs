//! Render and apply benchmarks (`cargo bench`).
//!
//! - render: S1 typical, S2 large, S3 API limits (see `workload`);
//! - apply of S1 and S2 into a temporary root, every file changed each time;
//! - floor: the same bytes to the same paths with the same protocol (temp
//!   file, write, fsync, rename, fsync directory) in a minimal loop, so
//!   apply/floor is the agent's overhead.

#[path = "workload/mod.rs"]
mod workload;

use image_policy_agent::apply::Applier;
use image_policy_agent::render::{render, Rendered};
use std::path::Path;

fn main() {
    divan::main();
}

#[divan::bench(args = ["S1", "S2", "S3"], sample_count = 5)]
fn render_workload(bencher: divan::Bencher, name: &str) {
    let objects = match name {
        "S1" => workload::s1(),
        "S2" => workload::s2(),
        _ => workload::s3(),
    };
    let snap = workload::snapshot(objects);
    // A render is the plan plus every file's bytes, as apply produces them.
    bencher.bench_local(|| {
        let r = render(&snap).expect("render");
        let mut n = 0usize;
        let _ = r.for_each_file(|_, b| {
            n += b.len();
            Ok::<(), ()>(())
        });
        divan::black_box(n)
    });
}

/// Two renders of the same shape whose every file differs, so that each
/// iteration rewrites everything.
fn pair(name: &str) -> (Rendered, Rendered) {
    let (a, b) = match name {
        "S1" => (workload::s1(), workload::objects(5, 4, 50, 20)),
        _ => (workload::s2(), workload::objects(250, 4, 2000, 500)),
    };
    let mut b = b;
    // Change every key in the second variant: every file changes.
    for o in b.iter_mut().flatten() {
        if let image_policy_agent::model::RootOfTrust::PublicKey { key_data, .. } =
            &mut o.root_of_trust
        {
            key_data.insert(27, b'X');
        }
    }
    (
        render(&workload::snapshot(a)).unwrap(),
        render(&workload::snapshot(b)).unwrap(),
    )
}

#[divan::bench(args = ["S1", "S2"], sample_count = 4, sample_size = 1)]
fn apply(bencher: divan::Bencher, name: &str) {
    let (a, b) = pair(name);
    let dir = tempfile::tempdir().unwrap();
    let applier = Applier::new(dir.path().join("root"), dir.path().join("state"));
    applier.apply(&a).unwrap();
    let mut flip = false;
    bencher.bench_local(|| {
        flip = !flip;
        let r = applier.apply(if flip { &b } else { &a }).unwrap();
        assert!(!r.written.is_empty());
    });
}

fn floor_write(root: &Path, r: &Rendered) {
    r.for_each_file(|path, bytes| {
        let p = root.join(path.trim_start_matches('/'));
        image_policy_agent::fsroot::atomic_write(&p, bytes, 0o644)
    })
    .unwrap();
}

#[divan::bench(args = ["S1", "S2"], sample_count = 4, sample_size = 1)]
fn floor(bencher: divan::Bencher, name: &str) {
    let (a, b) = pair(name);
    let dir = tempfile::tempdir().unwrap();
    for d in ["etc/containers/registries.d", "etc/crio/policies"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    floor_write(dir.path(), &a);
    let mut flip = false;
    bencher.bench_local(|| {
        flip = !flip;
        floor_write(dir.path(), if flip { &b } else { &a });
    });
}
