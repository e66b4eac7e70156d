//! The kube source: watches ClusterImagePolicy (cluster-scoped) and
//! ImagePolicy (all namespaces) of `config.openshift.io` with kube-runtime's
//! watcher, `v1` when the server serves it, else `v1alpha1`.
//!
//! The objects live in a [`KubeState`] shared with the reconciler. Until both
//! kinds have been listed once, the reconciler leaves the node's files alone;
//! a lost connection keeps the last listed objects in force (the node's files
//! are never cleared because the API server is unreachable). Every
//! reconnection lists again, so anything missed while away is caught.

use crate::manifests::{Loaded, Source};
use crate::model::{Kind, API_GROUP};
use crate::status::KubeSourceStatus;
use crate::validate::validate_object;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{debug, info, warn};

pub const VERSIONS: [&str; 2] = ["v1", "v1alpha1"];
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `(kind, namespace, name)`.
pub type Key = (Kind, Option<String>, String);

#[derive(Debug, Default)]
pub struct KubeState {
    pub server: Option<String>,
    /// `config.openshift.io/v1` or `config.openshift.io/v1alpha1`.
    pub api_version: Option<String>,
    pub connected: bool,
    /// When the current connection state began.
    pub since: Option<SystemTime>,
    pub last_event: Option<SystemTime>,
    pub events: u64,
    pub last_error: Option<String>,
    /// Both kinds have been listed at least once: the objects are the
    /// cluster's, not an empty placeholder.
    pub synced: bool,
    /// The parts that matter (apiVersion, kind, name, namespace, spec).
    pub objects: BTreeMap<Key, Value>,
}

pub type Shared = Arc<Mutex<KubeState>>;

impl KubeState {
    pub fn status(&self) -> KubeSourceStatus {
        let count = |k| {
            self.objects
                .keys()
                .filter(|(kind, _, _)| *kind == k)
                .count()
        };
        let time =
            |t: &Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        KubeSourceStatus {
            server: self.server.clone(),
            api_version: self.api_version.clone(),
            connected: self.connected,
            since: time(&self.since),
            last_event: time(&self.last_event),
            events: self.events,
            last_error: self.last_error.clone(),
            synced: self.synced,
            cluster_image_policies: count(Kind::ClusterImagePolicy),
            image_policies: count(Kind::ImagePolicy),
        }
    }

    /// The objects, validated, for a reconcile; None until the first full
    /// list (so an empty store never restores the node's files).
    pub fn loaded(&self) -> Option<Vec<Loaded>> {
        if !self.synced {
            return None;
        }
        Some(
            self.objects
                .iter()
                .map(|((kind, ns, name), doc)| Loaded {
                    source: Source {
                        file: PathBuf::from(match ns {
                            Some(ns) => format!("{} {ns}/{name}", kind.as_str()),
                            None => format!("{} {name}", kind.as_str()),
                        }),
                        document: 1,
                        item: None,
                    },
                    result: validate_object(*kind, doc),
                })
                .collect(),
        )
    }

    fn set_connected(&mut self, connected: bool, error: Option<String>) -> bool {
        let changed = self.connected != connected || self.since.is_none();
        if changed {
            self.connected = connected;
            self.since = Some(SystemTime::now());
        }
        if error.is_some() || connected {
            self.last_error = error;
        }
        changed
    }
}

fn resource(kind: Kind, version: &str) -> ApiResource {
    let plural = match kind {
        Kind::ClusterImagePolicy => "clusterimagepolicies",
        Kind::ImagePolicy => "imagepolicies",
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(API_GROUP, version, kind.as_str()),
        plural,
    )
}

/// What the agent keeps of an object: a status-only change leaves it equal.
fn essence(kind: Kind, api_version: &str, o: &DynamicObject) -> (Key, Value) {
    let name = o.metadata.name.clone().unwrap_or_default();
    let ns = match kind {
        Kind::ImagePolicy => o.metadata.namespace.clone(),
        Kind::ClusterImagePolicy => None,
    };
    let mut meta = json!({ "name": name });
    if let Some(n) = &ns {
        meta["namespace"] = json!(n);
    }
    let mut doc = json!({ "apiVersion": api_version, "kind": kind.as_str(), "metadata": meta });
    if let Some(spec) = o.data.get("spec") {
        doc["spec"] = spec.clone();
    }
    ((kind, ns, name), doc)
}

/// Builds a client: `kubeconfig` from the config, else `KUBECONFIG`, else
/// the in-cluster service account. Also returns the server's URL.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<(kube::Client, String)> {
    use anyhow::Context;
    let opts = KubeConfigOptions::default();
    let config = if let Some(p) = kubeconfig {
        let kc = Kubeconfig::read_from(p)
            .with_context(|| format!("reading kubeconfig {}", p.display()))?;
        kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .with_context(|| format!("kubeconfig {}", p.display()))?
    } else if let Some(kc) = Kubeconfig::from_env().context("reading $KUBECONFIG")? {
        kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .context("kubeconfig from $KUBECONFIG")?
    } else {
        kube::Config::incluster().context(
            "no kubeconfig (neither source.kubeconfig nor $KUBECONFIG is set) and not in a cluster",
        )?
    };
    let url = config.cluster_url.to_string();
    Ok((kube::Client::try_from(config)?, url))
}

