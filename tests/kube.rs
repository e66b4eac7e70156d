//! The kube source against a STAND-IN API server (tests/common/apiserver.rs:
//! real HTTP on 127.0.0.1 with the API server's list/watch protocol and JSON
//! shapes; a real Kubernetes API server cannot run here), through the real
//! daemon, kube-rs client and filesystem.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use apiserver::StandInApi;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const CIPS: &str = "clusterimagepolicies";
const IPS: &str = "imagepolicies";

fn key_spec(scopes: &[&str]) -> Value {
    json!({
        "scopes": scopes,
        "policy": { "rootOfTrust": { "policyType": "PublicKey", "publicKey": { "keyData": KEY } } }
    })
}

/// The cluster as manifests, rendered by `agentctl render`: what the node's
/// files must be.
struct Expect {
    dir: tempfile::TempDir,
}

impl Expect {
    fn new() -> Expect {
        Expect {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn cip(&self, name: &str, scopes: &[&str]) {
        std::fs::write(
            self.dir.path().join(format!("cip-{name}.yaml")),
            cip(name, scopes, &public_key()),
        )
        .unwrap();
    }
    fn ip(&self, ns: &str, name: &str, scopes: &[&str]) {
        std::fs::write(
            self.dir.path().join(format!("ip-{ns}-{name}.yaml")),
            ip(ns, name, scopes, &public_key()),
        )
        .unwrap();
    }
    fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.path().join(file)).unwrap();
    }
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        render_dir(self.dir.path(), ORIGINAL_POLICY)
    }
}

/// Every managed file on the node: node path → bytes.
fn node_files(node: &Node) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for p in [
        "/etc/containers/policy.json",
        "/etc/containers/registries.d/sigstore-registries.yaml",
    ] {
        if let Some(b) = node.file(p) {
            m.insert(p.to_string(), b);
        }
    }
    if let Ok(rd) = std::fs::read_dir(node.root.join("etc/crio/policies")) {
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') {
                m.insert(
                    format!("/etc/crio/policies/{name}"),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    m
}

fn converge(node: &Node, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    wait_for(what, 30, || (node_files(node) == *want).then_some(()));
}

/// (inode, mtime in ns) of each file: a rename-based write changes both.
fn identities(node: &Node) -> BTreeMap<String, (u64, i64)> {
    node_files(node)
        .keys()
        .map(|p| {
            let m = std::fs::metadata(node.root.join(p.trim_start_matches('/'))).unwrap();
            (
                p.clone(),
                (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec()),
            )
        })
        .collect()
}

/// Waits until no reconcile happened for 300 ms (our own writes are seen
/// by the directory watch and cause one more, writing nothing); returns
/// the reconcile count.
fn settled(node: &Node) -> u64 {
    let count = || node.status_json()["reconciles"].as_u64().unwrap();
    let mut last = count();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
}

fn kube_node(kubeconfig_in_config: bool) -> Node {
    let source = if kubeconfig_in_config {
        "kind = \"kube\"\nkubeconfig = \"{dir}/kubeconfig\""
    } else {
        "kind = \"kube\""
    };
    let node = Node::with_source(
        "[crio]\nversion = \"1.33\"\ncheck_config = false\n",
        Some(source),
    );
    node.put_original_policy();
    node
}

fn kube_status(node: &Node) -> Value {
    node.status_json()["source"]["kube"].clone()
}

fn status_text(node: &Node) -> (Option<i32>, String) {
    let o = agentctl(&["--socket", node.socket.to_str().unwrap(), "status"]);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).to_string(),
    )
}

