//! Whose a directory is, from its path: a container's writable overlay layer (the
//! upperdir of a mounted overlay), a pod's volume under the kubelet's
//! `pods/<uid>/volumes/<plugin>/<volume>` (emptyDir, configmap and secret `..data`
//! trees), or a pod's logs under `/var/log/pods/<namespace>_<pod>_<uid>`.
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::container::Container;

/// Who a directory belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    /// Inside the upperdir (writable layer) of a mounted overlay.
    Overlay {
        upperdir: PathBuf,
        /// Where the overlay is mounted (the container's root).
        merged: PathBuf,
        /// The container whose root it is, when the mount point says (containerd's
        /// `<id>/rootfs`, Docker's layer database); None: an overlay of no known runtime.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<Container>,
    },
    /// A pod's volume: `pods/<uid>/volumes/<plugin>/<volume>` under the kubelet's root.
    PodVolume {
        pod_uid: String,
        /// From the pod's log directory (`/var/log/pods/<namespace>_<pod>_<uid>`), when
        /// there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<String>,
        /// e.g. kubernetes.io~empty-dir, kubernetes.io~configmap, kubernetes.io~secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plugin: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        volume: Option<String>,
    },
    /// A pod's container logs.
    PodLogs {
        namespace: String,
        pod: String,
        pod_uid: String,
    },
}

impl Owner {
    /// For the text table.
    pub fn text(&self) -> String {
        match self {
            Owner::Overlay {
                container: Some(c), ..
            } => format!("container {}", c.short()),
            Owner::Overlay { merged, .. } => format!("overlay {}", merged.display()),
            Owner::PodVolume {
                pod_uid,
                namespace,
                pod,
                volume,
                ..
            } => {
                let who = match (namespace, pod) {
                    (Some(ns), Some(p)) => format!("pod {ns}/{p}"),
                    _ => format!("pod {pod_uid}"),
                };
                match volume {
                    Some(v) => format!("{who} volume {v}"),
                    None => who,
                }
            }
            Owner::PodLogs { namespace, pod, .. } => format!("pod {namespace}/{pod} logs"),
        }
    }
}

/// A mounted overlay: its mount point and upperdir.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlay {
    pub merged: PathBuf,
    pub upperdir: PathBuf,
}

/// The overlays mounted now (from /proc/self/mountinfo's super options).
pub fn overlays() -> Vec<Overlay> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(overlay_of_line).collect()
}

/// An overlay from a mountinfo line: `... mountpoint ... - overlay src opts`.
fn overlay_of_line(line: &str) -> Option<Overlay> {
    let (left, right) = line.split_once(" - ")?;
    let mut r = right.split(' ');
    if r.next()? != "overlay" {
        return None;
    }
    let opts = r.nth(1)?;
    let upper = opts.split(',').find_map(|o| o.strip_prefix("upperdir="))?;
    let merged = left.split(' ').nth(4)?;
    Some(Overlay {
        merged: unescape(merged).into(),
        upperdir: unescape(upper).into(),
    })
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who `path` belongs to, if its path says.
pub fn of(path: &Path, overlays: &[Overlay]) -> Option<Owner> {
    if let Some(o) = overlays.iter().find(|o| path.starts_with(&o.upperdir)) {
        return Some(Owner::Overlay {
            upperdir: o.upperdir.clone(),
            merged: o.merged.clone(),
            container: container_of_mount(&o.merged),
        });
    }
    let c: Vec<&str> = (path.components())
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    for i in 0..c.len() {
        if c[i] != "pods" {
            continue;
        }
        if i >= 1 && c[i - 1] == "log" {
            if let Some(o) = pod_logs(c.get(i + 1)?) {
                return Some(o);
            }
        }
        if c.get(i + 2) == Some(&"volumes") && looks_like_uid(c[i + 1]) {
            let uid = c[i + 1].to_string();
            // The pod's logs beside the kubelet's root: <prefix>/var/log/pods.
            let logs = match c[..i].ends_with(&["var", "lib", "kubelet"]) {
                true => Path::new("/")
                    .join(c[..i - 3].join("/"))
                    .join("var/log/pods"),
                false => PathBuf::from("/var/log/pods"),
            };
            let named = pod_of_uid(&logs, &uid);
            return Some(Owner::PodVolume {
                namespace: named.as_ref().map(|n| n.0.clone()),
                pod: named.map(|n| n.1),
                pod_uid: uid,
                plugin: c.get(i + 3).map(|s| s.to_string()),
                volume: c.get(i + 4).map(|s| s.to_string()),
            });
        }
    }
    None
}

/// `<namespace>_<pod>_<uid>` (neither a namespace nor a pod name holds `_`).
fn pod_logs(dir: &str) -> Option<Owner> {
    let mut parts = dir.splitn(3, '_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    looks_like_uid(uid).then(|| Owner::PodLogs {
        namespace: ns.into(),
        pod: pod.into(),
        pod_uid: uid.into(),
    })
}

