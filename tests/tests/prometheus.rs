//! A real Prometheus (Debian's `prometheus`, installed by `cargo xtask setup`) scrapes
//! `tracer serve` every second while the test causes incidents for real: memory cgroups
//! kept dying by page cache, a parent that leaves 12 zombies, an ext4 file system out
//! of inodes, and a TCP memory pressure episode. The test reads the results back
//! through Prometheus' query API (exact counts) and sees the shipped alert rules fire;
//! the rules are the shipped ones with their `for:` shortened to 1s, so the test does
//! not wait ten minutes.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer_tests::{
    CgroupLayout, Incident, LoopExt4, PinnedMemcgs, TcpMemGuard, Tracer, helper_bin, http::get,
    loopback_exchange, matrix_kernel, require_root, serial, tcp_under_pressure, tcpext, wait_for,
};

/// A Prometheus server scraping one target, with its config, rules and data in a
/// temporary directory; killed, waited for and its directory removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

/// A loopback port free now (the kernel's pick for port 0).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("tracer-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/tracer-rules.yml"),
        )
        .unwrap();
        let rules: String = shipped
            .lines()
            .map(|l| match l.split_once("for: ") {
                Some((indent, _)) => format!("{indent}for: 1s\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\n\
                 scrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus is not installed ({e}); `cargo xtask setup` installs it")
            });
        let p = Prometheus { child, dir, addr };
        wait_for(60, "Prometheus to be ready", || {
            std::net::TcpStream::connect(addr)
                .ok()
                .and_then(|_| (get(addr, "/-/ready").status == 200).then_some(()))
        });
        p
    }

    /// The value of a PromQL expression that returns one series (None: no series).
    fn query(&self, expr: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let r = get(self.addr, &path);
        assert_eq!(r.status, 200, "{expr}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let result = v["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{expr} returned several series: {v}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `expr` has the value `want` (scrapes and rule evaluations take their
    /// time); panics with the last value after 90 s.
    fn wait_value(&self, expr: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let got = self.query(expr);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: {got:?}, expected {want}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until `expr` has the value `want` (`exact`) or at least `want` (where
    /// others change it too, as on the host); panics with the last value after 90 s.
    fn wait_count(&self, expr: &str, want: f64, exact: bool) {
        if exact {
            return self.wait_value(expr, want);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let got = self.query(expr);
            if got.is_some_and(|v| v >= want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: {got:?}, expected at least {want}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until the alert `name` is firing (with the labels in `with`).
    fn wait_firing(&self, name: &str, with: &[(&str, &str)]) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let r = get(self.addr, "/api/v1/alerts");
            let v: Value = serde_json::from_str(&r.body).unwrap();
            let firing = v["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == name
                        && x["state"] == "firing"
                        && with.iter().all(|(k, val)| x["labels"][*k] == *val)
                })
            });
            if firing {
                return;
            }
            assert!(Instant::now() < deadline, "{name} is not firing: {v}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The detectors of the incidents this test causes (serve's --detectors).
const SERVED: &str = "zombies,inodes,tcp-pressure,cgroups";

#[test]
fn prometheus_scrapes_serve_and_the_shipped_alerts_fire_on_real_incidents() {
    require_root();
    let _s = serial();
    let tracer = Tracer::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "-i",
        "500ms",
        "--detectors",
        SERVED,
    ]);
    let prom = Prometheus::start(tracer.served_at());
    prom.wait_value("up{job=\"tracer\"}", 1.0);

    dying_memcgs_pile_up_then_are_released(&prom);

    // A parent that never reaps: 12 zombies, stuck after 5 s.
    let inc = Incident::start(&["zombies", "12"]);
    prom.wait_value(
        &format!("tracer_zombies_parent_zombies{{pid=\"{}\"}}", inc.pid),
        12.0,
    );
    prom.wait_firing("TracerNonReapingParent", &[("severity", "warning")]);

    // An ext4 file system out of inodes, with blocks free.
    let fs = LoopExt4::new(64, 128);
    let mut fill = Incident::start_bin(&helper_bin("incident_inodes"), &["fill", fs.mnt(), "1"]);
    fill.send("go");
    fill.expect_line("full");
    let used = fs.inodes_used() as f64;
    let mnt = fs.mnt().to_string();
    prom.wait_value(
        &format!("tracer_inodes_filesystem_inodes_free{{mount=\"{mnt}\"}}"),
        0.0,
    );
    prom.wait_value(
        &format!("tracer_inodes_filesystem_inodes_used{{mount=\"{mnt}\"}}"),
        used,
    );
    prom.wait_firing("TracerInodesExhausted", &[("mount", &mnt)]);

    // TCP memory pressure: tcp_mem lowered (restored by the guard), receivers that
    // never read.
    let mut push = Incident::start_bin(&helper_bin("incident_tcp"), &["push", "40"]);
    {
        let _mem = TcpMemGuard::set("64 128 256");
        let entered = tcpext("TCPMemoryPressures");
        push.send("go");
        push.expect_line("pushing");
        wait_for(30, "TCPMemoryPressures to grow", || {
            (tcpext("TCPMemoryPressures") > entered).then_some(())
        });
        prom.wait_value("tracer_tcp_memory_pressure", 1.0);
        prom.wait_firing("TracerTcpMemoryPressure", &[("severity", "warning")]);
        drop(push);
    }
    wait_for(30, "the kernel to leave TCP memory pressure", || {
        loopback_exchange();
        (!tcp_under_pressure()).then_some(())
    });
    prom.wait_value("tracer_tcp_memory_pressure", 0.0);

    // Nothing was lost on the way.
    for d in SERVED.split(',') {
        prom.wait_value(
            &format!("tracer_lost_events_total{{detector=\"{d}\"}}"),
            0.0,
        );
    }
    drop(fill);
    drop(inc);
    drop(prom);
    let out = tracer.interrupt();
    assert!(out.status.success(), "{}", out.stderr);
}

/// Memory cgroups kept dying by their page cache, made one after another: the pile
/// grows, which is what the shipped TracerDyingCgroupsGrowing is about (LinkedIn's
/// leak). It fires on `tracer_cgroups_dying_growing`, which `tracer serve` sets only
/// for growth sustained over its default --trend-span of 30 s (rising in each third of
/// the last 60 s, see tracer/src/trend.rs): N memcgs made dying at once are a step, not
/// growth, and rightly fire nothing. So the test makes them dying one at a time, the
/// next once Prometheus has seen the last one; it runs first, while the tracer's
/// window is young, so that the growth fills most of it.
///
/// The memcgs are where the host has the memory controller: the v1 memory hierarchy
/// on this project's hybrid machine, cgroup2 on the VM kernels. In the VM nothing else
/// touches cgroups, so the hierarchy's counters move by exactly what the test did; on
/// the host every command the machine runs for anyone makes and removes a memcg of its
/// own (under /process_api), so there the hierarchy's counters are at least that, and
/// the per-path series (filtered on the test's parent) are exact on both.
fn dying_memcgs_pile_up_then_are_released(prom: &Prometheus) {
    const N: usize = 12;
    let n = N as f64;
    let exact = matrix_kernel() != "host";
    let h = CgroupLayout::read().memory().name;
    let of_h = |m: &str| format!("{m}{{hierarchy=\"{h}\"}}");
    // The counts before the test's first mkdir, from the first cgroups report.
    let before = |m: &str| {
        wait_for(60, &format!("{m} from the first cgroups report"), || {
            prom.query(&of_h(m))
        })
    };
    let created0 = before("tracer_cgroups_created_total");
    let removed0 = before("tracer_cgroups_removed_total");
    let released0 = before("tracer_cgroups_released_total");
    let moved0 = before("tracer_cgroups_tasks_moved_total");
    let dying0 = before("tracer_cgroups_dying");

    let mut memcgs = PinnedMemcgs::new("prometheus", 1 << 20);
    let how = memcgs.mem.describe();
    let ours = format!("path=~\"{}/.*\"", memcgs.rel_parent);
    let dying_ours =
        format!("count(tracer_cgroups_dying_age_seconds{{hierarchy=\"{h}\",{ours}}}) or vector(0)");
    // Series are listed for the 20 latest releases only: a release counts once
    // Prometheus has scraped it, even if later ones pushed it out of the list since.
    let released_ours = format!(
        "count(last_over_time(tracer_cgroups_released_latency_seconds{{hierarchy=\"{h}\",{ours}}}[10m])) \
         or vector(0)"
    );
    for i in 1..=N {
        memcgs.make_dying(1);
        prom.wait_value(&dying_ours, i as f64);
    }
    // In the memory controller's hierarchy only (on the host, cgroup2 has no memory
    // controller and never saw them).
    prom.wait_value(
        &format!("count(tracer_cgroups_dying_age_seconds{{{ours}}})"),
        n,
    );
    // The parent and N memcgs made, N removed, N cache writers moved into them; the N
    // still dying (the v1 count is /proc/cgroups minus directories, cgroup2's the
    // root's nr_dying_descendants).
    prom.wait_count(
        &of_h("tracer_cgroups_created_total"),
        created0 + n + 1.0,
        exact,
    );
    prom.wait_count(&of_h("tracer_cgroups_removed_total"), removed0 + n, exact);
    prom.wait_count(&of_h("tracer_cgroups_tasks_moved_total"), moved0 + n, exact);
    if exact {
        prom.wait_value(&of_h("tracer_cgroups_dying"), dying0 + n);
    } else {
        prom.wait_count(&of_h("tracer_cgroups_dying"), n, false);
    }
    prom.wait_firing(
        "TracerDyingCgroupsGrowing",
        &[("severity", "warning"), ("hierarchy", &h)],
    );

    // Their cache freed, the kernel releases them and the tracer sees each release.
    memcgs.free_and_wait_released(Duration::from_secs(30), || {
        let dying = prom.query(&dying_ours);
        let released = prom.query(&released_ours);
        if dying == Some(0.0) && released == Some(n) {
            Ok(())
        } else {
            Err(format!(
                "{how}: in Prometheus {dying:?} of the test's memcgs dying, {released:?} released"
            ))
        }
    });
    prom.wait_count(&of_h("tracer_cgroups_released_total"), released0 + n, exact);
    if exact {
        prom.wait_value(&of_h("tracer_cgroups_dying"), dying0);
    }
    memcgs.remove_parent();
}
