//! `dmakit replay`'s parser and analysis on traces in the kernel's exact text format:
//! every format file of the `dma:` events, a hand-written trace with known answers,
//! malformed lines with and without `--lenient`, inputs that must not panic, and a trace
//! of a million events.

use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use dmakit_scenario::trace::event::{Event, SingleKind};
use dmakit_scenario::trace::reader::MAX_LINE_BYTES;
use dmakit_scenario::trace::write::{map_phys, stack, unmap_phys, Stamp, HEADER};
use dmakit_scenario::trace::{
    replay, Counts, ReadOptions, ReplayConfig, TraceDir, TraceError, TraceReader,
};
use proptest::prelude::*;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/linux-trace")
        .join(name)
}

fn run(
    text: &str,
    line: u64,
    lenient: bool,
) -> Result<dmakit_scenario::trace::ReplayReport, TraceError> {
    let cfg = ReplayConfig::new(line, 10).unwrap();
    replay(text.as_bytes(), ReadOptions { lenient }, &cfg)
}

const PREFIX: &str = "    kworker/u8:3-117     [002] .....   100.000001: ";

/// A line from a format file's `print fmt`, with sample values for its conversions.
fn line_from_format(format: &str) -> (String, String) {
    let name = format
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .unwrap()
        .to_string();
    let fmt_line = format
        .lines()
        .find_map(|l| l.strip_prefix("print fmt: \""))
        .unwrap();
    let fmt = &fmt_line[..fmt_line.find('"').unwrap()];
    let mut out = String::new();
    let mut key = String::new();
    let mut it = fmt.chars().peekable();
    let mut first = true;
    while let Some(c) = it.next() {
        if c != '%' {
            if c == ' ' {
                key.clear();
            } else if c != '=' && c != '/' {
                key.push(c);
            }
            out.push(c);
            continue;
        }
        let mut conv = String::new();
        while let Some(&n) = it.peek() {
            conv.push(n);
            it.next();
            if n.is_ascii_alphabetic() && n != 'l' && n != 'z' {
                break;
            }
        }
        let value = match (first, key.as_str(), conv.as_str()) {
            (true, _, "s") => "fe320000.mmc",
            (_, "dir", _) => "FROM_DEVICE",
            (_, "dma_addrs" | "phys_addrs", "s") => "{0x80010000,0x80011000}",
            (_, "sizes", "s") => "{0x1000,0x40}",
            (_, "flags", "s") => "GFP_KERNEL|__GFP_ZERO",
            (_, "attrs", "s") => "",
            (_, "nents" | "ents", "d") => "2",
            (_, "err", "d") => "-12",
            (_, "virt_addr", "p") => "00000000c0ffee00",
            (_, _, "s") => "", // the `[TRUNCATED]` marker of dma_map_sg: not truncated
            (_, _, "llx") => "80010000",
            (_, _, "zu") => "4096",
            other => panic!("{name}: conversion {other:?} not covered"),
        };
        first = false;
        out.push_str(value);
    }
    (name, out)
}

#[test]
fn every_format_file_of_the_kernel_parses() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(data("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "format") {
            continue;
        }
        let (name, payload) = line_from_format(&std::fs::read_to_string(&path).unwrap());
        let text = format!("{PREFIX}{name}: {payload}\n");
        let mut r = TraceReader::new(text.as_bytes(), ReadOptions::default());
        let rec = r
            .next_record()
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
            .unwrap_or_else(|| panic!("{name} not read:\n{text}"));
        assert_eq!(rec.event.name(), name, "{text}");
        assert_eq!(rec.event.device(), "fe320000.mmc");
        names.push(name);
    }
    assert_eq!(names.len(), 16, "{names:?}");
}

