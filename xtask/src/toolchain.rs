// agent/build.rs includes this file too: one place for the pin.

/// The nightly the eBPF programs are built with (`-Z build-std=core` needs a
/// nightly), and cargo-fuzz runs on. Dated, so that a new nightly cannot
/// change or break the kernel programs unseen; move it on purpose, then run
/// `cargo xtask test`.
pub const NIGHTLY: &str = "nightly-2026-05-20";
