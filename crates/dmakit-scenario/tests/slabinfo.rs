//! `/proc/slabinfo` parsing and the minimum-alignment cost model, on synthetic input, on
//! kmalloc's own slabinfo output and on the shipped snapshot, checked against an
//! independent computation written here.

use std::collections::BTreeMap;

use dmakit::{PhysAddr, PhysRange};
use dmakit_mem::{
    AllocKind, Kmalloc, MinAlignPolicy, SlabGeometry, SlabOrderPolicy, ZonedPageAllocator,
};
use dmakit_scenario::footprint::{
    alignment_tradeoff, bounce_pool_cost, kmalloc_footprint, kmalloc_footprints,
    observed_kmalloc_bytes, shipped_footprints, SHIPPED_SLABINFO,
};
use dmakit_scenario::slabinfo::{parse_slabinfo, SlabinfoErrorKind};
use proptest::prelude::*;

const SNAPSHOT: &str = include_str!("../../../data/slabinfo-x86_64-vm-6.18.txt");
const HEADER: &str = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\n";

fn line(name: &str, active: u64, num: u64, size: u64, per: u64, pages: u64) -> String {
    format!(
        "{name} {active} {num} {size} {per} {pages} : tunables 0 0 0 : slabdata {s} {s} 0\n",
        s = num.div_ceil(per.max(1))
    )
}

const MIB: u64 = 1 << 20;

fn kmalloc(min_align: u64, line: u64) -> Kmalloc<ZonedPageAllocator> {
    // Physical memory that is never touched: kmalloc only computes addresses.
    let pages =
        ZonedPageAllocator::new(&[PhysRange::new(PhysAddr::new(64 * MIB), 64 * MIB).unwrap()])
            .unwrap();
    Kmalloc::new(pages, MinAlignPolicy::fixed(min_align, line).unwrap())
}

fn used_pages(k: &Kmalloc<ZonedPageAllocator>) -> u64 {
    k.page_allocator()
        .stats()
        .iter()
        .map(|z| z.pages.used_pages)
        .sum()
}

#[test]
fn slabinfo_output_parses_back() {
    let k = kmalloc(16, 64);
    let mut live = Vec::new();
    for i in 1..600u64 {
        live.push(k.alloc(i * 7 % 3000 + 1, AllocKind::Normal).unwrap());
        if i % 5 == 0 {
            live.push(k.alloc(i % 500 + 1, AllocKind::Dma).unwrap());
        }
    }
    for a in live.iter().step_by(3) {
        k.free(*a).unwrap();
    }
    let text = k.slabinfo();
    let rows = parse_slabinfo(&text).unwrap();
    let stats = k.cache_stats();
    assert_eq!(rows.len(), stats.len());
    for (row, s) in rows.iter().zip(&stats) {
        assert_eq!(row.name, s.name);
        assert_eq!(
            (
                row.active_objs,
                row.num_objs,
                row.objsize,
                row.objperslab,
                row.pagesperslab,
                row.active_slabs,
                row.num_slabs
            ),
            (
                s.active_objs,
                s.num_objs,
                s.object_size,
                s.objects_per_slab,
                s.pages_per_slab,
                s.active_slabs,
                s.num_slabs
            )
        );
    }
    assert!(rows.iter().any(|r| r.active_objs > 0));
    let slab_pages: u64 = stats.iter().map(|s| s.num_slabs * s.pages_per_slab).sum();
    assert_eq!(slab_pages + k.large_pages(), used_pages(&k));
}

