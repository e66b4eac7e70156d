//! Logging: structured to the journal when stderr is connected to it
//! (`JOURNAL_STREAM`), plain lines on stderr otherwise.
//!
//! Journal fields: `POLICY_KIND`, `POLICY_NAME`, `POLICY_NAMESPACE`,
//! `FILE_PATH`, `SCOPE`, and a stable `MESSAGE_ID` per event type below.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub const MSG_FILE_WRITTEN: &str = "0b6d0c2a5e8f4b7d9c1a3e5f7b9d1f30";
pub const MSG_FILE_RESTORED: &str = "1c7e1d3b6f9a4c8e8d2b4f6a8c0e2a41";
pub const MSG_POLICY_PENDING: &str = "2d8f2e4c7a0b4d9f9e3c5a7b9d1f3b52";
pub const MSG_POLICY_INVALID: &str = "3e9a3f5d8b1c4e0a8f4d6b8c0e2a4c63";
pub const MSG_DRIFT: &str = "4fab4a6e9c2d4f1b9a5e7c9d1f3b5d74";
pub const MSG_VERIFY_FAILED: &str = "5abc5b7fad3e4a2c8b6f8dae2a4c6e85";

/// True when stderr is the journal stream systemd set up for us.
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    // fstat(2), not /proc: the sandbox may hide /proc.
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Installs the global subscriber. `IMAGE_POLICY_AGENT_LOG=debug` raises the level.
pub fn init() {
    let level = match std::env::var("IMAGE_POLICY_AGENT_LOG").as_deref() {
        Ok("trace") => tracing::Level::TRACE,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    // Libraries' events (kube, hyper) only when debugging: the agent
    // reports their errors itself, with context, once.
    let ours_only = level <= tracing::Level::INFO;
    let filter = tracing_subscriber::filter::filter_fn(move |m| {
        *m.level() <= level && (!ours_only || m.target().starts_with("image_policy_agent"))
    });
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("image-policy-agent".into());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!(
                "image-policy-agent: cannot log to the journal natively ({e}); plain lines follow"
            ),
        }
    } else if journal {
        eprintln!("image-policy-agent: JOURNAL_STREAM is set but stderr is not that stream; plain lines follow");
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false),
        )
        .with(filter)
        .init();
}
