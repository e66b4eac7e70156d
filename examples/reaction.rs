//! Reaction time of the daemon: from an atomic change of one manifest to the
//! new bytes being in policy.json, 200 times. Build first, then run:
//!
//!     cargo build --release --bins --examples && target/release/examples/reaction
//!
//! `REACTION_SOURCE=kube`: the same through the kube source, the change being
//! a MODIFIED event from the stand-in API server of the tests (plain HTTP on
//! 127.0.0.1), the idle cost measured with both watches open.
//!
//! Also reports the daemon's idle cost (RSS, CPU time and wakeups over 60 s)
//! unless `REACTION_IDLE_SECS=0`.

#[allow(dead_code)]
#[path = "../tests/common/apiserver.rs"]
mod apiserver;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KTUZrd0V3WUhLb1pJemowQ0FRWUlLb1pJemowREFRY0RRZ0FFCi0tLS0tRU5EIFBVQkxJQyBLRVktLS0tLQo=";

fn manifest(i: usize) -> String {
    format!(
        "apiVersion: config.openshift.io/v1\nkind: ClusterImagePolicy\nmetadata: {{name: moving}}\nspec:\n  scopes: [\"registry.example.com/app{i}\"]\n  policy:\n    rootOfTrust: {{policyType: PublicKey, publicKey: {{keyData: {KEY}}}}}\n"
    )
}

fn put(path: &Path, text: &str) {
    let tmp = path.with_file_name(".moving.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn proc_field(pid: u32, file: &str, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Context switches summed over every thread of the process.
fn switches(pid: u32) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let tid = t.file_name().to_string_lossy().parse::<u32>().unwrap_or(0);
            for f in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
                n += proc_field(pid, &format!("task/{tid}/status"), f);
            }
        }
    }
    n
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn main() {
    let exe = std::env::current_exe().unwrap();
    let daemon = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("image-policy-agent");
    assert!(
        daemon.exists(),
        "build the daemon first: cargo build --release --bins --examples"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("manifests")).unwrap();
    std::fs::create_dir_all(d.join("root/etc/containers")).unwrap();
    let kube = std::env::var("REACTION_SOURCE").as_deref() == Ok("kube");
    // S1-sized background load: 5 × 4 cluster scopes, 50 ImagePolicies in 20 namespaces.
    let key_spec = |scopes: Vec<String>| serde_json::json!({"scopes": scopes, "policy": {"rootOfTrust": {"policyType": "PublicKey", "publicKey": {"keyData": KEY}}}});
    let cluster_scopes =
        |c: usize| -> Vec<String> { (0..4).map(|s| format!("r{s}.example.com/org{c}")).collect() };
    let api = kube.then(|| apiserver::StandInApi::start(&["v1"]));
    let source = if let Some(api) = &api {
        for c in 0..5 {
            api.apply(
                "clusterimagepolicies",
                "",
                &format!("c{c}"),
                key_spec(cluster_scopes(c)),
            );
        }
        for i in 0..50 {
            api.apply(
                "imagepolicies",
                &format!("team-{}", i % 20),
                &format!("p{i}"),
                key_spec(vec![format!("quay.example.org/t{i}/app")]),
            );
        }
        api.apply(
            "clusterimagepolicies",
            "",
            "moving",
            key_spec(vec!["registry.example.com/app0".into()]),
        );
        std::fs::write(d.join("kubeconfig"), api.kubeconfig()).unwrap();
        format!("kind = \"kube\"\nkubeconfig = {:?}", d.join("kubeconfig"))
    } else {
        let mut bg = String::new();
        for c in 0..5 {
            let scopes: Vec<String> = cluster_scopes(c).iter().map(|s| format!("{s:?}")).collect();
            bg.push_str(&format!("---\napiVersion: config.openshift.io/v1\nkind: ClusterImagePolicy\nmetadata: {{name: c{c}}}\nspec:\n  scopes: [{}]\n  policy:\n    rootOfTrust: {{policyType: PublicKey, publicKey: {{keyData: {KEY}}}}}\n", scopes.join(", ")));
        }
        for i in 0..50 {
            bg.push_str(&format!("---\napiVersion: config.openshift.io/v1\nkind: ImagePolicy\nmetadata: {{name: p{i}, namespace: team-{}}}\nspec:\n  scopes: [\"quay.example.org/t{i}/app\"]\n  policy:\n    rootOfTrust: {{policyType: PublicKey, publicKey: {{keyData: {KEY}}}}}\n", i % 20));
        }
        std::fs::write(d.join("manifests/background.yaml"), bg).unwrap();
        put(&d.join("manifests/moving.yaml"), &manifest(0));
        format!("path = {:?}", d.join("manifests"))
    };
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "root = {:?}\n[source]\n{source}\n[agent]\nsocket = {:?}\nstate_dir = {:?}\n[crio]\ncheck_config = false\n",
            d.join("root"),
            d.join("run/agent.sock"),
            d.join("state")
        ),
    )
    .unwrap();
    let mut child = Command::new(&daemon)
        .arg("--config")
        .arg(d.join("agent.toml"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(d.join("run/agent.sock")).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let policy = d.join("root/etc/containers/policy.json");
    if kube {
        // The first list, before measuring.
        while !std::fs::read_to_string(&policy)
            .map(|p| p.contains("registry.example.com/app0"))
            .unwrap_or(false)
        {
            assert!(start.elapsed() < Duration::from_secs(30), "no first list");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mut samples = Vec::new();
    for i in 1..=200 {
        let needle = format!("\"registry.example.com/app{i}\"");
        let t = Instant::now();
        match &api {
            Some(api) => api.apply(
                "clusterimagepolicies",
                "",
                "moving",
                key_spec(vec![format!("registry.example.com/app{i}")]),
            ),
            None => put(&d.join("manifests/moving.yaml"), &manifest(i)),
        }
        loop {
            if std::fs::read_to_string(&policy)
                .map(|p| p.contains(&needle))
                .unwrap_or(false)
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no reaction to change {i}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "reaction ({} source) over {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        if kube { "kube" } else { "manifests" },
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 99 / 100]),
        ms(*samples.last().unwrap())
    );

    let idle: u64 = std::env::var("REACTION_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    if idle > 0 {
        std::thread::sleep(Duration::from_secs(2));
        let (ticks0, sw0) = (cpu_ticks(pid), switches(pid));
        std::thread::sleep(Duration::from_secs(idle));
        let ticks = cpu_ticks(pid) - ticks0;
        let wakeups = switches(pid) - sw0;
        println!(
            "idle {idle} s: RSS {} KiB (peak {} KiB), CPU {} ms, {} context switches (wakeups)",
            proc_field(pid, "status", "VmRSS:"),
            proc_field(pid, "status", "VmHWM:"),
            ticks * 10,
            wakeups
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
