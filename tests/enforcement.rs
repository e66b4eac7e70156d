//! Proof of enforcement: the files the agent writes, given to the real
//! containers/image (skopeo from Debian trixie, c/image 5.34; see
//! tests/enforcement/setup.sh), decide accept/reject for images pushed to a
//! real docker-registry on 127.0.0.1. Debian 12's own skopeo 1.9.3 (c/image
//! 5.23, sigstore disabled) checks that files for old nodes still load.

mod common;
use base64::Engine;
use common::*;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The trixie skopeo, run through trixie's dynamic loader.
struct Tools {
    sysroot: PathBuf,
}

impl Tools {
    fn get() -> &'static Tools {
        static T: OnceLock<Tools> = OnceLock::new();
        T.get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/enforcement/setup.sh");
            let o = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(o.status.success(), "tests/enforcement/setup.sh failed");
            Tools {
                sysroot: PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
            }
        })
    }

    fn skopeo(&self) -> Command {
        let lib = self.sysroot.join("usr/lib/x86_64-linux-gnu");
        let mut c = Command::new(lib.join("ld-linux-x86-64.so.2"));
        let mut libpath = OsString::from(&lib);
        libpath.push(":");
        libpath.push(self.sysroot.join("lib/x86_64-linux-gnu"));
        c.arg("--library-path")
            .arg(libpath)
            .arg(self.sysroot.join("usr/bin/skopeo"));
        c
    }
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

/// docker-registry on 127.0.0.1, stopped by PID.
struct Registry {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let r = Registry {
            child: Some(child),
            port,
            _dir: dir,
        };
        wait_for("the registry", 20, || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A one-file tar archive.
fn tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let field = |h: &mut [u8; 512], at: usize, len: usize, v: &str| {
        h[at..at + v.len()].copy_from_slice(v.as_bytes());
        let _ = len;
    };
    field(&mut h, 100, 8, "0000644\0");
    field(&mut h, 108, 8, "0000000\0");
    field(&mut h, 116, 8, "0000000\0");
    field(&mut h, 124, 12, &format!("{:011o}\0", content.len()));
    field(&mut h, 136, 12, "00000000000\0");
    h[156] = b'0';
    field(&mut h, 257, 6, "ustar\0");
    field(&mut h, 263, 2, "00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    field(&mut h, 148, 8, &format!("{sum:06o}\0 "));
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Writes an OCI layout with one image (one gzip layer) tagged `v1`.
fn oci_layout(dir: &Path, content: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put_blob = |b: &[u8]| {
        let d = hex(b);
        std::fs::write(blobs.join(&d), b).unwrap();
        (format!("sha256:{d}"), b.len())
    };
    let layer_tar = tar("hello.txt", content.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer_tar).unwrap();
    let layer = gz.finish().unwrap();
    let (layer_digest, layer_size) = put_blob(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&layer_tar))]}
    });
    let (config_digest, config_size) = put_blob(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}]
    });
    let (m_digest, m_size) = put_blob(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest, "size": m_size,
            "annotations": {"org.opencontainers.image.ref.name": "v1"}}]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// The lab: registry, keys, images, and a scratch directory.
struct Lab {
    reg: Registry,
    dir: tempfile::TempDir,
    key1_pub: Vec<u8>,
    key2_pub: Vec<u8>,
}

const INSECURE: &str = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;

