//! Container and pod attribution from cgroup paths, for real: the test makes the cgroup
//! trees the kubelet (systemd and cgroupfs drivers) and Docker make, puts a real parent
//! that leaves zombies in each, and checks the report names the runtime, container id,
//! pod UID and QoS class of each parent, and the names the runtime gives: a Docker API
//! socket (a stand-in server the test runs) and containerd's OCI bundle (a task
//! directory the test writes): no container runtime runs on the test machines.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tracer::zombies::{ZombiesReport, rows::ParentRow};
use tracer_tests::{CgroupLayout, Incident, Tracer, http::sample, require_root, serial};

const ID_A: &str = "4f2a9c0d1e7b83a5c6d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5";
const ID_B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ID_C: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const UID_A: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const UID_B: &str = "6fa459ea-ee8a-3ca4-894e-db77e160355e";

/// A cgroup tree the test made; its directories are removed deepest first on drop,
/// after the processes in them are gone.
struct Tree(Vec<PathBuf>);

impl Tree {
    /// Makes every directory of `rel` under `root`, returning the deepest.
    fn make(&mut self, root: &std::path::Path, rel: &str) -> PathBuf {
        let mut p = root.to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            p = p.join(part);
            if !p.exists() {
                fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                self.0.push(p.clone());
            }
        }
        p
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            for _ in 0..50 {
                if fs::remove_dir(p).is_ok() || !p.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A Unix socket answering the Docker Engine API's inspect call
/// (`GET /containers/{id}/json`) for the containers in `known`, 404 for others; it
/// records the paths asked. Stopped and its socket removed on drop.
struct FakeDocker {
    path: PathBuf,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeDocker {
    fn start(path: PathBuf, known: Vec<(String, serde_json::Value)>) -> FakeDocker {
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st) = (asked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                // The rest of the request head.
                let mut h = String::new();
                while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                a.lock().unwrap().push(path.clone());
                let body = known
                    .iter()
                    .find(|(id, _)| path == format!("/containers/{id}/json"))
                    .map(|(_, v)| v.to_string());
                let (status, body) = match body {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", r#"{"message":"No such container"}"#.into()),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.0 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeDocker {
            path,
            asked,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = UnixStream::connect(&self.path); // wakes the accept
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// A directory the test made, removed with its contents on drop.
struct RmDir(PathBuf);

impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A file the test made, removed on drop.
struct RmFile(PathBuf);

impl Drop for RmFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn parent(r: &ZombiesReport, pid: u32) -> Option<&ParentRow> {
    r.parents.iter().find(|p| p.pid == pid)
}

#[test]
fn parents_in_container_cgroups_are_named_by_runtime_container_and_pod() {
    require_root();
    let _s = serial();
    let root = CgroupLayout::read().unified().to_path_buf();
    let me = std::process::id();
    let mut tree = Tree(Vec::new());
    let u = UID_A.replace('-', "_");
    let layouts = [
        // kubelet, systemd driver, containerd, burstable pod.
        format!(
            "tracer-ctr-{me}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID_A}.scope"
        ),
        // kubelet, cgroupfs driver, best-effort pod.
        format!("tracer-ctr-{me}/kubepods/besteffort/pod{UID_B}/{ID_B}"),
        // Docker without Kubernetes, systemd driver.
        format!("tracer-ctr-{me}/system.slice/docker-{ID_C}.scope"),
    ];
    let dirs: Vec<PathBuf> = layouts.iter().map(|l| tree.make(&root, l)).collect();
    let prom = std::env::temp_dir().join(format!("tracer-ctr-{me}.prom"));
    let _rm = RmFile(prom.clone());
    // The Docker API knows B (a pod's container, with the kubelet's labels) and C.
    let docker = FakeDocker::start(
        std::env::temp_dir().join(format!("tracer-ctr-{me}.sock")),
        vec![
            (
                ID_B.to_string(),
                serde_json::json!({"Name": "/k8s_db_db-0_data_x_0", "Config": {"Labels": {
                    "io.kubernetes.container.name": "db",
                    "io.kubernetes.pod.name": "db-0",
                    "io.kubernetes.pod.namespace": "data",
                }}}),
            ),
            (
                ID_C.to_string(),
                serde_json::json!({"Name": "/web-1", "Config": {"Labels": {}}}),
            ),
        ],
    );
    let sock = docker.path.to_str().unwrap().to_string();
    // containerd's task state, with the bundle of A as its CRI plugin writes it.
    let tasks = std::env::temp_dir().join(format!("tracer-ctr-{me}-tasks"));
    let _rm_tasks = RmDir(tasks.clone());
    let bundle = tasks.join("k8s.io").join(ID_A);
    fs::create_dir_all(&bundle).unwrap();
    let config = bundle.join("config.json");
    fs::write(
        &config,
        serde_json::json!({"ociVersion": "1.1.0", "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "api",
            "io.kubernetes.cri.sandbox-name": "api-5f",
            "io.kubernetes.cri.sandbox-namespace": "prod",
        }})
        .to_string(),
    )
    .unwrap();
    let tracer = Tracer::start_env(
        &[
            "zombies",
            "--parent",
            "--json",
            "-i",
            "300ms",
            "--prom-file",
            prom.to_str().unwrap(),
        ],
        &[
            ("TRACER_DOCKER_SOCKET", &sock),
            ("TRACER_CRIO_SOCKET", "/nonexistent/crio.sock"),
            ("TRACER_CONTAINERD_TASKS", tasks.to_str().unwrap()),
        ],
    );
    let incs: Vec<Incident> = dirs
        .iter()
        .map(|d| {
            let inc = Incident::start(&["zombies", "2"]);
            fs::write(d.join("cgroup.procs"), inc.pid.to_string())
                .unwrap_or_else(|e| panic!("moving {} into {}: {e}", inc.pid, d.display()));
            inc
        })
        .collect();
    let mut tracer = tracer;
    let r = tracer.report_as_where::<ZombiesReport>(Duration::from_secs(60), |r| {
        incs.iter().all(|i| {
            parent(r, i.pid)
                .is_some_and(|p| p.zombies + p.in_flight >= 2 && p.cgroup.container.is_some())
        })
    });
    let c = |i: usize| {
        serde_json::to_value(&parent(&r, incs[i].pid).unwrap().cgroup.container).unwrap()
    };
    assert_eq!(
        c(0),
        serde_json::json!({"runtime": "containerd", "id": ID_A, "pod_uid": UID_A, "qos": "burstable",
            "name": "api", "pod": "api-5f", "namespace": "prod",
            "names_from": format!("containerd bundle {}", config.display())}),
        "{r:?}"
    );
    // The cgroupfs driver does not say the runtime: CRI-O's socket is not there, the
    // Docker API knows it.
    let from = format!("Docker API at {sock}");
    assert_eq!(
        c(1),
        serde_json::json!({"runtime": "unknown", "id": ID_B, "pod_uid": UID_B, "qos": "besteffort",
            "name": "db", "pod": "db-0", "namespace": "data", "names_from": from}),
        "{r:?}"
    );
    assert_eq!(
        c(2),
        serde_json::json!({"runtime": "docker", "id": ID_C, "name": "web-1", "names_from": from}),
        "{r:?}"
    );
    // Each container was asked once however many reports named it (cached), and
    // containerd's never (its names come from the bundle).
    let asked = docker.asked.lock().unwrap().clone();
    let mut want = vec![
        format!("/containers/{ID_B}/json"),
        format!("/containers/{ID_C}/json"),
    ];
    want.sort();
    let mut got = asked.clone();
    got.sort();
    assert_eq!(got, want, "{asked:?}");
    // The metrics name the same containers on the parents' series (the file holds a
    // report at least as new as `r`, and the parents still have their zombies).
    let m = fs::read_to_string(&prom).unwrap();
    let pid = |i: usize| incs[i].pid.to_string();
    let containerd = format!("containerd://{ID_A}");
    let unknown = format!("unknown://{ID_B}");
    let docker_id = format!("docker://{ID_C}");
    for (i, labels) in [
        vec![
            ("container_id", containerd.as_str()),
            ("pod_uid", UID_A),
            ("qos", "burstable"),
            ("container", "api"),
            ("pod", "api-5f"),
            ("namespace", "prod"),
        ],
        vec![
            ("container_id", unknown.as_str()),
            ("pod_uid", UID_B),
            ("qos", "besteffort"),
            ("container", "db"),
            ("pod", "db-0"),
            ("namespace", "data"),
        ],
        vec![("container_id", docker_id.as_str()), ("container", "web-1")],
    ]
    .into_iter()
    .enumerate()
    {
        let p = pid(i);
        let mut l = vec![("pid", p.as_str())];
        l.extend(labels);
        assert!(
            sample(&m, "tracer_zombies_parent_zombies", &l).is_some(),
            "{l:?} not in\n{m}"
        );
    }
    // Docker's container is no pod's: no pod labels at all (not empty ones).
    let docker_line = m
        .lines()
        .find(|l| l.starts_with("tracer_zombies_parent_zombies{") && l.contains(&docker_id))
        .unwrap();
    assert!(
        !docker_line.contains("pod_uid") && !docker_line.contains("qos"),
        "{docker_line}"
    );
    // The cgroup path stays beside it, as before.
    let p = parent(&r, incs[0].pid).unwrap();
    assert!(
        (p.cgroup.cgroup).ends_with(&format!("cri-containerd-{ID_A}.scope")),
        "{p:?}"
    );
    drop(incs);
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
    // A parent in a host cgroup has no container.
    let r = out.final_as::<ZombiesReport>();
    for p in &r.parents {
        assert_eq!(
            p.cgroup.container.is_some(),
            p.cgroup.cgroup.contains(&format!("tracer-ctr-{me}")),
            "{p:?}"
        );
    }
}
