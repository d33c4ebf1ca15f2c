//! What the tests build and tear down again, also when they fail: loop-mounted ext4,
//! tmpfs mounts, the host's cgroup layout and controllers enabled for a test.
use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::*;

/// An ext4 image file, attached to a loop device and mounted in a temp dir. Drop
/// unmounts it, detaches the loop device and deletes the image, also when the test
/// failed half-way (each step is undone only if it was done).
pub struct LoopExt4 {
    dir: PathBuf,
    pub mnt: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
}

impl LoopExt4 {
    /// `size_mib` MiB with `inodes` inodes (mkfs.ext4 -N), mounted at `self.mnt`.
    pub fn new(size_mib: u64, inodes: u32) -> LoopExt4 {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracer-test-ext4-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut fs = LoopExt4 {
            mnt: dir.join("mnt"),
            dir,
            loop_dev: None,
            mounted: false,
        };
        std::fs::create_dir_all(&fs.mnt).expect("creating the temp dir");
        let img = fs.dir.join("ext4.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size_mib << 20))
            .expect("creating the image (truncate)");
        let img = img.to_str().unwrap();
        sh("mkfs.ext4", &["-q", "-F", "-N", &inodes.to_string(), img]);
        fs.loop_dev = Some(sh("losetup", &["--find", "--show", img]));
        sh(
            "mount",
            &[fs.loop_dev.as_deref().unwrap(), fs.mnt.to_str().unwrap()],
        );
        fs.mounted = true;
        fs
    }

    pub fn mnt(&self) -> &str {
        self.mnt.to_str().unwrap()
    }

    pub fn inodes_used(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.mnt).expect("statvfs");
        s.files() - s.files_free()
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Something still holds it (a helper killed late): detach it lazily.
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cgroup hierarchies this host has mounted, read from /proc/self/mountinfo (never
/// assumed): cgroup2 is at /sys/fs/cgroup on a pure cgroup2 host (every current
/// distribution) and at /sys/fs/cgroup/unified on a hybrid one (this project's CI
/// machine), and v1 hierarchies hold the controllers bound to them.
#[derive(Debug)]
pub struct CgroupLayout {
    /// The cgroup2 mount, if any.
    pub unified: Option<PathBuf>,
    /// v1 mounts: (controllers from the super options, mount point).
    pub v1: Vec<(Vec<String>, PathBuf)>,
}

/// Where the memory controller is, and how `tracer cgroups` names its hierarchy.
#[derive(Debug, Clone)]
pub struct MemoryHierarchy {
    /// The mount whose directories are memory cgroups.
    pub mount: PathBuf,
    /// true: cgroup2 (memory enabled through cgroup.subtree_control); false: the v1
    /// memory hierarchy.
    pub v2: bool,
    /// The tracer's name for it (`--hierarchy`, the `hierarchy` fields).
    pub name: String,
}

impl MemoryHierarchy {
    /// For assertion messages: which path the test took.
    pub fn describe(&self) -> String {
        format!(
            "{} memory controller at {}",
            if self.v2 { "cgroup2" } else { "cgroup v1" },
            self.mount.display()
        )
    }
}

impl CgroupLayout {
    pub fn read() -> CgroupLayout {
        let info =
            std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
        let mut layout = CgroupLayout {
            unified: None,
            v1: Vec::new(),
        };
        for line in info.lines() {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split(' ').nth(4) else {
                continue;
            };
            let point = PathBuf::from(point.replace("\\040", " "));
            let mut r = right.split(' ');
            match r.next() {
                Some("cgroup2") if layout.unified.is_none() => layout.unified = Some(point),
                Some("cgroup") => {
                    let ctrls: Vec<String> = r
                        .nth(1)
                        .unwrap_or("")
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro" | "noprefix" | "clone_children" | "xattr")
                                && !o.contains('=')
                                || o.starts_with("name=")
                        })
                        .map(str::to_string)
                        .collect();
                    if !layout.v1.iter().any(|(c, _)| *c == ctrls) {
                        layout.v1.push((ctrls, point));
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// The cgroup2 mount; fails the test with a sentence when there is none.
    pub fn unified(&self) -> &std::path::Path {
        self.unified.as_deref().unwrap_or_else(|| {
            panic!(
                "no cgroup2 file system is mounted (none in /proc/self/mountinfo): mount one, e.g. \
                 `mount -t cgroup2 none /sys/fs/cgroup`"
            )
        })
    }

    /// Controllers the cgroup2 root offers (cgroup.controllers).
    pub fn unified_controllers(&self) -> Vec<String> {
        self.unified
            .as_ref()
            .and_then(|u| std::fs::read_to_string(u.join("cgroup.controllers")).ok())
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Where the memory controller is: the v1 memory hierarchy when memory is bound to
    /// v1 (then cgroup2 cannot have it), else cgroup2 when its root offers memory.
    /// Fails the test with a sentence when neither has it.
    pub fn memory(&self) -> MemoryHierarchy {
        if let Some((ctrls, mount)) = self
            .v1
            .iter()
            .find(|(c, _)| c.iter().any(|c| c == "memory"))
        {
            return MemoryHierarchy {
                mount: mount.clone(),
                v2: false,
                name: ctrls.join(","),
            };
        }
        if self.unified_controllers().iter().any(|c| c == "memory") {
            return MemoryHierarchy {
                mount: self.unified().to_path_buf(),
                v2: true,
                name: "cgroup2".into(),
            };
        }
        panic!(
            "no memory controller: no v1 hierarchy has it and cgroup2's cgroup.controllers ({:?}) \
             lacks it; boot with the memory cgroup enabled",
            self.unified_controllers()
        )
    }
}

/// A controller enabled in a cgroup2 directory's cgroup.subtree_control by a test, and
/// disabled again on drop (only if the test enabled it: a controller the host had on
/// stays on).
pub struct SubtreeControl {
    dir: PathBuf,
    controller: String,
    enabled_here: bool,
}

impl SubtreeControl {
    /// Makes sure `controller` is on for the children of `dir`. cgroup2's "no internal
    /// processes" rule: `dir` must hold no process itself (the root is exempt).
    pub fn enable(dir: &std::path::Path, controller: &str) -> SubtreeControl {
        let file = dir.join("cgroup.subtree_control");
        let on = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
            .split_whitespace()
            .any(|c| c == controller);
        if !on {
            std::fs::write(&file, format!("+{controller}"))
                .unwrap_or_else(|e| panic!("enabling {controller} in {}: {e}", file.display()));
        }
        SubtreeControl {
            dir: dir.to_path_buf(),
            controller: controller.into(),
            enabled_here: !on,
        }
    }
}

impl Drop for SubtreeControl {
    fn drop(&mut self) {
        if self.enabled_here && self.dir.exists() {
            let file = self.dir.join("cgroup.subtree_control");
            if let Err(e) = std::fs::write(&file, format!("-{}", self.controller)) {
                eprintln!(
                    "could not disable {} in {}: {e}",
                    self.controller,
                    file.display()
                );
            }
        }
    }
}

/// A tmpfs mounted on a fresh temp dir with `options` (e.g. "size=16m,nr_inodes=32");
/// unmounted and its directory removed on drop, also when the test failed.
pub struct Tmpfs {
    pub dir: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    pub fn new(tag: &str, options: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("tracer-tmpfs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the mount point");
        let mut t = Tmpfs {
            dir,
            mounted: false,
        };
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                options,
                "tmpfs",
                t.dir.to_str().unwrap(),
            ],
        );
        t.mounted = true;
        t
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
