//! A container whose PID 1 is not an init (Uber's pattern: `sh -c '…; exec sleep'`),
//! run by a real Docker (a private dockerd, tests/src/docker.rs): the zombies it holds
//! are named with the container and its PID 1's comm, and the reaper chain of a parent
//! inside it ends at that PID 1, which will not reap.
use std::time::{Duration, Instant};

use tracer::zombies::{ZombiesReport, init::ReaperRule, rows::ParentRow};
use tracer_tests::{
    Dockerd, Envelope, Tracer, matrix_kernel, require_root, serial, zombie_children,
};

type Report = Envelope<ZombiesReport>;

fn parent(r: &Report, pid: u32) -> Option<&ParentRow> {
    r.parents.iter().find(|p| p.pid == pid)
}

/// Polls /proc until `what` holds (the VMs emulate the CPU: slower).
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let limit = if matrix_kernel() == "host" { 30 } else { 120 };
    let deadline = Instant::now() + Duration::from_secs(limit);
    while !ok() {
        assert!(Instant::now() < deadline, "waited {limit}s for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host pid of a sleeping `sleep` child of `ppid`, from /proc/PID/stat.
fn sleeping_child(ppid: u32) -> Option<u32> {
    let dirs = std::fs::read_dir("/proc").ok()?;
    dirs.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let f: Vec<&str> = stat.split(' ').collect();
        (f.get(1) == Some(&"(sleep)")
            && f.get(2) == Some(&"S")
            && f.get(3) == Some(&ppid.to_string().as_str()))
        .then_some(pid)
    })
}

#[test]
fn container_pid1_that_is_not_an_init_is_named_with_its_zombies() {
    require_root();
    let _s = serial();
    let mut docker = Dockerd::start("init");
    let name = format!("tracer-init-{}", std::process::id());
    // PID 1 ends as `sleep` with three children that exit after 1 s and are never
    // reaped; an inner `sleep` (not PID 1) holds two more.
    let id = docker.run(
        &name,
        "sh -c 'sleep 1 & sleep 1 & exec sleep 3600' & \
         sleep 1 & sleep 1 & sleep 1 & exec sleep 3600",
    );
    let pid1 = docker.pid1(&id);
    wait_until("PID 1's three zombies", || zombie_children(pid1).len() == 3);
    let mut inner = 0;
    wait_until("the inner sleep", || {
        inner = sleeping_child(pid1).unwrap_or(0);
        inner != 0
    });
    wait_until("the inner sleep's two zombies", || {
        zombie_children(inner).len() == 2
    });

    let sock = docker.host.trim_start_matches("unix://").to_string();
    let mut tracer = Tracer::start_env(
        &["zombies", "--json", "-i", "500ms"],
        &[("TRACER_DOCKER_SOCKET", sock.as_str())],
    );
    let limit = if matrix_kernel() == "host" { 60 } else { 180 };
    let r = tracer.report_as_where::<ZombiesReport>(Duration::from_secs(limit), |r| {
        parent(r, pid1).is_some_and(|p| p.zombies == 3)
            && parent(r, inner).is_some_and(|p| p.zombies == 2)
    });
    drop(tracer);

    let p = parent(&r, pid1).unwrap();
    assert_eq!(p.comm, "sleep", "{p:?}");
    let ni = (p.namespace_init.as_ref()).unwrap_or_else(|| panic!("not seen as PID 1: {p:?}"));
    assert_eq!(ni.comm, "sleep");
    assert!(!ni.known_init, "{ni:?}");
    assert_eq!(ni.ns_pids, vec![pid1, 1], "{ni:?}");
    let c = (p.cgroup.container.as_ref()).unwrap_or_else(|| panic!("no container: {p:?}"));
    assert_eq!(
        (c.runtime.as_ref(), c.id.as_str()),
        ("docker", id.as_str()),
        "{c:?}"
    );
    assert_eq!(c.names.name.as_deref(), Some(name.as_str()), "{c:?}");
    let after = p.reaper_after_exit.as_ref().expect("reaper");
    assert_eq!(
        (after.rule, after.pid),
        (ReaperRule::ItselfOnExit, pid1),
        "{after:?}"
    );
    let hint = format!(
        "PID 1 of container docker://{} {name} is `sleep`, not an init: it never reaps its 3 stuck zombie(s)",
        &id[..12]
    );
    assert!(
        r.hints.iter().any(|h| h.starts_with(&hint)),
        "{hint}\nnot in {:#?}",
        r.hints
    );
    assert!(
        r.hints
            .iter()
            .any(|h| h.contains("--init, tini or dumb-init")),
        "{:?}",
        r.hints
    );

    // The inner parent is not PID 1; when it exits its zombies go to PID 1 (`sleep`),
    // the kernel's reaper for its namespace, which will not reap them either.
    let q = parent(&r, inner).unwrap();
    assert_eq!(q.namespace_init, None, "{q:?}");
    let after = q.reaper_after_exit.as_ref().expect("reaper");
    assert_eq!(
        (after.rule, after.pid, after.comm.as_str(), after.reaps),
        (ReaperRule::NamespaceInit, pid1, "sleep", false),
        "{after:?}"
    );
    let chain =
        format!("if {inner} (sleep) exits, its zombies go to {pid1} (sleep), which is not an init");
    assert!(
        r.hints.iter().any(|h| h.starts_with(&chain)),
        "{chain}\nnot in {:#?}",
        r.hints
    );
}