#[test]
fn watch_follows_the_cluster() {
    let mut api = StandInApi::start(&["v1", "v1alpha1"]);
    let expect = Expect::new();
    api.apply(CIPS, "", "prod", key_spec(&["quay.io/prod"]));
    expect.cip("prod", &["quay.io/prod"]);
    api.apply(IPS, "team-a", "a", key_spec(&["quay.io/team-a"]));
    expect.ip("team-a", "a", &["quay.io/team-a"]);

    let node = kube_node(true);
    std::fs::write(node.dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
    let agent = node.start();

    // Initial list → files.
    converge(&node, &expect.files(), "the initial list's files");
    let k = kube_status(&node);
    assert_eq!(k["connected"], true, "{k:#}");
    assert_eq!(k["synced"], true);
    assert_eq!(k["api_version"], "config.openshift.io/v1");
    assert_eq!(k["server"], format!("http://127.0.0.1:{}/", api.port));
    assert_eq!(k["cluster_image_policies"], 1);
    assert_eq!(k["image_policies"], 1);
    let (code, text) = status_text(&node);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("connected since"), "{text}");

    // MODIFIED and ADDED events → files follow.
    api.apply(
        CIPS,
        "",
        "prod",
        key_spec(&["quay.io/prod", "registry.example.com/x"]),
    );
    expect.cip("prod", &["quay.io/prod", "registry.example.com/x"]);
    api.apply(IPS, "team-b", "b", key_spec(&["quay.io/team-b"]));
    expect.ip("team-b", "b", &["quay.io/team-b"]);
    converge(&node, &expect.files(), "files after MODIFIED and ADDED");

    // A status-only MODIFIED: received, but no reconcile and no write.
    let reconciles = settled(&node);
    let before = identities(&node);
    let events = kube_status(&node)["events"].as_u64().unwrap();
    api.set_status(
        IPS,
        "team-a",
        "a",
        json!({"conditions": [{"type": "Pending", "status": "False", "reason": "Applied",
            "message": "", "lastTransitionTime": "2026-12-03T10:00:00Z"}]}),
    );
    wait_for("the status-only event", 20, || {
        (kube_status(&node)["events"].as_u64().unwrap() > events).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        node.status_json()["reconciles"].as_u64().unwrap(),
        reconciles
    );
    assert_eq!(identities(&node), before);

    // DELETED → the namespace file goes.
    api.delete(IPS, "team-b", "b");
    expect.remove("ip-team-b-b.yaml");
    converge(&node, &expect.files(), "files after DELETED");

    // An invalid object is reported and does not block the others.
    api.apply(CIPS, "", "bad", key_spec(&["Not A Scope"]));
    let bad = wait_for("the invalid object in status", 20, || {
        node.status_json()["policies"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "bad").cloned())
    });
    assert_eq!(bad["condition"], "Invalid");
    assert!(
        bad["message"].as_str().unwrap().contains("spec.scopes[0]"),
        "{bad}"
    );
    assert_eq!(node_files(&node), expect.files());
    api.delete(CIPS, "", "bad");

    // 410 Gone: the deletion of "prod" is lost to compaction; the agent
    // watches again, gets 410 Expired, lists again and converges.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.contains(CIPS) && !r.contains("watch=true"))
        .count();
    api.delete_and_compact(CIPS, "", "prod");
    expect.remove("cip-prod.yaml");
    converge(&node, &expect.files(), "files after the relist");
    assert_eq!(
        node.file("/etc/containers/policy.json").unwrap(),
        ORIGINAL_POLICY.as_bytes(),
        "no ClusterImagePolicy left: the original policy.json"
    );
    let reqs = api.requests();
    let lists_after = reqs
        .iter()
        .filter(|r| r.contains(CIPS) && !r.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "no relist: {reqs:#?}");

    // The server goes down: files kept, status says disconnected and since when.
    api.apply(CIPS, "", "prod", key_spec(&["quay.io/prod"]));
    expect.cip("prod", &["quay.io/prod"]);
    converge(&node, &expect.files(), "files before the outage");
    let kept = node_files(&node);
    api.stop();
    let k = wait_for("disconnected in status", 30, || {
        let k = kube_status(&node);
        (k["connected"] == false).then_some(k)
    });
    assert!(k["since"].as_str().is_some(), "{k:#}");
    assert!(k["last_error"].as_str().is_some(), "{k:#}");
    let (code, text) = status_text(&node);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("DISCONNECTED since"), "{text}");
    assert!(text.contains("API server unreachable since"), "{text}");
    // Changes while the agent cannot see them.
    api.apply(CIPS, "", "later", key_spec(&["registry.example.com/later"]));
    expect.cip("later", &["registry.example.com/later"]);
    api.delete(IPS, "team-a", "a");
    expect.remove("ip-team-a-a.yaml");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(node_files(&node), kept, "files changed while disconnected");

    // Back: reconnect (capped backoff) and converge.
    api.restart();
    converge(&node, &expect.files(), "files after reconnecting");
    wait_for("connected again", 30, || {
        (kube_status(&node)["connected"] == true).then_some(())
    });
    assert_eq!(agent.terminate(), Some(0));

    // A restart while the server is down: nothing is known yet, so the
    // node's files stay exactly as they are (never cleared).
    api.stop();
    let kept = node_files(&node);
    let agent = node.start();
    let st = wait_for("a failed connection attempt", 30, || {
        let st = node.status_json();
        st["source"]["kube"]["last_error"]
            .as_str()
            .map(|_| st.clone())
    });
    assert_eq!(st["source"]["kube"]["synced"], false);
    assert!(
        st["summary"]
            .as_str()
            .unwrap()
            .contains("waiting for the first complete list"),
        "{st:#}"
    );
    assert_eq!(node_files(&node), kept);
    api.restart();
    wait_for("synced after the restart", 30, || {
        (kube_status(&node)["synced"] == true).then_some(())
    });
    assert_eq!(node_files(&node), expect.files());
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn v1alpha1_when_v1_is_not_served() {
    let api = StandInApi::start(&["v1alpha1"]);
    let expect = Expect::new();
    api.apply(CIPS, "", "prod", key_spec(&["quay.io/prod"]));
    expect.cip("prod", &["quay.io/prod"]);
    api.apply(IPS, "team-a", "a", key_spec(&["quay.io/team-a"]));
    expect.ip("team-a", "a", &["quay.io/team-a"]);

    // Credentials from $KUBECONFIG this time.
    let node = kube_node(false);
    let kubeconfig = node.dir.path().join("kc.yaml");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let agent = node.start_with_env(&[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    converge(&node, &expect.files(), "files from v1alpha1");
    let k = kube_status(&node);
    assert_eq!(k["api_version"], "config.openshift.io/v1alpha1", "{k:#}");
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r == "GET /apis/config.openshift.io/v1"),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter().any(
            |r| r.starts_with("GET /apis/config.openshift.io/v1alpha1/imagepolicies?")
                && r.contains("watch=true")
        ),
        "{reqs:#?}"
    );
    assert!(
        !reqs
            .iter()
            .any(|r| r.starts_with("GET /apis/config.openshift.io/v1/")),
        "{reqs:#?}"
    );
    // Events still flow.
    api.apply(IPS, "team-b", "b", key_spec(&["quay.io/team-b"]));
    expect.ip("team-b", "b", &["quay.io/team-b"]);
    converge(&node, &expect.files(), "files after an event");
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn wrong_credentials_are_reported_and_change_nothing() {
    let api = StandInApi::start(&["v1"]);
    api.apply(CIPS, "", "prod", key_spec(&["quay.io/prod"]));
    let node = kube_node(true);
    std::fs::write(
        node.dir.path().join("kubeconfig"),
        api.kubeconfig().replace(apiserver::TOKEN, "wrong"),
    )
    .unwrap();
    let agent = node.start();
    let k = wait_for("the error in status", 30, || {
        let k = kube_status(&node);
        k["last_error"].as_str().is_some().then_some(k)
    });
    assert!(k["last_error"].as_str().unwrap().contains("401"), "{k:#}");
    assert_eq!(k["synced"], false);
    assert_eq!(
        node.file("/etc/containers/policy.json").unwrap(),
        ORIGINAL_POLICY.as_bytes()
    );
    assert!(!Path::new(&node.root.join("etc/crio/policies")).exists());
    assert_eq!(agent.terminate(), Some(0));
}

/// examples/rbac.yaml grants what the agent asks the API server for, and
/// no more: every resource request it made is get/list/watch on one of the
/// two resources.
#[test]
fn rbac_example_covers_the_agents_requests() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rbac.yaml"))
        .unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Secret"
        ]
    );
    let rules = docs[2]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["apiGroups"], json!(["config.openshift.io"]));
    assert_eq!(rules[0]["resources"], json!([CIPS, IPS]));
    assert_eq!(rules[0]["verbs"], json!(["get", "list", "watch"]));
    let binding = &docs[3];
    assert_eq!(binding["roleRef"]["name"], docs[2]["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], docs[1]["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        docs[1]["metadata"]["namespace"]
    );

    let api = StandInApi::start(&["v1"]);
    api.apply(CIPS, "", "prod", key_spec(&["quay.io/prod"]));
    let node = kube_node(true);
    std::fs::write(node.dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
    let agent = node.start();
    wait_for("synced", 30, || {
        (kube_status(&node)["synced"] == true).then_some(())
    });
    assert_eq!(agent.terminate(), Some(0));
    let mut used = std::collections::BTreeSet::new();
    for r in api.requests() {
        let path = r.trim_start_matches("GET ").split('?').next().unwrap();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match parts.as_slice() {
            // Discovery: system:discovery, not this role.
            ["apis", "config.openshift.io", _] => {}
            ["apis", "config.openshift.io", _, plural] => {
                let verb = if r.contains("watch=true") {
                    "watch"
                } else {
                    "list"
                };
                used.insert((plural.to_string(), verb));
            }
            _ => panic!("request outside the role: {r}"),
        }
    }
    let want: std::collections::BTreeSet<(String, &str)> = [
        (CIPS.to_string(), "list"),
        (CIPS.to_string(), "watch"),
        (IPS.to_string(), "list"),
        (IPS.to_string(), "watch"),
    ]
    .into();
    assert_eq!(used, want);
}

/// A CA and a server certificate for 127.0.0.1 made by the openssl CLI;
/// returns (CA PEM, server cert file, server key file).
fn make_pki(dir: &Path, name: &str) -> (Vec<u8>, std::path::PathBuf, std::path::PathBuf) {
    std::fs::write(
        dir.join(format!("{name}-ext.cnf")),
        "subjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(
        dir,
        &format!(
            "req -x509 {ec} -keyout {name}-ca.key -out {name}-ca.crt -subj /CN={name}-ca -days 2"
        ),
    );
    openssl(
        dir,
        &format!("req {ec} -keyout {name}-srv.key -out {name}-srv.csr -subj /CN=127.0.0.1"),
    );
    openssl(dir, &format!("x509 -req -in {name}-srv.csr -CA {name}-ca.crt -CAkey {name}-ca.key -CAcreateserial -out {name}-srv.crt -days 2 -extfile {name}-ext.cnf"));
    (
        std::fs::read(dir.join(format!("{name}-ca.crt"))).unwrap(),
        dir.join(format!("{name}-srv.crt")),
        dir.join(format!("{name}-srv.key")),
    )
}

/// HTTPS through OpenSSL: the kubeconfig's CA is trusted, another is not.
#[test]
fn tls_verifies_the_server_against_the_kubeconfig_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_pki(certs.path(), "cluster");
    let (other_ca, _, _) = make_pki(certs.path(), "other");
    let api = StandInApi::start_with_tls(&["v1"], Some((ca, &cert, &key)));
    let expect = Expect::new();
    api.apply(CIPS, "", "prod", key_spec(&["quay.io/prod"]));
    expect.cip("prod", &["quay.io/prod"]);

    let node = kube_node(true);
    std::fs::write(node.dir.path().join("kubeconfig"), api.kubeconfig()).unwrap();
    let agent = node.start();
    converge(&node, &expect.files(), "files over HTTPS");
    assert_eq!(
        kube_status(&node)["server"],
        format!("https://127.0.0.1:{}/", api.port)
    );
    assert_eq!(agent.terminate(), Some(0));

    // A kubeconfig that trusts another CA: the handshake fails, nothing changes.
    let node = kube_node(true);
    let other = {
        use base64::Engine;
        let b = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
        api.kubeconfig()
            .replace(&b(api.ca_pem.as_ref().unwrap()), &b(&other_ca))
    };
    std::fs::write(node.dir.path().join("kubeconfig"), other).unwrap();
    let agent = node.start();
    let k = wait_for("the TLS error", 30, || {
        let k = kube_status(&node);
        k["last_error"].as_str().is_some().then_some(k)
    });
    assert!(
        k["last_error"]
            .as_str()
            .unwrap()
            .contains("certificate verify failed"),
        "{k:#}"
    );
    assert_eq!(k["synced"], false);
    assert_eq!(
        node.file("/etc/containers/policy.json").unwrap(),
        ORIGINAL_POLICY.as_bytes()
    );
    assert_eq!(agent.terminate(), Some(0));
}