#[test]
fn a_real_kmalloc_trace_with_stacks_is_read_and_ignored() {
    let text = std::fs::read_to_string(data("kmalloc-stacktrace-x86_64-vm-6.18.txt")).unwrap();
    // The excerpt is cut with `--` lines (grep's separator): not trace lines.
    let text: String = text
        .lines()
        .filter(|l| *l != "--")
        .map(|l| format!("{l}\n"))
        .collect();
    let r = run(&text, 64, false).unwrap();
    assert_eq!(r.events.values().sum::<u64>(), 0);
    assert_eq!(r.total, Counts::default());
    assert_eq!(
        r.other_entries,
        text.lines().filter(|l| l.contains(": kmalloc: ")).count() as u64
    );
    assert!(r.other_entries > 10);
}

fn counts(m: u64, i: u64, eb: u64, ebytes: u64, sb: u64, sbytes: u64, miss: u64) -> Counts {
    Counts {
        mappings: m,
        inbound: i,
        exact_bounces: eb,
        exact_bytes: ebytes,
        size_only_bounces: sb,
        size_only_bytes: sbytes,
        size_only_misses: miss,
    }
}

#[test]
fn known_answers_at_64_byte_lines() {
    let text = std::fs::read_to_string(data("known-answers.txt")).unwrap();
    let r = run(&text, 64, false).unwrap();
    // usb: 13 B at +8 (both rules), 128 B at +0x48 (exact only: size-only sees a size of
    // two lines... of one 128-byte class), 5 B out (neither), 8 B at +4 (both).
    let usb = &r
        .devices
        .iter()
        .find(|d| d.device == "xhci-hcd.0.auto")
        .unwrap()
        .counts;
    assert_eq!(
        *usb,
        counts(4, 3, 3, 2 * (13 + 128 + 8), 2, 2 * (13 + 8), 1)
    );
    // mmc: a 512 B page part and a 64 B line (aligned), an sg page and 48 B at +0x10 (exact
    // only: its 64-byte class is a multiple of the line), 128 traced outbound pages.
    let mmc = &r
        .devices
        .iter()
        .find(|d| d.device == "fe320000.mmc")
        .unwrap()
        .counts;
    // Its two syncs (for the CPU, for the device) copy the bounced 48 bytes twice more.
    assert_eq!(*mmc, counts(132, 4, 1, 2 * 48 + 2 * 48, 0, 0, 1));
    assert_eq!(r.total, counts(136, 7, 4, 394 + 96, 2, 42, 2));
    assert_eq!(
        (
            r.failed_mappings,
            r.mmio_mappings,
            r.unsized_sg_entries,
            r.untraced_sg_entries
        ),
        (2, 2, 3, 2)
    );
    assert_eq!((r.lost_events, r.other_entries, r.skipped_lines), (3, 1, 0));
    assert_eq!(r.events["dma_map_phys"], 7);
    assert_eq!(r.events["dma_map_sg"], 3);
    for name in [
        "dma_map_page",
        "dma_map_resource",
        "dma_map_sg_err",
        "dma_unmap_phys",
        "dma_unmap_page",
        "dma_unmap_resource",
        "dma_unmap_sg",
        "dma_sync_single_for_cpu",
        "dma_sync_single_for_device",
        "dma_sync_sg_for_cpu",
        "dma_sync_sg_for_device",
        "dma_alloc",
        "dma_free",
        "dma_alloc_pages",
        "dma_free_pages",
        "dma_alloc_sgt",
        "dma_free_sgt",
        "dma_alloc_sgt_err",
    ] {
        assert_eq!(r.events.get(name), Some(&1), "{name}");
    }
    // The stack after another CPU's entry belongs to the first event; the older name's
    // stack names the same driver path.
    let chains: Vec<(&str, u64)> = r
        .chains
        .iter()
        .map(|c| (c.chain.as_str(), c.counts.exact_bounces))
        .collect();
    assert_eq!(
        chains,
        [
            ("usb_stor_Bulk_transport < usb_stor_invoke_transport", 2),
            ("mmc_blk_mq_issue_rq", 1),
            ("usb_stor_msg_common < usb_stor_bulk_transfer_buf", 1),
        ]
    );
    assert_eq!(r.chains[0].share_ppm, 500_000);
    assert_eq!(r.chains[0].devices, "xhci-hcd.0.auto");
    assert!(r
        .chains
        .iter()
        .all(|c| c.suggestion.starts_with("mark this allocation: ")));
}

