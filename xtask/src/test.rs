//! `cargo xtask test`: the whole suite on the host, then the same test binaries inside a
//! VM on each stock kernel of the matrix, with counts per kernel and one total line.
use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::{
    kernels::{self, Series},
    vm,
};

/// Where the suite runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Matrix {
    /// This machine's kernel.
    Host,
    /// Debian 12's 6.1 LTS in a VM.
    #[value(name = "6.1")]
    V6_1,
    /// The 6.12 LTS in a VM.
    #[value(name = "6.12")]
    V6_12,
}

impl Matrix {
    fn series(self) -> Option<Series> {
        match self {
            Matrix::Host => None,
            Matrix::V6_1 => Some(Series::V6_1),
            Matrix::V6_12 => Some(Series::V6_12),
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Where to run the suite: host, 6.1, 6.12 (repeatable; default: all three, the host
    /// first). The stock kernels run in qemu VMs.
    #[arg(long = "kernel", value_enum)]
    kernels: Vec<Matrix>,
    /// The host only, no VMs: a quick local run.
    #[arg(long, conflicts_with = "kernels")]
    no_vm: bool,
    /// Kill a VM whose suite has not finished after this long (`900`, `900s`, `20m`;
    /// default 40m, or TRACER_VM_TIMEOUT); that kernel then counts as failed.
    #[arg(long, value_parser = vm::parse_timeout)]
    vm_timeout: Option<Duration>,
    /// Run the selected tests N times in a row on each kernel (one VM boot per kernel),
    /// e.g. `--repeat 10 -- healthy_busy` for the healthy-host tests; every run counts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100), value_name = "N")]
    repeat: u32,
    /// Extra arguments for `cargo test`, on every kernel: a test name filter, `--test
    /// zombies` for one integration test file, `-- --nocapture` for the test binaries.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Clone, Copy, Default)]
struct Counts {
    passed: u64,
    failed: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
    }
}

/// The counts of one of libtest's `test result: ok. 3 passed; 1 failed; ...` lines.
fn test_result(line: &str) -> Option<Counts> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |word: &str| {
        rest.split(';')
            .find_map(|p| {
                let p = p.trim();
                let p = p
                    .strip_prefix("ok.")
                    .or_else(|| p.strip_prefix("FAILED."))
                    .unwrap_or(p);
                p.trim().strip_suffix(word)?.trim().parse::<u64>().ok()
            })
            .unwrap_or(0)
    };
    Some(Counts {
        passed: num(" passed"),
        failed: num(" failed"),
    })
}

/// `cargo test` arguments split the way cargo reads them: cargo's own options, the one
/// test name filter, and what follows `--` (for the test binaries).
struct CargoArgs {
    cargo: Vec<String>,
    filter: Option<String>,
    libtest: Vec<String>,
}

impl CargoArgs {
    fn parse(args: &[String]) -> CargoArgs {
        // cargo test options that take a value as the next argument.
        const WITH_VALUE: &[&str] = &[
            "--test",
            "--bench",
            "--bin",
            "--example",
            "-p",
            "--package",
            "--exclude",
            "-F",
            "--features",
            "-j",
            "--jobs",
            "--target",
            "--target-dir",
            "--manifest-path",
            "--profile",
            "--color",
            "--message-format",
            "--config",
            "-Z",
        ];
        let (head, tail) = match args.iter().position(|a| a == "--") {
            Some(i) => (&args[..i], args[i + 1..].to_vec()),
            None => (args, Vec::new()),
        };
        let mut out = CargoArgs {
            cargo: Vec::new(),
            filter: None,
            libtest: tail,
        };
        let mut it = head.iter();
        while let Some(a) = it.next() {
            if a.starts_with('-') {
                out.cargo.push(a.clone());
                if WITH_VALUE.contains(&a.as_str()) {
                    out.cargo.extend(it.next().cloned());
                }
            } else {
                out.filter = Some(a.clone());
            }
        }
        out
    }

    /// Test targets: all of them, unless the caller picked some.
    fn targets(&self) -> &'static [&'static str] {
        let picks = ["--test", "--lib", "--bins", "--bin", "--tests", "--doc"];
        if self.cargo.iter().any(|a| picks.contains(&a.as_str())) {
            &[]
        } else {
            // Doc tests are left out (there are none; their empty runs would close the log).
            &["--lib", "--bins", "--tests"]
        }
    }
}

fn cargo_test() -> std::process::Command {
    let mut c = crate::cargo();
    c.args([
        "test",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--release",
    ]);
    c
}

pub fn run(args: Args) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the integration tests load eBPF programs and create cgroups and loop mounts: run `cargo xtask test` as root"
        );
    }
    let mut matrix = if args.no_vm {
        vec![Matrix::Host]
    } else if args.kernels.is_empty() {
        vec![Matrix::Host, Matrix::V6_1, Matrix::V6_12]
    } else {
        args.kernels.clone()
    };
    let mut seen = Vec::new();
    matrix.retain(|m| {
        !seen.contains(m) && {
            seen.push(*m);
            true
        }
    });
    let series: Vec<Series> = matrix.iter().filter_map(|m| m.series()).collect();
    // Everything the VMs need comes first, so a missing tool or kernel is said up front.
    let stock = if series.is_empty() {
        Vec::new()
    } else {
        crate::setup::vm_tools()?;
        kernels::ensure(&series)?
    };
    let timeout = match args.vm_timeout {
        Some(t) => t,
        None => vm::env_timeout()?,
    };
    let cargs = CargoArgs::parse(&args.args);
    let tracer = crate::build()?;

    let mut rows: Vec<(String, Counts, String)> = Vec::new();
    if matrix.contains(&Matrix::Host) {
        let start = std::time::Instant::now();
        let mut c = Counts::default();
        for run in 1..=args.repeat {
            if args.repeat > 1 {
                eprintln!("\nxtask: host run {run} of {}", args.repeat);
            }
            c += host(&args.args, &cargs, &tracer)?;
        }
        rows.push(("host".into(), c, vm::seconds(start.elapsed())));
    }
    let kernels: Vec<&kernels::Kernel> = matrix
        .iter()
        .filter_map(|m| m.series())
        .map(|s| {
            stock
                .iter()
                .find(|k| k.series == s)
                .context("kernel prepared above")
        })
        .collect::<Result<_>>()?;
    if !kernels.is_empty() {
        let once = executables(&cargs)?;
        let jobs: Vec<vm::Job> = (0..args.repeat)
            .flat_map(|_| once.iter().cloned())
            .collect();
        // The guests run side by side: each is one host thread (single-threaded TCG,
        // see vm.rs), so two of them use this machine's two cores, and the matrix takes
        // as long as its slowest kernel rather than the sum.
        let results: Vec<Result<(Counts, String)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = kernels
                .iter()
                .map(|k| {
                    let jobs = &jobs;
                    let tracer = &tracer;
                    scope.spawn(move || guest(k, jobs, tracer, timeout))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a guest's thread panicked")))
                })
                .collect()
        });
        for (k, r) in kernels.iter().zip(results) {
            let (c, note) = r?;
            rows.push((k.series.name().into(), c, note));
        }
    }

    let mut total = Counts::default();
    println!();
    for (name, c, note) in &rows {
        println!("{name}: {} passed, {} failed ({note})", c.passed, c.failed);
        total += *c;
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// The suite on this machine's kernel: `cargo test`, its output passed through.
fn host(args: &[String], cargs: &CargoArgs, tracer: &std::path::Path) -> Result<Counts> {
    let mut child = cargo_test()
        // Every test binary runs even after one fails, as in the VMs: complete counts.
        .arg("--no-fail-fast")
        .args(cargs.targets())
        .args(args)
        .env("TRACER_BIN", tracer)
        .env("TRACER_MATRIX_KERNEL", "host")
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let mut counts = Counts::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
        println!("{line}");
        if let Some(c) = test_result(&line) {
            counts += c;
        }
    }
    let st = child.wait().context("waiting for cargo test")?;
    if !st.success() && counts.failed == 0 {
        bail!("cargo test failed ({st}) before any test failed: see its errors above");
    }
    Ok(counts)
}

