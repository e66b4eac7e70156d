//! CRI-O integration: running-config verification against a stand-in CRI-O,
//! version gates, the reload and verify hooks, registries.conf mirrors and
//! registries.d collisions — through the real daemon and agentctl.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// STAND-IN for CRI-O (CRI-O is not packaged for Debian): a real HTTP/1.1
/// server on a unix socket answering `GET /config` with the TOML shape of
/// CRI-O's running configuration, chunked as Go's net/http sends large bodies.
struct StandInCrio {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn crio_config(signature_policy: &str, signature_policy_dir: Option<&str>) -> String {
    let dir = signature_policy_dir
        .map(|d| format!("    signature_policy_dir = \"{d}\"\n"))
        .unwrap_or_default();
    format!(
        "[crio]\n  root = \"/var/lib/containers/storage\"\n  runroot = \"/run/containers/storage\"\n  storage_driver = \"overlay\"\n  log_dir = \"/var/log/crio/pods\"\n  version_file = \"/var/run/crio/version\"\n\
         \n  [crio.api]\n    listen = \"/var/run/crio/crio.sock\"\n    stream_address = \"127.0.0.1\"\n    stream_port = \"0\"\n\
         \n  [crio.runtime]\n    default_runtime = \"crun\"\n    selinux = false\n    cgroup_manager = \"systemd\"\n    pids_limit = -1\n\
         \n  [crio.image]\n    default_transport = \"docker://\"\n    global_auth_file = \"\"\n    pause_image = \"registry.k8s.io/pause:3.10\"\n    pause_image_auth_file = \"\"\n    pause_command = \"/pause\"\n    pinned_images = []\n    signature_policy = \"{signature_policy}\"\n{dir}    insecure_registries = []\n    image_volumes = \"mkdir\"\n    big_files_temporary_dir = \"\"\n    auto_reload_registries = false\n\
         \n  [crio.network]\n    network_dir = \"/etc/cni/net.d/\"\n    plugin_dirs = [\"/opt/cni/bin/\"]\n\
         \n  [crio.metrics]\n    enable_metrics = false\n    metrics_port = 9090\n"
    )
}

impl StandInCrio {
    fn start(path: &Path, body: String) -> StandInCrio {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let resp = if line.starts_with("GET /config ") {
                    let mut r = String::from("HTTP/1.1 200 OK\r\nContent-Type: application/toml\r\nTransfer-Encoding: chunked\r\n\r\n");
                    for chunk in body.as_bytes().chunks(700) {
                        r.push_str(&format!(
                            "{:x}\r\n{}\r\n",
                            chunk.len(),
                            String::from_utf8_lossy(chunk)
                        ));
                    }
                    r.push_str("0\r\n\r\n");
                    r
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                let _ = s.write_all(resp.as_bytes());
            }
        });
        StandInCrio {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StandInCrio {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn node_with(crio_toml: &str) -> Node {
    Node::new(crio_toml)
}

fn crio_socket(node: &Node) -> PathBuf {
    node.dir.path().join("crio/crio.sock")
}

fn matching(node: &Node) -> String {
    crio_config(
        &node
            .root
            .join("etc/containers/policy.json")
            .display()
            .to_string(),
        Some(&node.root.join("etc/crio/policies").display().to_string()),
    )
}

/// Config text for the [crio] table, placed before [source] in the file.
fn crio_table(socket: &Path, extra: &str) -> String {
    format!("[crio]\nsocket = {socket:?}\n{extra}\n")
}

fn verification(st: &serde_json::Value) -> (String, String) {
    let v = &st["crio"]["verification"];
    (
        v["outcome"].as_str().unwrap_or("").to_string(),
        v["message"].as_str().unwrap_or("").to_string(),
    )
}

fn with_config(extra: impl Fn(&Node) -> String) -> Node {
    // The socket path depends on the node's directory: write the config twice.
    let node = node_with("");
    let cfg = std::fs::read_to_string(&node.config).unwrap();
    let cfg = cfg.replacen("[source]", &format!("{}[source]", extra(&node)), 1);
    std::fs::write(&node.config, cfg).unwrap();
    node
}

#[test]
fn matching_crio_config_is_healthy() {
    let node = with_config(|n| crio_table(&crio_socket(n), ""));
    let _crio = StandInCrio::start(&crio_socket(&node), matching(&node));
    node.put_manifest("a.yaml", cip("a", &["a.example.com"], &public_key()));
    node.put_manifest("b.yaml", ip("team", "b", &["b.example.com"], &public_key()));
    let _agent = node.start();
    let st = node.status_json();
    assert_eq!(st["healthy"], true, "{st}");
    let (outcome, msg) = verification(&st);
    assert_eq!(outcome, "ok", "{msg}");
    let o = agentctl(&["--socket", node.socket.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("configuration check: Ok"));
}

#[test]
fn other_policy_dir_is_unhealthy() {
    let node = with_config(|n| crio_table(&crio_socket(n), ""));
    let body = crio_config(
        &node
            .root
            .join("etc/containers/policy.json")
            .display()
            .to_string(),
        Some("/etc/crio/other"),
    );
    let _crio = StandInCrio::start(&crio_socket(&node), body);
    node.put_manifest("b.yaml", ip("team", "b", &["b.example.com"], &public_key()));
    let _agent = node.start();
    let st = node.status_json();
    assert_eq!(st["healthy"], false, "{st}");
    let (outcome, msg) = verification(&st);
    assert_eq!(outcome, "mismatch");
    assert!(
        msg.contains("crio.image.signature_policy_dir is \"/etc/crio/other\""),
        "{msg}"
    );
    let o = agentctl(&["--socket", node.socket.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(1));
    // The files are written all the same (they are right; CRI-O is not).
    assert!(node.file("/etc/crio/policies/team.json").is_some());
}

#[test]
fn crio_without_policy_dir_and_namespace_files_is_unhealthy() {
    let node = with_config(|n| crio_table(&crio_socket(n), ""));
    let body = crio_config(
        &node
            .root
            .join("etc/containers/policy.json")
            .display()
            .to_string(),
        None,
    );
    let _crio = StandInCrio::start(&crio_socket(&node), body);
    node.put_manifest("b.yaml", ip("team", "b", &["b.example.com"], &public_key()));
    let _agent = node.start();
    let st = node.status_json();
    assert_eq!(st["healthy"], false);
    assert!(
        verification(&st)
            .1
            .contains("signature_policy_dir is not in CRI-O's configuration"),
        "{st}"
    );
}

#[test]
fn unreachable_crio_is_reported_and_nothing_rolled_back() {
    let node = with_config(|n| crio_table(&crio_socket(n), ""));
    node.put_manifest("a.yaml", cip("a", &["a.example.com"], &public_key()));
    let _agent = node.start();
    let st = node.status_json();
    let (outcome, msg) = verification(&st);
    assert_eq!(outcome, "unreachable");
    assert!(
        msg.contains("CRI-O not reachable") && msg.contains("crio.sock"),
        "{msg}"
    );
    assert_eq!(
        st["healthy"], true,
        "CRI-O starts after the agent; not a fault of ours"
    );
    let p = String::from_utf8(node.file("/etc/containers/policy.json").unwrap()).unwrap();
    assert!(p.contains("a.example.com"));
}

#[test]
fn version_from_crio_binary_gates_fields() {
    let node = with_config(|n| {
        let script = n.dir.path().join("fake-crio");
        std::fs::write(&script, "#!/bin/sh\necho 'crio version 1.26.3'\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        format!("[crio]\ncheck_config = false\nbinary = {script:?}\n")
    });
    node.put_manifest("a.yaml", cip("keyless", &["a.example.com"], &fulcio()));
    node.put_manifest("b.yaml", cip("keys", &["b.example.com"], &public_key()));
    let _agent = node.start();
    let st = node.status_json();
    assert_eq!(st["crio"]["version"]["version"], "1.26");
    assert!(st["crio"]["version"]["source"]
        .as_str()
        .unwrap()
        .ends_with("fake-crio --version"));
    let keyless = st["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "keyless")
        .unwrap();
    assert_eq!(keyless["condition"], "Pending");
    assert!(keyless["message"]
        .as_str()
        .unwrap()
        .contains("requires CRI-O ≥ 1.27 (node has 1.26)"));
    let p = String::from_utf8(node.file("/etc/containers/policy.json").unwrap()).unwrap();
    assert!(!p.contains("fulcio") && p.contains("b.example.com"));
    let o = agentctl(&["--socket", node.socket.to_str().unwrap(), "status"]);
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains("fulcio and Rekor keys (CRI-O ≥ 1.27): not written"));
}

#[test]
fn failing_verify_command_puts_previous_files_back() {
    // The verify command refuses any file that mentions "bad.example.com".
    let node = with_config(|n| {
        let script = n.dir.path().join("check");
        std::fs::write(&script, "#!/bin/sh\nif grep -q bad.example.com \"$1\"; then echo 'refusing bad scope' >&2; exit 3; fi\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        format!(
            "[crio]\ncheck_config = false\n[verify]\ncommand = [{:?}]\n",
            script.display().to_string()
        )
    });
    node.put_original_policy();
    node.put_manifest("a.yaml", cip("good", &["good.example.com"], &public_key()));
    let _agent = node.start();
    let good = node.file("/etc/containers/policy.json").unwrap();
    assert!(String::from_utf8_lossy(&good).contains("good.example.com"));
    let good_regd = node
        .file("/etc/containers/registries.d/sigstore-registries.yaml")
        .unwrap();

    node.put_manifest("b.yaml", cip("bad", &["bad.example.com"], &public_key()));
    let st = wait_for("verify failure reported", 10, || {
        let st = node.status_json();
        (st["healthy"] == false).then_some(st)
    });
    let err = st["last_reconcile"]["error"].as_str().unwrap();
    assert!(
        err.contains("verify command rejected") && err.contains("refusing bad scope"),
        "{err}"
    );
    assert!(err.contains("the previous files were put back"), "{err}");
    assert_eq!(node.file("/etc/containers/policy.json").unwrap(), good);
    assert_eq!(
        node.file("/etc/containers/registries.d/sigstore-registries.yaml")
            .unwrap(),
        good_regd
    );

    // Fixed input: back to healthy; delete all: the original is restored.
    std::fs::remove_file(node.manifests.join("b.yaml")).unwrap();
    wait_for("healthy again", 10, || {
        (node.status_json()["healthy"] == true).then_some(())
    });
    std::fs::remove_file(node.manifests.join("a.yaml")).unwrap();
    wait_for("original restored", 10, || {
        (node.file("/etc/containers/policy.json")? == ORIGINAL_POLICY.as_bytes()).then_some(())
    });
}

#[test]
fn reload_command_runs_after_a_change() {
    let node = with_config(|n| {
        let marker = n.dir.path().join("reloaded");
        format!(
            "[crio]\ncheck_config = false\nreload_command = [\"sh\", \"-c\", \"echo x >> {}\"]\n",
            marker.display()
        )
    });
    let marker = node.dir.path().join("reloaded");
    let _agent = node.start();
    assert!(!marker.exists(), "nothing changed yet");
    node.put_manifest("a.yaml", cip("a", &["a.example.com"], &public_key()));
    wait_for("reload ran", 10, || marker.exists().then_some(()));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x\n");
}

#[test]
fn mirrors_and_registries_d_collisions() {
    let node = with_config(|_| "[crio]\ncheck_config = false\n".to_string());
    std::fs::write(
        node.root.join("etc/containers/registries.conf"),
        "unqualified-search-registries = [\"docker.io\"]\n[[registry]]\nprefix = \"\"\nlocation = \"registry.example.com/prod\"\n[[registry.mirror]]\nlocation = \"mirror.internal:5000/prod\"\npull-from-mirror = \"digest-only\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(node.root.join("etc/containers/registries.d")).unwrap();
    std::fs::write(
        node.root.join("etc/containers/registries.d/vendor.yaml"),
        "docker:\n  quay.example.org/team-a:\n    lookaside: https://sigs.example.org\n",
    )
    .unwrap();
    node.put_manifest(
        "a.yaml",
        cip("prod", &["registry.example.com/prod"], &public_key()),
    );
    node.put_manifest(
        "b.yaml",
        ip(
            "team-a",
            "team",
            &["quay.example.org/team-a"],
            &public_key(),
        ),
    );
    let _agent = node.start();
    let y = String::from_utf8(
        node.file("/etc/containers/registries.d/sigstore-registries.yaml")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        y,
        "docker:\n  mirror.internal:5000/prod:\n    use-sigstore-attachments: true\n  registry.example.com/prod:\n    use-sigstore-attachments: true\n"
    );
    let st = node.status_json();
    let team = st["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "team")
        .unwrap();
    assert_eq!(team["condition"], "Pending");
    let msg = team["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "\"quay.example.org/team-a\" (defined in /etc/containers/registries.d/vendor.yaml)"
        ),
        "{msg}"
    );
    // The policy itself is in force.
    assert!(
        String::from_utf8_lossy(&node.file("/etc/crio/policies/team-a.json").unwrap())
            .contains("quay.example.org/team-a")
    );

    // agentctl render takes the same registries.conf.
    let out = tempfile::tempdir().unwrap();
    agentctl(&[
        "render",
        "--manifests",
        node.manifests.to_str().unwrap(),
        "--registries-conf",
        node.root
            .join("etc/containers/registries.conf")
            .to_str()
            .unwrap(),
        "--root",
        out.path().to_str().unwrap(),
    ]);
    let y = std::fs::read_to_string(
        out.path()
            .join("etc/containers/registries.d/sigstore-registries.yaml"),
    )
    .unwrap();
    assert!(y.contains("mirror.internal:5000/prod:"), "{y}");
}
