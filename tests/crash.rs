//! Crash safety: the daemon is killed with SIGKILL at random moments while
//! the manifests change, with inputs large enough that writes take time.
//! After every kill each managed file is absent or byte-equal to a version the
//! renderer produced (or the original): never torn, never empty. At the end a
//! restarted daemon converges, and deleting everything restores the original.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const KILLS: usize = 200;

/// A large manifest set: `cips` ClusterImagePolicies with 4 scopes each and
/// ImagePolicies over 5 namespaces, every name and scope tagged with `v`.
fn version(v: usize, cips: usize) -> String {
    use base64::Engine;
    // A 6 KiB key: big files from few objects, so writing dominates the
    // reconcile and kills land in writes.
    let body: String = (0..80).map(|i| format!("{:064}\n", i)).collect();
    let big_key = base64::engine::general_purpose::STANDARD.encode(format!(
        "-----BEGIN PUBLIC KEY-----\n{body}-----END PUBLIC KEY-----\n"
    ));
    let mut s = String::new();
    for i in 0..cips {
        let scopes: Vec<String> = (0..4)
            .map(|j| format!("r{j}.v{v}.example.com/team{i}"))
            .collect();
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let rot = if i % 2 == 0 {
            format!("{{policyType: PublicKey, publicKey: {{keyData: {big_key}}}}}")
        } else {
            fulcio()
        };
        s.push_str(&cip(&format!("c{i}"), &scopes, &rot));
        s.push_str("---\n");
    }
    for i in 0..30 {
        let scope = format!("ns.v{v}.example.com/app{i}");
        s.push_str(&ip(
            &format!("ns{}", i % 5),
            &format!("p{i}"),
            &[&scope],
            &public_key(),
        ));
        s.push_str("---\n");
    }
    s
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn managed_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for p in [
        "etc/containers/policy.json",
        "etc/containers/registries.d/sigstore-registries.yaml",
    ] {
        if let Ok(b) = std::fs::read(root.join(p)) {
            m.insert(format!("/{p}"), b);
        }
    }
    for dir in ["etc/crio/policies", "etc/containers/registries.d"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            for e in rd {
                let name = e.unwrap().file_name().to_string_lossy().to_string();
                assert!(
                    name.starts_with('.') || name.ends_with(".json") || name.ends_with(".yaml"),
                    "unexpected file {dir}/{name}"
                );
                if !name.starts_with('.') {
                    let p = format!("{dir}/{name}");
                    m.insert(format!("/{p}"), std::fs::read(root.join(&p)).unwrap());
                }
            }
        }
    }
    m
}

#[test]
fn kill_9_never_leaves_a_torn_file() {
    let node = Node::new("");
    node.put_original_policy();

    // Versions 0..3 large, version 4 empty (everything restored).
    let versions: Vec<String> = (0..4)
        .map(|v| version(v, 100))
        .chain([String::new()])
        .collect();
    let mut allowed: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    allowed
        .entry("/etc/containers/policy.json".into())
        .or_default()
        .insert(ORIGINAL_POLICY.as_bytes().to_vec());
    let mut renders = Vec::new();
    for text in &versions {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("all.yaml"), text).unwrap();
        let r = render_dir(d.path(), ORIGINAL_POLICY);
        for (p, b) in &r {
            allowed.entry(p.clone()).or_default().insert(b.clone());
        }
        renders.push(r);
    }
    let biggest = renders
        .iter()
        .flat_map(|r| r.values())
        .map(Vec::len)
        .max()
        .unwrap();
    eprintln!("largest file {biggest} bytes");
    assert!(
        biggest > 500_000,
        "inputs must be large enough for writes to take time"
    );

    let manifest = node.manifests.join("all.yaml");
    // How long a start with the largest input takes until the socket is up
    // (the first reconcile, writes included, happens before): kills are
    // spread over that window.
    put(&manifest, &versions[0]);
    let t0 = std::time::Instant::now();
    node.start().kill9();
    let window = t0.elapsed().as_millis() as u64 + 20;
    eprintln!("start-to-ready {window} ms");
    let mut rng = Rng(0x5eed);
    let mut current = 0usize;
    let mut mid_write = 0usize;
    let mut mixed = 0usize;
    for i in 0..KILLS {
        let v = rng.next(versions.len() as u64) as usize;
        put(&manifest, &versions[v]);
        current = v;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_image-policy-agent"))
            .arg("--config")
            .arg(&node.config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent {
            child: Some(child),
            socket: node.socket.clone(),
        };
        if i % 2 == 1 {
            // Let the first reconcile finish, then change the input under it.
            wait_for("socket", 30, || {
                std::os::unix::net::UnixStream::connect(&node.socket)
                    .ok()
                    .map(|_| ())
            });
            let v = rng.next(versions.len() as u64) as usize;
            put(&manifest, &versions[v]);
            current = v;
        }
        // Writes come last in a reconcile: aim at the second half.
        std::thread::sleep(Duration::from_millis(window / 3 + rng.next(window * 2 / 3)));
        agent.kill9();

        let interrupted = [
            "etc/containers",
            "etc/crio/policies",
            "etc/containers/registries.d",
        ]
        .iter()
        .any(|d| {
            std::fs::read_dir(node.root.join(d))
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".ipa-tmp"))
                })
                .unwrap_or(false)
        });
        mid_write += interrupted as usize;
        let on_disk = managed_files(&node.root);
        let consistent = renders.iter().any(|r| {
            let mut r = r.clone();
            r.entry("/etc/containers/policy.json".into())
                .or_insert_with(|| ORIGINAL_POLICY.as_bytes().to_vec());
            r == on_disk
        });
        mixed += !consistent as usize;
        for (path, bytes) in on_disk {
            let ok = allowed.get(&path).is_some_and(|set| set.contains(&bytes));
            assert!(
                ok,
                "after kill {i}: {path} ({} bytes) is not a version the renderer produced",
                bytes.len()
            );
        }
        assert!(
            node.root.join("etc/containers/policy.json").exists(),
            "after kill {i}: policy.json missing"
        );
    }
    eprintln!(
        "{KILLS} kills survived: {mid_write} interrupted a file write (temporary file left), \
         {mixed} left files of two different versions (killed between writes)"
    );

    // A restarted daemon converges to the last version exactly.
    let agent = node.start();
    let want = &renders[current];
    let got = managed_files(&node.root);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "converged file set"
    );
    for (p, b) in want {
        assert!(got[p] == *b, "{p} did not converge");
    }
    // And still knows the original.
    std::fs::remove_file(&manifest).unwrap();
    wait_for("original restored", 30, || {
        (std::fs::read(node.root.join("etc/containers/policy.json")).ok()?
            == ORIGINAL_POLICY.as_bytes())
        .then_some(())
    });
    wait_for("namespace files removed", 30, || {
        std::fs::read_dir(node.root.join("etc/crio/policies"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
            .then_some(())
    });
    assert!(!node
        .root
        .join("etc/containers/registries.d/sigstore-registries.yaml")
        .exists());
    assert_eq!(agent.terminate(), Some(0));
}