/// The test executables `cargo test` would run, built here for the guests.
fn executables(cargs: &CargoArgs) -> Result<Vec<vm::Job>> {
    let out = cargo_test()
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .args(cargs.targets())
        .args(&cargs.cargo)
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    let mut jobs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        // cargo runs each test binary in its package's directory.
        let cwd = msg["manifest_path"]
            .as_str()
            .and_then(|p| std::path::Path::new(p).parent())
            .map(PathBuf::from)
            .unwrap_or_else(crate::workspace_root);
        let kind = msg["target"]["kind"][0].as_str().unwrap_or("test");
        let name = msg["target"]["name"].as_str().unwrap_or("?");
        let mut argv = vec![exe.to_string()];
        argv.extend(cargs.filter.clone());
        argv.extend(cargs.libtest.iter().cloned());
        let package = msg["package_id"].as_str().unwrap_or("").to_string();
        let rank = match kind {
            "lib" => 0,
            "bin" => 1,
            _ => 2,
        };
        jobs.push((
            (package, rank, name.to_string()),
            vm::Job {
                label: format!("{kind} {name} ({exe})"),
                cwd,
                argv,
            },
        ));
    }
    // cargo test's order: package by package, unit tests first, then the test files.
    jobs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(jobs.into_iter().map(|(_, j)| j).collect())
}

