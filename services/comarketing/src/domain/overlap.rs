//! The overlap's defence against singling a person out. A count is never returned below the
//! minimum cohort. Above it the answer is the true count plus a deterministic offset of -5 to
//! +5, rounded down to a multiple of 10: the offset is drawn from a keyed hash of the two
//! results compared, so asking the same question again gives the same answer (no averaging
//! the noise away), while two results that differ by one member draw unrelated offsets (a
//! differencing pair does not reveal the member). A per-partner query budget per campaign
//! bounds how many differencing pairs can be tried at all.

use sha2::{Digest, Sha256};

/// The default minimum cohort: counts of fewer members are withheld.
pub const MINIMUM_COHORT: u64 = 50;
/// Overlap queries one partner may ask per campaign.
pub const QUERY_BUDGET: i64 = 50;

/// What a count may be told as: `None` when suppressed.
pub fn disclose(
    true_count: u64,
    minimum_cohort: u64,
    key: &[u8],
    results: [&[u8]; 2],
) -> Option<u64> {
    if true_count < minimum_cohort {
        return None;
    }
    let mut pair = [Sha256::digest(results[0]), Sha256::digest(results[1])];
    pair.sort();
    let mut h = Sha256::new();
    h.update(key);
    h.update(pair[0]);
    h.update(pair[1]);
    let digest = h.finalize();
    let offset = i64::from(digest[0] % 11) - 5;
    let noisy = i64::try_from(true_count)
        .unwrap_or(i64::MAX)
        .saturating_add(offset);
    let rounded = u64::try_from(noisy.max(0)).unwrap_or(0) / 10 * 10;
    // Never below the threshold once above it: the answer alone must not hint the true count
    // sits just over it.
    Some(rounded.max(minimum_cohort / 10 * 10))
}

/// A count of members told only at or above the minimum cohort.
pub fn threshold(count: u64, minimum_cohort: u64) -> Option<u64> {
    (count >= minimum_cohort).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_the_cohort_nothing_is_told() {
        assert_eq!(disclose(49, 50, b"k", [b"a", b"b"]), None);
        assert_eq!(threshold(49, 50), None);
        assert_eq!(threshold(50, 50), Some(50));
    }

    #[test]
    fn the_same_question_gets_the_same_answer_in_either_order() {
        let a = disclose(1234, 50, b"k", [b"left", b"right"]);
        assert_eq!(a, disclose(1234, 50, b"k", [b"right", b"left"]));
        let told = a.unwrap();
        assert_eq!(told % 10, 0);
        assert!((1220..=1239).contains(&told), "{told}");
    }

    #[test]
    fn a_differencing_pair_does_not_reveal_the_one_member() {
        // Segments with and without one person: over many such pairs the told difference is
        // not a constant 1 — it is 0 for many and 10 for others, whichever way the truth is.
        let mut differences = std::collections::BTreeSet::new();
        for i in 0..200u32 {
            let with = disclose(500, 50, b"k", [&i.to_be_bytes(), b"with"]).unwrap();
            let without = disclose(499, 50, b"k", [&i.to_be_bytes(), b"without"]).unwrap();
            differences.insert(i64::try_from(with).unwrap() - i64::try_from(without).unwrap());
        }
        assert!(
            differences.contains(&0) && differences.contains(&10),
            "{differences:?}"
        );
        assert!(differences.iter().any(|d| *d < 0), "{differences:?}");
    }
}