#[test]
fn known_answers_at_128_byte_lines() {
    let text = std::fs::read_to_string(data("known-answers.txt")).unwrap();
    let r = run(&text, 128, false).unwrap();
    let usb = &r
        .devices
        .iter()
        .find(|d| d.device == "xhci-hcd.0.auto")
        .unwrap()
        .counts;
    // The 128 B buffer at +0x48 is one 128-byte class: size-only lets it through.
    assert_eq!(
        *usb,
        counts(4, 3, 3, 2 * (13 + 128 + 8), 2, 2 * (13 + 8), 1)
    );
    // The 64 B buffer at 0x...040 now shares a 128-byte line; the 48 B one's class (64) is
    // no multiple of 128: both rules bounce both.
    let mmc = &r
        .devices
        .iter()
        .find(|d| d.device == "fe320000.mmc")
        .unwrap()
        .counts;
    // Both are synced twice (the 64-byte one singly, the 48-byte one in its list).
    let mmc_bytes = 2 * (64 + 48) + 2 * (64 + 48);
    assert_eq!(*mmc, counts(132, 4, 2, mmc_bytes, 2, mmc_bytes, 0));
    assert_eq!(r.total, counts(136, 7, 5, 522 + 224, 4, 266 + 224, 1));
    assert_eq!(
        r.chains[0].chain,
        "usb_stor_Bulk_transport < usb_stor_invoke_transport"
    );
    assert_eq!(r.chains[1].chain, "(no stack trace)");
    assert!(r.chains[1].suggestion.contains("stacktrace trigger"));
    assert_eq!(r.chains.len(), 4);
}

