//! The floor of what hooks cost: one empty program the agent attaches, in
//! place of the real ones, to every hook they use (`sonde floor`, for
//! `cargo xtask bench overhead`). Built from this crate so that it is
//! loaded and attached exactly as the real programs are.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn empty(_ctx: TracePointContext) -> u32 {
    0
}
