//! `tracer tcp-pressure` inside containers: which pod holds TCP memory, a memory
//! cgroup whose own limit refuses socket memory while global tcp_mem is fine, and
//! receive queues pruned and collapsed. Each case is caused for real: loopback
//! connections whose receivers never read, owned by processes the test put in
//! pod-shaped cgroups or in a memcg with a small limit (the `incident_tcp` helper).
use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use tracer::{
    tcp::{Accounting, CgroupSource, PodRow, PrunePath, PrunedSockets, TcpPressureReport},
    triage::TriageReport,
};
use tracer_tests::{
    Cgroup, CgroupLayout, Envelope, Incident, SubtreeControl, Tracer, helper_bin, matrix_kernel,
    require_root, run_tracer, serial, tcpext,
};

type Report = Envelope<TcpPressureReport>;

fn show(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("a report serializes")
}

/// (prunes, discards) of the sockets `pid` holds, and of all the others.
fn pruned(p: &PrunedSockets, pid: u32) -> ((u64, u64), (u64, u64)) {
    let (mut ours, mut others) = ((0, 0), (0, 0));
    for s in &p.sockets {
        let t = if s.pid == Some(pid) {
            &mut ours
        } else {
            &mut others
        };
        t.0 += s.prunes;
        t.1 += s.discards;
    }
    (ours, others)
}

/// The `incident_tcp` helper with `args`, started inside the cgroup at `dir` (it joins
/// before it makes any socket, so its sockets are created there).
fn in_cgroup(dir: &Path, args: &[&str]) -> Incident {
    let cmd = format!(
        "echo $$ > {}/cgroup.procs && exec {} {}",
        dir.display(),
        helper_bin("incident_tcp").display(),
        args.join(" ")
    );
    Incident::start_bin(Path::new("/bin/sh"), &["-c", &cmd])
}

/// A pod UID and a container id of this test process, unique per test run.
fn pod_uid(n: u32) -> String {
    format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id())
}

fn container_id(n: u32) -> String {
    format!("{:056x}{n:08x}", u64::from(std::process::id()))
}

/// `/<tag>/kubepods/burstable/pod<uid>/<id>` under the cgroup2 hierarchy (the
/// kubelet's cgroupfs layout), each level removed on drop; where cgroup2 has the memory
/// controller (the VMs) it is enabled down to the pods, so their memory.stat has `sock`.
struct Pods {
    /// Guards in creation order; dropped in reverse (containers first).
    _levels: Vec<(Cgroup, Option<SubtreeControl>)>,
    containers: Vec<PathBuf>,
    rel: Vec<String>,
    memory: bool,
    _root_ctl: Option<SubtreeControl>,
}

impl Pods {
    fn new(tag: &str, pods: u32) -> Pods {
        let layout = CgroupLayout::read();
        let root = layout.unified().to_path_buf();
        let memory = layout.unified_controllers().iter().any(|c| c == "memory");
        let ctl = |dir: &Path| memory.then(|| SubtreeControl::enable(dir, "memory"));
        let root_ctl = ctl(&root);
        let mut levels: Vec<(Cgroup, Option<SubtreeControl>)> = Vec::new();
        let mut dir = root.clone();
        for name in [tag, "kubepods", "burstable"] {
            dir = dir.join(name);
            let c = Cgroup::create(&dir);
            let k = ctl(&dir);
            levels.push((c, k));
        }
        let (mut containers, mut rel) = (Vec::new(), Vec::new());
        for n in 1..=pods {
            let pod = dir.join(format!("pod{}", pod_uid(n)));
            levels.push((Cgroup::create(&pod), ctl(&pod)));
            let c = pod.join(container_id(n));
            levels.push((Cgroup::create(&c), None));
            rel.push(format!("/{}", c.strip_prefix(&root).unwrap().display()));
            containers.push(c);
        }
        // Drop order: containers and pods before their parents.
        levels.reverse();
        Pods {
            _levels: levels,
            containers,
            rel,
            memory,
            _root_ctl: root_ctl,
        }
    }
}

fn pod<'a>(r: &'a TcpPressureReport, uid: &str) -> Option<&'a PodRow> {
    r.socket_memory.pods.iter().find(|p| p.pod_uid == uid)
}

