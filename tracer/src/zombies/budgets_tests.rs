//! Unit tests of budgets.rs: the pids hierarchy from mountinfo and the levels.
use super::*;

const HYBRID: &str = "\
25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
const V1_ONLY: &str = "\
25 1 0:22 / /sys/fs/cgroup rw - tmpfs cgroup_root rw
30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
31 25 0:28 / /srv/cg/pids\\040x rw - cgroup cgroup rw,pids
";
const V2: &str = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";

#[test]
fn the_pids_hierarchy_comes_from_mountinfo_not_a_fixed_path() {
    let v1 = PidsHierarchy::from_mountinfo(HYBRID, |_| true).unwrap();
    assert_eq!(v1.mount, PathBuf::from("/sys/fs/cgroup/pids"));
    assert!(!v1.v2);
    let only = PidsHierarchy::from_mountinfo(V1_ONLY, |_| true).unwrap();
    assert_eq!(only.mount, PathBuf::from("/srv/cg/pids x"));
    let v2 = PidsHierarchy::from_mountinfo(V2, |_| true).unwrap();
    assert!(v2.v2);
    assert!(PidsHierarchy::from_mountinfo(V2, |_| false).is_err());
}

#[test]
fn a_process_cgroup_is_read_from_its_pids_line() {
    let text = "12:pids:/docker/abc\n1:name=systemd:/x\n0::/unified\n";
    assert_eq!(cgroup_in(text, false).as_deref(), Some("/docker/abc"));
    assert_eq!(cgroup_in(text, true).as_deref(), Some("/unified"));
}

#[test]
fn the_level_is_the_share_of_pids_max_or_a_refusal() {
    let base = Baseline {
        at: Instant::now(),
        current: 1,
        events_max: 0,
    };
    let c = |current, max| Counters {
        current,
        max,
        events_max: Some(0),
    };
    assert_eq!(
        row("/a", &c(51, Some(60)), &base, Some(0), None).level,
        Level::Warn
    );
    assert_eq!(
        row("/a", &c(58, Some(60)), &base, Some(0), None).level,
        Level::Crit
    );
    assert_eq!(
        row("/a", &c(10, Some(60)), &base, Some(0), None).level,
        Level::Ok
    );
    assert_eq!(
        row("/a", &c(10, None), &base, Some(0), None).level,
        Level::Ok
    );
    assert_eq!(
        row("/a", &c(10, Some(60)), &base, Some(2), None).level,
        Level::Warn
    );
    assert_eq!(
        row("/a", &c(10, Some(60)), &base, None, Some(1)).level,
        Level::Warn
    );
    let r = row("/a", &c(51, Some(60)), &base, Some(0), None);
    assert_eq!(r.used_pct, Some(85.0));
    assert!(
        r.finding()
            .unwrap()
            .starts_with("warn: pids cgroup /a at 51/60 pids (85%")
    );
}
