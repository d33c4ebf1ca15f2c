//! Which container and pod a cgroup belongs to, from its path alone: the layouts the
//! kubelet (systemd and cgroupfs drivers), containerd, CRI-O, Docker and Podman make,
//! on cgroup v2 and on each v1 hierarchy. Names (container, pod, namespace) come from
//! the runtime's API where it answers (names.rs), else the row has ids only and says why.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub mod names;

/// A container identified from a cgroup path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// containerd, cri-o, docker, podman, or "unknown" (cgroupfs driver: the path does
    /// not say).
    pub runtime: Cow<'static, str>,
    /// The container id (hex), as the runtime prints it.
    pub id: String,
    /// The pod's UID (with dashes, as `kubectl get pod -o jsonpath={.metadata.uid}`
    /// prints it), for a Kubernetes pod's container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// guaranteed, burstable or besteffort, for a pod's container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<Cow<'static, str>>,
    /// `name`, `pod` and `namespace`, those the runtime gave.
    #[serde(flatten)]
    pub names: names::Names,
    /// Where the names came from, or why there are none ("ids only: ...").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub names_from: String,
}

impl Container {
    /// `runtime://id` shortened to 12 hex digits, with the pod when there is one: for
    /// text tables.
    pub fn short(&self) -> String {
        let id = &self.id[..self.id.len().min(12)];
        let mut s = format!("{}://{id}", self.runtime);
        if let Some(n) = &self.names.name {
            s += &format!(" {n}");
        }
        match (&self.names.namespace, &self.names.pod, &self.pod_uid) {
            (Some(ns), Some(pod), _) => s += &format!(" pod {ns}/{pod}"),
            (_, Some(pod), _) => s += &format!(" pod {pod}"),
            (_, None, Some(uid)) => s += &format!(" pod {uid}"),
            _ => {}
        }
        s
    }

    /// With the names its runtime gives (asked once per id, see names.rs).
    pub fn named(mut self) -> Self {
        let (n, from) = names::of(&self.runtime, &self.id);
        self.names = n.unwrap_or_default();
        self.names_from = from;
        self
    }
}

/// A process's cgroup as a report row carries it: the path, and the container it
/// belongs to (a `container` object beside `cgroup` in JSON, only when there is one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InCgroup {
    pub cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

impl InCgroup {
    /// For the text table: the path, and the container in brackets when there is one.
    pub fn text(&self) -> String {
        label(&self.cgroup, self.container.as_ref())
    }
}

/// A cgroup path for a text table, with its container in brackets when it has one.
pub fn label(path: &str, container: Option<&Container>) -> String {
    match container {
        Some(c) => format!("{path} [{}]", c.short()),
        None => path.to_string(),
    }
}

impl From<String> for InCgroup {
    fn from(cgroup: String) -> Self {
        let container = of_cgroup(&cgroup).map(Container::named);
        InCgroup { cgroup, container }
    }
}

impl From<&str> for InCgroup {
    fn from(cgroup: &str) -> Self {
        cgroup.to_string().into()
    }
}

/// The container of the cgroup at `path` (as /proc/PID/cgroup or a cgroup event gives
/// it, relative to its hierarchy's root), or None for a cgroup that is no container's:
/// a system service, a user session, a pod's own slice.
pub fn of_cgroup(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut pod_uid = None;
    let mut qos = None;
    let mut in_pods = false;
    for (i, part) in parts.iter().enumerate() {
        // systemd driver: kubepods.slice / kubepods-<qos>.slice / kubepods-<qos>-pod<uid>.slice
        if let Some(rest) = part.strip_suffix(".slice") {
            if rest == "kubepods" {
                in_pods = true;
                qos = Some("guaranteed");
            } else if let Some(rest) = rest.strip_prefix("kubepods-") {
                in_pods = true;
                let (q, pod) = match rest.split_once("-pod") {
                    Some((q, uid)) => (Some(q), Some(uid)),
                    None if rest.starts_with("pod") => (None, Some(&rest[3..])),
                    None => (Some(rest), None),
                };
                if let Some(q) = q.and_then(qos_class) {
                    qos = Some(q);
                }
                if let Some(uid) = pod {
                    // systemd unit names cannot hold dashes there: the kubelet writes
                    // the UID's dashes as underscores.
                    pod_uid = Some(uid.replace('_', "-"));
                }
            }
            continue;
        }
        // Scopes: <runtime>-<id>.scope (systemd driver, Docker, Podman, CRI-O).
        if let Some(rest) = part.strip_suffix(".scope") {
            for (prefix, runtime) in SCOPES {
                if let Some(id) = rest.strip_prefix(prefix)
                    && is_id(id)
                {
                    return Some(Container {
                        runtime: Cow::Borrowed(runtime),
                        id: id.to_string(),
                        pod_uid: pod_uid.clone(),
                        qos: qos.filter(|_| in_pods).map(Cow::Borrowed),
                        ..Container::default()
                    });
                }
            }
            continue;
        }
        // cgroupfs driver: kubepods / [<qos>] / pod<uid> / <id>
        if *part == "kubepods" {
            in_pods = true;
            qos = Some("guaranteed");
            continue;
        }
        if in_pods {
            if let Some(q) = qos_class(part) {
                qos = Some(q);
                continue;
            }
            if let Some(uid) = part.strip_prefix("pod") {
                pod_uid = Some(uid.to_string());
                continue;
            }
            if pod_uid.is_some() && is_id(part) {
                return Some(Container {
                    runtime: "unknown".into(),
                    id: part.to_string(),
                    pod_uid,
                    qos: qos.map(Cow::Borrowed),
                    ..Container::default()
                });
            }
        }
        // Docker's cgroupfs driver: /docker/<id>
        if *part == "docker"
            && let Some(id) = parts.get(i + 1)
            && is_id(id)
        {
            return Some(Container {
                runtime: "docker".into(),
                id: id.to_string(),
                pod_uid: None,
                qos: None,
                ..Container::default()
            });
        }
    }
    None
}

