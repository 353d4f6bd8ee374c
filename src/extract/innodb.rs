//! Page-compressed InnoDB tablespaces: which `.ibd` files they are, and which parts of their
//! data are holes.
//!
//! MariaDB stores a compressed page at the start of its page slot and punches a hole over the
//! rest; the hole reads as zeros, so a backup stream carries those zeros. The reference
//! extractor writes them back as holes (each page's trailing zeros are skipped), so the
//! restored tablespace takes the same room on disk as the source instead of its full
//! logical size. We do the same. Pure logic: the writer does the I/O.

/// Where the tablespace flags are in page 0: `FIL_PAGE_DATA` (38) + `FSP_SPACE_FLAGS` (16).
const FLAGS_AT: usize = 54;
/// `full_crc32` format marker (MariaDB 10.5+): the flags have a different layout.
const FCRC32_MARKER: u32 = 1 << 4;

/// The page size of a page-compressed tablespace, judged from its first bytes (page 0), or
/// `None` when `path` is not an `.ibd` file, `first` is too short, or the tablespace is not
/// page-compressed.
///
/// Both flag layouts are read: `full_crc32` (page size in bits 0..3, compression algorithm in
/// bits 5..7) and the older one (page size in bits 6..9, PAGE_COMPRESSION in bit 16).
pub fn page_compressed(path: &[u8], first: &[u8]) -> Option<usize> {
    if !path.ends_with(b".ibd") {
        return None;
    }
    let flags = u32::from_be_bytes(first.get(FLAGS_AT..FLAGS_AT + 4)?.try_into().ok()?);
    let (compressed, ssize) = if flags & FCRC32_MARKER != 0 {
        ((flags >> 5) & 7 != 0, flags & 0xf)
    } else {
        ((flags >> 16) & 1 != 0, (flags >> 6) & 0xf)
    };
    if !compressed {
        return None;
    }
    // ssize 0 means the original 16 KiB; otherwise 512 << ssize (3..=7: 4 KiB to 64 KiB).
    let page = match ssize {
        0 => 16 << 10,
        3..=7 => 512usize << ssize,
        _ => return None,
    };
    Some(page)
}

/// The byte ranges of `data` (relative to its start) to write when it is placed at `offset`
/// of a page-compressed file with pages of `page` bytes: each page slot's trailing zeros
/// are left out, unless they are shorter than `min_hole` (a hole smaller than a file-system
/// block frees nothing, and would only cost a write call). Adjacent ranges are merged.
/// Everything of `data` outside the ranges is zeros.
pub fn data_runs(data: &[u8], offset: u64, page: usize, min_hole: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let page = page.max(1) as u64;
    let mut start = 0usize;
    while start < data.len() {
        // The end of this page slot, in `data` coordinates.
        let abs = offset + start as u64;
        let slot_end = ((abs / page + 1) * page - offset) as usize;
        let end = slot_end.min(data.len());
        let keep = start + trimmed_len(&data[start..end]);
        // A short trailing hole is written as data.
        let keep = if end - keep < min_hole { end } else { keep };
        if keep > start {
            match runs.last_mut() {
                Some(last) if last.1 == start => last.1 = keep,
                _ => runs.push((start, keep)),
            }
        }
        start = end;
    }
    runs
}

/// Length of `b` without its trailing zero bytes.
fn trimmed_len(b: &[u8]) -> usize {
    // Eight bytes at a time over the aligned middle: pages are mostly zeros at the end.
    let mut end = b.len();
    while !end.is_multiple_of(8) {
        if b[end - 1] != 0 {
            return end;
        }
        end -= 1;
    }
    while end >= 8 {
        let word = u64::from_ne_bytes(b[end - 8..end].try_into().unwrap_or([1; 8]));
        if word != 0 {
            break;
        }
        end -= 8;
    }
    while end > 0 && b[end - 1] == 0 {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page0(flags: u32) -> Vec<u8> {
        let mut p = vec![0u8; 16384];
        p[FLAGS_AT..FLAGS_AT + 4].copy_from_slice(&flags.to_be_bytes());
        p
    }

    #[test]
    fn detects_page_compression_in_both_flag_layouts() {
        // full_crc32, 16 KiB pages (ssize 5), zlib (algorithm 1): what MariaDB 10.11 writes.
        assert_eq!(page_compressed(b"db/t.ibd", &page0(0x35)), Some(16384));
        // full_crc32, no compression.
        assert_eq!(page_compressed(b"db/t.ibd", &page0(0x15)), None);
        // full_crc32, 4 KiB pages, lz4 (algorithm 2).
        assert_eq!(page_compressed(b"t.ibd", &page0(0x13 | 2 << 5)), Some(4096));
        // Older layout: PAGE_COMPRESSION bit 16, page size 0 = 16 KiB, or 8 KiB (ssize 4).
        assert_eq!(
            page_compressed(b"t.ibd", &page0(1 << 16 | 0x21)),
            Some(16384)
        );
        assert_eq!(
            page_compressed(b"t.ibd", &page0(1 << 16 | 4 << 6)),
            Some(8192)
        );
        assert_eq!(page_compressed(b"t.ibd", &page0(0x21)), None);
        // Not an .ibd, too short, or an impossible page size.
        assert_eq!(page_compressed(b"t.MYD", &page0(0x35)), None);
        assert_eq!(page_compressed(b"t.ibd", &page0(0x35)[..57]), None);
        assert_eq!(page_compressed(b"t.ibd", &page0(0x31 | 1 << 5)), None);
    }

    #[test]
    fn trailing_zeros_of_each_page_are_holes() {
        let page = 16;
        let mut d = vec![0u8; 64];
        d[0..5].fill(1); // page 0: 5 bytes of data, 11 of hole
        d[16..32].fill(2); // page 1: full
        d[32] = 3; // page 2: 1 byte
                   // page 3: all zeros
        assert_eq!(data_runs(&d, 0, page, 1), vec![(0, 5), (16, 33)]);
        // Holes shorter than 12 bytes are written as data: page 0's 11 zero bytes too.
        assert_eq!(data_runs(&d, 0, page, 12), vec![(0, 33)]);
        // A zero byte inside a page is data: only the trailing ones are skipped.
        let mut e = vec![7u8; 16];
        e[3] = 0;
        assert_eq!(data_runs(&e, 0, page, 1), vec![(0, 16)]);
    }

    #[test]
    fn page_slots_follow_the_file_offset_not_the_chunk() {
        // A chunk starting in the middle of a page slot: the slot ends 8 bytes in.
        let mut d = vec![0u8; 24];
        d[0] = 1; // slot [8, 16) of the file: 1 byte of data
        d[8..12].fill(1); // slot [16, 32): 4 bytes
        assert_eq!(data_runs(&d, 8, 16, 1), vec![(0, 1), (8, 12)]);
        assert_eq!(data_runs(&[], 0, 16, 1), vec![]);
        assert_eq!(data_runs(&[0; 40], 0, 16, 1), vec![]);
    }

    #[test]
    fn trimmed_len_matches_a_plain_scan() {
        for len in 0..40 {
            for last in 0..len {
                let mut b = vec![0u8; len];
                b[last] = 9;
                assert_eq!(trimmed_len(&b), last + 1, "len {len} last {last}");
            }
            assert_eq!(trimmed_len(&vec![0u8; len]), 0);
        }
    }
}
