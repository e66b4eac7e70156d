//! A STAND-IN Kubernetes API server (a real Kubernetes API server cannot run
//! on this machine): plain HTTP/1.1 on 127.0.0.1 speaking the discovery,
//! list and watch protocol for the two config.openshift.io resources with
//! the API server's JSON shapes: APIResourceList, `<Kind>List` with
//! `metadata.resourceVersion`, chunked watch streams of
//! `{"type":"ADDED|MODIFIED|DELETED|ERROR","object":…}` lines, and
//! `410 Expired` for a watch from a compacted resourceVersion.
//!
//! Tests change the cluster through it (apply, status-only update, delete,
//! compaction, going down and up) and read its request log.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const TOKEN: &str = "stand-in-token";

#[derive(Default)]
struct Cluster {
    /// Versions served, e.g. ["v1", "v1alpha1"].
    versions: Vec<&'static str>,
    rv: u64,
    /// (plural, namespace, name) → object (without apiVersion).
    objects: BTreeMap<(String, String, String), Value>,
    /// (resourceVersion, plural, type, object).
    history: Vec<(u64, String, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Expired.
    compacted_below: u64,
    /// Bumped to end every open watch stream.
    epoch: u64,
    up: bool,
    /// "GET /apis/…?…" for each request.
    requests: Vec<String>,
}

pub struct StandInApi {
    pub port: u16,
    cluster: Arc<(Mutex<Cluster>, Condvar)>,
    acceptor: Option<JoinHandle<()>>,
    /// Serve HTTPS with this certificate and key (PEM files).
    tls: Option<Arc<openssl::ssl::SslAcceptor>>,
    /// PEM of the CA that signed the server certificate (HTTPS only).
    pub ca_pem: Option<Vec<u8>>,
}

fn kind_of(plural: &str) -> &'static str {
    if plural == "clusterimagepolicies" {
        "ClusterImagePolicy"
    } else {
        "ImagePolicy"
    }
}

