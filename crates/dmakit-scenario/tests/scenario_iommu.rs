//! Scenario devices behind the IOMMU: the built-in phone's display engine scanning out
//! noncontiguous framebuffers and its untrusted USB4 NIC, queues keeping bounces in the
//! pool while the run samples it, and the file format's IOMMU fields.

use std::sync::atomic::AtomicU64;

use dmakit_scenario::churn::SizeDistribution;
use dmakit_scenario::model::{BufferModel, IommuMode, SlabinfoSource};
use dmakit_scenario::{default_scenario, parse_scenario, run_policy, Policy, RunOptions};

fn sizes() -> SizeDistribution {
    SizeDistribution::from_slabinfo(dmakit_scenario::footprint::SHIPPED_SLABINFO).unwrap()
}

fn opts(transfers: u64) -> RunOptions {
    RunOptions {
        seed: 11,
        transfers,
        top_sites: 8,
        log_mappings_of: None,
        threads: dmakit_scenario::workers::machine_cores(),
    }
}

#[test]
fn the_phone_has_a_display_and_an_untrusted_nic_behind_the_iommu() {
    let sc = default_scenario().unwrap();
    let display = sc
        .devices
        .iter()
        .position(|d| d.name() == "display")
        .unwrap();
    let tb = sc
        .devices
        .iter()
        .position(|d| d.name() == "thunderbolt")
        .unwrap();
    assert_eq!(sc.iommu[display], Some(IommuMode::Lazy));
    assert_eq!(sc.iommu[tb], Some(IommuMode::Strict));
    assert!(!sc.devices[tb].is_trusted());
    assert!(sc
        .transfer_sites()
        .any(|(_, t)| matches!(t.buffer, BufferModel::Noncontiguous { .. })));
    assert!(sc.transfer_sites().any(|(_, t)| t.queue_depth > 1));
}

#[test]
fn every_policy_bounces_untrusted_buffers_and_nothing_leaks() {
    let mut sc = default_scenario().unwrap();
    sc.churn.slabinfo = SlabinfoSource::Shipped;
    sc.churn.live_objects = 5_000;
    let p = AtomicU64::new(0);
    for policy in Policy::ALL {
        let r = run_policy(&sc, policy, &sizes(), &opts(30_000), &p).unwrap();
        assert_eq!(r.map_errors, 0, "{policy}: {:?}", r.first_map_error);
        assert_eq!(r.device_faults, 0, "{policy}");
        assert!(r.bounces["untrusted"] > 0, "{policy}: {:?}", r.bounces);
        assert_eq!(r.leaked_bytes, 0, "{policy}: {:?}", r.first_errors);
        // Queues keep bounces mapped while the run samples the pool.
        assert!(
            r.occupancy.iter().any(|&(_, used)| used > 0),
            "{policy}: {:?}",
            r.occupancy
        );
        assert!(r.pool_high_water_bytes >= 8 * 4096, "{policy}");
        if policy == Policy::Exact {
            assert_eq!(r.wrong_bytes(), 0, "{:?}", r.first_errors);
            assert!(r
                .top_sites
                .iter()
                .any(|s| s.site.starts_with("usb4-nic") && s.suggestion.contains("untrusted")));
        }
        if policy == Policy::NoBounce {
            assert!(r.corrupted_bytes > 0);
        }
    }
}

