//! Names for a container id, from the runtime: the Docker Engine API (Docker, and
//! Podman's Docker-compatible service) and CRI-O's inspect endpoint, both HTTP on the
//! runtime's Unix socket, where the kubelet's labels on the container give the pod's
//! name and namespace and the container's name in the pod; for containerd, whose API
//! is gRPC, the OCI bundle its shim runs the container from
//! (`/run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json`),
//! where its CRI plugin writes the same names as annotations.
//!
//! Each id is asked once (answers, "not found" included, are cached, up to
//! [`CACHE_CAPACITY`]), with a short timeout, from the threads that build reports.
use std::{
    collections::{BTreeMap, HashMap},
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// A container's names, as its runtime gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    /// The container's name (in its pod, for a pod's container).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Where a container's names came from, or why it has its ids only (`names_from` in
/// a row's `container`).
pub type Source = String;

/// Ids remembered with their answer; the cache is emptied when full (a host rarely
/// runs more containers than this at once).
const CACHE_CAPACITY: usize = 4096;
/// A runtime that does not answer within this long is not waited for.
const TIMEOUT: Duration = Duration::from_millis(300);
/// Responses larger than this are not read (an inspect answer is a few KiB).
const MAX_RESPONSE: u64 = 4 << 20;

/// The sockets each API is looked for at, first found first asked. Tests point
/// them elsewhere with `TRACER_DOCKER_SOCKET` and `TRACER_CRIO_SOCKET`.
fn docker_sockets() -> Vec<PathBuf> {
    match std::env::var_os("TRACER_DOCKER_SOCKET") {
        Some(p) => vec![p.into()],
        None => [
            "/run/docker.sock",
            "/var/run/docker.sock",
            "/run/podman/podman.sock",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    }
}

/// containerd's task state: one directory per containerd namespace (`k8s.io` for the
/// kubelet's), one bundle per running container. `TRACER_CONTAINERD_TASKS` in tests.
fn containerd_tasks() -> PathBuf {
    std::env::var_os("TRACER_CONTAINERD_TASKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/containerd/io.containerd.runtime.v2.task"))
}

/// The names containerd's CRI plugin put in the OCI bundle of container `id`.
fn from_bundle(id: &str) -> (Option<Names>, Source) {
    let root = containerd_tasks();
    let namespaces = match std::fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) => return (None, format!("ids only: {}: {e}", root.display())),
    };
    for ns in namespaces.flatten() {
        let config = ns.path().join(id).join("config.json");
        let Ok(text) = std::fs::read(&config) else {
            continue;
        };
        let v: Bundle = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) => return (None, format!("ids only: {}: {e}", config.display())),
        };
        let get = |k: &str| v.annotations.get(k).cloned();
        let names = Names {
            name: get("io.kubernetes.cri.container-name"),
            pod: get("io.kubernetes.cri.sandbox-name"),
            namespace: get("io.kubernetes.cri.sandbox-namespace"),
        };
        if names == Names::default() {
            return (
                None,
                format!("ids only: {} has no CRI annotations", config.display()),
            );
        }
        return (
            Some(names),
            format!("containerd bundle {}", config.display()),
        );
    }
    (
        None,
        format!("ids only: no bundle of it under {}", root.display()),
    )
}

fn crio_sockets() -> Vec<PathBuf> {
    match std::env::var_os("TRACER_CRIO_SOCKET") {
        Some(p) => vec![p.into()],
        None => vec![PathBuf::from("/run/crio/crio.sock")],
    }
}

type Cache = HashMap<(String, String), (Option<Names>, Source)>;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The names of container `id` of `runtime` (container.rs's runtime word), and where
/// they came from or why there are none.
pub fn of(runtime: &str, id: &str) -> (Option<Names>, Source) {
    let key = (runtime.to_string(), id.to_string());
    if let Some(hit) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return hit.clone();
    }
    let answer = ask(runtime, id);
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= CACHE_CAPACITY {
        c.clear();
    }
    c.insert(key, answer.clone());
    answer
}

fn ask(runtime: &str, id: &str) -> (Option<Names>, Source) {
    let docker = || first_socket(docker_sockets());
    let crio = || first_socket(crio_sockets());
    // The cgroupfs driver's path does not say the runtime: ask what is there.
    let apis: Vec<(Api, Option<PathBuf>)> = match runtime {
        "docker" | "podman" => vec![(Api::Docker, docker())],
        "cri-o" => vec![(Api::Crio, crio())],
        "unknown" => vec![(Api::Crio, crio()), (Api::Docker, docker())],
        "containerd" => return from_bundle(id),
        _ => return (None, format!("ids only: no API is known for {runtime}")),
    };
    let mut why = Vec::new();
    for (api, socket) in apis {
        let Some(socket) = socket else {
            why.push(format!("no {} socket", api.name()));
            continue;
        };
        match get(&socket, &api.path(id)) {
            Ok((200, body)) => match api.names(&body) {
                Ok(names) => {
                    return (
                        Some(names),
                        format!("{} API at {}", api.name(), socket.display()),
                    );
                }
                Err(e) => why.push(format!("{} answered no JSON: {e}", socket.display())),
            },
            Ok((status, _)) => why.push(format!(
                "{} does not know it (HTTP {status})",
                socket.display()
            )),
            Err(e) => why.push(format!("{}: {e}", socket.display())),
        }
    }
    (None, format!("ids only: {}", why.join("; ")))
}

