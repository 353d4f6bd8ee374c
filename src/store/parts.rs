//! The multipart part-size schedule and the memory budget, with no I/O.
//!
//! S3 allows at most 10,000 parts of at most 5 GiB, and a stream's size is unknown until it
//! ends. So the part size starts small (memory and latency stay low for small backups) and
//! doubles every 1,000 parts: from 8 MiB, 10,000 parts hold 7.80 TiB, more than S3's 5 TiB
//! object limit; even the smallest first part we accept (6 MiB) reaches 5.85 TiB.

/// Parts S3 accepts in one upload.
pub const MAX_PARTS: u32 = 10_000;
/// S3's largest part.
pub const MAX_PART: u64 = 5 << 30;
/// Smallest first part we accept: with doubling every 1,000 parts it still reaches 5 TiB.
pub const MIN_FIRST_PART: u64 = 6 << 20;
pub const DEFAULT_FIRST_PART: u64 = 8 << 20;
/// Parts between doublings.
pub const DOUBLE_EVERY: u32 = 1000;

/// Size of part `number` (1-based) when the first part is `first` bytes.
pub fn part_size(first: u64, number: u32) -> u64 {
    let doublings = number.saturating_sub(1) / DOUBLE_EVERY;
    first
        .checked_shl(doublings)
        .unwrap_or(MAX_PART)
        .min(MAX_PART)
}

/// Bytes that parts `1..=parts` hold at most.
pub fn capacity(first: u64, parts: u32) -> u64 {
    (1..=parts).map(|n| part_size(first, n)).sum()
}

/// Where a part of a given size is held while it is filled and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    Memory,
    /// Too big for the memory budget: spooled to a temporary file.
    Spool,
}

/// A part is kept in memory only if two of its size fit the budget (one being sent while the
/// next fills); otherwise it goes to a spool file.
pub fn holding(part: u64, budget: u64) -> Holding {
    if part.saturating_mul(2) <= budget {
        Holding::Memory
    } else {
        Holding::Spool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const TIB: u64 = 1 << 40;

    #[test]
    fn schedule_doubles_every_thousand_parts() {
        assert_eq!(part_size(8 * MIB, 1), 8 * MIB);
        assert_eq!(part_size(8 * MIB, 1000), 8 * MIB);
        assert_eq!(part_size(8 * MIB, 1001), 16 * MIB);
        assert_eq!(part_size(8 * MIB, 10_000), 4096 * MIB);
        assert!(part_size(8 * MIB, 10_000) <= MAX_PART);
    }

    #[test]
    fn ten_thousand_parts_reach_five_tib() {
        assert!(capacity(DEFAULT_FIRST_PART, MAX_PARTS) >= 5 * TIB);
        assert!(capacity(MIN_FIRST_PART, MAX_PARTS) >= 5 * TIB);
        assert!(
            capacity(5 * MIB, MAX_PARTS) < 5 * TIB,
            "5 MiB would not: why the minimum is 6"
        );
    }

    #[test]
    fn huge_first_part_is_capped() {
        assert_eq!(part_size(4 << 30, 9999), MAX_PART);
    }

    #[test]
    fn holding_by_budget() {
        assert_eq!(holding(8 * MIB, 224 * MIB), Holding::Memory);
        assert_eq!(holding(112 * MIB, 224 * MIB), Holding::Memory);
        assert_eq!(holding(128 * MIB, 224 * MIB), Holding::Spool);
    }
}
