//! The scenario file's limits at their edges: the largest value accepted, the next one
//! refused with its position; touching RAM ranges accepted, overlapping ones refused.

use dmakit_scenario::config::{
    MAX_BOUNCE_POOL_BYTES, MAX_CACHE_BYTES, MAX_CACHE_WAYS, MAX_DEVICES, MAX_LIVE_OBJECTS,
    MAX_RAM_RANGES, MAX_RESIDENT_BYTES,
};
use dmakit_scenario::{parse_scenario, Scenario, ScenarioError};

/// A one-device scenario; `machine` is the `[machine]` body after `cpus` and
/// `cache_line` (line 5 onwards), `devices` extra `[[device]]` tables.
fn scenario(machine: &str, devices: &str) -> String {
    format!(
        "name = \"edge\"\n[machine]\ncpus = 2\ncache_line = 64\n{machine}\n\
         [[device]]\nname = \"d\"\n{devices}\
         [[driver]]\nname = \"x\"\ndevice = \"d\"\nweight = 1.0\n[[driver.transfer]]\n\
         site = \"s\"\ndirection = \"to-device\"\nsize = 64\nbuffer = \"kmalloc\"\n"
    )
}

fn parse(machine: &str, devices: &str) -> Result<Scenario, ScenarioError> {
    parse_scenario(&scenario(machine, devices), "edge.toml")
}

const RAM: &str = "ram = [{ start = 0, size = \"4 GiB\" }]\nbounce_pool = \"1 MiB\"";

fn at(e: &ScenarioError) -> (usize, usize, &str) {
    (e.line, e.column, e.field.as_str())
}

#[test]
fn the_cache_is_accepted_up_to_its_limit() {
    let ok = parse(&format!("cache_size = {MAX_CACHE_BYTES}\n{RAM}"), "").expect("at the limit");
    assert_eq!(ok.machine.cache.capacity, MAX_CACHE_BYTES);
    let past = MAX_CACHE_BYTES + 4 * 64;
    let e = parse(&format!("cache_size = {past}\n{RAM}"), "").unwrap_err();
    assert_eq!(at(&e), (5, 14, "machine.cache_size"), "{e}");
    let ways = format!("cache_size = \"1 MiB\"\ncache_ways = {MAX_CACHE_WAYS}\n{RAM}");
    assert_eq!(
        parse(&ways, "")
            .expect("ways at the limit")
            .machine
            .cache
            .ways,
        64
    );
    let ways = format!(
        "cache_size = \"1 MiB\"\ncache_ways = {}\n{RAM}",
        MAX_CACHE_WAYS * 2
    );
    let e = parse(&ways, "").unwrap_err();
    assert_eq!(at(&e), (6, 14, "machine.cache_ways"), "{e}");
}

#[test]
fn ram_ranges_may_touch_but_not_overlap() {
    let touch =
        "ram = [{ start = 0, size = \"1 GiB\" }, { start = \"1 GiB\", size = \"1 GiB\" }]\n\
                 bounce_pool = \"1 MiB\"";
    assert_eq!(parse(touch, "").expect("touching").machine.ram.len(), 2);
    let inside = "ram = [{ start = 0, size = \"2 GiB\" },\n  { start = \"1 GiB\", size = 4096 }]\n\
                  bounce_pool = \"1 MiB\"";
    let e = parse(inside, "").unwrap_err();
    assert_eq!(at(&e), (6, 13, "machine.ram[1]"), "{e}");
    assert!(e.message.contains("overlaps machine.ram[0]"), "{e}");
    let same_start =
        "ram = [{ start = \"1 GiB\", size = 4096 },\n  { start = 0, size = \"8 GiB\" }]\n\
                      bounce_pool = \"1 MiB\"";
    let e = parse(same_start, "").unwrap_err();
    assert_eq!(at(&e), (6, 13, "machine.ram[1]"), "{e}");
    let ranges = |n: u64| {
        let r: Vec<String> = (0..n)
            .map(|i| format!("{{ start = {}, size = \"1 MiB\" }}", i << 21))
            .collect();
        format!("ram = [{}]\nbounce_pool = \"none\"", r.join(", "))
    };
    let max = MAX_RAM_RANGES as u64;
    let e = parse(&ranges(max + 1), "").unwrap_err();
    assert_eq!(at(&e), (5, 7, "machine.ram"), "{e}");
    let ok = parse(&ranges(max), "").expect("at the limit");
    assert_eq!(ok.machine.ram.len(), MAX_RAM_RANGES);
}

#[test]
fn the_bounce_pool_is_accepted_up_to_its_limit() {
    let pool = |b: u64| format!("ram = [{{ start = 0, size = \"4 GiB\" }}]\nbounce_pool = {b}");
    assert!(parse(&pool(MAX_BOUNCE_POOL_BYTES), "").is_ok());
    let e = parse(&pool(MAX_BOUNCE_POOL_BYTES + 256 * 1024), "").unwrap_err();
    assert_eq!(at(&e), (6, 15, "machine.bounce_pool"), "{e}");
}

#[test]
fn devices_are_accepted_up_to_their_limit() {
    let more = |n: usize| -> String {
        (1..n)
            .map(|i| format!("[[device]]\nname = \"d{i}\"\n"))
            .collect()
    };
    let ok = parse(RAM, &more(MAX_DEVICES)).expect("at the limit");
    assert_eq!(ok.devices.len(), MAX_DEVICES);
    let e = parse(RAM, &more(MAX_DEVICES + 1)).unwrap_err();
    assert_eq!(e.field, format!("device[{MAX_DEVICES}]"), "{e}");
    // device[4096] is the 4097th table: `[[device]]` on line 7 + 2 * 4096.
    assert_eq!((e.line, e.column), (7 + 2 * MAX_DEVICES, 1), "{e}");
}

#[test]
fn live_objects_and_resident_bytes_are_accepted_up_to_their_limits() {
    let live = |n: u64| {
        scenario(RAM, "").replace(
            "[[device]]",
            &format!("[kmalloc]\nlive_objects = {n}\n[[device]]"),
        )
    };
    let ok = parse_scenario(&live(MAX_LIVE_OBJECTS), "edge.toml").expect("at the limit");
    assert_eq!(ok.churn.live_objects, MAX_LIVE_OBJECTS);
    let e = parse_scenario(&live(MAX_LIVE_OBJECTS + 1), "edge.toml").unwrap_err();
    assert_eq!(at(&e), (8, 16, "kmalloc.live_objects"), "{e}");
    // Pages of 256 KiB, 64 in flight: exactly 16 MiB; one more byte of size is refused.
    let queue = |size: u64| {
        scenario(RAM, "")
            .replace("size = 64", &format!("size = {size}\nqueue_depth = 64"))
            .replace("buffer = \"kmalloc\"", "buffer = \"pages\"")
    };
    let ok = parse_scenario(&queue(256 * 1024), "edge.toml").expect("at the limit");
    assert_eq!(ok.drivers[0].transfers[0].queue_depth, 64);
    assert_eq!(MAX_RESIDENT_BYTES, 64 * 256 * 1024);
    let twice = queue(256 * 1024).replace(
        "[[driver.transfer]]",
        "[[driver.transfer]]\nsite = \"t\"\ndirection = \"to-device\"\nsize = 1\n\
         buffer = \"kmalloc\"\n[[driver.transfer]]",
    );
    let e = parse_scenario(&twice, "edge.toml").unwrap_err();
    assert_eq!(e.field, "driver[0].transfer[1]", "{e}");
    assert!(e.message.contains("16777217 bytes"), "{e}");
}
