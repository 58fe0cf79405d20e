use which::which;

/// Rebuild the eBPF programs when bpf-linker changes: the linker is part of
/// the toolchain that produces the object, but cargo does not see it.
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found: run `cargo xtask build` (it installs bpf-linker 0.10.2)");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
