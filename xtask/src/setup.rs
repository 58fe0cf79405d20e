//! `cargo xtask setup`: the toolchain the eBPF build needs.
//!
//! agent/build.rs compiles ebpf/ with the pinned nightly ([`NIGHTLY`]; `-Z
//! build-std=core` needs `rust-src`) and links it with bpf-linker. Each
//! piece is checked first and installed only when missing.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;

use crate::toolchain::NIGHTLY;
use crate::{cargo, on_path, output, step};

/// The bpf-linker release the eBPF build is known to work with.
pub const BPF_LINKER_VERSION: &str = "0.10.2";

pub fn run() -> anyhow::Result<()> {
    // Once per xtask process: `test` runs setup, then `build`, which runs it again.
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.load(Ordering::Relaxed) {
        return Ok(());
    }
    check_and_install()?;
    DONE.store(true, Ordering::Relaxed);
    Ok(())
}

fn check_and_install() -> anyhow::Result<()> {
    if !on_path("rustup") {
        bail!(
            "rustup is not on PATH: the eBPF build needs rustup to provide the nightly \
             toolchain; install rustup, or add ~/.cargo/bin to PATH"
        );
    }

    // Installing a toolchain that is there already, or adding a component it
    // has, only checks; listing first keeps the common run silent and offline.
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if toolchains.lines().any(|l| {
        l.starts_with(&format!("{NIGHTLY}-")) || l.split_whitespace().next() == Some(NIGHTLY)
    }) {
        println!("xtask: setup: {NIGHTLY} present");
    } else {
        step(
            Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            &format!("installing the {NIGHTLY} toolchain"),
        )?;
    }

    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .unwrap_or_default();
    if components.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("xtask: setup: rust-src present for {NIGHTLY}");
    } else {
        step(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
            &format!("adding rust-src to {NIGHTLY}"),
        )?;
    }

    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if linker
        .split_whitespace()
        .any(|word| word == BPF_LINKER_VERSION)
    {
        println!("xtask: setup: bpf-linker {BPF_LINKER_VERSION} present");
    } else {
        if !linker.is_empty() {
            println!(
                "xtask: setup: found `{}`, want {BPF_LINKER_VERSION}",
                linker.trim()
            );
        }
        step(
            cargo().args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ]),
            "installing bpf-linker (takes a few minutes, once)",
        )?;
    }
    Ok(())
}