/// The suite inside a VM on a stock kernel.
fn guest(
    kernel: &kernels::Kernel,
    jobs: &[vm::Job],
    tracer: &std::path::Path,
    timeout: Duration,
) -> Result<(Counts, String)> {
    let name = kernel.series.name();
    let out = crate::workspace_root().join("target/vm").join(name);
    let env = vec![
        (
            "TRACER_BIN".to_string(),
            tracer.to_string_lossy().into_owned(),
        ),
        ("TRACER_MATRIX_KERNEL".to_string(), name.to_string()),
    ];
    eprintln!(
        "\nxtask: booting {} ({}) under qemu (TCG) for {} test binaries; output in {}",
        kernel.package,
        kernel.release,
        jobs.len(),
        out.display()
    );
    let mut counts = Counts::default();
    let boot = vm::run(kernel, &out, &env, jobs, timeout, |i, outcome| {
        let job = &jobs[i];
        // One job's output in one piece, though another guest reports at the same time.
        let _stdout = std::io::stdout().lock();
        println!("     Running [{name}] {}", job.label);
        let (output, code) = match outcome {
            vm::Outcome::Exited { code, output } => (output, Some(*code)),
            vm::Outcome::NotFinished { output } => (output, None),
        };
        print!("{output}");
        let mut c = Counts::default();
        for line in output.lines() {
            if let Some(r) = test_result(line) {
                c += r;
            }
        }
        match code {
            Some(0) => {}
            Some(code) if c.failed == 0 => {
                // Killed by a signal or a panic outside any test: one failure.
                println!(
                    "[{name}] {} exited with status {code} outside any test",
                    job.label
                );
                c.failed += 1;
            }
            Some(_) => {}
            None => {
                println!("[{name}] {} did not finish", job.label);
                c = Counts {
                    passed: 0,
                    failed: 1,
                };
            }
        }
        counts += c;
    })?;
    let timing = format!(
        "boot {}, total {}",
        boot.boot.map(vm::seconds).unwrap_or_else(|| "-".into()),
        vm::seconds(boot.total)
    );
    if let Some(f) = &boot.failure {
        eprintln!(
            "xtask: {f}. Last lines of its console ({}):\n{}",
            boot.console.display(),
            vm::console_tail(&boot.console, 40)
        );
        return Ok((counts, format!("{timing}; {f}")));
    }
    Ok((counts, timing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn cargo_args_split_like_cargo() {
        let a = CargoArgs::parse(&s(&["--test", "zombies", "parent", "--", "--nocapture"]));
        assert_eq!(a.cargo, s(&["--test", "zombies"]));
        assert_eq!(a.filter.as_deref(), Some("parent"));
        assert_eq!(a.libtest, s(&["--nocapture"]));
        assert!(a.targets().is_empty());
        let b = CargoArgs::parse(&s(&["early_warning"]));
        assert!(b.cargo.is_empty());
        assert_eq!(b.filter.as_deref(), Some("early_warning"));
        assert_eq!(b.targets(), &["--lib", "--bins", "--tests"]);
    }

    #[test]
    fn test_result_lines() {
        let c = test_result(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s",
        )
        .unwrap();
        assert_eq!((c.passed, c.failed), (3, 2));
        let c = test_result("test result: ok. 7 passed; 0 failed; 0 ignored").unwrap();
        assert_eq!((c.passed, c.failed), (7, 0));
        assert!(test_result("running 7 tests").is_none());
    }
}
