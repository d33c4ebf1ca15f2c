//! A private Docker daemon for container tests: Debian's docker.io with its data root,
//! exec root, socket and pidfile on a tmpfs of its own (so it never touches a system
//! docker), no network setup (--iptables=false --bridge=none) and the vfs storage
//! driver, and a busybox image imported from the host's busybox-static (no registry).
//! Dropping it removes its containers, stops the daemon and its containerd, removes the
//! cgroup directories it made and unmounts the tmpfs, also when the test failed.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Tmpfs, matrix_kernel};

/// The image every test container runs: /bin/busybox and its applets.
pub const BUSYBOX_IMAGE: &str = "tracer-busybox";

pub struct Dockerd {
    daemon: Option<Child>,
    /// Started by the test, not by dockerd: under the VMs' emulation containerd takes
    /// longer to answer than dockerd waits for the containerd it starts itself
    /// (measured on 6.1 and 6.12 under TCG: "failed to start containerd: timeout
    /// waiting for containerd to start"), so dockerd is given a containerd already up.
    containerd: Option<Child>,
    root: Tmpfs,
    /// `unix://…/docker.sock`, for `docker -H` and the tracer's TRACER_DOCKER_SOCKET.
    pub host: String,
    containers: Vec<String>,
    /// Cgroup directories named `docker` that did not exist before the daemon started.
    new_cgroup_parents: Vec<PathBuf>,
}

fn docker_cgroup_parents() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/sys/fs/cgroup/docker")];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        v.extend(rd.flatten().map(|e| e.path().join("docker")));
    }
    v.retain(|p| !p.exists());
    v
}

impl Dockerd {
    /// Starts the daemon and imports the busybox image; panics with the daemon's log
    /// when it does not answer within a minute (two under the VMs' emulation).
    pub fn start(tag: &str) -> Dockerd {
        let root = Tmpfs::new(&format!("dockerd-{tag}"), "size=256m");
        let dir = root.dir.clone();
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let absent_before = docker_cgroup_parents();
        let limit = if matrix_kernel() == "host" { 60 } else { 180 };
        let (containerd, ctr_sock) = start_containerd(&dir, limit);
        let daemon = Command::new("dockerd")
            .args(["--containerd", &ctr_sock])
            .args(["--data-root", &path(&dir, "data")])
            .args(["--exec-root", &path(&dir, "exec")])
            .args(["--pidfile", &path(&dir, "dockerd.pid")])
            .args(["-H", &host])
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--storage-driver=vfs", "--userland-proxy=false"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting dockerd (cargo xtask setup installs docker.io): {e}")
            });
        let mut d = Dockerd {
            daemon: Some(daemon),
            containerd: Some(containerd),
            root,
            host,
            containers: Vec::new(),
            new_cgroup_parents: absent_before,
        };
        let deadline = Instant::now() + Duration::from_secs(limit);
        while !d.docker_ok(&["version"]) {
            if let Some(Ok(Some(st))) = d.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({st}): {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer in {limit}s: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d.import_busybox();
        d
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        // Debian's CLI beside its daemon, whatever else is first on PATH.
        let cli = ["/usr/bin/docker", "docker"]
            .into_iter()
            .find(|c| Path::new(c).exists())
            .unwrap_or("docker");
        let mut c = Command::new(cli);
        c.args(["-H", &self.host]).args(args);
        c
    }

    fn docker_ok(&self, args: &[&str]) -> bool {
        self.cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `docker ARGS`, panicking with its stderr and the daemon's log when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("running docker");
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\ndockerd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A rootfs of /bin/busybox (static) and links for its applets, imported as
    /// BUSYBOX_IMAGE.
    fn import_busybox(&self) {
        let rootfs = self.root.dir.join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).expect("rootfs/bin");
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("copying /bin/busybox (cargo xtask setup installs busybox-static)");
        for applet in ["sh", "sleep", "true", "ps", "cat"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
        let mut tar = Command::new("tar")
            .args(["-C", &rootfs.to_string_lossy(), "-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let out = self
            .cmd(&["import", "-", BUSYBOX_IMAGE])
            .stdin(tar.stdout.take().expect("tar stdout"))
            .output()
            .expect("docker import");
        // Reaped here: no zombie tar left for the rest of the test run.
        let tar_ok = tar.wait().is_ok_and(|s| s.success());
        assert!(tar_ok, "tar of the busybox rootfs failed");
        assert!(
            out.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `docker run -d --network none --name NAME IMAGE sh -c SCRIPT`; returns the
    /// container's id, removed on drop.
    pub fn run(&mut self, name: &str, script: &str) -> String {
        let id = self.docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            script,
        ]);
        self.containers.push(id.clone());
        id
    }

    /// The host pid of a container's PID 1.
    pub fn pid1(&self, id: &str) -> u32 {
        let pid = self.docker(&["inspect", "-f", "{{.State.Pid}}", id]);
        pid.parse()
            .unwrap_or_else(|_| panic!("docker inspect said pid {pid:?}"))
    }
}

/// SIGTERM, up to 30 s to exit, then SIGKILL; always waited for.
fn stop(child: Option<Child>) {
    let Some(mut c) = child else { return };
    // SAFETY: kill has no memory preconditions; the pid is our own unwaited child's.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// containerd with its root, state, socket and (empty: the defaults) config under
/// `dir`; waits up to `limit` s for its socket. Returns it and the socket's path.
fn start_containerd(dir: &Path, limit: u64) -> (Child, String) {
    let sock = path(dir, "containerd.sock");
    let config = dir.join("containerd.toml");
    std::fs::write(&config, "").expect("containerd config");
    let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log");
    let mut child = Command::new("containerd")
        .args(["--config", &config.to_string_lossy()])
        .args(["--root", &path(dir, "containerd-root")])
        .args(["--state", &path(dir, "containerd-state")])
        .args(["--address", &sock])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting containerd (docker.io depends on it): {e}"));
    let deadline = Instant::now() + Duration::from_secs(limit);
    while !Path::new(&sock).exists() {
        let log = || std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
        if let Ok(Some(st)) = child.try_wait() {
            panic!("containerd exited ({st}): {}", log());
        }
        if Instant::now() >= deadline {
            stop(Some(child));
            panic!("containerd made no socket in {limit}s: {}", log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (child, sock)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = self.cmd(&["rm", "-f", id]).output();
        }
        // dockerd first (it stops its containers), then the containerd under it.
        stop(self.daemon.take());
        stop(self.containerd.take());
        for dir in &self.new_cgroup_parents {
            let _ = std::fs::remove_dir(dir);
        }
        // The tmpfs is unmounted by its own guard (lazily if the daemon left a mount in
        // it), after this.
    }
}
