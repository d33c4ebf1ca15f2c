//! `cargo xtask bench census`: `tracer inodes --census` over a generated tree of
//! 1,000,000 files on a tmpfs of its own, beside `find DIR -xdev | wc -l` on the same
//! tree in the same run: time and peak RSS of both, medians of the rounds. Targets:
//! the census under 10 s and the tracer under 50 MiB RSS.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::common::{self, Cmp};
use crate::status;

/// Directories of the tree, and files in each: 1,000,000 files.
const DIRS: u64 = 1_000;
const FILES_PER_DIR: u64 = 1_000;

/// A tmpfs with room for the tree's inodes; unmounted and removed on drop.
struct Tree {
    mnt: PathBuf,
    mounted: bool,
}

impl Tree {
    fn new() -> Result<Tree> {
        let mnt = std::env::temp_dir().join(format!("tracer-bench-census-{}", std::process::id()));
        std::fs::create_dir_all(&mnt)?;
        let mut t = Tree {
            mnt,
            mounted: false,
        };
        status(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1g,nr_inodes=1100000", "tmpfs"])
                .arg(&t.mnt),
        )?;
        t.mounted = true;
        let start = Instant::now();
        for d in 0..DIRS {
            let dir = t.mnt.join(format!("d{:02}/{d:04}", d % 50));
            std::fs::create_dir_all(&dir)?;
            for f in 0..FILES_PER_DIR {
                std::fs::File::create(dir.join(format!("f{f}")))
                    .with_context(|| format!("creating a file in {}", dir.display()))?;
            }
        }
        eprintln!(
            "bench census: {} files in {} directories generated in {:.1}s",
            DIRS * FILES_PER_DIR,
            DIRS,
            start.elapsed().as_secs_f64()
        );
        Ok(t)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
        let _ = std::fs::remove_dir(&self.mnt);
    }
}

/// Wall seconds and peak RSS (MiB) of `cmd`, its stdout's line count and last line.
/// The output is streamed, never held: a child's peak RSS (ru_maxrss) includes what
/// the forked copy of this process held before exec, so this process stays small.
fn measure(mut cmd: Command) -> Result<(f64, f64, u64, String)> {
    use std::io::BufRead as _;
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let (mut lines, mut last) = (0u64, String::new());
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        lines += 1;
        last = line?;
    }
    let (st, _, rss_kib) = common::wait_rusage(child.id() as libc::pid_t)?;
    if st != 0 {
        bail!("{cmd:?} failed: wait status {st}");
    }
    Ok((
        start.elapsed().as_secs_f64(),
        rss_kib as f64 / 1024.0,
        lines,
        last,
    ))
}

/// One census: its own elapsed seconds (from the report), the tracer's wall seconds and
/// peak RSS, and the inodes it counted.
fn census(tracer: &Path, dir: &Path) -> Result<(f64, f64, f64, u64)> {
    let mut cmd = Command::new(tracer);
    cmd.args(["inodes", "--census"]).arg(dir).args([
        "--census-budget",
        "120s",
        "-d",
        "1s",
        "--json",
    ]);
    let (wall, rss, _, last) = measure(cmd)?;
    let v: serde_json::Value = serde_json::from_str(&last).context("no report")?;
    let c = &v["census"][0];
    if c["partial"] != false {
        bail!("the census was partial: {c}");
    }
    Ok((
        c["elapsed_s"].as_f64().context("elapsed_s")?,
        wall,
        rss,
        c["inodes_counted"].as_u64().context("inodes_counted")?,
    ))
}

/// `find DIR -xdev | wc -l`: wall seconds, find's peak RSS, the count.
fn find(dir: &Path) -> Result<(f64, f64, u64)> {
    let mut cmd = Command::new("find");
    cmd.arg(dir).arg("-xdev");
    let (wall, rss, lines, _) = measure(cmd)?;
    Ok((wall, rss, lines))
}

pub fn run(a: &super::Args) -> Result<()> {
    let tracer = common::tracer_bin()?;
    let tree = Tree::new()?;
    let (mut c_s, mut c_wall, mut c_rss, mut f_s, mut f_rss) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..a.rounds {
        // Alternate which goes first: the second finds the dentries cached.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            if which == 0 {
                let (s, wall, rss, n) = census(&tracer, &tree.mnt)?;
                eprintln!(
                    "round {round}: census {n} inodes in {s:.2}s (tracer {wall:.2}s wall, {rss:.1} MiB RSS)"
                );
                (c_s.push(s), c_wall.push(wall), c_rss.push(rss));
            } else {
                let (wall, rss, n) = find(&tree.mnt)?;
                eprintln!("round {round}: find {n} names in {wall:.2}s ({rss:.1} MiB RSS)");
                (f_s.push(wall), f_rss.push(rss));
            }
        }
    }
    let (cs, cw, cr) = (
        common::median(c_s),
        common::median(c_wall),
        common::median(c_rss),
    );
    let (fs, fr) = (common::median(f_s), common::median(f_rss));
    println!(
        "census of {} files (medians of {} rounds, 1 s of tracing included in the tracer's wall time):",
        DIRS * FILES_PER_DIR,
        a.rounds
    );
    println!(
        "  tracer inodes --census   census {cs:.2}s   tracer wall {cw:.2}s   peak RSS {cr:.1} MiB"
    );
    println!(
        "  find DIR -xdev | wc -l   wall {fs:.2}s                        peak RSS {fr:.1} MiB"
    );
    common::check("census time (s)", cs, Cmp::AtMost, 10.0);
    common::check("tracer peak RSS (MiB)", cr, Cmp::AtMost, 50.0);
    drop(tree);
    Ok(())
}
