//! The whole appliance in the deterministic simulator (`pantera::sim`, feature `sim`): a seed
//! replays byte for byte, and a few seeds pass the checker while faults of every kind hit
//! them. `cargo xtask sim --stack` runs many more seeds.

use pantera::sim::{run, StackFaults, StackSimConfig};

#[test]
fn a_seed_replays_byte_for_byte() {
    let a = run(StackSimConfig::new(7));
    let b = run(StackSimConfig::new(7));
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    assert!(a.replies > 0 && a.connections > 0, "{a:?}");
    assert_eq!(a.digest, b.digest, "the same seed, another trace");
    assert_eq!(
        (a.steps, a.faults, a.replies, a.connections),
        (b.steps, b.faults, b.replies, b.connections)
    );
    let c = run(StackSimConfig::new(8));
    assert_ne!(a.digest, c.digest, "another seed is another run");
}

#[test]
fn a_few_seeds_pass_the_checker_under_faults_of_every_kind() {
    let mut faults = StackFaults::default();
    let (mut acknowledged, mut recoveries, mut retries) = (0, 0, 0);
    for seed in 0..6 {
        let report = run(StackSimConfig::new(seed));
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        faults.add(&report.faults);
        acknowledged += report.acknowledged;
        recoveries += report.recoveries;
        retries += report.retries;
    }
    assert!(
        acknowledged > 1_000,
        "{acknowledged} transfers acknowledged"
    );
    assert!(
        recoveries >= 6 && retries > 0,
        "{recoveries} recoveries, {retries} retries"
    );
    assert!(
        faults.crashes >= 6
            && faults.frames_lost > 0
            && faults.frames_duplicated > 0
            && faults.frames_reordered > 0
            && faults.frames_corrupted > 0,
        "{faults:?}"
    );
}

/// Each injected bug (feature `sim-bugs`) is caught by the checker within a few seeds.
#[cfg(feature = "sim-bugs")]
#[test]
fn every_injected_bug_is_caught() {
    use pantera::sim::Bug;
    for bug in [Bug::EarlyRelease, Bug::SkipFsync, Bug::DoubleApply] {
        let caught = (0..5).find(|&seed| {
            !run(StackSimConfig {
                bug: Some(bug),
                ..StackSimConfig::new(seed)
            })
            .violations
            .is_empty()
        });
        assert!(caught.is_some(), "{bug:?} was not caught in 5 seeds");
    }
}
