//! The cross-path adversarial fuzzer in its CI budget: seeded cases over one machine with
//! every kind of device, pool and IOMMU at once, every invariant checked after every step
//! (see `fuzz/mod.rs` for the invariants and which defect each one catches). Long mode:
//! `DMAKIT_FUZZ_SECONDS=600` or `DMAKIT_FUZZ_OPS=10000000`; replay: `DMAKIT_FUZZ_SEED=N`.

mod fuzz;

#[test]
fn every_invariant_holds_under_any_mix_of_devices() {
    let b = fuzz::Budget::from_env(60.0);
    let out = fuzz::run(b);
    eprintln!(
        "fuzz_isolation: {} cases, {} operations in {:.1} s (first seed {})",
        out.cases, out.ops, out.seconds, b.first_seed
    );
    if let Some(f) = &out.finding {
        panic!("{}", f.report());
    }
    assert!(out.ops > 0, "the budget ran no operation");
}