#[test]
fn malformed_input_names_the_line() {
    let cases: Vec<(String, usize, SlabinfoErrorKind)> = vec![
        (String::new(), 1, SlabinfoErrorKind::Empty),
        ("hello\n".into(), 1, SlabinfoErrorKind::MissingHeader),
        (
            "slabinfo - version: 2.0\n".into(),
            1,
            SlabinfoErrorKind::UnsupportedVersion("2.0".into()),
        ),
        (
            format!("{HEADER}kmalloc-8 1 2 8 512 1 : tunables 0 0 0 : slabdata 1 1\n"),
            3,
            SlabinfoErrorKind::FieldCount(15),
        ),
        (
            format!(
                "{HEADER}{}kmalloc-16 1 x 16 256 1 : tunables 0 0 0 : slabdata 1 1 0\n",
                line("kmalloc-8", 1, 512, 8, 512, 1)
            ),
            4,
            SlabinfoErrorKind::NotANumber {
                field: "num_objs",
                found: "x".into(),
            },
        ),
        (
            format!("{HEADER}\nkmalloc-8 1 2 8 512 1 : tunable 0 0 0 : slabdata 1 1 0\n"),
            4,
            SlabinfoErrorKind::Separator {
                expected: "tunables",
                found: "tunable".into(),
            },
        ),
        (
            format!("{HEADER}kmalloc-8 9 2 8 512 1 : tunables 0 0 0 : slabdata 1 1 0\n"),
            3,
            SlabinfoErrorKind::Inconsistent("active_objs exceeds num_objs"),
        ),
        (
            format!("{HEADER}kmalloc-8 1 2 8 512 1 : tunables 0 0 0 : slabdata 1 1 -1\n"),
            3,
            SlabinfoErrorKind::NotANumber {
                field: "sharedavail",
                found: "-1".into(),
            },
        ),
    ];
    for (text, want_line, want_kind) in cases {
        let err = parse_slabinfo(&text).unwrap_err();
        assert_eq!((err.line, &err.kind), (want_line, &want_kind), "{text:?}");
        assert!(err.to_string().contains(&format!("line {want_line}")));
    }
    let err = parse_slabinfo(&format!("{HEADER}a 1 2 3\n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "slabinfo line 3: expected 16 whitespace-separated fields, found 4"
    );
}

fn synthetic() -> String {
    let mut s = String::from(HEADER);
    s += &line("kmalloc-8", 1000, 1024, 8, 512, 1);
    s += &line("kmalloc-96", 50, 84, 96, 42, 1);
    s += &line("kmalloc-cg-192", 30, 42, 192, 21, 1);
    s += &line("dma-kmalloc-64", 100, 128, 64, 64, 1); // not counted: line aligned anyway
    s += &line("kmalloc_buckets", 36, 36, 112, 36, 1); // not a kmalloc size class
    s += &line("dentry", 77, 84, 192, 21, 1);
    s
}

#[test]
fn synthetic_input_gives_hand_computed_values() {
    let text = synthetic();
    let rows = parse_slabinfo(&text).unwrap();
    assert_eq!(rows.len(), 6);
    assert_eq!((rows[1].name, rows[1].line), ("kmalloc-96", 4));
    let fps = kmalloc_footprints(&rows);
    let got: Vec<(u64, u64, u64, u64)> = fps
        .iter()
        .map(|f| (f.min_align, f.objects, f.object_bytes, f.slab_pages))
        .collect();
    // align 8:   8-byte x1000 -> 2 pages; 96 x50 -> 2; cg-192 x30 -> 2.
    // align 16:  8 -> 16: 1000/256 -> 4 pages.   align 32: 8 -> 32: 1000/128 -> 8 pages.
    // align 64:  8 -> 64: 1000/64 -> 16 pages; 96 -> 128: 50/32 -> 2 pages; 192 stays.
    // align 128: 1050 objects in kmalloc-128 -> 33 pages; cg 192 -> 256: 30/16 -> 2 pages.
    assert_eq!(
        got,
        [
            (8, 1080, 8000 + 4800 + 5760, 6),
            (16, 1080, 16000 + 4800 + 5760, 8),
            (32, 1080, 32000 + 4800 + 5760, 12),
            (64, 1080, 64000 + 6400 + 5760, 20),
            (128, 1080, 1050 * 128 + 30 * 256, 35),
        ]
    );
    assert!(fps.iter().all(|f| f.slab_bytes == f.slab_pages * 4096));
    let at128 = &fps[4];
    assert_eq!(
        at128
            .classes
            .iter()
            .map(|c| (c.family.as_str(), c.class, c.objects, c.pages))
            .collect::<Vec<_>>(),
        [("kmalloc", 128, 1050, 33), ("kmalloc-cg", 256, 30, 2)]
    );
    assert_eq!(observed_kmalloc_bytes(&rows), 6 * 4096);
    assert!(kmalloc_footprint(&rows, 12, &SlabOrderPolicy::default()).is_err());
}

#[test]
fn slab_rounding_can_make_a_larger_alignment_cheaper() {
    // What is always true: object bytes never shrink as the alignment grows. What is not:
    // slab memory. One object each in the 64 and 96 caches needs two slabs; under alignment
    // 128 both go to the 128 cache and share one.
    let text = format!(
        "{HEADER}{}{}",
        line("kmalloc-64", 1, 64, 64, 64, 1),
        line("kmalloc-96", 1, 42, 96, 42, 1)
    );
    let rows = parse_slabinfo(&text).unwrap();
    let fps = kmalloc_footprints(&rows);
    let pages: Vec<u64> = fps.iter().map(|f| f.slab_pages).collect();
    assert_eq!(pages, [2, 2, 2, 2, 1]);
    let bytes: Vec<u64> = fps.iter().map(|f| f.object_bytes).collect();
    assert_eq!(bytes, [160, 160, 160, 192, 256]);
}

/// The independent computation: plain loops over the file's lines, geometry read from the
/// file's own `kmalloc-<size>` rows, target classes from explicit tables.
fn independent(text: &str) -> BTreeMap<u64, (u64, u64, u64)> {
    let labels = [
        ("8", 8u64),
        ("16", 16),
        ("32", 32),
        ("64", 64),
        ("96", 96),
        ("128", 128),
        ("192", 192),
        ("256", 256),
        ("512", 512),
        ("1k", 1024),
        ("2k", 2048),
        ("4k", 4096),
        ("8k", 8192),
    ];
    // Which class a source class moves to, per alignment.
    let tables: [(u64, [u64; 13]); 5] = [
        (
            8,
            [
                8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
            ],
        ),
        (
            16,
            [
                16, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
            ],
        ),
        (
            32,
            [
                32, 32, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
            ],
        ),
        (
            64,
            [
                64, 64, 64, 64, 128, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
            ],
        ),
        (
            128,
            [
                128, 128, 128, 128, 128, 128, 256, 256, 512, 1024, 2048, 4096, 8192,
            ],
        ),
    ];
    let mut geometry: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut objects: Vec<(String, usize, u64)> = Vec::new(); // family, label index, objects
    for l in text.lines().skip(1) {
        if l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        let name = f[0];
        if !name.starts_with("kmalloc-") {
            continue;
        }
        let cut = name.rfind('-').unwrap();
        let (family, label) = (&name[..cut], &name[cut + 1..]);
        let Some(idx) = labels.iter().position(|(s, _)| *s == label) else {
            continue;
        };
        if family == "kmalloc" {
            geometry.insert(
                labels[idx].1,
                (f[4].parse().unwrap(), f[5].parse().unwrap()),
            );
        }
        objects.push((family.to_string(), idx, f[1].parse().unwrap()));
    }
    let mut out = BTreeMap::new();
    for (align, table) in tables {
        let mut per: BTreeMap<(String, u64), u64> = BTreeMap::new();
        for (family, idx, n) in &objects {
            *per.entry((family.clone(), table[*idx])).or_insert(0) += n;
        }
        let (mut objs, mut obj_bytes, mut pages) = (0, 0, 0);
        for ((_, class), n) in per {
            let (per_slab, pages_per_slab) = geometry[&class];
            objs += n;
            obj_bytes += n * class;
            pages += n.div_ceil(per_slab) * pages_per_slab;
        }
        out.insert(align, (objs, obj_bytes, pages));
    }
    out
}

#[test]
fn shipped_snapshot_matches_the_independent_computation() {
    assert_eq!(SHIPPED_SLABINFO, SNAPSHOT);
    let rows = parse_slabinfo(SHIPPED_SLABINFO).unwrap();
    assert_eq!(rows.len(), 235);
    let fps = shipped_footprints().unwrap();
    let mine: BTreeMap<u64, (u64, u64, u64)> = fps
        .iter()
        .map(|f| (f.min_align, (f.objects, f.object_bytes, f.slab_pages)))
        .collect();
    assert_eq!(mine, independent(SNAPSHOT));
    // The figures themselves (slab bytes = pages * 4096), also reproduced by hand.
    let bytes: Vec<(u64, u64)> = fps.iter().map(|f| (f.min_align, f.slab_bytes)).collect();
    assert_eq!(
        bytes,
        [
            (8, 5_853_184),
            (16, 5_873_664),
            (32, 5_955_584),
            (64, 6_279_168),
            (128, 6_930_432)
        ]
    );
    assert!(fps.iter().all(|f| f.objects == 18_738));
    assert_eq!(observed_kmalloc_bytes(&rows), 6_508_544);
}

#[test]
fn on_the_snapshot_memory_grows_with_the_alignment() {
    let fps = shipped_footprints().unwrap();
    for w in fps.windows(2) {
        assert!(w[1].object_bytes > w[0].object_bytes);
        assert!(w[1].slab_bytes >= w[0].slab_bytes);
    }
    assert!(fps[4].slab_bytes > fps[0].slab_bytes);
}

#[test]
fn slab_geometry_reproduces_the_snapshot() {
    let rows = parse_slabinfo(SHIPPED_SLABINFO).unwrap();
    let policy = SlabOrderPolicy::default();
    let mut checked = 0;
    for r in rows.iter().filter(|r| r.name.contains("kmalloc-")) {
        let g = SlabGeometry::for_object(r.objsize, &policy).unwrap();
        assert_eq!(
            (g.objects_per_slab, g.pages_per_slab),
            (r.objperslab, r.pagesperslab),
            "{}",
            r.name
        );
        checked += 1;
    }
    assert_eq!(checked, 13 * 4);
}

#[test]
fn bounce_pool_cost_and_the_tradeoff() {
    let c = bounce_pool_cost(64 << 20);
    assert_eq!(
        (c.pool_bytes, c.slots, c.metadata_bytes, c.total_bytes),
        (64 << 20, 32768, 524_288, (64 << 20) + 524_288)
    );
    let c = bounce_pool_cost(1);
    assert_eq!((c.pool_bytes, c.slots, c.metadata_bytes), (4096, 2, 32));
    assert_eq!(bounce_pool_cost(0).total_bytes, 0);
    assert_eq!(bounce_pool_cost(u64::MAX).pool_bytes % 4096, 0);

    let rows = parse_slabinfo(SHIPPED_SLABINFO).unwrap();
    let t = alignment_tradeoff(&rows, 128, 0).unwrap();
    assert_eq!(t.net_saving_bytes, 6_930_432 - 5_853_184);
    // On this small VM a 64 MiB pool costs far more than 128-byte alignment wastes; a
    // 256 KiB pool does not.
    assert!(
        alignment_tradeoff(&rows, 128, 64 << 20)
            .unwrap()
            .net_saving_bytes
            < 0
    );
    let small_pool = alignment_tradeoff(&rows, 128, 256 << 10).unwrap();
    assert_eq!(
        small_pool.net_saving_bytes,
        1_077_248 - (256 << 10) - 128 * 16
    );
    assert!(alignment_tradeoff(&rows, 48, 0).is_err());
}

proptest! {
    #[test]
    fn object_bytes_never_shrink_as_alignment_grows(counts in prop::collection::vec(0u64..5000, 13)) {
        let labels = ["8", "16", "32", "64", "96", "128", "192", "256", "512", "1k", "2k", "4k", "8k"];
        let mut text = String::from(HEADER);
        for (label, n) in labels.iter().zip(&counts) {
            text += &line(&format!("kmalloc-{label}"), *n, *n, 8, 512, 1);
        }
        let rows = parse_slabinfo(&text).unwrap();
        let fps = kmalloc_footprints(&rows);
        prop_assert_eq!(fps.len(), 5);
        for w in fps.windows(2) {
            prop_assert!(w[1].object_bytes >= w[0].object_bytes);
            prop_assert_eq!(w[1].objects, w[0].objects);
        }
        // Slab memory always covers the objects and exceeds them by less than one slab of
        // the largest shape per class.
        for f in &fps {
            prop_assert!(f.slab_bytes >= f.object_bytes);
            prop_assert!(f.slab_bytes < f.object_bytes + 13 * 8 * 4096);
        }
    }
}
