//! `cargo xtask <command>`: the project's build, run, test and bench steps.
//!
//! Every step installs what it needs first (toolchains, bpf-linker, test
//! servers), checking before installing so that a second run is cheap.

mod bench;
mod deps;
mod fuzz;
mod setup;
mod test;
mod toolchain;

use std::ffi::OsStr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup                      install the pinned nightly, rust-src and bpf-linker if missing
  build [--debug]            setup, then build the sonde binary (release unless --debug)
  run [-- ARGS...]           build, then run `sonde ARGS` as root (default: `sonde run`)
  test                       install test dependencies, build, run every test (needs root)
  bench pipeline             criterion benches of the user-space pipeline
  bench overhead [--rounds N] [--secs S]
                             nginx under wrk, with and without the agent (needs root)
  bench routes [--rounds N] [--secs S]
                             the agent's CPU with 1 and with 10 tenant routes (needs root)
  bench kubernetes [--pods N] [--rounds N]
                             the agent's memory with 10,000 pods from a local API server (needs root)
  fuzz <target> [seconds]    run one cargo-fuzz target (default 60 seconds)";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(());
    };
    match command.as_str() {
        "setup" => setup::run(),
        "build" => {
            let debug = match rest {
                [] => false,
                [flag] if flag == "--debug" => true,
                _ => bail!("usage: cargo xtask build [--debug]"),
            };
            build(debug)
        }
        "run" => run_agent(rest),
        "test" => test::run(rest),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// Setup, then builds the agent (and, through its build script, the eBPF
/// programs).
pub fn build(debug: bool) -> anyhow::Result<()> {
    setup::run()?;
    let mut cmd = cargo();
    cmd.args(["build", "-p", "sonde"]);
    if !debug {
        cmd.arg("--release");
    }
    step(&mut cmd, "building sonde")
}

/// `cargo xtask run [-- ARGS...]`: builds, then replaces this process with
/// `sonde ARGS` (through sudo when not root).
fn run_agent(args: &[String]) -> anyhow::Result<()> {
    let args = match args {
        [dashes, rest @ ..] if dashes == "--" => rest,
        rest => rest,
    };
    let args: Vec<String> = if args.is_empty() {
        vec!["run".into()]
    } else {
        args.to_vec()
    };
    build(false)?;
    let binary = agent_binary();
    let mut cmd = as_root(&binary, &args)?;
    cmd.current_dir(root());
    println!("xtask: exec {}", show(&cmd));
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start {}", binary.display()))
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The release build of the agent.
pub fn agent_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("release").join("sonde")
}

/// `cargo` from PATH (the rustup proxy, so `+<toolchain>` works), in the
/// workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root());
    cmd
}

/// Runs a command with inherited stdio; `what` says what it was for.
pub fn step(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    println!("xtask: {what}: {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start `{}` (is it installed?)", show(cmd)))?;
    if !status.success() {
        bail!("{what} failed ({status}): `{}`", show(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout when it succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `program` is an executable file on PATH.
pub fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}

pub fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The effective user id, from /proc/self/status.
pub fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

pub fn is_root() -> bool {
    euid() == Some(0)
}

/// A command that runs `program args` as root: directly when we are root,
/// else through sudo with the toolchain's environment kept.
pub fn as_root(program: &Path, args: &[String]) -> anyhow::Result<Command> {
    if is_root() {
        let mut cmd = Command::new(program);
        cmd.args(args);
        return Ok(cmd);
    }
    if !on_path("sudo") {
        bail!(
            "this needs root (eBPF programs, apt-get), and sudo is not installed: \
             run the same command as root"
        );
    }
    let mut cmd = Command::new("sudo");
    cmd.arg("env");
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "CARGO_TARGET_DIR",
    ] {
        if let Some(value) = std::env::var_os(var) {
            let mut pair = std::ffi::OsString::from(var);
            pair.push("=");
            pair.push(value);
            cmd.arg(pair);
        }
    }
    cmd.arg(program).args(args);
    Ok(cmd)
}

/// Re-runs this xtask command (same arguments) as root through sudo when
/// we are not root; returns only when already root.
pub fn become_root() -> anyhow::Result<()> {
    if is_root() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = as_root(&exe, &args)?;
    cmd.current_dir(root());
    println!("xtask: not root, re-running as root: {}", show(&cmd));
    let err = cmd.exec();
    Err(err).context("re-running through sudo")
}

/// A command line for messages.
pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}