#[test]
fn malformed_lines_are_named_or_skipped() {
    let good = format!(
        "{PREFIX}dma_map_phys: d dir=FROM_DEVICE dma_addr=1008 size=8 phys_addr=1008 attrs=\n"
    );
    let cases = [
        ("dma_map_phys: d dir=SIDEWAYS dma_addr=0 size=8 phys_addr=0 attrs=", "`dir=SIDEWAYS`"),
        ("dma_map_phys: d dir=TO_DEVICE dma_addr=xyz size=8 phys_addr=0 attrs=", "`dma_addr=xyz` is not a hexadecimal number"),
        ("dma_map_phys: d dir=TO_DEVICE dma_addr=0 size=-1 phys_addr=0 attrs=", "`size=-1`"),
        ("dma_map_phys: d dir=TO_DEVICE dma_addr=0 size=8 attrs=", "expected `phys_addr=`"),
        ("dma_map_phys: d dir=TO_DEVICE dma_addr=0 size=8 phys_addr=0 attrs= extra", "unexpected `extra`"),
        ("dma_map_phys: d dir=TO_DEVICE dma_addr=0 size=8 phys_addr=0", "`attrs` is missing"),
        ("dma_map_sg: d dir=TO_DEVICE nents=2/2 ents=2/2 dma_addrs={0x1} sizes={0x1} phys_addrs={0x1,0x2} attrs=", "`dma_addrs` holds 1 entries, the counts say 2"),
        ("dma_map_sg: d dir=TO_DEVICE nents=128/130 ents=128/130 dma_addrs={} sizes={} phys_addrs={} attrs=", "`[TRUNCATED]`"),
        ("dma_map_sg: d dir=TO_DEVICE nents=3/200 ents=3/3 [TRUNCATED] dma_addrs={} sizes={} phys_addrs={} attrs=", "min(n, 128)/n"),
        ("dma_sync_sg_for_cpu: d dir=TO_DEVICE dma_addrs={0x1,0x2} sizes={0x1}", "2 DMA addresses but 1 sizes"),
        ("dma_unmap_sg: d dir=TO_DEVICE phys_addrs={0x1,} attrs=", "an array like"),
        ("dma_alloc: d dir=BIDIRECTIONAL dma_addr=0 size=8 virt_addr=0 flags= attrs=", "GFP flag names"),
    ];
    for (i, (payload, want)) in cases.iter().enumerate() {
        let text = format!("{good}{PREFIX}{payload}\n{good}");
        let e = run(&text, 64, false).unwrap_err();
        assert!(
            matches!(e, TraceError::Malformed { line: 2, .. }),
            "case {i}: {e:?}"
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with("line 2: ") && shown.contains(want),
            "case {i}: {shown}"
        );
        let r = run(&text, 64, true).unwrap();
        assert_eq!(
            (r.skipped_lines, r.total.mappings, r.total.exact_bounces),
            (1, 2, 2),
            "case {i}"
        );
        assert!(r.first_skipped.as_deref().unwrap().contains(want));
    }
    // Lines that are not trace lines at all, a frame outside a stack, a long line, bad UTF-8.
    let long = format!("{PREFIX}dma_map_phys: {}\n", "x".repeat(MAX_LINE_BYTES));
    let bytes_cases: [(Vec<u8>, &str); 4] = [
        (b"garbage\n".to_vec(), "not a trace entry"),
        (
            b" => orphan_frame\n".to_vec(),
            "outside a `<stack trace>` block",
        ),
        (long.into_bytes(), "longer than 65536 bytes"),
        (
            b"   a-1 [000] ..... 1.0: dma_map_phys: \xff\n".to_vec(),
            "not UTF-8",
        ),
    ];
    for (bad, want) in bytes_cases {
        let mut text = good.clone().into_bytes();
        text.extend_from_slice(&bad);
        text.extend_from_slice(good.as_bytes());
        let cfg = ReplayConfig::new(64, 10).unwrap();
        let e = replay(&text[..], ReadOptions::default(), &cfg).unwrap_err();
        assert!(
            e.to_string().starts_with("line 2: ") && e.to_string().contains(want),
            "{e}"
        );
        let r = replay(&text[..], ReadOptions { lenient: true }, &cfg).unwrap();
        assert_eq!((r.skipped_lines, r.total.mappings), (1, 2), "{want}");
    }
}

#[test]
fn a_bad_cache_line_is_refused() {
    assert!(ReplayConfig::new(48, 5).is_err());
    assert!(ReplayConfig::new(128, 5).is_ok());
}

/// Lines of the kernel's format to mutate.
const SEEDS: [&str; 6] = [
    "    kworker/u8:3-117     [000] .....   100.000001: dma_map_phys: xhci dir=FROM_DEVICE dma_addr=80002008 size=13 phys_addr=80002008 attrs=",
    "    kworker/u8:3-117     [001] .....   100.000011: dma_map_sg: mmc dir=FROM_DEVICE nents=2/2 ents=2/2 dma_addrs={0x80010000,0x80011010} sizes={0x1000,0x30} phys_addrs={0x80010000,0x80011010} attrs=",
    "    kworker/u8:3-117     [000] .....   100.000003: <stack trace>",
    " => usb_stor_Bulk_transport+0x88/0x300",
    "    kworker/u8:3-117     [001] .....   100.000026: dma_alloc: mmc dir=BIDIRECTIONAL dma_addr=a0000000 size=4096 virt_addr=00000000c0ffee00 flags=GFP_KERNEL|__GFP_ZERO attrs=",
    "CPU:1 [LOST 3 EVENTS]",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let cfg = ReplayConfig::new(64, 5).unwrap();
        let _ = replay(&bytes[..], ReadOptions::default(), &cfg);
        let lenient = replay(&bytes[..], ReadOptions { lenient: true }, &cfg);
        prop_assert!(lenient.is_ok());
    }

    #[test]
    fn mutated_lines_never_panic(
        picks in proptest::collection::vec((0..SEEDS.len(), any::<usize>(), any::<u8>(), 0..3u8), 1..24)
    ) {
        let mut text = Vec::new();
        for (seed, pos, byte, op) in picks {
            let mut l = SEEDS[seed].as_bytes().to_vec();
            let at = pos % (l.len() + 1);
            match op {
                0 => l.insert(at, byte),
                1 if at < l.len() => { l.remove(at); }
                _ => l.truncate(at),
            }
            text.extend_from_slice(&l);
            text.push(b'\n');
        }
        let cfg = ReplayConfig::new(128, 5).unwrap();
        let strict = replay(&text[..], ReadOptions::default(), &cfg);
        let lenient = replay(&text[..], ReadOptions { lenient: true }, &cfg).unwrap();
        if strict.is_ok() {
            prop_assert_eq!(lenient.skipped_lines, 0);
        } else {
            prop_assert!(lenient.skipped_lines > 0);
        }
    }
}