impl Lab {
    fn new() -> Lab {
        let t = Tools::get();
        let reg = Registry::start();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("pass"), "test-passphrase").unwrap();
        std::fs::write(d.join("insecure.json"), INSECURE).unwrap();
        // Pushing: attachments on for the whole registry.
        std::fs::create_dir_all(d.join("push-regd")).unwrap();
        std::fs::write(
            d.join("push-regd/push.yaml"),
            format!(
                "docker:\n  {}:\n    use-sigstore-attachments: true\n",
                reg.host()
            ),
        )
        .unwrap();
        for k in ["k1", "k2"] {
            let mut c = t.skopeo();
            c.args(["generate-sigstore-key", "--output-prefix"])
                .arg(d.join(k))
                .arg("--passphrase-file")
                .arg(d.join("pass"));
            let o = run(c);
            assert!(
                o.status.success(),
                "generate-sigstore-key: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let lab = Lab {
            key1_pub: std::fs::read(d.join("k1.pub")).unwrap(),
            key2_pub: std::fs::read(d.join("k2.pub")).unwrap(),
            reg,
            dir,
        };
        lab.push("test/signed:v1", Some("k1"));
        lab.push("test/wrongkey:v1", Some("k2"));
        lab.push("test/unsigned:v1", None);
        lab.push("other/app:v1", None);
        lab.push("teamrepo/app:v1", None);
        lab
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.reg.host())
    }

    /// Builds a fresh image (content named after the reference) and pushes it.
    fn push(&self, repo_tag: &str, key: Option<&str>) {
        self.push_as(repo_tag, key, None)
    }

    /// Like `push`, with the signature made for `identity` instead.
    fn push_as(&self, repo_tag: &str, key: Option<&str>, identity: Option<&str>) {
        let layout = self.path(&format!("oci-{}", repo_tag.replace(['/', ':'], "_")));
        oci_layout(&layout, &format!("image {repo_tag}\n"));
        let mut c = Tools::get().skopeo();
        c.arg("--policy").arg(self.path("insecure.json"));
        c.arg("--registries.d").arg(self.path("push-regd"));
        c.args(["copy", "-q", "--dest-tls-verify=false"]);
        if let Some(k) = key {
            c.arg("--sign-by-sigstore-private-key")
                .arg(self.path(&format!("{k}.private")));
            c.arg("--sign-passphrase-file").arg(self.path("pass"));
        }
        if let Some(id) = identity {
            c.arg("--sign-identity").arg(id);
        }
        c.arg(format!("oci:{}:v1", layout.display()));
        c.arg(format!("docker://{}", self.image(repo_tag)));
        let o = run(c);
        assert!(
            o.status.success(),
            "push {repo_tag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Copies an image with its signatures to another name.
    fn copy(&self, from: &str, to: &str) {
        let mut c = Tools::get().skopeo();
        c.arg("--policy").arg(self.path("insecure.json"));
        c.arg("--registries.d").arg(self.path("push-regd"));
        c.args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ]);
        c.arg(format!("docker://{}", self.image(from)));
        c.arg(format!("docker://{}", self.image(to)));
        let o = run(c);
        assert!(
            o.status.success(),
            "copy {from} {to}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Pulls `repo_tag` under `policy` and `regd`: Ok on accept, Err(stderr) on reject.
    fn pull(&self, policy: &Path, regd: &Path, repo_tag: &str) -> Result<(), String> {
        self.pull_with(policy, regd, None, repo_tag)
    }

    fn pull_with(
        &self,
        policy: &Path,
        regd: &Path,
        registries_conf: Option<&Path>,
        repo_tag: &str,
    ) -> Result<(), String> {
        let out = tempfile::tempdir().unwrap();
        let mut c = Tools::get().skopeo();
        c.arg("--policy")
            .arg(policy)
            .arg("--registries.d")
            .arg(regd);
        if let Some(rc) = registries_conf {
            c.arg("--registries-conf").arg(rc);
        }
        c.args(["copy", "-q", "--src-tls-verify=false"]);
        c.arg(format!("docker://{}", self.image(repo_tag)));
        c.arg(format!("dir:{}", out.path().join("x").display()));
        let o = run(c);
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).to_string())
        }
    }

    fn accepts(&self, policy: &Path, regd: &Path, image: &str) {
        if let Err(e) = self.pull(policy, regd, image) {
            panic!("{image} must be accepted under {}:\n{e}", policy.display());
        }
    }

    fn rejects(&self, policy: &Path, regd: &Path, image: &str, why: &str) {
        match self.pull(policy, regd, image) {
            Ok(()) => panic!("{image} must be rejected under {}", policy.display()),
            Err(e) => assert!(e.contains(why), "{image}: expected {why:?} in:\n{e}"),
        }
    }

    /// Makes root → intermediate → leaf (codeSigning, SAN e-mail and DNS)
    /// with openssl, pushes `repo_tag` and signs it with cosign using the
    /// leaf. Returns (root PEM, intermediate PEM).
    fn pki_sign(&self, repo_tag: &str) -> (Vec<u8>, Vec<u8>) {
        let d = self.path("pki");
        std::fs::create_dir_all(&d).unwrap();
        // The extensions file beside the keys: openssl's arguments are split on spaces.
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/enforcement/openssl-ext.cnf"),
            d.join("ext.cnf"),
        )
        .unwrap();
        for (name, subject) in [
            ("root", "/CN=test-root"),
            ("inter", "/CN=test-intermediate"),
            ("leaf", "/CN=signer"),
        ] {
            openssl(
                &d,
                &format!("ecparam -name prime256v1 -genkey -noout -out {name}.key"),
            );
            openssl(
                &d,
                &format!("req -new -key {name}.key -subj {subject} -out {name}.csr"),
            );
        }
        openssl(&d, "x509 -req -in root.csr -signkey root.key -days 2 -extfile ext.cnf -extensions v3_root -out root.pem");
        for (name, ca) in [("inter", "root"), ("leaf", "inter")] {
            openssl(&d, &format!("x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -days 2 -extfile ext.cnf -extensions v3_{name} -out {name}.pem"));
        }
        let root = std::fs::read(d.join("root.pem")).unwrap();
        let inter = std::fs::read(d.join("inter.pem")).unwrap();
        std::fs::write(d.join("chain.pem"), [inter.clone(), root.clone()].concat()).unwrap();
        let o = Command::new("/usr/bin/python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/enforcement/cosign_key.py"))
            .arg(d.join("leaf.key"))
            .arg("test-passphrase")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "cosign_key.py: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::write(d.join("leaf.cosign.key"), &o.stdout).unwrap();

        self.push(repo_tag, None);
        let mut c = Tools::get().skopeo();
        c.arg("--policy").arg(self.path("insecure.json"));
        c.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
        c.arg(format!("docker://{}", self.image(repo_tag)));
        let o = run(c);
        assert!(
            o.status.success(),
            "inspect: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let digest = String::from_utf8(o.stdout).unwrap().trim().to_string();
        let repo = repo_tag.split(':').next().unwrap();
        let o = Command::new(Tools::get().sysroot.join("usr/bin/cosign"))
            .args([
                "sign",
                "--key",
                "leaf.cosign.key",
                "--certificate",
                "leaf.pem",
                "--certificate-chain",
                "chain.pem",
            ])
            .args(["--tlog-upload=false", "--allow-http-registry", "--yes"])
            .arg(format!("{}@{digest}", self.image(repo)))
            .env("COSIGN_PASSWORD", "test-passphrase")
            .env("HOME", &d)
            .current_dir(&d)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "cosign sign: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        (root, inter)
    }

    fn key_rot(key: &[u8]) -> String {
        format!(
            "{{policyType: PublicKey, publicKey: {{keyData: {}}}}}",
            b64(key)
        )
    }

    /// `agentctl render` of the given manifests onto the OpenShift template;
    /// returns the output root.
    fn render(&self, name: &str, manifests: &[(&str, String)], extra: &[&str]) -> PathBuf {
        let m = self.path(&format!("{name}-manifests"));
        std::fs::create_dir_all(&m).unwrap();
        for (f, text) in manifests {
            std::fs::write(m.join(f), text).unwrap();
        }
        let out = self.path(&format!("{name}-out"));
        let mut args = vec![
            "render",
            "--manifests",
            m.to_str().unwrap(),
            "--root",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        agentctl(&args);
        assert!(
            out.join("etc/containers/policy.json").exists(),
            "render {name} wrote nothing"
        );
        out
    }
}