#[test]
fn pods_are_ranked_by_the_socket_memory_their_containers_hold() {
    require_root();
    let _s = serial();
    let pods = Pods::new(&format!("tracer-test-{}-pods", std::process::id()), 2);
    let mut tracer = Tracer::start(&["tcp-pressure", "--json", "-i", "500ms"]);
    // Pod 1 queues 1 MiB on its loopback connection, pod 2 256 KiB (unread: the
    // receive queue holds what the window allowed, the send queue the rest).
    let (big, small) = (1024u64 << 10, 256u64 << 10);
    let _a = in_cgroup(&pods.containers[0], &["hold", "1024"]);
    let _b = in_cgroup(&pods.containers[1], &["hold", "256"]);
    let (uid_a, uid_b) = (pod_uid(1), pod_uid(2));
    let r: Report = tracer.report_as_where::<TcpPressureReport>(Duration::from_secs(60), |x| {
        pod(x, &uid_a).is_some_and(|p| p.held_bytes >= big)
            && pod(x, &uid_b).is_some_and(|p| p.held_bytes >= small)
    });
    let m = &r.socket_memory;
    // Every matrix kernel (5.9+) sends each socket's cgroup id.
    assert_eq!(m.source, CgroupSource::SocketCgroupId, "{}", show(m));
    let ia = m.pods.iter().position(|p| p.pod_uid == uid_a).unwrap();
    let ib = m.pods.iter().position(|p| p.pod_uid == uid_b).unwrap();
    assert!(ia < ib, "the larger pod is ranked first: {}", show(m));
    for (uid, queued, n) in [(&uid_a, big, 1), (&uid_b, small, 2)] {
        let p = pod(&r, uid).unwrap();
        // sock_diag's figures: the queued bytes plus the kernel's per-buffer overhead
        // (skb truesize) and pre-charged memory: a few percent on the host's loopback,
        // 40% for 256 KiB in a 6.12 guest under emulation (smaller segments); never
        // twice what was queued.
        assert!(
            p.held_bytes >= queued && p.held_bytes < 2 * queued,
            "pod {uid} held {} for {queued} queued: {}",
            p.held_bytes,
            show(p)
        );
        // The sender's and the receiver's socket, in one container.
        assert_eq!((p.containers, p.sockets), (1, 2), "{}", show(p));
        assert_eq!(p.qos.as_deref(), Some("burstable"), "{}", show(p));
        let rel = &pods.rel[n - 1];
        let row = (m.cgroups.iter())
            .find(|c| &c.cgroup.cgroup == rel)
            .unwrap_or_else(|| panic!("no cgroup row {rel}: {}", show(m)));
        assert_eq!(row.held_bytes, p.held_bytes);
        let c = row.cgroup.container.as_ref().expect("a container");
        assert_eq!(c.pod_uid.as_deref(), Some(uid.as_str()));
        // The pod's memcg charge: cgroup2's memory.stat `sock` where the memory
        // controller is on (the VMs); the hybrid host's cgroup2 has no controllers.
        if pods.memory {
            let sock = p.memcg_sock_bytes.expect("memory.stat sock");
            assert!(
                sock >= queued / 2 && sock <= 2 * p.held_bytes,
                "memcg sock {sock} for {queued} queued: {}",
                show(p)
            );
        } else {
            assert_eq!(p.memcg_sock_bytes, None, "{}", show(p));
            assert!(m.memcg_sock_note.is_some(), "{}", show(m));
        }
    }
    let t = tracer.interrupt();
    assert!(t.status.success(), "tracer failed: {}", t.stderr);
    // triage names the same pods in its tcp memory check, the larger first.
    let tr = run_tracer(&["triage", "-d", "1s", "--json", "--fail-on", "never"]);
    assert!(tr.status.success(), "triage failed: {}", tr.stderr);
    let tr: Envelope<TriageReport> = tr.final_as();
    let top = &tr
        .leaks
        .tcp_mem
        .as_ref()
        .expect("the tcp memory check")
        .top_pods;
    let uids: Vec<&str> = top.iter().map(|p| p.pod_uid.as_str()).collect();
    assert_eq!(uids, [uid_a.as_str(), uid_b.as_str()], "{}", show(top));
}

/// What the test sets on its memcg, undone by removing it.
fn limit_memcg(dir: &Path, v2: bool) -> u64 {
    if v2 {
        // Its task and sockets now plus 2 MiB: 40 send queues to readers that never
        // read outgrow it.
        let cur: u64 = std::fs::read_to_string(dir.join("memory.current"))
            .expect("memory.current")
            .trim()
            .parse()
            .expect("memory.current");
        let max = cur + (2 << 20);
        std::fs::write(dir.join("memory.max"), max.to_string()).expect("memory.max");
        max
    } else {
        // v1 charges sockets only to kmem.tcp, and only where this limit is set.
        let max = 1u64 << 20;
        std::fs::write(dir.join("memory.kmem.tcp.limit_in_bytes"), max.to_string())
            .expect("memory.kmem.tcp.limit_in_bytes");
        max
    }
}