impl StandInApi {
    pub fn start(versions: &[&'static str]) -> StandInApi {
        Self::start_with_tls(versions, None)
    }

    /// HTTPS: `tls` is (CA PEM, server certificate PEM file, key PEM file).
    pub fn start_with_tls(
        versions: &[&'static str],
        tls: Option<(Vec<u8>, &std::path::Path, &std::path::Path)>,
    ) -> StandInApi {
        use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
        let (acceptor, ca_pem) = match tls {
            Some((ca, cert, key)) => {
                let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
                b.set_certificate_chain_file(cert).unwrap();
                b.set_private_key_file(key, SslFiletype::PEM).unwrap();
                (Some(Arc::new(b.build())), Some(ca))
            }
            None => (None, None),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cluster = Arc::new((
            Mutex::new(Cluster {
                versions: versions.to_vec(),
                rv: 100,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let mut api = StandInApi {
            port,
            cluster,
            acceptor: None,
            tls: acceptor,
            ca_pem,
        };
        api.serve(listener);
        api
    }

    fn serve(&mut self, listener: TcpListener) {
        self.cluster.0.lock().unwrap().up = true;
        let cluster = self.cluster.clone();
        let tls = self.tls.clone();
        self.acceptor = Some(std::thread::spawn(move || {
            for conn in listener.incoming() {
                if !cluster.0.lock().unwrap().up {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let cluster = cluster.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    // A failed handshake (e.g. the client refused our
                    // certificate) just ends the connection.
                    Some(acc) => {
                        if let Ok(s) = acc.accept(conn) {
                            handle(s, &cluster)
                        }
                    }
                    None => handle(conn, &cluster),
                });
            }
        }));
    }

    /// The server goes away: the listener is closed (connections refused)
    /// and every open watch stream ends.
    pub fn stop(&mut self) {
        {
            let mut c = self.cluster.0.lock().unwrap();
            c.up = false;
            c.epoch += 1;
        }
        self.cluster.1.notify_all();
        // Wake the acceptor so it sees `up == false` and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.acceptor.take() {
            h.join().unwrap();
        }
    }

    /// The server comes back on the same port, with the same cluster.
    pub fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.serve(listener);
    }

    pub fn kubeconfig(&self) -> String {
        let cluster = match &self.ca_pem {
            Some(ca) => {
                use base64::Engine;
                format!(
                    "server: https://127.0.0.1:{}\n    certificate-authority-data: {}",
                    self.port,
                    base64::engine::general_purpose::STANDARD.encode(ca)
                )
            }
            None => format!("server: http://127.0.0.1:{}", self.port),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    {cluster}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: agent\ncurrent-context: stand-in\nusers:\n- name: agent\n  user:\n    token: {TOKEN}\n"
        )
    }

    fn record(
        &self,
        plural: &str,
        ns: &str,
        name: &str,
        change: impl FnOnce(Option<&Value>) -> Option<Value>,
        silent: bool,
    ) {
        let mut c = self.cluster.0.lock().unwrap();
        c.rv += 1;
        let rv = c.rv;
        let key = (plural.to_string(), ns.to_string(), name.to_string());
        let old = c.objects.get(&key).cloned();
        let new = change(old.as_ref());
        let (ty, obj) = match (&old, new) {
            (_, Some(mut o)) => {
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                c.objects.insert(key, o.clone());
                (if old.is_some() { "MODIFIED" } else { "ADDED" }, o)
            }
            (Some(o), None) => {
                let mut o = o.clone();
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                c.objects.remove(&key);
                ("DELETED", o)
            }
            (None, None) => return,
        };
        if !silent {
            c.history.push((rv, plural.to_string(), ty, obj));
        }
        drop(c);
        self.cluster.1.notify_all();
    }

    /// Creates or replaces the spec of an object (ADDED / MODIFIED).
    pub fn apply(&self, plural: &str, ns: &str, name: &str, spec: Value) {
        self.record(
            plural,
            ns,
            name,
            |old| {
                let mut o = old.cloned().unwrap_or_else(|| {
                    let mut meta = json!({
                        "name": name,
                        "uid": format!("00000000-0000-4000-8000-{:012}", name.len()),
                        "creationTimestamp": "2026-12-03T10:00:00Z",
                        "generation": 0,
                    });
                    if !ns.is_empty() {
                        meta["namespace"] = json!(ns);
                    }
                    json!({ "kind": kind_of(plural), "metadata": meta })
                });
                o["spec"] = spec;
                let g = o["metadata"]["generation"].as_u64().unwrap_or(0);
                o["metadata"]["generation"] = json!(g + 1);
                Some(o)
            },
            false,
        );
    }

    /// Changes only `status` (a MODIFIED event with the same spec).
    pub fn set_status(&self, plural: &str, ns: &str, name: &str, status: Value) {
        self.record(
            plural,
            ns,
            name,
            |old| {
                let mut o = old.cloned()?;
                o["status"] = status;
                Some(o)
            },
            false,
        );
    }

    pub fn delete(&self, plural: &str, ns: &str, name: &str) {
        self.record(plural, ns, name, |_| None, false);
    }

    /// Deletes an object whose event is then lost to compaction: open
    /// watches end, and re-watching from any earlier resourceVersion gets
    /// 410 Expired, so only a fresh list shows the deletion.
    pub fn delete_and_compact(&self, plural: &str, ns: &str, name: &str) {
        self.record(plural, ns, name, |_| None, true);
        {
            let mut c = self.cluster.0.lock().unwrap();
            c.compacted_below = c.rv + 1;
            c.epoch += 1;
        }
        self.cluster.1.notify_all();
    }

    pub fn requests(&self) -> Vec<String> {
        self.cluster.0.lock().unwrap().requests.clone()
    }
}

impl Drop for StandInApi {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stop();
        }
    }
}

fn respond(conn: &mut impl Write, code: u16, body: &Value) {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn chunk(conn: &mut impl Write, line: &str) -> std::io::Result<()> {
    let data = format!("{line}\n");
    write!(conn, "{:x}\r\n{data}\r\n", data.len())?;
    conn.flush()
}

fn handle(mut conn: impl Read + Write, cluster: &Arc<(Mutex<Cluster>, Condvar)>) {
    // GET requests have no body: the reader may buffer only the head.
    let mut reader = BufReader::new(&mut conn);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut auth = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_string();
            }
        }
    }
    drop(reader);
    let target = first.split_whitespace().nth(1).unwrap_or("").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    {
        let mut c = cluster.0.lock().unwrap();
        if !c.up {
            return;
        }
        c.requests.push(format!("GET {target}"));
    }
    if auth != format!("Bearer {TOKEN}") {
        return respond(
            &mut conn,
            401,
            &status_body(401, "Unauthorized", "Unauthorized"),
        );
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let served = |v: &str| cluster.0.lock().unwrap().versions.contains(&v);
    match parts.as_slice() {
        ["apis", "config.openshift.io", v] if served(v) => respond(
            &mut conn,
            200,
            &json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": format!("config.openshift.io/{v}"),
                "resources": [
                    {"name": "clusterimagepolicies", "singularName": "clusterimagepolicy", "namespaced": false, "kind": "ClusterImagePolicy", "verbs": ["get","list","watch"]},
                    {"name": "clusterimagepolicies/status", "singularName": "", "namespaced": false, "kind": "ClusterImagePolicy", "verbs": ["get","patch","update"]},
                    {"name": "imagepolicies", "singularName": "imagepolicy", "namespaced": true, "kind": "ImagePolicy", "verbs": ["get","list","watch"]},
                    {"name": "imagepolicies/status", "singularName": "", "namespaced": true, "kind": "ImagePolicy", "verbs": ["get","patch","update"]}
                ]
            }),
        ),
        ["apis", "config.openshift.io", v, plural @ ("clusterimagepolicies" | "imagepolicies")]
            if served(v) =>
        {
            let api_version = format!("config.openshift.io/{v}");
            let with_av = |mut o: Value| {
                o["apiVersion"] = json!(api_version);
                o
            };
            if params.get("watch") == Some(&"true") {
                let from: u64 = params
                    .get("resourceVersion")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                );
                let mut c = cluster.0.lock().unwrap();
                if from < c.compacted_below {
                    let e = json!({"type": "ERROR", "object": status_body(410, "Expired",
                        &format!("too old resource version: {from} ({})", c.compacted_below))});
                    drop(c);
                    let _ = chunk(&mut conn, &e.to_string());
                    let _ = write!(conn, "0\r\n\r\n");
                    return;
                }
                let epoch = c.epoch;
                let mut sent = from;
                loop {
                    if !c.up {
                        // A dying server: closed without the final chunk.
                        return;
                    }
                    if c.epoch != epoch {
                        // Ended by the server (compaction): a clean end, so
                        // the client watches again from where it was.
                        drop(c);
                        let _ = write!(conn, "0\r\n\r\n");
                        return;
                    }
                    let new: Vec<(u64, &'static str, Value)> = c
                        .history
                        .iter()
                        .filter(|(rv, p, _, _)| *rv > sent && p == plural)
                        .map(|(rv, _, t, o)| (*rv, *t, o.clone()))
                        .collect();
                    if !new.is_empty() {
                        drop(c);
                        for (rv, t, o) in new {
                            let line = json!({"type": t, "object": with_av(o)}).to_string();
                            if chunk(&mut conn, &line).is_err() {
                                return;
                            }
                            sent = rv;
                        }
                        c = cluster.0.lock().unwrap();
                        continue;
                    }
                    c = cluster
                        .1
                        .wait_timeout(c, Duration::from_millis(200))
                        .unwrap()
                        .0;
                }
            }
            let c = cluster.0.lock().unwrap();
            let items: Vec<Value> = c
                .objects
                .iter()
                .filter(|((p, _, _), _)| p == plural)
                .map(|(_, o)| with_av(o.clone()))
                .collect();
            let body = json!({
                "apiVersion": api_version,
                "kind": format!("{}List", kind_of(plural)),
                "metadata": {"resourceVersion": c.rv.to_string()},
                "items": items,
            });
            drop(c);
            respond(&mut conn, 200, &body)
        }
        _ => respond(
            &mut conn,
            404,
            &status_body(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
    }
}
