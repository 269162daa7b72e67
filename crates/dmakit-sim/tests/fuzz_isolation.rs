//! The cross-path adversarial fuzzer in its CI budget: seeded cases over one machine with
//! every kind of device, pool and IOMMU at once, every invariant checked after every step
//! (see `fuzz/mod.rs` for the invariants and which defect each one catches). Long mode:
//! `DMAKIT_FUZZ_SECONDS=600` or `DMAKIT_FUZZ_OPS=10000000`; replay: `DMAKIT_FUZZ_SEED=N`.

mod fuzz;

#[test]
fn every_invariant_holds_under_any_mix_of_devices() {
    let b = fuzz::Budget::from_env(60.0);
    let out = fuzz::run(b);
    let sg_full = fuzz::exec::SG_TABLE_FULL.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "fuzz_isolation: {} cases, {} operations in {:.1} s (first seed {}), {sg_full} lists \
         refused by a full piece table",
        out.cases, out.ops, out.seconds, b.first_seed
    );
    if let Some(f) = &out.finding {
        panic!("{}", f.report());
    }
    assert!(out.ops > 0, "the budget ran no operation");
    // A full budget reaches the piece tables' refusal, not only the mappings that fit.
    if out.ops >= 100_000 {
        assert!(sg_full > 0, "no list found its piece table full");
    }
}

/// What the fuzzer finds on the code as it is: the first failure of every invariant within
/// the budget, each shrunk. `DMAKIT_FUZZ_SURVEY=1 cargo test -p dmakit-sim --test
/// fuzz_isolation -- --ignored --nocapture`.
#[test]
#[ignore]
fn survey_prints_every_invariant_that_fails() {
    let mut b = fuzz::Budget::from_env(60.0);
    b.shrink_seconds = 5.0;
    let (seen, cases, ops) = fuzz::survey(b);
    eprintln!("survey: {cases} cases, {ops} operations");
    for s in &seen {
        eprintln!(
            "{:40} seed {:5} step {:4} ops {:8} {:6.1} s  {}",
            s.invariant, s.seed, s.step, s.ops_to_find, s.seconds, s.detail
        );
        for (i, op) in s.shrunk.iter().enumerate() {
            eprintln!("      {i:3}: {op:?}");
        }
    }
}