/// A trace of `maps` mappings and their unmaps written on the fly: every fourth mapping
/// an inbound 13-byte buffer at an odd offset (both rules bounce it), every fourth one
/// inbound 128 bytes at +0x48 (exact only, at 64-byte lines: a miss), the rest outbound.
struct Generated {
    next: u64,
    maps: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Read for Generated {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
            if self.next == 0 {
                self.buf.extend_from_slice(HEADER.as_bytes());
            }
            if self.next >= self.maps {
                return Ok(0);
            }
            let i = self.next;
            self.next += 1;
            let s = Stamp {
                task: "irq/45-ehci",
                pid: 301,
                cpu: (i % 4) as u32,
                micros: i * 3,
            };
            let phys = 0x8000_0000 + i * 0x1000;
            let (dir, addr, size) = match i % 4 {
                0 => (TraceDir::FromDevice, phys + 8, 13),
                1 => (TraceDir::FromDevice, phys + 0x48, 128),
                _ => (TraceDir::ToDevice, phys, 512),
            };
            map_phys(&mut self.buf, &s, "ehci", dir, addr, size, addr)?;
            let site = if i % 4 == 0 {
                "ehci_urb_enqueue"
            } else {
                "ehci_submit_async"
            };
            stack(
                &mut self.buf,
                &Stamp {
                    micros: i * 3 + 1,
                    ..s
                },
                [
                    "trace_event_raw_event_dma_map_phys",
                    "dma_map_phys",
                    site,
                    "usb_hcd_submit_urb",
                ],
            )?;
            unmap_phys(
                &mut self.buf,
                &Stamp {
                    micros: i * 3 + 2,
                    ..s
                },
                "ehci",
                dir,
                addr,
                size,
            )?;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn a_million_events_replay_in_seconds() {
    let maps = 500_000;
    let input = BufReader::with_capacity(
        1 << 16,
        Generated {
            next: 0,
            maps,
            buf: Vec::new(),
            at: 0,
        },
    );
    let cfg = ReplayConfig::new(64, 5).unwrap();
    let started = Instant::now();
    let r = replay(input, ReadOptions::default(), &cfg).unwrap();
    let took = started.elapsed();
    let events: u64 = r.events.values().sum();
    println!("{events} events, {} lines replayed in {took:.2?}", r.lines);
    assert_eq!(events, 1_000_000);
    let q = maps / 4;
    assert_eq!(
        r.total,
        counts(maps, 2 * q, 2 * q, q * 2 * (13 + 128), q, q * 2 * 13, q)
    );
    assert_eq!(r.chains[0].chain, "ehci_submit_async < usb_hcd_submit_urb");
    assert_eq!(r.chains[0].counts.exact_bounces, q);
    assert!(took.as_secs() < 30, "took {took:?}");
}

#[test]
fn the_writer_writes_what_the_reader_reads() {
    let mut out = Vec::new();
    let s = Stamp {
        task: "kworker/0:1H",
        pid: 42,
        cpu: 3,
        micros: 12_345_678,
    };
    map_phys(
        &mut out,
        &s,
        "my dev",
        TraceDir::Bidirectional,
        0xffff_ffff_ffff_ffff,
        64,
        0x8000_0040,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "    kworker/0:1H-42      [003] .....    12.345678: dma_map_phys: my_dev dir=BIDIRECTIONAL \
         dma_addr=ffffffffffffffff size=64 phys_addr=80000040 attrs=\n"
    );
    let rec = TraceReader::new(text.as_bytes(), ReadOptions::default())
        .next_record()
        .unwrap()
        .unwrap();
    assert!(matches!(
        rec.event,
        Event::Map {
            kind: SingleKind::Phys,
            size: 64,
            phys_addr: 0x8000_0040,
            ..
        }
    ));
}

#[test]
fn the_first_kernels_sg_format_without_counts_is_read() {
    // Linux 6.12 to 6.15 print no nents/ents and record every entry.
    let text = format!(
        "{PREFIX}dma_map_sg: d dir=FROM_DEVICE dma_addrs={{0x1000,0x2008}} sizes={{0x1000,0x8}} \
         phys_addrs={{0x1000,0x2008}} attrs=\n"
    );
    let r = run(&text, 64, false).unwrap();
    assert_eq!(r.total, counts(2, 2, 1, 16, 1, 16, 0));
}

#[test]
fn rows_beyond_the_limits_are_added_up_not_kept() {
    use dmakit_scenario::trace::replay::{MAX_DEVICES, OTHERS};
    let mut text = String::new();
    let n = MAX_DEVICES + 10;
    for i in 0..n {
        text.push_str(&format!(
            "{PREFIX}dma_map_phys: dev{i} dir=FROM_DEVICE dma_addr=1008 size=8 phys_addr=1008 attrs=\n"
        ));
    }
    let r = run(&text, 64, false).unwrap();
    assert_eq!(r.devices.len(), MAX_DEVICES + 1);
    let others = r.devices.iter().find(|d| d.device == OTHERS).unwrap();
    assert_eq!(others.counts.mappings, 10);
    assert_eq!(r.total.exact_bounces, n as u64);
}

#[test]
fn syncs_copy_only_inside_a_live_bounced_mapping() {
    let lines = [
        "dma_map_phys: d dir=FROM_DEVICE dma_addr=2008 size=13 phys_addr=2008 attrs=",
        // Inside it (a dma_sync_single_range_for_cpu): 4 bytes copied back.
        "dma_sync_single_for_cpu: d dir=FROM_DEVICE dma_addr=2010 size=4",
        // Another device at the same address: not this mapping.
        "dma_sync_single_for_cpu: e dir=FROM_DEVICE dma_addr=2008 size=13",
        "dma_unmap_phys: d dir=FROM_DEVICE dma_addr=2008 size=13 attrs=",
        // After the unmap: nothing is bounced there any more.
        "dma_sync_single_for_cpu: d dir=FROM_DEVICE dma_addr=2008 size=13",
        // An aligned mapping at the same address later: neither it nor its sync copies.
        "dma_map_phys: d dir=FROM_DEVICE dma_addr=2008 size=64 phys_addr=4000 attrs=",
        "dma_sync_single_for_cpu: d dir=FROM_DEVICE dma_addr=2008 size=64",
    ];
    let text: String = lines.iter().map(|l| format!("{PREFIX}{l}\n")).collect();
    let r = run(&text, 64, false).unwrap();
    let both = 2 * 13 + 4;
    assert_eq!((r.total.exact_bytes, r.total.size_only_bytes), (both, both));
    assert_eq!(r.total.exact_bounces, 1);
}