/// The window probe the scenario runs for untrusted devices: the device reads the whole
/// IOMMU page around a 13-byte buffer among other objects.
fn probe(trusted: bool) -> u64 {
    use dmakit::swiotlb::PoolConfig;
    use dmakit::swiotlb::SwiotlbBounce;
    use dmakit::{
        Device, DeviceId, Direction, DmaMapper, DomainConfig, IommuDma, PageAllocator, PhysRange,
    };
    use dmakit_sim::transfer::{Scratch, Started, Transfer, TransferKnobs};
    use dmakit_sim::{Machine, MachineConfig, Oracle, Owner, SimIommu, SimIommuConfig, SimRng};
    use std::sync::Arc;

    let m = Machine::new(MachineConfig::default()).unwrap();
    let hw = SimIommu::new(SimIommuConfig::default()).unwrap();
    m.set_translation(Box::new(hw.clone()));
    let dma = Arc::new(IommuDma::new(Arc::new(hw), 1).unwrap());
    let dev = Device::builder(DeviceId(1), "ext")
        .trusted(trusted)
        .build()
        .unwrap();
    m.attach(dev.clone()).unwrap();
    dma.attach(&dev, dma.create_domain(DomainConfig::STRICT).unwrap())
        .unwrap();
    let pool = m.alloc_pages(64, u32::MAX as u64).unwrap();
    let b = SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX);
    b.add_region(pool, 64 * 4096).unwrap();
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(Arc::new(b))
        .iommu(dma)
        .build();
    let page = m.alloc_pages(1, u64::MAX).unwrap();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    for (off, len, owner) in [(0u64, 0x40u64, 7u32), (0x40, 13, 9), (0x50, 0xfb0, 8)] {
        m.cpu_write(
            page.add(off),
            &vec![owner as u8; len as usize],
            Owner(owner),
        )
        .unwrap();
        oracle
            .register(&m, Owner(owner), page.add(off), len, "object")
            .unwrap();
    }
    let (mut rng, mut scratch) = (SimRng::new(1), Scratch::default());
    let mut t = Transfer {
        machine: &m,
        mapper: &mapper,
        device: &dev,
        knobs: TransferKnobs {
            cpu_ops: (0, 0),
            device_chunk: (8, 64),
            short_write_chance: 0.0,
            sync_chance: 0.0,
            second_round_chance: 0.0,
            rewrite_inbound_between_rounds: false,
            skip_sync_for_cpu: false,
        },
        rng: &mut rng,
        oracle: &mut oracle,
        scratch: &mut scratch,
    };
    let buf = PhysRange::new(page.add(0x40), 13).unwrap();
    let Started::InFlight(f) = t.start(buf, Direction::ToDevice, Owner(9), &[]).unwrap() else {
        panic!("map failed");
    };
    let leaked = t.probe_window(&f, 4096).unwrap();
    t.complete(&f, &[]).unwrap();
    assert!(oracle.report().is_clean(), "{}", oracle.report());
    leaked
}

#[test]
fn the_window_probe_sees_neighbours_only_without_the_untrusted_bounce() {
    assert_eq!(probe(false), 0);
    // Control: mapped in place, the neighbours' bytes that reached memory are visible.
    assert!(probe(true) > 0);
}

const HEAD: &str = "name = \"t\"\n[machine]\ncpus = 2\ncache_line = 64\nram = [{ start = \"0\", size = \"1 GiB\" }]\nbounce_pool = \"4 MiB\"\n";

fn err(src: &str) -> String {
    parse_scenario(src, "bad.toml")
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn iommu_fields_are_checked() {
    let e = err(&format!(
        "{HEAD}[[device]]\nname = \"d\"\ntrusted = false\n"
    ));
    assert!(
        e.contains("device[0].trusted") && e.contains("not behind the IOMMU"),
        "{e}"
    );
    let e = err(&format!(
        "{HEAD}[[device]]\nname = \"d\"\niommu = \"eager\"\n"
    ));
    assert!(
        e.starts_with("bad.toml:9:") && e.contains("device[0].iommu"),
        "{e}"
    );
    let e = err(&HEAD.replace("bounce_pool", "iommu_granule = \"8 KiB\"\nbounce_pool"));
    assert!(e.contains("machine.iommu_granule"), "{e}");
    let driver = "[[driver]]\nname = \"x\"\ndevice = \"d\"\nweight = 1\n[[driver.transfer]]\nsite = \"s\"\ndirection = \"to-device\"\nsize = 4096\nbuffer = \"noncontiguous\"\n";
    let e = err(&format!("{HEAD}[[device]]\nname = \"d\"\n{driver}"));
    assert!(
        e.contains("driver[0].transfer[0].buffer") && e.contains("not behind"),
        "{e}"
    );
    let ok = format!("{HEAD}[[device]]\nname = \"d\"\niommu = \"lazy\"\n{driver}");
    assert!(parse_scenario(&ok, "ok.toml").is_ok());
    let e = err(&format!("{ok}queue_depth = 4\n"));
    assert!(e.contains("queue_depth"), "{e}");
    let e = err(&ok.replace("\"to-device\"", "\"from-device\""));
    assert!(e.contains("direction"), "{e}");
}
