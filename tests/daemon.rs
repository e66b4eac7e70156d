//! The daemon, driven through its real binaries in a temporary root.

mod common;
use common::*;

const POLICY: &str = "/etc/containers/policy.json";
const REGD: &str = "/etc/containers/registries.d/sigstore-registries.yaml";

fn condition(st: &serde_json::Value, name: &str) -> Option<String> {
    st["policies"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["condition"].as_str().map(str::to_string))
}

#[test]
fn lifecycle() {
    let node = Node::new("");
    node.put_original_policy();
    std::fs::create_dir_all(node.root.join("etc/crio/policies")).unwrap();
    std::fs::write(
        node.root.join("etc/crio/policies/other.json"),
        "{\"foreign\": true}",
    )
    .unwrap();

    let agent = node.start();
    let st = node.status_json();
    assert_eq!(st["healthy"], true, "{st}");
    assert_eq!(
        node.file(POLICY).unwrap(),
        ORIGINAL_POLICY.as_bytes(),
        "nothing deployed yet"
    );
    assert!(node.file(REGD).is_none());

    // A ClusterImagePolicy: policy.json and registries.d, exactly as `agentctl render`.
    node.put_manifest(
        "prod.yaml",
        cip("prod", &["registry.example.com/prod"], &public_key()),
    );
    let want = node.expected(ORIGINAL_POLICY);
    wait_for("policy.json rendered", 10, || {
        (node.file(POLICY)? == want[POLICY]).then_some(())
    });
    // Files of one reconcile are written one after the other.
    wait_for("registries.d rendered", 10, || {
        (node.file(REGD)? == want[REGD]).then_some(())
    });
    // Status is published when the reconcile ends, just after the writes.
    let st = wait_for("status after the reconcile", 10, || {
        let st = node.status_json();
        (condition(&st, "prod").as_deref() == Some("Applied")).then_some(st)
    });
    let files: Vec<&str> = st["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, vec![POLICY, REGD]);

    // An ImagePolicy: its namespace file.
    node.put_manifest(
        "team.yaml",
        ip("team", "team-keys", &["quay.io/team"], &public_key()),
    );
    let want = node.expected(ORIGINAL_POLICY);
    wait_for("team.json", 10, || {
        (node.file("/etc/crio/policies/team.json")? == want["/etc/crio/policies/team.json"])
            .then_some(())
    });
    wait_for("registries.d updated", 10, || {
        (node.file(REGD)? == want[REGD]).then_some(())
    });

    // A conflicting one: Pending.
    node.put_manifest(
        "conflict.yaml",
        ip(
            "team",
            "sneaky",
            &["registry.example.com/prod/app:v1"],
            &public_key(),
        ),
    );
    let st = wait_for("sneaky pending", 10, || {
        let st = node.status_json();
        (condition(&st, "sneaky").as_deref() == Some("Pending")).then_some(st)
    });
    let msg = st["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sneaky")
        .unwrap()["message"]
        .clone();
    assert!(
        msg.as_str()
            .unwrap()
            .contains("registry.example.com/prod/app:v1"),
        "{msg}"
    );
    assert_eq!(
        st["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "sneaky")
            .unwrap()["namespace"],
        "team"
    );

    // A broken manifest: Invalid, and no file changes.
    let before: Vec<Option<Vec<u8>>> = [POLICY, REGD, "/etc/crio/policies/team.json"]
        .iter()
        .map(|p| node.file(p))
        .collect();
    node.put_manifest(
        "broken.yaml",
        cip("broken", &["Not A Scope"], &public_key()),
    );
    wait_for("broken invalid", 10, || {
        (condition(&node.status_json(), "broken").as_deref() == Some("Invalid")).then_some(())
    });
    let after: Vec<Option<Vec<u8>>> = [POLICY, REGD, "/etc/crio/policies/team.json"]
        .iter()
        .map(|p| node.file(p))
        .collect();
    assert_eq!(before, after);
    let o = agentctl(&["--socket", node.socket.to_str().unwrap(), "status"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "an invalid object makes status exit 1"
    );

    // Everything deleted: the original back byte for byte, our files gone,
    // the foreign file untouched.
    for f in ["prod.yaml", "team.yaml", "conflict.yaml", "broken.yaml"] {
        std::fs::remove_file(node.manifests.join(f)).unwrap();
    }
    wait_for("original restored", 10, || {
        (node.file(POLICY)? == ORIGINAL_POLICY.as_bytes()).then_some(())
    });
    wait_for("namespace file removed", 10, || {
        node.file("/etc/crio/policies/team.json")
            .is_none()
            .then_some(())
    });
    assert!(node.file(REGD).is_none());
    assert_eq!(
        node.file("/etc/crio/policies/other.json").unwrap(),
        b"{\"foreign\": true}"
    );
    wait_for("status: no policies", 10, || {
        node.status_json()["policies"]
            .as_array()?
            .is_empty()
            .then_some(())
    });
    let o = agentctl(&["--socket", node.socket.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(0));

    assert_eq!(agent.terminate(), Some(0));
    assert!(!node.socket.exists(), "socket removed on exit");
    let o = agentctl(&["--socket", node.socket.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(2), "unreachable daemon");
}

/// A restarted daemon knows what it owns: deleting the manifests while it
/// is down still restores the original when it comes back.
#[test]
fn restart_keeps_ownership() {
    let node = Node::new("");
    node.put_original_policy();
    node.put_manifest("a.yaml", cip("a", &["a.example.com"], &public_key()));
    node.put_manifest("b.yaml", ip("ns1", "b", &["b.example.com"], &public_key()));
    let agent = node.start();
    assert!(
        node.file("/etc/crio/policies/ns1.json").is_some(),
        "first reconcile happens before the socket is served"
    );
    assert_eq!(agent.terminate(), Some(0));
    std::fs::remove_file(node.manifests.join("a.yaml")).unwrap();
    std::fs::remove_file(node.manifests.join("b.yaml")).unwrap();
    let agent = node.start();
    assert_eq!(node.file(POLICY).unwrap(), ORIGINAL_POLICY.as_bytes());
    assert!(node.file("/etc/crio/policies/ns1.json").is_none());
    assert!(node.file(REGD).is_none());
    assert_eq!(agent.terminate(), Some(0));
}

/// An admin edit of policy.json becomes the new base; an edit of a file the
/// agent owns is undone.
#[test]
fn drift() {
    let node = Node::new("");
    node.put_original_policy();
    node.put_manifest("a.yaml", cip("a", &["a.example.com"], &public_key()));
    node.put_manifest("b.yaml", ip("ns1", "b", &["b.example.com"], &public_key()));
    let _agent = node.start();

    let admin = "{\"default\":[{\"type\":\"reject\"}],\"transports\":{\"docker\":{\"trusted.example.com\":[{\"type\":\"insecureAcceptAnything\"}]}}}";
    put(&node.root.join("etc/containers/policy.json"), admin);
    let want = node.expected(admin);
    wait_for("re-merged onto the admin's policy", 10, || {
        (node.file(POLICY)? == want[POLICY]).then_some(())
    });
    let p = String::from_utf8(node.file(POLICY).unwrap()).unwrap();
    assert!(
        p.contains("trusted.example.com")
            && p.contains("a.example.com")
            && p.contains("\"reject\""),
        "{p}"
    );

    std::fs::write(node.root.join("etc/crio/policies/ns1.json"), "tampered").unwrap();
    wait_for("namespace file rewritten", 10, || {
        (node.file("/etc/crio/policies/ns1.json")? == want["/etc/crio/policies/ns1.json"])
            .then_some(())
    });
    std::fs::remove_file(
        node.root
            .join("etc/containers/registries.d/sigstore-registries.yaml"),
    )
    .unwrap();
    wait_for("registries.d rewritten", 10, || {
        (node.file(REGD)? == want[REGD]).then_some(())
    });

    // Deleting the policies now restores the admin's version, not the first original.
    std::fs::remove_file(node.manifests.join("a.yaml")).unwrap();
    std::fs::remove_file(node.manifests.join("b.yaml")).unwrap();
    wait_for("admin's policy back", 10, || {
        (node.file(POLICY)? == admin.as_bytes()).then_some(())
    });
}

/// A file that cannot be parsed keeps its last good objects in force.
#[test]
fn half_edited_file_keeps_last_good_content() {
    let node = Node::new("");
    node.put_manifest("a.yaml", cip("a", &["a.example.com"], &public_key()));
    let _agent = node.start();
    let good = node.file(POLICY).unwrap();
    put(
        &node.manifests.join("a.yaml"),
        "apiVersion: config.openshift.io/v1\nkind: [broken\n",
    );
    let st = wait_for("error reported", 10, || {
        let st = node.status_json();
        (!st["source"]["errors"].as_array()?.is_empty()).then_some(st)
    });
    assert!(
        st["source"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("a.yaml: document 1: invalid YAML"),
        "{st}"
    );
    assert_eq!(condition(&st, "a").as_deref(), Some("Applied"));
    assert_eq!(node.file(POLICY).unwrap(), good);
}

#[test]
fn missing_manifests_directory_is_created() {
    let node = Node::new("");
    std::fs::remove_dir(&node.manifests).unwrap();
    let _agent = node.start();
    assert!(node.manifests.is_dir());
    node.put_manifest("a.yaml", cip("a", &["a.example.com"], &public_key()));
    wait_for("policy written", 10, || {
        node.file(POLICY)
            .filter(|b| String::from_utf8_lossy(b).contains("a.example.com"))
    });
}

#[test]
fn config_errors_name_key_and_file() {
    let node = Node::new("[agent.extra]\n");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_image-policy-agent"))
        .arg("--config")
        .arg(&node.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(node.config.to_str().unwrap()), "{err}");
    assert!(
        err.contains("unknown field `agent`") || err.contains("agent"),
        "{err}"
    );
}

/// resync is refused to other users, status is not; the socket is 0660 in
/// a 0750 directory. Needs root to switch users.
#[test]
fn socket_permissions() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("socket_permissions: needs root (CI runs as root); not run");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new("");
    // The group "nogroup" (65534) may read status.
    let cfg = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("[agent]\n", "[agent]\nsocket_group = \"65534\"\n");
    std::fs::write(&node.config, cfg).unwrap();
    let _agent = node.start();
    let mode = std::fs::metadata(&node.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let dmode = std::fs::metadata(node.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dmode, 0o750);

    let as_nobody = |cmd: &str| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_agentctl"),
                "--socket",
            ])
            .arg(&node.socket)
            .arg(cmd)
            .output()
            .unwrap()
    };
    let o = as_nobody("resync");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("permission denied: resync needs uid 0 (caller has uid 65534)"),
        "{err}"
    );
    let o = as_nobody("status");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let o = agentctl(&["--socket", node.socket.to_str().unwrap(), "resync"]);
    assert_eq!(o.status.code(), Some(0), "root may resync");

    // Someone outside the group cannot connect at all.
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            env!("CARGO_BIN_EXE_agentctl"),
            "--socket",
        ])
        .arg(&node.socket)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