#[test]
fn a_memcg_at_its_own_limit_is_memcg_socket_pressure_not_global() {
    require_root();
    let _s = serial();
    let mem = CgroupLayout::read().memory();
    let how = mem.describe();
    let _root_ctl = mem.v2.then(|| SubtreeControl::enable(&mem.mount, "memory"));
    let rel = format!("/tracer-test-{}-memcg", std::process::id());
    let cg = Cgroup::create(mem.mount.join(&rel[1..]));
    // v1: the limit must be set before the sockets exist (it turns accounting on).
    let v1_limit = (!mem.v2).then(|| limit_memcg(&cg.path, false));
    let mut tracer = Tracer::start(&["tcp-pressure", "--json", "-i", "500ms"]);
    // The readers: this process, outside the memcg, accepting and never reading.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port().to_string();
    // The sender in the memcg. On cgroup2 the memcg OOM killer must find no victim
    // there (oom_score_adj -1000): then a send charge over the limit fails (a refusal)
    // instead of killing the sender (a charge of more than 8 pages never calls it).
    // v1's kmem.tcp charge only fails, never reclaims or kills (and the host lacks
    // CAP_SYS_RESOURCE, which lowering oom_score_adj needs).
    let no_oom = if mem.v2 {
        "echo -1000 > /proc/self/oom_score_adj && "
    } else {
        ""
    };
    let cmd = format!(
        "echo $$ > {}/cgroup.procs && {no_oom}exec {} feed 40 {port}",
        cg.path.display(),
        helper_bin("incident_tcp").display()
    );
    let mut feed = Incident::start_bin(Path::new("/bin/sh"), &["-c", &cmd]);
    let _readers: Vec<TcpStream> = (0..40).map(|_| l.accept().expect("accept").0).collect();
    let limit = v1_limit.unwrap_or_else(|| limit_memcg(&cg.path, true));
    feed.send("go");
    feed.expect_line("pushing");
    let r: Report = tracer.report_as_where::<TcpPressureReport>(Duration::from_secs(90), |x| {
        (x.memcg_pressure.memcgs.iter()).any(|m| m.memcg == rel)
    });
    let mp = &r.memcg_pressure;
    let want = if mem.v2 {
        Accounting::Cgroup2
    } else {
        Accounting::V1KmemTcp
    };
    assert_eq!(mp.accounting, want, "{how}: {}", show(mp));
    assert_eq!(mp.cannot_see, None, "{}", show(mp));
    let m = mp.memcgs.iter().find(|m| m.memcg == rel).unwrap();
    assert_eq!(m.accounting, want);
    assert_eq!(m.limit_bytes, limit, "{}", show(m));
    assert!(
        m.pids.contains(&feed.pid),
        "the sender is named: {}",
        show(m)
    );
    // At its limit when looked at, with its sockets' memory charged (v1: kmem.tcp is
    // socket memory only; cgroup2: memory.stat sock), refused or found there.
    assert!(m.usage_pct >= 90.0, "{}", show(m));
    assert!(m.refusals + m.at_limit_looks > 0, "{}", show(m));
    let sock = m.sock_bytes.expect("the memcg's socket memory");
    assert!(sock.saturating_mul(4) >= m.usage_bytes, "{}", show(m));
    // Global TCP memory was under the pressure threshold at each refusal, and the
    // kernel never entered global pressure.
    assert!(m.global_pages_max < m.global_pressure_pages, "{}", show(m));
    assert!(
        r.episodes.is_empty(),
        "no global episode: {}",
        show(&r.episodes)
    );
    assert!(!r.pressure_now);
    assert!(mp.refusals_under_global >= m.refusals, "{}", show(mp));
    // The advice names the memcg and its limit.
    assert!(
        (r.pod_advice.iter()).any(|a| a.advice.contains(&rel) && a.advice.contains("memory limit")),
        "{}",
        show(&r.pod_advice)
    );
    drop(feed);
    let t = tracer.interrupt();
    assert!(t.status.success(), "tracer failed: {}", t.stderr);
    eprintln!("{how} on {}: {}", matrix_kernel(), show(m));
}

