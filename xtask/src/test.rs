//! `cargo xtask test`: everything CI runs, as root.
//!
//! Installs the toolchain and the test servers, builds the release agent
//! (the integration tests start it), checks formatting and clippy, then
//! runs the unit and integration tests of every host crate. The eBPF crate is left out: it only builds for
//! the BPF target, through agent/build.rs.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::Stdio;

use anyhow::{Context as _, bail};

use crate::{become_root, cargo, deps, output, setup, show, step};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    // Extra arguments go to the test binaries (a name filter, --nocapture).
    let args = match args {
        [dashes, rest @ ..] if dashes == "--" => rest,
        rest => rest,
    };
    become_root()?;
    setup::run()?;
    deps::install()?;
    crate::build(false)?;
    lint()?;

    // --release: the agent was just built in release, so the tests reuse its
    // compiled dependencies instead of building them all again unoptimised.
    // --no-fail-fast: one failing test binary does not hide the others.
    let mut all = cargo();
    all.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "sonde-ebpf",
        "--no-fail-fast",
    ]);
    let mut totals = run_tests(all, args)?;

    // The agent runs on the socket-layer path wherever the kernel has it;
    // the protocol tests run again on the syscall path, the fallback for
    // older kernels. (The capture tests already run on both.)
    let mut fallback = cargo();
    fallback.args(["test", "--release", "-p", "sonde-tests", "--no-fail-fast"]);
    for test in FALLBACK_TESTS {
        fallback.args(["--test", test]);
    }
    fallback.env(CAPTURE_PATH_VAR, "syscall");
    println!("xtask: the protocol tests again, on the syscall capture path");
    let fallback_totals = run_tests(fallback, args)?;
    println!(
        "summary on the syscall path: {} passed, {} failed, {} skipped",
        fallback_totals.passed, fallback_totals.failed, fallback_totals.ignored
    );
    totals.passed += fallback_totals.passed;
    totals.failed += fallback_totals.failed;
    totals.ignored += fallback_totals.ignored;
    totals.status_failed |= fallback_totals.status_failed;
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 || totals.status_failed {
        bail!("cargo test failed; the failing tests are listed above");
    }
    Ok(())
}

/// The integration test binaries that run a second time on the syscall
/// capture path.
const FALLBACK_TESTS: &[&str] = &["http1", "grpc", "redis", "mysql", "metrics"];

/// The environment variable the test harness reads the capture path from
/// (tests/src/agent.rs).
const CAPTURE_PATH_VAR: &str = "SONDE_TEST_CAPTURE_PATH";

/// Runs `cmd` (a `cargo test`) with `args` for the test binaries, echoing
/// its output, and sums its result lines.
fn run_tests(mut cmd: std::process::Command, args: &[String]) -> anyhow::Result<Totals> {
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    println!("xtask: running tests: {}", show(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        let mut out = std::io::stdout().lock();
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            totals.add(&line);
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    totals.status_failed = !status.success();
    Ok(totals)
}

/// Formatting and clippy, as CI checks them; their rustup components are
/// added when missing. Clippy runs in the release profile the agent was
/// just built in, so the eBPF build script's output is reused.
fn lint() -> anyhow::Result<()> {
    for (component, subcommand) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        if output(cargo().args([subcommand, "--version"])).is_none() {
            step(
                std::process::Command::new("rustup").args(["component", "add", component]),
                &format!("adding {component}"),
            )?;
        }
    }
    step(
        cargo().args(["fmt", "--all", "--", "--check"]),
        "checking formatting (fix with `cargo fmt --all`)",
    )?;
    step(
        cargo().args([
            "clippy",
            "--release",
            "--workspace",
            "--exclude",
            "sonde-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "clippy",
    )
}

/// Sums of the `test result:` lines of every test binary.
#[derive(Default, Debug, PartialEq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// cargo test itself failed (a build error, or a test binary that
    /// crashed before its result line).
    status_failed: bool,
}

impl Totals {
    /// Adds one line of cargo test output if it is a result line, e.g.
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_summed() {
        let mut t = Totals::default();
        for line in [
            "running 3 tests",
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 4 filtered out; finished in 1.20s",
            "test foo ... ok",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            t.add(line);
        }
        assert_eq!(
            t,
            Totals {
                passed: 15,
                failed: 2,
                ignored: 1,
                status_failed: false,
            }
        );
    }
}