/// The newest of [`VERSIONS`] the server serves both kinds in.
pub async fn discover(client: &kube::Client) -> anyhow::Result<&'static str> {
    let mut seen = Vec::new();
    for v in VERSIONS {
        match client
            .list_api_group_resources(&format!("{API_GROUP}/{v}"))
            .await
        {
            Ok(list) => {
                let has = |p: &str| list.resources.iter().any(|r| r.name == p);
                if has("clusterimagepolicies") && has("imagepolicies") {
                    return Ok(v);
                }
                seen.push(format!("{API_GROUP}/{v} without both resources"));
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                seen.push(format!("{API_GROUP}/{v} not served"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "the API server serves no ClusterImagePolicy/ImagePolicy ({}); install the CRDs with `agentctl crd | kubectl apply -f -`",
        seen.join(", ")
    )
}

/// One connection: discovery, then both watchers until one fails.
async fn session(
    kubeconfig: Option<&Path>,
    shared: &Shared,
    on_change: &(dyn Fn() + Send + Sync),
    backoff: &mut Duration,
) -> anyhow::Error {
    let (client, url) = match client(kubeconfig).await {
        Ok((c, url)) => {
            if let Ok(mut st) = shared.lock() {
                st.server = Some(url.clone());
            }
            (c, url)
        }
        Err(e) => return e,
    };
    let version = match discover(&client).await {
        Ok(v) => v,
        Err(e) => return e.context(format!("discovering {API_GROUP} at {url}")),
    };
    let api_version = format!("{API_GROUP}/{version}");
    if let Ok(mut st) = shared.lock() {
        if st.api_version.as_deref() != Some(&api_version) {
            info!("watching ClusterImagePolicy and ImagePolicy {api_version}");
        }
        st.api_version = Some(api_version.clone());
    }
    let wc = watcher::Config::default();
    let stream = |kind| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind, version));
        watcher(api, wc.clone()).map(move |ev| (kind, ev)).boxed()
    };
    let mut events =
        futures::stream::select(stream(Kind::ClusterImagePolicy), stream(Kind::ImagePolicy));
    // Objects of a kind being listed, swapped in at InitDone.
    let mut buffers: BTreeMap<Kind, BTreeMap<Key, Value>> = BTreeMap::new();
    let mut listed: std::collections::BTreeSet<Kind> = Default::default();
    while let Some((kind, ev)) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return anyhow::Error::new(e).context(format!("watching {kind}")),
        };
        let Ok(mut st) = shared.lock() else {
            return anyhow::anyhow!("state lock poisoned");
        };
        st.last_event = Some(SystemTime::now());
        st.events += 1;
        let mut changed = false;
        match ev {
            watcher::Event::Init => {
                buffers.insert(kind, BTreeMap::new());
            }
            watcher::Event::InitApply(o) => {
                let (k, v) = essence(kind, &api_version, &o);
                buffers.entry(kind).or_default().insert(k, v);
            }
            watcher::Event::InitDone => {
                let fresh = buffers.remove(&kind).unwrap_or_default();
                let same = st
                    .objects
                    .iter()
                    .filter(|(k, _)| k.0 == kind)
                    .eq(fresh.iter());
                if !same {
                    st.objects.retain(|k, _| k.0 != kind);
                    st.objects.extend(fresh);
                    changed = true;
                }
                listed.insert(kind);
                if listed.len() == 2 {
                    if !st.synced {
                        st.synced = true;
                        changed = true;
                    }
                    if st.set_connected(true, None) {
                        info!("connected to the API server; {} objects", st.objects.len());
                        changed = true;
                    }
                    *backoff = FIRST_BACKOFF;
                }
            }
            watcher::Event::Apply(o) => {
                let (k, v) = essence(kind, &api_version, &o);
                if st.objects.get(&k) != Some(&v) {
                    debug!("{kind} {}: changed", k.2);
                    st.objects.insert(k, v);
                    changed = true;
                }
            }
            watcher::Event::Delete(o) => {
                let (k, _) = essence(kind, &api_version, &o);
                changed = st.objects.remove(&k).is_some();
            }
        }
        drop(st);
        if changed {
            on_change();
        }
    }
    anyhow::anyhow!("watch streams ended")
}

/// Runs the source until the task is dropped: connects, watches, and on any
/// failure marks the source disconnected and tries again with capped backoff.
pub async fn run(
    kubeconfig: Option<PathBuf>,
    shared: Shared,
    on_change: Box<dyn Fn() + Send + Sync>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut last_msg = String::new();
    loop {
        let err = session(
            kubeconfig.as_deref(),
            &shared,
            on_change.as_ref(),
            &mut backoff,
        )
        .await;
        let msg = format!("{err:#}");
        let changed = match shared.lock() {
            Ok(mut st) => st.set_connected(false, Some(msg.clone())),
            Err(_) => false,
        };
        // The same failure again and again is said once (status keeps it).
        if changed || msg != last_msg {
            warn!(
                "kube source: {msg}; node files kept as they are; retrying in {} ms",
                backoff.as_millis()
            );
        } else {
            debug!("kube source: {msg}; retrying in {} ms", backoff.as_millis());
        }
        last_msg = msg;
        if changed {
            on_change();
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
