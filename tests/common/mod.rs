//! Shared helpers for the integration tests: a daemon in a temporary root,
//! manifest builders, polling.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KTUZrd0V3WUhLb1pJemowQ0FRWUlLb1pJemowREFRY0RRZ0FFCi0tLS0tRU5EIFBVQkxJQyBLRVktLS0tLQo=";
pub const CERT: &str =
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJyb290Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";
pub const REKOR: &str =
    "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KUkVLT1JLRVlSRUtPUktFWQotLS0tLUVORCBQVUJMSUMgS0VZLS0tLS0K";

/// An original policy.json as distributions ship it: 4-space indent, trailing newline.
pub const ORIGINAL_POLICY: &str = "{\n    \"default\": [\n        {\n            \"type\": \"insecureAcceptAnything\"\n        }\n    ],\n    \"transports\": {\n        \"docker-daemon\": {\n            \"\": [\n                {\n                    \"type\": \"insecureAcceptAnything\"\n                }\n            ]\n        }\n    }\n}\n";

pub fn cip(name: &str, scopes: &[&str], root_of_trust: &str) -> String {
    format!(
        "apiVersion: config.openshift.io/v1\nkind: ClusterImagePolicy\nmetadata: {{name: {name}}}\nspec:\n  scopes: {scopes:?}\n  policy:\n    rootOfTrust: {root_of_trust}\n"
    )
}

pub fn ip(ns: &str, name: &str, scopes: &[&str], root_of_trust: &str) -> String {
    format!(
        "apiVersion: config.openshift.io/v1\nkind: ImagePolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  scopes: {scopes:?}\n  policy:\n    rootOfTrust: {root_of_trust}\n"
    )
}

pub fn public_key() -> String {
    format!("{{policyType: PublicKey, publicKey: {{keyData: {KEY}}}}}")
}

pub fn fulcio() -> String {
    format!("{{policyType: FulcioCAWithRekor, fulcioCAWithRekor: {{fulcioCAData: {CERT}, rekorKeyData: {REKOR}, fulcioSubject: {{oidcIssuer: 'https://oidc.example.com', signedEmail: a@example.com}}}}}}")
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `secs`.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes a file the way a careful writer does: temp file, then rename.
pub fn put(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs the openssl CLI in `dir` (`args` split on whitespace); panics with
/// its stderr when it fails.
pub fn openssl(dir: &Path, args: &str) {
    let o = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn agentctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(args)
        .output()
        .unwrap()
}

/// A temporary node: root/, manifests/, run/, state/ and a config file.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub manifests: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl Node {
    pub fn new(extra_config: &str) -> Node {
        Node::with_source(extra_config, None)
    }

    /// A node whose `[source]` table is `source` (`{dir}` stands for the
    /// node's temporary directory); None: the manifests directory.
    pub fn with_source(extra_config: &str, source: Option<&str>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("root");
        let manifests = dir.path().join("manifests");
        let socket = dir.path().join("run/agent.sock");
        let state = dir.path().join("state");
        std::fs::create_dir_all(root.join("etc/containers")).unwrap();
        std::fs::create_dir_all(&manifests).unwrap();
        let config = dir.path().join("config.toml");
        let source = match source {
            Some(s) => s.replace("{dir}", dir.path().to_str().unwrap()),
            None => format!("kind = \"manifests\"\npath = {manifests:?}"),
        };
        std::fs::write(
            &config,
            format!(
                "root = {root:?}\n{extra_config}\n[source]\n{source}\n[agent]\nsocket = {socket:?}\nstate_dir = {state:?}\ndebounce_ms = 20\n"
            ),
        )
        .unwrap();
        Node {
            dir,
            root,
            manifests,
            socket,
            state,
            config,
        }
    }

    /// Gives the node the distribution's policy.json (what the agent must
    /// later restore byte for byte).
    pub fn put_original_policy(&self) {
        put(
            &self.root.join("etc/containers/policy.json"),
            ORIGINAL_POLICY,
        );
    }

    /// Writes (atomically) a manifest file into the node's manifests directory.
    pub fn put_manifest(&self, name: &str, text: impl AsRef<str>) {
        put(&self.manifests.join(name), text.as_ref());
    }

    pub fn file(&self, node_path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(node_path.trim_start_matches('/'))).ok()
    }

    pub fn start(&self) -> Agent {
        self.start_with_env(&[])
    }

    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_image-policy-agent"))
            .arg("--config")
            .arg(&self.config)
            .env_remove("KUBECONFIG")
            .envs(env.iter().copied())
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent {
            child: Some(child),
            socket: self.socket.clone(),
        };
        wait_for("the daemon's socket", 20, || {
            std::os::unix::net::UnixStream::connect(&self.socket)
                .ok()
                .map(|_| ())
        });
        agent
    }

    /// Renders the manifests directory with `agentctl render` and the given
    /// base; returns node path → bytes.
    pub fn expected(&self, base: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
        render_dir(&self.manifests, base)
    }

    pub fn status_json(&self) -> serde_json::Value {
        let o = agentctl(&[
            "--socket",
            self.socket.to_str().unwrap(),
            "status",
            "--json",
        ]);
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }
}

/// What `agentctl render` writes for `manifests` on `base`: node path → bytes.
pub fn render_dir(manifests: &Path, base: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    {
        let out = tempfile::tempdir().unwrap();
        let base_file = out.path().join("base.json");
        std::fs::write(&base_file, base).unwrap();
        let root = out.path().join("r");
        agentctl(&[
            "render",
            "--manifests",
            manifests.to_str().unwrap(),
            "--base-policy",
            base_file.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ]);
        let mut m = std::collections::BTreeMap::new();
        for p in [
            "/etc/containers/policy.json",
            "/etc/containers/registries.d/sigstore-registries.yaml",
        ] {
            if let Ok(b) = std::fs::read(root.join(p.trim_start_matches('/'))) {
                m.insert(p.to_string(), b);
            }
        }
        if let Ok(rd) = std::fs::read_dir(root.join("etc/crio/policies")) {
            for e in rd {
                let e = e.unwrap();
                m.insert(
                    format!("/etc/crio/policies/{}", e.file_name().to_string_lossy()),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
        m
    }
}

/// A running daemon; killed by PID when dropped.
pub struct Agent {
    pub child: Option<Child>,
    pub socket: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap().code()
    }

    pub fn kill9(mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