/// A pod UID: 36 characters, hex digits and 4 dashes.
fn looks_like_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().filter(|b| *b == b'-').count() == 4
        && s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
}

/// (namespace, pod) of the pod with this UID, from its log directory's name.
fn pod_of_uid(logs: &Path, uid: &str) -> Option<(String, String)> {
    let suffix = format!("_{uid}");
    std::fs::read_dir(logs)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.ends_with(&suffix))
        .and_then(|n| match pod_logs(&n)? {
            Owner::PodLogs { namespace, pod, .. } => Some((namespace, pod)),
            _ => None,
        })
}

/// The container whose root an overlay is mounted on: containerd's and CRI shims'
/// `.../<id>/rootfs`, or Docker's `overlay2/<layer>/merged` looked up in its layer
/// database (`image/overlay2/layerdb/mounts/<id>/mount-id` holds the layer).
fn container_of_mount(merged: &Path) -> Option<Container> {
    let name = |p: &Path| p.file_name()?.to_str().map(str::to_string);
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (runtime, id) = if merged.ends_with("rootfs") {
        let id = name(merged.parent()?)?;
        let rt = if merged.to_string_lossy().contains("containerd") {
            "containerd"
        } else {
            "unknown"
        };
        (rt, id)
    } else if merged.ends_with("merged") {
        let layer = name(merged.parent()?)?;
        let root = merged.parent()?.parent()?.parent()?; // /var/lib/docker
        let mounts = root.join("image/overlay2/layerdb/mounts");
        let id = std::fs::read_dir(mounts).ok()?.find_map(|e| {
            let e = e.ok()?;
            let l = std::fs::read_to_string(e.path().join("mount-id")).ok()?;
            (l.trim() == layer).then(|| e.file_name().into_string().ok())?
        })?;
        ("docker", id)
    } else {
        return None;
    };
    is_id(&id).then(|| {
        Container {
            runtime: runtime.into(),
            id,
            ..Default::default()
        }
        .named()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6";

    #[test]
    fn kubelet_paths_name_their_pod() {
        let p = format!("/var/log/pods/shop_cart-7d9f_{UID}/app");
        assert_eq!(
            of(Path::new(&p), &[]),
            Some(Owner::PodLogs {
                namespace: "shop".into(),
                pod: "cart-7d9f".into(),
                pod_uid: UID.into()
            })
        );
        let dir = std::env::temp_dir().join(format!("census-owner-{}", std::process::id()));
        let logs = dir.join(format!("var/log/pods/shop_cart-7d9f_{UID}"));
        std::fs::create_dir_all(&logs).unwrap();
        let v = dir.join(format!(
            "var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/cache/a"
        ));
        let o = of(&v, &[]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            o,
            Some(Owner::PodVolume {
                pod_uid: UID.into(),
                namespace: Some("shop".into()),
                pod: Some("cart-7d9f".into()),
                plugin: Some("kubernetes.io~empty-dir".into()),
                volume: Some("cache".into()),
            })
        );
        assert_eq!(o.unwrap().text(), "pod shop/cart-7d9f volume cache");
        assert_eq!(of(Path::new("/data/cache/pods/x"), &[]), None);
    }

    #[test]
    fn an_upperdir_is_its_overlay() {
        let line = "612 30 0:77 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/var/lib/containerd/snapshots/41/fs,workdir=/var/lib/containerd/snapshots/41/work";
        let o = overlay_of_line(line).unwrap();
        assert_eq!(o.upperdir, Path::new("/var/lib/containerd/snapshots/41/fs"));
        let got = of(Path::new("/var/lib/containerd/snapshots/41/fs/tmp"), &[o]);
        // "abc" is not a container id: the overlay without a container.
        assert!(
            matches!(
                got,
                Some(Owner::Overlay {
                    container: None,
                    ..
                })
            ),
            "{got:?}"
        );
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