#[test]
fn receive_queue_pruning_and_collapsing_are_counted() {
    require_root();
    let _s = serial();
    let counts = || {
        (
            tcpext("PruneCalled"),
            tcpext("RcvPruned"),
            tcpext("TCPRcvCollapsed"),
        )
    };
    let at_start = counts();
    let mut tracer = Tracer::start(&["tcp-pressure", "--json", "-i", "500ms"]);
    let before = counts();
    let mut inc = Incident::start_bin(&helper_bin("incident_tcp"), &["collapse", "1000"]);
    inc.expect_line("done");
    let after = counts();
    let grew = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    assert!(
        grew.0 > 0 && grew.2 > 0,
        "the kernel pruned and collapsed the queue: {grew:?}"
    );
    // Per socket where fentry or kprobes are allowed: the helper's receiving socket,
    // whose 4 KiB locked rcvbuf makes every prune collapse its receive queue (each
    // PruneCalled is one counted prune, and each RcvPruned follows a counted discard).
    let pid = inc.pid;
    let per_socket = matrix_kernel() != "host";
    let r: Report = tracer.report_as_where::<TcpPressureReport>(Duration::from_secs(30), |x| {
        let s = &x.rcv_queue.since_start;
        let (ours, others) = pruned(&x.rcv_queue.per_socket, pid);
        s.prune_called >= grew.0
            && s.rcv_pruned >= grew.1
            && s.collapsed >= grew.2
            && (!per_socket
                || (ours.0 >= grew.0.saturating_sub(others.0).max(1)
                    && ours.1 >= grew.1.saturating_sub(others.1)))
    });
    let q = &r.rcv_queue;
    // Growth since the tracer's first sample, not since boot: at most what the kernel
    // counted from before the tracer started until now.
    let now = counts();
    assert!(
        q.since_start.prune_called <= now.0 - at_start.0,
        "{}",
        show(q)
    );
    assert!(q.since_start.collapsed <= now.2 - at_start.2, "{}", show(q));
    // Outside pressure: none of it counted as during pressure.
    assert_eq!(q.during_pressure.prune_called, 0, "{}", show(q));
    assert_eq!(r.tcpext.rcv_collapsed, Some(q.since_start.collapsed));
    let p = &q.per_socket;
    if per_socket {
        // tcp_prune_queue itself is inlined in both stock kernels: its callees
        // tcp_collapse and tcp_prune_ofo_queue carry the socket. 6.12 takes fentry
        // (socket cookie); 6.1 refuses fentry on tcp_collapse, which has 7 arguments
        // (measured in a 6.1 guest; x86 BPF trampolines took at most 6 before 6.6),
        // and takes the kprobe path (the socket found by its ports).
        let want = match matrix_kernel() {
            "6.1" => PrunePath::Kprobe,
            _ => PrunePath::Fentry,
        };
        assert_eq!(p.path, want, "{}", show(p));
        assert_eq!(p.why_unavailable, None, "{}", show(p));
        let top = p.sockets.first().expect("a pruned socket");
        assert_eq!(
            top.pid,
            Some(pid),
            "the helper's socket is pruned most: {}",
            show(p)
        );
        assert_eq!(top.comm.as_deref(), Some("incident_tcp"), "{}", show(p));
        match want {
            PrunePath::Fentry => assert!(top.cookie.is_some_and(|c| c != 0), "{}", show(p)),
            _ => assert_eq!(top.cookie, None, "{}", show(p)),
        }
        assert!(top.local.is_some() && top.remote.is_some(), "{}", show(p));
        assert_eq!(top.during_pressure, 0, "{}", show(p));
        // Every counted prune is a PruneCalled the kernel counted while tracing.
        let (ours, _) = pruned(p, pid);
        assert!(ours.0 <= now.0 - at_start.0, "{}", show(p));
        assert!(p.prunes_seen >= ours.0, "{}", show(p));
    } else {
        // Tracepoint-only host: no hook sees a prune's socket; the report says why.
        assert_eq!(p.path, PrunePath::Unavailable, "{}", show(p));
        let why = p.why_unavailable.as_deref().unwrap_or_default();
        assert!(why.contains("fentry:") && why.contains("kprobe:"), "{why}");
        assert!(why.ends_with("counted system-wide from TcpExt"), "{why}");
        assert!(p.sockets.is_empty() && p.prunes_seen == 0, "{}", show(p));
    }
    drop(inc);
    let t = tracer.interrupt();
    assert!(t.status.success(), "tracer failed: {}", t.stderr);
}
