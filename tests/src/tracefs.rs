//! Views of tracefs that lack tracepoints, categories or fields, as older or other
//! kernels do: the fallbacks are tested on a kernel that has the fast path.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::*;

/// Runs the tracer against an empty tracefs (TRACER_TRACEFS), as on a kernel without
/// any of the tracepoints; the directory is removed afterwards.
pub fn run_tracer_without_tracepoints(args: &[&str]) -> Finished {
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "tracer-test-tracefs-{}-{}",
        std::process::id(),
        args.first().copied().unwrap_or("")
    ));
    std::fs::create_dir_all(dir.join("events")).expect("creating an empty tracefs");
    let _rm = Rm(dir.clone());
    run_tracer_env(
        args,
        &[("TRACER_TRACEFS", dir.to_str().expect("UTF-8 temp dir"))],
    )
}

/// A tracefs view that lacks some event categories, as on a kernel where they do not
/// exist (e.g. "ext4" while the ext4 module is not loaded): a temp dir whose events/
/// links every category of the real tracefs but those. Pass `env()` to the tracer
/// (TRACER_TRACEFS); attaching still goes through the real tracefs. Removed on drop.
pub struct TracefsWithout {
    dir: PathBuf,
}

impl TracefsWithout {
    pub fn new(hidden: &[&str]) -> TracefsWithout {
        let real = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("events").is_dir())
            .unwrap_or_else(|| {
                sh(
                    "mount",
                    &["-t", "tracefs", "tracefs", "/sys/kernel/tracing"],
                );
                PathBuf::from("/sys/kernel/tracing")
            });
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracer-test-tracefs-without-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("events")).expect("creating the tracefs view");
        let t = TracefsWithout { dir };
        for e in std::fs::read_dir(real.join("events"))
            .expect("reading tracefs events/")
            .flatten()
        {
            let name = e.file_name();
            if hidden.iter().any(|h| name == std::ffi::OsStr::new(h)) {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), t.dir.join("events").join(&name))
                .expect("linking a tracefs category");
        }
        t
    }

    /// Makes a hidden category appear, as a module loaded while the tracer runs.
    pub fn reveal(&self, category: &str) {
        let real = std::fs::read_link(self.dir.join("events/syscalls"))
            .expect("the view links the syscalls category")
            .with_file_name(category);
        std::os::unix::fs::symlink(real, self.dir.join("events").join(category))
            .expect("linking a tracefs category");
    }

    /// Takes `field` out of `category:event`'s format, as on an older kernel whose
    /// tracepoint lacks it (e.g. sched_process_exit's `group_dead` before 6.18): the
    /// category becomes a directory of links to the real one, but for that event,
    /// whose `format` is a copy without the field's line.
    pub fn without_field(self, category: &str, event: &str, field: &str) -> TracefsWithout {
        let link = self.dir.join("events").join(category);
        let real = std::fs::read_link(&link).expect("the view links the category");
        std::fs::remove_file(&link).expect("unlinking the category");
        std::fs::create_dir(&link).expect("creating the category's copy");
        for e in std::fs::read_dir(&real)
            .expect("reading the category")
            .flatten()
        {
            if e.file_name() != std::ffi::OsStr::new(event) {
                std::os::unix::fs::symlink(e.path(), link.join(e.file_name()))
                    .expect("linking an event");
                continue;
            }
            let dir = link.join(event);
            std::fs::create_dir(&dir).expect("creating the event's copy");
            for f in std::fs::read_dir(e.path())
                .expect("reading the event")
                .flatten()
            {
                if f.file_name() != std::ffi::OsStr::new("format") {
                    std::os::unix::fs::symlink(f.path(), dir.join(f.file_name()))
                        .expect("linking an event file");
                }
            }
            let format = std::fs::read_to_string(e.path().join("format")).expect("format");
            let needle = format!(" {field};");
            assert!(
                format.contains(&needle),
                "{category}:{event} has no field {field}"
            );
            let kept: String = format
                .lines()
                .filter(|l| !(l.trim_start().starts_with("field:") && l.contains(&needle)))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(dir.join("format"), kept).expect("writing the format copy");
        }
        self
    }

    pub fn env(&self) -> [(&'static str, &str); 1] {
        [("TRACER_TRACEFS", self.dir.to_str().expect("UTF-8 temp dir"))]
    }
}

impl Drop for TracefsWithout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
