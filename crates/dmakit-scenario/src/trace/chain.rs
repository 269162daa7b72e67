//! The driver's call chain in a stack trace.
//!
//! A `stacktrace` trigger's frames start inside the tracing machinery and the DMA API
//! (`trace_event_raw_event_dma_map_phys`, `dma_map_phys`, `dma_direct_map_phys`, ...);
//! the code that asked for the mapping comes after. The chain of a mapping is its first
//! [`CHAIN_DEPTH`] frames outside those, innermost first, joined by ` < `, each without
//! the `+0x1c/0x40` offset (`sym-offset` option) or the address (`sym-addr`, `trace-cmd`)
//! the kernel may print after the name. Grouping by the chain rather than by the whole
//! stack keeps one row per driver path however it was reached.

/// Frames of the driver's code kept in a chain.
pub const CHAIN_DEPTH: usize = 2;

/// The chain of mappings traced without a stack.
pub const NO_STACK: &str = "(no stack trace)";

/// Prefixes of the tracing machinery's and the DMA API's functions.
const INTERNAL: [&str; 16] = [
    "trace_event_",
    "perf_trace_",
    "__traceiter_",
    "trace_buffer_",
    "event_trigger",
    "stacktrace_",
    "dma_map_",
    "dma_unmap_",
    "__dma_map_",
    "dma_direct_",
    "iommu_dma_",
    "dma_sync_",
    "swiotlb_",
    "debug_dma_",
    "dma_alloc",
    "dma_free",
];

/// The name of frame `f`, without offset or address.
pub fn function(f: &str) -> &str {
    let f = f.trim();
    let f = match f.find("+0x") {
        Some(i) => &f[..i],
        None => f,
    };
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let f = match f.rsplit_once(' ') {
        Some((name, addr))
            if (addr.starts_with('(')
                && addr.ends_with(')')
                && is_hex(&addr[1..addr.len() - 1]))
                || (addr.starts_with('<')
                    && addr.ends_with('>')
                    && is_hex(&addr[1..addr.len() - 1])) =>
        {
            name
        }
        _ => f,
    };
    f.trim_end()
}

/// Whether `name` belongs to the tracing machinery or the DMA API.
pub fn is_internal(name: &str) -> bool {
    INTERNAL.iter().any(|p| name.starts_with(p))
}

/// The chain of a mapping whose stack is `frames` (innermost first): [`NO_STACK`] without
/// frames, the outermost frame when all are internal.
pub fn chain_of(frames: &[String]) -> String {
    let mut names = frames.iter().map(|f| function(f)).filter(|n| !n.is_empty());
    let mut outside = names
        .clone()
        .filter(|n| !is_internal(n))
        .take(CHAIN_DEPTH)
        .peekable();
    if outside.peek().is_none() {
        return names.next_back().unwrap_or(NO_STACK).to_string();
    }
    outside.collect::<Vec<_>>().join(" < ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn chains_skip_the_dma_api_and_offsets() {
        let frames = v(&[
            "trace_event_raw_event_dma_map_phys",
            "dma_map_phys+0x1c4/0x2a0",
            "usb_stor_Bulk_transport+0x88/0x300",
            "usb_stor_invoke_transport (ffffffc0812a0000)",
            "usb_stor_control_thread",
        ]);
        assert_eq!(
            chain_of(&frames),
            "usb_stor_Bulk_transport < usb_stor_invoke_transport"
        );
        assert_eq!(chain_of(&[]), NO_STACK);
        assert_eq!(chain_of(&v(&["dma_map_phys", "dma_map_sg"])), "dma_map_sg");
        // A name with spaces and parentheses (not an address) is kept whole.
        assert_eq!(
            chain_of(&v(&[
                "dma_map_phys",
                "usb: status (usb_stor_Bulk_transport)"
            ])),
            "usb: status (usb_stor_Bulk_transport)"
        );
        assert_eq!(function("f <ffff0000deadbeef>"), "f");
    }
}