fn policy_json(root: &Path) -> PathBuf {
    root.join("etc/containers/policy.json")
}

fn regd(root: &Path) -> PathBuf {
    root.join("etc/containers/registries.d")
}

const NO_SIGNATURE: &str = "A signature was required, but no signature exists";
const BAD_SIGNATURE: &str = "cryptographic signature verification failed";
const NOT_ACCEPTED: &str = "is not accepted";

#[test]
fn enforcement() {
    let started = std::time::Instant::now();
    let lab = Lab::new();
    let host = lab.reg.host();
    let scope = |p: &str| format!("{host}/{p}");

    // 1. PublicKey ClusterImagePolicy on a repository namespace.
    let out = lab.render(
        "s1",
        &[(
            "c.yaml",
            cip(
                "protect-test",
                &[&scope("test")],
                &Lab::key_rot(&lab.key1_pub),
            ),
        )],
        &[],
    );
    let (p, r) = (policy_json(&out), regd(&out));
    lab.accepts(&p, &r, "test/signed:v1");
    lab.rejects(&p, &r, "test/unsigned:v1", NO_SIGNATURE);
    lab.rejects(&p, &r, "test/wrongkey:v1", BAD_SIGNATURE);
    lab.accepts(&p, &r, "other/app:v1");
    eprintln!("scenario 1 (PublicKey cluster policy: signed accepted, unsigned/other key rejected, out of scope default): ok");

    // 2. A namespace file applies through <ns>.json only.
    let out = lab.render(
        "s2",
        &[
            (
                "c.yaml",
                cip(
                    "protect-test",
                    &[&scope("test")],
                    &Lab::key_rot(&lab.key1_pub),
                ),
            ),
            (
                "n.yaml",
                ip(
                    "team",
                    "team-repo",
                    &[&scope("teamrepo")],
                    &Lab::key_rot(&lab.key1_pub),
                ),
            ),
        ],
        &[],
    );
    let team = out.join("etc/crio/policies/team.json");
    lab.rejects(&team, &regd(&out), "teamrepo/app:v1", NO_SIGNATURE);
    lab.accepts(&policy_json(&out), &regd(&out), "teamrepo/app:v1");
    lab.rejects(&team, &regd(&out), "test/unsigned:v1", NO_SIGNATURE);
    eprintln!("scenario 2 (namespace file: its rule applies through team.json, not through policy.json): ok");

    // 3. A namespace cannot weaken the cluster: a tag of the protected
    //    repository with another key is not deployed.
    let out = lab.render(
        "s3",
        &[
            (
                "c.yaml",
                cip(
                    "protect-test",
                    &[&scope("test")],
                    &Lab::key_rot(&lab.key1_pub),
                ),
            ),
            (
                "n.yaml",
                ip(
                    "team",
                    "weaken",
                    &[&scope("test/wrongkey:v1"), &scope("teamrepo")],
                    &Lab::key_rot(&lab.key2_pub),
                ),
            ),
        ],
        &[],
    );
    let team = out.join("etc/crio/policies/team.json");
    assert!(!std::fs::read_to_string(&team).unwrap().contains("wrongkey"));
    lab.rejects(&team, &regd(&out), "test/wrongkey:v1", BAD_SIGNATURE);
    lab.accepts(&team, &regd(&out), "test/signed:v1");
    eprintln!("scenario 3 (namespace cannot weaken a cluster-protected repository): ok");

    // 4. Identity rules.
    lab.push("idrepo/app:v1", Some("k1"));
    lab.copy("idrepo/app:v1", "idrepo/app:v2"); // same digest, signature says :v1
    lab.copy("test/signed:v1", "exact/app:v1");
    lab.copy("test/signed:v1", "remap/signed:v1");
    let k1 = b64(&lab.key1_pub);
    let with_identity = |ident: &str| {
        format!("{{rootOfTrust: {{policyType: PublicKey, publicKey: {{keyData: {k1}}}}}, signedIdentity: {ident}}}")
    };
    let spec = |name: &str, sc: &str, policy: String| {
        format!("apiVersion: config.openshift.io/v1\nkind: ClusterImagePolicy\nmetadata: {{name: {name}}}\nspec:\n  scopes: [\"{sc}\"]\n  policy: {policy}\n")
    };
    let out = lab.render(
        "s4",
        &[
            ("a.yaml", spec("by-repo", &scope("idrepo"), with_identity("{matchPolicy: MatchRepository}"))),
            ("b.yaml", spec("exact", &scope("exact"), with_identity(&format!("{{matchPolicy: ExactRepository, exactRepository: {{repository: {}}}}}", scope("test/signed"))))),
            ("c.yaml", spec("remap", &scope("remap"), with_identity(&format!("{{matchPolicy: RemapIdentity, remapIdentity: {{prefix: {}, signedPrefix: {}}}}}", scope("remap"), scope("test"))))),
        ],
        &[],
    );
    let (p, r) = (policy_json(&out), regd(&out));
    lab.accepts(&p, &r, "idrepo/app:v2");
    lab.accepts(&p, &r, "exact/app:v1");
    lab.accepts(&p, &r, "remap/signed:v1");
    // The same images under the default identity are rejected.
    let out = lab.render(
        "s4-default",
        &[(
            "a.yaml",
            cip(
                "default-id",
                &[&scope("idrepo"), &scope("exact"), &scope("remap")],
                &Lab::key_rot(&lab.key1_pub),
            ),
        )],
        &[],
    );
    let (p, r) = (policy_json(&out), regd(&out));
    for image in ["idrepo/app:v2", "exact/app:v1", "remap/signed:v1"] {
        lab.rejects(&p, &r, image, NOT_ACCEPTED);
    }
    lab.accepts(&p, &r, "idrepo/app:v1");
    eprintln!("scenario 4 (MatchRepository, ExactRepository, RemapIdentity accept what the default rejects): ok");

    // 5. Mirrors: the policy names the logical repository; image and
    //    signature live in a mirror listed in registries.conf. Accepted only
    //    because sigstore-registries.yaml lists the mirror.
    lab.push_as(
        "mirrored/app:v1",
        Some("k1"),
        Some(&scope("logical/app:v1")),
    );
    let rc = lab.path("registries.conf");
    std::fs::write(
        &rc,
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
            scope("logical"),
            scope("mirrored")
        ),
    )
    .unwrap();
    let mirror_policy = [(
        "c.yaml",
        cip(
            "logical",
            &[&scope("logical")],
            &Lab::key_rot(&lab.key1_pub),
        ),
    )];
    let out = lab.render(
        "s5",
        &mirror_policy,
        &["--registries-conf", rc.to_str().unwrap()],
    );
    let yaml = std::fs::read_to_string(regd(&out).join("sigstore-registries.yaml")).unwrap();
    assert!(yaml.contains(&format!("{}:", scope("mirrored"))), "{yaml}");
    lab.pull_with(&policy_json(&out), &regd(&out), Some(&rc), "logical/app:v1")
        .unwrap_or_else(|e| panic!("mirrored image must be accepted: {e}"));
    let out = lab.render("s5-no-mirrors", &mirror_policy, &[]);
    match lab.pull_with(&policy_json(&out), &regd(&out), Some(&rc), "logical/app:v1") {
        Ok(()) => panic!("without the mirror in registries.d the signature must not be found"),
        Err(e) => assert!(e.contains(NO_SIGNATURE), "{e}"),
    }
    eprintln!("scenario 5 (mirror from registries.conf: signature found only because the mirror is in sigstore-registries.yaml): ok");

    // 6. PKI: a CA made here with openssl, an image signed by cosign with a
    //    leaf certificate (key in cosign's encrypted format).
    let pki = lab.pki_sign("pki/app:v1");
    let pki_rot = |email: &str| {
        format!(
            "{{rootOfTrust: {{policyType: PKI, pki: {{caRootsData: {}, caIntermediatesData: {}, pkiCertificateSubject: {{email: {email}, hostname: signer.example.com}}}}}}, signedIdentity: {{matchPolicy: MatchRepository}}}}",
            b64(&pki.0),
            b64(&pki.1)
        )
    };
    let out = lab.render(
        "s6",
        &[(
            "p.yaml",
            spec("pki", &scope("pki"), pki_rot("signer@example.com")),
        )],
        &[],
    );
    lab.accepts(&policy_json(&out), &regd(&out), "pki/app:v1");
    let out = lab.render(
        "s6-wrong",
        &[(
            "p.yaml",
            spec("pki", &scope("pki"), pki_rot("other@example.com")),
        )],
        &[],
    );
    lab.rejects(
        &policy_json(&out),
        &regd(&out),
        "pki/app:v1",
        r#"Required email \"other@example.com\" not found"#,
    );
    lab.push("pki/keysigned:v1", Some("k1"));
    let out = lab.render(
        "s6-keysig",
        &[(
            "p.yaml",
            spec("pki", &scope("pki"), pki_rot("signer@example.com")),
        )],
        &[],
    );
    lab.rejects(
        &policy_json(&out),
        &regd(&out),
        "pki/keysigned:v1",
        "certificate",
    );
    eprintln!("scenario 6 (PKI: cosign leaf-certificate signature accepted; wrong e-mail and key-only signatures rejected): ok");

    // 7. Restore, with the daemon's own files: after the last policy is
    //    deleted the unsigned image is accepted again.
    let node = Node::new("");
    node.put_original_policy();
    node.put_manifest(
        "c.yaml",
        cip(
            "protect-test",
            &[&scope("test")],
            &Lab::key_rot(&lab.key1_pub),
        ),
    );
    let agent = node.start();
    let (p, r) = (
        node.root.join("etc/containers/policy.json"),
        node.root.join("etc/containers/registries.d"),
    );
    lab.rejects(&p, &r, "test/unsigned:v1", NO_SIGNATURE);
    lab.accepts(&p, &r, "test/signed:v1");
    std::fs::remove_file(node.manifests.join("c.yaml")).unwrap();
    wait_for("restore", 10, || {
        (node.file("/etc/containers/policy.json")? == ORIGINAL_POLICY.as_bytes()).then_some(())
    });
    lab.accepts(&p, &r, "test/unsigned:v1");
    assert_eq!(agent.terminate(), Some(0));
    eprintln!("scenario 7 (daemon restores the original: unsigned accepted again): ok");

    // 8. Files for an old node load in Debian 12's skopeo 1.9.3 (c/image 5.23).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/manifests");
    let old = lab.path("s8-old");
    agentctl(&[
        "render",
        "--manifests",
        example.to_str().unwrap(),
        "--crio-version",
        "1.26",
        "--root",
        old.to_str().unwrap(),
    ]);
    let new = lab.path("s8-new");
    agentctl(&[
        "render",
        "--manifests",
        example.to_str().unwrap(),
        "--root",
        new.to_str().unwrap(),
    ]);
    let load = |policy: &Path, regd: &Path| {
        let out = tempfile::tempdir().unwrap();
        let o = run({
            let mut c = Command::new("skopeo");
            c.arg("--policy")
                .arg(policy)
                .arg("--registries.d")
                .arg(regd);
            c.args(["copy", "dir:/nonexistent-ipa-source"])
                .arg(format!("dir:{}", out.path().join("x").display()));
            c
        });
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let mut loaded = 0;
    for f in walk(&old) {
        let e = load(&f, &regd(&old));
        assert!(
            e.contains("nonexistent-ipa-source") && !e.contains("invalid policy"),
            "{}: {e}",
            f.display()
        );
        loaded += 1;
    }
    // Key-only policies with namespace files (a 1.28 node) load there too.
    let keys_only = lab.render(
        "s8-keys",
        &[
            (
                "c.yaml",
                cip("keys", &[&scope("test")], &Lab::key_rot(&lab.key1_pub)),
            ),
            (
                "n.yaml",
                ip(
                    "team",
                    "team-keys",
                    &[&scope("teamrepo")],
                    &Lab::key_rot(&lab.key1_pub),
                ),
            ),
        ],
        &["--crio-version", "1.28"],
    );
    for f in walk(&keys_only) {
        let e = load(&f, &regd(&keys_only));
        assert!(
            e.contains("nonexistent-ipa-source") && !e.contains("invalid policy"),
            "{}: {e}",
            f.display()
        );
        loaded += 1;
    }
    // The gate is what makes the difference: the newest render does not load there.
    let e = load(&policy_json(&new), &regd(&new));
    assert!(
        e.contains("invalid policy")
            && e.contains("Unknown key")
            && e.contains("rekorPublicKeyData"),
        "{e}"
    );
    eprintln!("scenario 8 (files for CRI-O 1.26 load in skopeo 1.9.3; {loaded} files; the ungated render does not): ok");

    eprintln!(
        "enforcement suite: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Every policy file (*.json) under a render root.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut v = vec![policy_json(root)];
    if let Ok(rd) = std::fs::read_dir(root.join("etc/crio/policies")) {
        v.extend(rd.map(|e| e.unwrap().path()));
    }
    v
}
