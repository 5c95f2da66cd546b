//! Proptest strategies for operation sequences and the suite's configuration.

use crate::testing::model::Op;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

/// How much work the conformance suite does. [`Config::from_env`] reads `PROPTEST_CASES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Random operation sequences checked against the model.
    pub cases: u32,
    /// Longest random sequence.
    pub max_ops: usize,
    /// Random sequences run through the crash test (each crashed at every write).
    pub crash_cases: u32,
    /// Longest random sequence in the crash test.
    pub crash_ops: usize,
    /// Most crash (or fault) points tried per sequence; when a sequence has more, this many are
    /// spread evenly over it (the first and last always included).
    pub max_crash_points: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::with_cases(24)
    }
}

impl Config {
    /// `cases` model sequences; the crash test gets an eighth of that (at least 2).
    pub fn with_cases(cases: u32) -> Self {
        Config {
            cases,
            max_ops: 32,
            crash_cases: (cases / 8).max(2),
            crash_ops: 10,
            max_crash_points: 256,
        }
    }

    /// [`Config::with_cases`] with `PROPTEST_CASES` from the environment (default 24), so CI and
    /// a developer hunting a bug can turn the effort up or down without code changes.
    pub fn from_env() -> Self {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(24);
        Self::with_cases(cases)
    }
}

/// A proptest runner for `cases` cases that persists no failure files (the suite runs inside
/// other crates' tests, where a regression file next to this source makes no sense).
pub(crate) fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// Ranges `(lba, count)` inside a disk of `sectors` sectors, biased towards the first and last
/// sectors and towards multiples of `granularity` sectors (block or grain boundaries), with
/// counts from 1 up to two granules.
pub fn range_strategy(sectors: u64, granularity: u64) -> BoxedStrategy<(u64, u64)> {
    assert!(sectors > 0, "the disk has no sectors");
    let g = granularity.clamp(1, sectors);
    let last = sectors - 1;
    let granules = sectors.div_ceil(g);
    let lba = prop_oneof![
        4 => 0..sectors,
        1 => 0..sectors.min(64),
        1 => sectors.saturating_sub(64)..sectors,
        2 => (0..=granules, -8i64..8).prop_map(move |(k, d)| (k * g).saturating_add_signed(d).min(last)),
    ];
    let count = prop_oneof![6 => 1..=16u64, 3 => 1..=256u64, 1 => 1..=2 * g];
    (lba, count)
        .prop_map(move |(lba, count)| (lba, count.min(sectors - lba)))
        .boxed()
}

/// One operation on a disk of `sectors` sectors (see [`range_strategy`]); mostly writes.
pub fn op_strategy(sectors: u64, granularity: u64) -> BoxedStrategy<Op> {
    let r = range_strategy(sectors, granularity);
    prop_oneof![
        5 => r.clone().prop_map(|(lba, count)| Op::Write { lba, count }),
        2 => r.clone().prop_map(|(lba, count)| Op::Read { lba, count }),
        1 => r.clone().prop_map(|(lba, count)| Op::WriteZeroes { lba, count }),
        1 => r.prop_map(|(lba, count)| Op::Discard { lba, count }),
        1 => Just(Op::Flush),
    ]
    .boxed()
}

/// Sequences of 1 to `max_len` operations.
pub fn ops_strategy(sectors: u64, granularity: u64, max_len: usize) -> BoxedStrategy<Vec<Op>> {
    proptest::collection::vec(op_strategy(sectors, granularity), 1..=max_len.max(1)).boxed()
}

/// A fixed sequence that allocates, overwrites, straddles granule boundaries, zeroes, discards
/// and flushes in between: the crash and fault tests always run it before random ones.
pub fn fixed_sequence(sectors: u64, granularity: u64) -> Vec<Op> {
    let g = granularity.clamp(1, sectors);
    let n = sectors;
    let clip = |lba: u64, count: u64| {
        let lba = lba.min(n - 1);
        (lba, count.clamp(1, n - lba))
    };
    let w = |lba, count| {
        let (lba, count) = clip(lba, count);
        Op::Write { lba, count }
    };
    let z = |lba, count| {
        let (lba, count) = clip(lba, count);
        Op::WriteZeroes { lba, count }
    };
    let d = |lba, count| {
        let (lba, count) = clip(lba, count);
        Op::Discard { lba, count }
    };
    let r = |lba, count| {
        let (lba, count) = clip(lba, count);
        Op::Read { lba, count }
    };
    vec![
        w(0, 1),
        w(g.saturating_sub(1), 2),
        Op::Flush,
        w(n - 1, 1),
        w(1, 8),
        z(g / 2, g),
        r(0, 2 * g),
        Op::Flush,
        d(0, g),
        w(2 * g + 5, 2 * g),
        d(n / 2, 3),
        w((n / 2).saturating_sub(1), 4),
        Op::Flush,
        w(0, 4),
        z(n.saturating_sub(g), g),
        Op::Flush,
    ]
}

/// Up to `max` indices from `0..total`, spread evenly, always including the first and last.
pub(crate) fn sample_points(total: u64, max: usize) -> Vec<u64> {
    let max = max.max(2) as u64;
    if total <= max {
        return (0..total).collect();
    }
    let mut v: Vec<u64> = (0..max).map(|i| i * (total - 1) / (max - 1)).collect();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;

    #[test]
    fn ranges_stay_inside_the_disk() {
        let mut runner = runner(1);
        for sectors in [1u64, 2, 7, 300, 8192] {
            let s = ops_strategy(sectors, 128, 8);
            for _ in 0..200 {
                for op in s.new_tree(&mut runner).unwrap().current() {
                    if let Some((lba, count)) = op.range() {
                        assert!(count >= 1 && lba + count <= sectors, "{op:?} in {sectors}");
                    }
                }
            }
            for op in fixed_sequence(sectors, 128) {
                if let Some((lba, count)) = op.range() {
                    assert!(count >= 1 && lba + count <= sectors, "{op:?} in {sectors}");
                }
            }
        }
        assert_eq!(sample_points(3, 10), vec![0, 1, 2]);
        let s = sample_points(1000, 10);
        assert_eq!((s.len(), s[0], s[9]), (10, 0, 999));
    }
}
