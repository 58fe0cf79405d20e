//! `cargo xtask fuzz <target> [seconds]`: one cargo-fuzz target, for a
//! bounded time, from fuzz/.

use std::process::Command;

use anyhow::bail;

use crate::toolchain::NIGHTLY;
use crate::{on_path, root, setup, step};

const DEFAULT_SECONDS: u64 = 60;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let (target, seconds) = match args {
        [target] => (target, DEFAULT_SECONDS),
        [target, secs] => match secs.parse() {
            Ok(s) => (target, s),
            Err(_) => bail!("seconds must be a whole number, got `{secs}`"),
        },
        _ => bail!("usage: cargo xtask fuzz <target> [seconds] (default {DEFAULT_SECONDS} s)"),
    };
    let dir = root().join("fuzz");
    if !dir.join("Cargo.toml").is_file() {
        bail!(
            "there is no fuzz/Cargo.toml yet: the fuzz targets live in {}",
            dir.display()
        );
    }
    setup::run()?;
    if !on_path("cargo-fuzz") {
        step(
            Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
            "installing cargo-fuzz (once)",
        )?;
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&dir)
        .arg(format!("+{NIGHTLY}"))
        .args(["fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}"));
    step(&mut cmd, &format!("fuzzing {target} for {seconds} s")).map_err(|e| {
        e.context(format!(
            "list the targets with `cd fuzz && cargo +{NIGHTLY} fuzz list`; \
             a crash leaves its input under fuzz/artifacts/{target}/"
        ))
    })
}