fn first_socket(candidates: Vec<PathBuf>) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt as _;
    candidates.into_iter().find(|p| {
        std::fs::metadata(p)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false)
    })
}

#[derive(Clone, Copy)]
enum Api {
    /// Docker Engine API (Podman serves the same): GET /containers/{id}/json.
    Docker,
    /// CRI-O's inspect endpoint: GET /containers/{id}.
    Crio,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Docker => "Docker",
            Api::Crio => "CRI-O",
        }
    }

    fn path(self, id: &str) -> String {
        match self {
            Api::Docker => format!("/containers/{id}/json"),
            Api::Crio => format!("/containers/{id}"),
        }
    }

    /// The names in an inspect answer: the kubelet's labels for a pod's container,
    /// else the runtime's own container name.
    fn names(self, body: &[u8]) -> serde_json::Result<Names> {
        let (labels, own) = match self {
            Api::Docker => {
                let v: DockerInspect = serde_json::from_slice(body)?;
                (v.config.labels, v.name)
            }
            Api::Crio => {
                let v: CrioInspect = serde_json::from_slice(body)?;
                (v.labels, v.name)
            }
        };
        let label = |k: &str| labels.as_ref().and_then(|l| l.get(k)).cloned();
        Ok(Names {
            name: label("io.kubernetes.container.name")
                .or_else(|| own.map(|n| n.trim_start_matches('/').to_string())),
            pod: label("io.kubernetes.pod.name"),
            namespace: label("io.kubernetes.pod.namespace"),
        })
    }
}

/// What an OCI bundle's config.json says that matters here.
#[derive(Deserialize)]
struct Bundle {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The parts of the Docker Engine API's `GET /containers/{id}/json` answer used here.
#[derive(Deserialize)]
struct DockerInspect {
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Config", default)]
    config: DockerConfig,
}

#[derive(Default, Deserialize)]
struct DockerConfig {
    /// null when the container has none.
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

/// The parts of CRI-O's `GET /containers/{id}` answer used here.
#[derive(Deserialize)]
struct CrioInspect {
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

/// One HTTP/1.0 GET over a Unix socket: the status and the body (HTTP/1.0 asks the
/// server to close after the body, so no chunked encoding to undo).
fn get(socket: &Path, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad())?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, raw[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_kubelets_labels_else_the_runtimes_own_name() {
        let docker = serde_json::json!({
            "Name": "/k8s_web_web-7d4_shop_uid_0",
            "Config": {"Labels": {
                "io.kubernetes.container.name": "web",
                "io.kubernetes.pod.name": "web-7d4",
                "io.kubernetes.pod.namespace": "shop",
            }},
        });
        assert_eq!(
            Api::Docker.names(docker.to_string().as_bytes()).unwrap(),
            Names {
                name: Some("web".into()),
                pod: Some("web-7d4".into()),
                namespace: Some("shop".into()),
            }
        );
        let plain = serde_json::json!({"Name": "/redis", "Config": {"Labels": {}}});
        assert_eq!(
            Api::Docker.names(plain.to_string().as_bytes()).unwrap(),
            Names {
                name: Some("redis".into()),
                ..Names::default()
            }
        );
        let crio = serde_json::json!({"name": "k8s_db_db-0_data_uid_0", "labels": {
            "io.kubernetes.container.name": "db",
            "io.kubernetes.pod.name": "db-0",
            "io.kubernetes.pod.namespace": "data",
        }});
        assert_eq!(
            Api::Crio
                .names(crio.to_string().as_bytes())
                .unwrap()
                .pod
                .as_deref(),
            Some("db-0")
        );
        // Labels null (a container without any) is no label, not an error.
        let none = br#"{"Name": "/x", "Config": {"Labels": null}}"#;
        assert_eq!(Api::Docker.names(none).unwrap().name.as_deref(), Some("x"));
    }

    #[test]
    fn a_container_no_runtime_knows_keeps_its_ids_and_says_why() {
        let (names, from) = of("containerd", "0123456789ab");
        assert_eq!(names, None);
        assert!(from.starts_with("ids only: "), "{from}");
    }
}
