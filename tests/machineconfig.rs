//! The machineconfig source, through the real daemon and filesystem: a
//! MachineConfig shaped like OpenShift's `99-worker-generated-registries`,
//! with its files as base64, percent-encoded and gzip data URLs.

mod common;

use base64::Engine;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};

const POLICY: &str = "/etc/containers/policy.json";
const SIGSTORE: &str = "/etc/containers/registries.d/sigstore-registries.yaml";
const TEAM_A: &str = "/etc/crio/policies/team-a.json";

fn golden(node_path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/golden/mco-2.6/expected{node_path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn base64_url(b: &[u8]) -> String {
    format!(
        "data:text/plain;charset=utf-8;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(b)
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as
/// Ignition's tools do for `data:,` URLs.
fn percent_url(b: &[u8]) -> String {
    let mut s = String::from("data:,");
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// One `storage.files` entry as the machine-config-controller writes it.
fn entry(path: &str, source: &str, compression: Option<&str>) -> serde_json::Value {
    let mut contents = serde_json::json!({ "source": source });
    if let Some(c) = compression {
        contents["compression"] = c.into();
    }
    serde_json::json!({
        "path": path,
        "mode": 420,
        "overwrite": true,
        "contents": contents,
    })
}

fn machineconfig(files: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "machineconfiguration.openshift.io/v1",
        "kind": "MachineConfig",
        "metadata": {
            "name": "99-worker-generated-registries",
            "labels": { "machineconfiguration.openshift.io/role": "worker" },
            "annotations": {
                "machineconfiguration.openshift.io/generated-by-controller-version": "4.20.0"
            },
            "ownerReferences": [{
                "apiVersion": "config.openshift.io/v1",
                "kind": "Image",
                "name": "cluster",
                "uid": "3f6d3b5e-0000-4000-8000-000000000001"
            }]
        },
        "spec": {
            "config": {
                "ignition": { "version": "3.5.0" },
                "storage": { "files": files }
            }
        }
    })
}

/// Every entry kind at once: registries.conf (not ours), policy.json as
/// base64, sigstore-registries.yaml percent-encoded, team-a gzip + base64.
fn full_files() -> Vec<serde_json::Value> {
    vec![
        entry(
            "/etc/containers/registries.conf",
            &percent_url(b"unqualified-search-registries = []\n"),
            None,
        ),
        entry(POLICY, &base64_url(&golden(POLICY)), None),
        entry(SIGSTORE, &percent_url(&golden(SIGSTORE)), None),
        entry(TEAM_A, &base64_url(&gzip(&golden(TEAM_A))), Some("gzip")),
    ]
}

struct McNode {
    node: Node,
    mc: PathBuf,
}

fn mc_node() -> McNode {
    let node = Node::with_source(
        "[crio]\nversion = \"1.33\"\ncheck_config = false\n",
        Some("kind = \"machineconfig\"\npath = \"{dir}/mcd/currentconfig\""),
    );
    let mc = node.dir.path().join("mcd/currentconfig");
    std::fs::create_dir_all(mc.parent().unwrap()).unwrap();
    node.put_original_policy();
    McNode { node, mc }
}

fn files_under(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut m = std::collections::BTreeMap::new();
    for p in [POLICY, SIGSTORE, TEAM_A, "/etc/containers/registries.conf"] {
        if let Ok(b) = std::fs::read(root.join(p.trim_start_matches('/'))) {
            m.insert(p.to_string(), b);
        }
    }
    m
}

#[test]
fn machineconfig_versions_and_corrupt_urls() {
    let McNode { node, mc } = mc_node();
    put(&mc, &machineconfig(full_files()).to_string());
    let agent = node.start();
    wait_for("the MachineConfig's files", 20, || {
        (node.file(TEAM_A).as_deref() == Some(golden(TEAM_A).as_slice())).then_some(())
    });
    // Exact bytes, and nothing written that the agent does not manage.
    assert_eq!(node.file(POLICY).unwrap(), golden(POLICY));
    assert_eq!(node.file(SIGSTORE).unwrap(), golden(SIGSTORE));
    assert_eq!(node.file(TEAM_A).unwrap(), golden(TEAM_A));
    assert_eq!(node.file("/etc/containers/registries.conf"), None);
    let st = node.status_json();
    assert_eq!(st["source"]["kind"], "machineconfig");
    assert_eq!(
        st["source"]["machineconfig"]["name"],
        "99-worker-generated-registries"
    );
    assert_eq!(st["source"]["machineconfig"]["files"], 3);
    assert_eq!(st["healthy"], true, "{st:#}");
    let digests: Vec<&str> = st["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(digests, [POLICY, SIGSTORE, TEAM_A]);

    // A new version (YAML this time) without the namespace file: removed.
    let v2 = machineconfig(
        full_files()
            .into_iter()
            .filter(|e| e["path"] != TEAM_A)
            .collect(),
    );
    put(&mc, &serde_yaml_ng::to_string(&v2).unwrap());
    wait_for("team-a.json removed", 20, || {
        node.file(TEAM_A).is_none().then_some(())
    });
    assert_eq!(node.file(POLICY).unwrap(), golden(POLICY));
    assert_eq!(node.file(SIGSTORE).unwrap(), golden(SIGSTORE));

    // A corrupt data URL: reported, and nothing on disk changes.
    let before = files_under(&node.root);
    let mut bad = full_files();
    bad[1] = entry(POLICY, "data:text/plain;charset=utf-8;base64,e30=%%%", None);
    put(&mc, &machineconfig(bad).to_string());
    let err = wait_for("the error in status", 20, || {
        let st = node.status_json();
        st["source"]["errors"][0].as_str().map(str::to_string)
    });
    assert!(
        err.contains("spec.config.storage.files[1] (/etc/containers/policy.json): contents.source")
            && err.contains("invalid percent escape"),
        "{err}"
    );
    assert!(
        err.contains("MachineConfig 99-worker-generated-registries"),
        "{err}"
    );
    let o = agentctl(&["--socket", node.socket.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(files_under(&node.root), before);

    // Corrupt gzip data: the same.
    let mut bad = full_files();
    bad[3] = entry(TEAM_A, &base64_url(b"not gzip"), Some("gzip"));
    put(&mc, &machineconfig(bad).to_string());
    wait_for("the gzip error in status", 20, || {
        let st = node.status_json();
        st["source"]["errors"][0]
            .as_str()
            .filter(|e| e.contains("invalid gzip data"))
            .map(|_| ())
    });
    assert_eq!(files_under(&node.root), before);

    // Without policy.json: the node's original comes back byte for byte.
    let v3 = machineconfig(
        full_files()
            .into_iter()
            .filter(|e| e["path"] != POLICY)
            .collect(),
    );
    put(&mc, &v3.to_string());
    wait_for("the original policy.json", 20, || {
        (node.file(POLICY).as_deref() == Some(ORIGINAL_POLICY.as_bytes())).then_some(())
    });
    assert_eq!(node.file(SIGSTORE).unwrap(), golden(SIGSTORE));
    assert_eq!(node.file(TEAM_A), Some(golden(TEAM_A)));
    let st = node.status_json();
    assert_eq!(st["source"]["errors"], serde_json::json!([]));
    assert_eq!(st["healthy"], true);

    // No managed file at all: the node is as it was before the agent.
    put(&mc, &machineconfig(vec![]).to_string());
    wait_for("everything restored", 20, || {
        (node.file(SIGSTORE).is_none() && node.file(TEAM_A).is_none()).then_some(())
    });
    assert_eq!(node.file(POLICY).unwrap(), ORIGINAL_POLICY.as_bytes());
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn bare_ignition_config_and_preflight() {
    let McNode { node, mc } = mc_node();
    // A bare Ignition config (YAML) with a policy.json that has an unknown
    // key: the strict parser refuses it before anything is written.
    let broken = b"{\"default\":[{\"type\":\"reject\"}],\"transport\":{}}";
    let ign = serde_json::json!({
        "ignition": { "version": "3.4.0" },
        "storage": { "files": [ entry(POLICY, &base64_url(broken), None) ] }
    });
    put(&mc, &serde_yaml_ng::to_string(&ign).unwrap());
    let agent = node.start();
    let st = wait_for("the preflight error", 20, || {
        let st = node.status_json();
        st["last_reconcile"]["error"].as_str().map(str::to_string)
    });
    assert!(
        st.contains("preflight: /etc/containers/policy.json"),
        "{st}"
    );
    assert_eq!(node.file(POLICY).unwrap(), ORIGINAL_POLICY.as_bytes());

    // The same config with a valid file is deployed as it is.
    let good = golden(POLICY);
    let ign = serde_json::json!({
        "ignition": { "version": "3.4.0" },
        "storage": { "files": [ entry(POLICY, &percent_url(&good), None) ] }
    });
    put(&mc, &serde_yaml_ng::to_string(&ign).unwrap());
    wait_for("policy.json from the Ignition config", 20, || {
        (node.file(POLICY).as_deref() == Some(good.as_slice())).then_some(())
    });
    let st = node.status_json();
    assert_eq!(
        st["source"]["machineconfig"]["name"],
        serde_json::Value::Null
    );
    assert_eq!(st["source"]["machineconfig"]["files"], 1);
    assert_eq!(agent.terminate(), Some(0));
}

/// examples/machineconfig.toml and its MachineConfig give the golden files.
#[test]
fn example_config_and_machineconfig() {
    use image_policy_agent::config::{Config, SourceKind};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let c = Config::load_with_vendor(
        Some(&dir.join("machineconfig.toml")),
        Path::new("/nonexistent"),
    )
    .unwrap();
    assert_eq!(c.source_kind, SourceKind::MachineConfig);
    let mc = image_policy_agent::machineconfig::load(&c.source_path).unwrap();
    assert_eq!(mc.name.as_deref(), Some("99-worker-generated-registries"));
    let want: std::collections::BTreeMap<String, Vec<u8>> = [POLICY, SIGSTORE, TEAM_A]
        .iter()
        .map(|p| (p.to_string(), golden(p)))
        .collect();
    assert_eq!(mc.files.0, want);
    let k =
        Config::load_with_vendor(Some(&dir.join("kube.toml")), Path::new("/nonexistent")).unwrap();
    assert_eq!(k.source_kind, SourceKind::Kube);
    assert_eq!(k.kubeconfig, None);
}