/// Scope name prefixes and the runtime that makes them. CRI-O's `crio-conmon-<id>`
/// is its monitor process, not the container, and does not match (not hex).
const SCOPES: &[(&str, &str)] = &[
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
];

fn qos_class(s: &str) -> Option<&'static str> {
    match s {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        _ => None,
    }
}

/// A container id: at least 12 hex digits (runtimes use 64).
fn is_id(s: &str) -> bool {
    s.len() >= 12 && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2a9c0d1e7b83a5c6d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5";
    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

    fn c(runtime: &'static str, pod: Option<&str>, qos: Option<&'static str>) -> Container {
        Container {
            runtime: runtime.into(),
            id: ID.into(),
            pod_uid: pod.map(str::to_string),
            qos: qos.map(Cow::Borrowed),
            ..Container::default()
        }
    }

    #[test]
    fn kubelet_systemd_driver_paths() {
        let u = UID.replace('-', "_");
        assert_eq!(
            of_cgroup(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
            )),
            Some(c("containerd", Some(UID), Some("burstable")))
        );
        assert_eq!(
            of_cgroup(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
            )),
            Some(c("cri-o", Some(UID), Some("besteffort")))
        );
        // Guaranteed pods sit right under kubepods.slice.
        assert_eq!(
            of_cgroup(&format!(
                "/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"
            )),
            Some(c("containerd", Some(UID), Some("guaranteed")))
        );
        // A pod's own slice and CRI-O's monitor are not containers.
        assert_eq!(
            of_cgroup(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"
            )),
            None
        );
        assert_eq!(
            of_cgroup(&format!(
                "/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope"
            )),
            None
        );
    }

    #[test]
    fn kubelet_cgroupfs_driver_paths() {
        assert_eq!(
            of_cgroup(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
            Some(c("unknown", Some(UID), Some("besteffort")))
        );
        assert_eq!(
            of_cgroup(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            Some(c("unknown", Some(UID), Some("burstable")))
        );
        assert_eq!(
            of_cgroup(&format!("/kubepods/pod{UID}/{ID}")),
            Some(c("unknown", Some(UID), Some("guaranteed")))
        );
        assert_eq!(of_cgroup(&format!("/kubepods/pod{UID}")), None);
    }

    #[test]
    fn docker_and_podman_without_kubernetes() {
        assert_eq!(
            of_cgroup(&format!("/system.slice/docker-{ID}.scope")),
            Some(c("docker", None, None))
        );
        assert_eq!(
            of_cgroup(&format!("/docker/{ID}")),
            Some(c("docker", None, None))
        );
        assert_eq!(
            of_cgroup(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            Some(c("podman", None, None))
        );
    }

    #[test]
    fn host_cgroups_are_no_containers() {
        for p in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/docker.service",
            "/docker",
            "/tracer-test-1234/a",
        ] {
            assert_eq!(of_cgroup(p), None, "{p}");
        }
    }

    #[test]
    fn short_names_the_runtime_id_and_pod() {
        assert_eq!(
            c("containerd", Some(UID), Some("burstable")).short(),
            format!("containerd://4f2a9c0d1e7b pod {UID}")
        );
        assert_eq!(c("docker", None, None).short(), "docker://4f2a9c0d1e7b");
    }
}
