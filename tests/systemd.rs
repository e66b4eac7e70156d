//! The packaged unit under a real systemd user manager, logging to a real
//! systemd-journald. Both are started here when the machine has none running
//! (this machine's PID 1 is not systemd) and stopped by PID afterwards.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const UNIT: &str = "image-policy-agent.service";

struct Journald(Option<Child>);

impl Journald {
    fn alive() -> bool {
        std::os::unix::net::UnixStream::connect("/run/systemd/journal/stdout").is_ok()
    }

    fn ensure() -> Journald {
        if Self::alive() {
            return Journald(None);
        }
        // Sockets of a journald that is gone would make clients fail.
        for s in ["socket", "stdout", "dev-log", "io.systemd.journal"] {
            let _ = std::fs::remove_file(Path::new("/run/systemd/journal").join(s));
        }
        let child = Command::new("/lib/systemd/systemd-journald")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-journald");
        wait_for("journald", 10, || Self::alive().then_some(()));
        Journald(Some(child))
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct UserManager {
    child: Option<Child>,
    xdg: tempfile::TempDir,
    created_marker: bool,
}

impl UserManager {
    fn start() -> UserManager {
        let marker = Path::new("/run/systemd/system");
        let created_marker = !marker.exists();
        if created_marker {
            std::fs::create_dir_all(marker).unwrap();
        }
        let xdg = tempfile::tempdir().unwrap();
        std::fs::set_permissions(xdg.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let child = Command::new("/lib/systemd/systemd")
            .arg("--user")
            .env("XDG_RUNTIME_DIR", xdg.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd --user");
        let m = UserManager {
            child: Some(child),
            xdg,
            created_marker,
        };
        wait_for("the user manager", 20, || {
            let o = m.systemctl(&["is-system-running"]);
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            (s == "running" || s == "degraded").then_some(())
        });
        m
    }

    fn systemctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("XDG_RUNTIME_DIR", self.xdg.path())
            .output()
            .unwrap()
    }

    fn show(&self, prop: &str) -> String {
        let o = self.systemctl(&["show", "-P", prop, UNIT]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn unit_dir(&self) -> PathBuf {
        self.xdg.path().join("systemd/user")
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let _ = self.systemctl(&["stop", UNIT]);
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.created_marker {
            let _ = std::fs::remove_dir(Path::new("/run/systemd/system"));
        }
    }
}

fn journal(pid: &str) -> Vec<serde_json::Value> {
    let o = Command::new("journalctl")
        .args(["-o", "json", "--no-pager", &format!("_PID={pid}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn unit_under_systemd_with_journal() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/lib/systemd/systemd").exists() {
        eprintln!("needs root and systemd installed (CI has both); not run");
        return;
    }
    let _journald = Journald::ensure();
    let manager = UserManager::start();

    let node = Node::new("");
    node.put_original_policy();
    node.put_manifest("keys.yaml", cip("keys", &["a.example.com"], &public_key()));
    node.put_manifest(
        "keyless.yaml",
        cip("keyless", &["b.example.com"], &fulcio()),
    );
    node.put_manifest(
        "sneaky.yaml",
        ip("team", "sneaky", &["a.example.com/app"], &public_key()),
    );

    // The packaged unit, pointed at the test node by a drop-in. With
    // IPA_INSTALLED_TREE (packaging/check-rpm.sh) the unit and the binary come
    // from the extracted RPM instead of this build.
    let (unit_src, binary) = match std::env::var_os("IPA_INSTALLED_TREE") {
        Some(tree) => {
            let tree = PathBuf::from(tree);
            (
                tree.join("usr/lib/systemd/system").join(UNIT),
                tree.join("usr/bin/image-policy-agent"),
            )
        }
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("systemd")
                .join(UNIT),
            PathBuf::from(env!("CARGO_BIN_EXE_image-policy-agent")),
        ),
    };
    let dir = manager.unit_dir();
    std::fs::create_dir_all(dir.join(format!("{UNIT}.d"))).unwrap();
    std::fs::copy(&unit_src, dir.join(UNIT)).unwrap();
    // The test node lives in /tmp: no private /tmp, and its directory
    // writable. This machine (a VM whose PID 1 is not systemd) refuses the
    // mounts behind ProtectHome, ProtectKernelTunables and ProtectKernelLogs
    // (226/NAMESPACE even for /bin/true), and under ProtectControlGroups,
    // ProtectProc and ProcSubset the journal's socket is not visible (checked
    // with `test -S` through systemd-run); every other setting of the shipped
    // sandbox stays in force.
    std::fs::write(
        dir.join(format!("{UNIT}.d/test.conf")),
        format!(
            "[Service]\nExecStart=\nExecStart={} --config {}\nWatchdogSec=2s\nPrivateTmp=no\nReadWritePaths={}\n\
             ProtectHome=no\nProtectKernelTunables=no\nProtectKernelLogs=no\n\
             ProtectControlGroups=no\nProtectProc=default\nProcSubset=all\n",
            binary.display(),
            node.config.display(),
            node.dir.path().display()
        ),
    )
    .unwrap();
    assert!(manager.systemctl(&["daemon-reload"]).status.success());

    // start returns once READY=1 was sent: the first reconcile is done by then.
    let o = manager.systemctl(&["start", UNIT]);
    if !o.status.success() {
        let status = manager.systemctl(&["status", "--no-pager", "-l", UNIT]);
        panic!(
            "start failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&status.stdout)
        );
    }
    let policy = String::from_utf8(node.file("/etc/containers/policy.json").unwrap()).unwrap();
    assert!(
        policy.contains("a.example.com") && policy.contains("fulcio"),
        "rendered before READY; status: {}",
        node.status_json()
    );
    assert_eq!(manager.show("ActiveState"), "active");
    assert_eq!(manager.show("SubState"), "running");
    let st = node.status_json();
    assert_eq!(manager.show("StatusText"), st["summary"].as_str().unwrap());
    assert_eq!(
        manager.show("StatusText"),
        "applied 2 policies, 0 namespaces; 1 pending"
    );
    let pid = manager.show("MainPID");

    // reload re-reads the configuration and reconciles: an older CRI-O makes
    // the Fulcio policy Pending and takes it out of policy.json.
    std::fs::create_dir_all(node.dir.path().join("config.d")).unwrap();
    std::fs::write(
        node.dir.path().join("config.d/90-crio.toml"),
        "[crio]\nversion = \"1.26\"\n",
    )
    .unwrap();
    assert!(manager.systemctl(&["reload", UNIT]).status.success());
    wait_for("reconcile after reload", 10, || {
        let p = String::from_utf8(node.file("/etc/containers/policy.json")?).ok()?;
        (!p.contains("fulcio")).then_some(())
    });
    wait_for("StatusText updated", 10, || {
        (manager.show("StatusText") == "applied 1 policies, 0 namespaces; 2 pending").then_some(())
    });

    // The watchdog (2 s) is fed: after several periods the same process runs.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(manager.show("ActiveState"), "active");
    assert_eq!(manager.show("MainPID"), pid);
    assert_eq!(manager.show("NRestarts"), "0");

    // The journal has the structured events.
    let entries = wait_for("journal entries", 10, || {
        let e = journal(&pid);
        let pending_ip = e.iter().any(|j| {
            j["MESSAGE_ID"] == image_policy_agent::logging::MSG_POLICY_PENDING
                && j["POLICY_NAMESPACE"] == "team"
        });
        let written = e
            .iter()
            .any(|j| j["MESSAGE_ID"] == image_policy_agent::logging::MSG_FILE_WRITTEN);
        (pending_ip && written).then_some(e)
    });
    let written = entries
        .iter()
        .find(|j| {
            j["MESSAGE_ID"] == image_policy_agent::logging::MSG_FILE_WRITTEN
                && j["FILE_PATH"] == "/etc/containers/policy.json"
        })
        .expect("a file-written entry for policy.json");
    assert_eq!(written["SYSLOG_IDENTIFIER"], "image-policy-agent");
    assert_eq!(written["MESSAGE"], "wrote /etc/containers/policy.json");
    let pending = entries
        .iter()
        .find(|j| {
            j["MESSAGE_ID"] == image_policy_agent::logging::MSG_POLICY_PENDING
                && j["POLICY_NAME"] == "sneaky"
        })
        .expect("a pending entry for the ImagePolicy");
    assert_eq!(pending["POLICY_KIND"], "ImagePolicy");
    assert_eq!(pending["POLICY_NAMESPACE"], "team");
    let gate = entries
        .iter()
        .find(|j| {
            j["MESSAGE_ID"] == image_policy_agent::logging::MSG_POLICY_PENDING
                && j["POLICY_NAME"] == "keyless"
        })
        .expect("a pending entry for the gated ClusterImagePolicy");
    assert!(
        gate["MESSAGE"]
            .as_str()
            .unwrap()
            .contains("requires CRI-O ≥ 1.27 (node has 1.26)"),
        "{gate}"
    );

    // A clean stop: SIGTERM, exit 0, socket removed.
    assert!(manager.systemctl(&["stop", UNIT]).status.success());
    assert_eq!(manager.show("ActiveState"), "inactive");
    assert_eq!(manager.show("Result"), "success");
    assert_eq!(manager.show("ExecMainStatus"), "0");
    assert!(!node.socket.exists());
}
