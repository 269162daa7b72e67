//! dmakit's statistics at the end of the run, printed on the UART.

use crate::platform::Aarch64;
use crate::println;
use dmakit::prelude::*;

/// Prints mappings, bounces by reason, bytes copied, pool usage and high-water, the driver
/// lines that bounced most, and the cache lines maintained.
pub fn print(mapper: &DmaMapper<&'static Aarch64>, platform: &Aarch64) {
    let stats = mapper.stats();
    let t = stats.total();
    let m = &t.mappings;
    println!(
        "dmakit: {} mappings ({} to device, {} from device, {} bidirectional), {} in place",
        t.mappings_total(),
        m.to_device,
        m.from_device,
        m.bidirectional,
        t.direct
    );
    let b = &t.bounced;
    println!(
        "dmakit: {} bounced: {} misaligned, {} forced, {} above mask, {} untrusted; {} bytes copied in, {} out; {} pool-full errors",
        t.bounces_total(),
        b.misaligned,
        b.forced,
        b.above_mask,
        b.untrusted,
        t.bytes_to_bounce,
        t.bytes_from_bounce,
        t.exhaustion_errors
    );
    for pool in &stats.pools {
        let u = &pool.usage;
        println!(
            "dmakit: pool {}: {} bytes, {} in use by {} bounces, high-water {} bytes",
            pool.name, u.total, u.used, u.live, u.high_water
        );
    }
    for site in mapper.top_sites(3) {
        println!(
            "dmakit: bounce site {}: {} bounces, {} bytes",
            site.site(),
            site.bounces,
            site.bytes
        );
    }
    let lines = platform.lines_maintained();
    println!(
        "cache lines maintained ({}-byte lines): {} cleaned (dc cvac), {} invalidated (dc ivac), {} cleaned+invalidated (dc civac)",
        dmakit::platform::CacheMaintenance::cache_line_size(platform),
        lines.cleaned,
        lines.invalidated,
        lines.clean_invalidated
    );
}
