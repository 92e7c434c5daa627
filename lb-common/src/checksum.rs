//! Internet checksum math (RFC 1071, incremental updates per RFC 1624).
//!
//! All 16-bit values are numbers read big-endian from the wire
//! (`u16::from_be_bytes`), so the same code serves the XDP program and the tests.

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The RFC 1624 (eqn. 3) term `~m + m'` for one covered 16-bit word that
/// changed from `old` to `new`. Terms of several changes add up unfolded
/// (each is below 2^17) and go into the checksum with one `apply`: a NAT
/// rewrite folds once per checksum instead of once per word.
#[inline(always)]
pub const fn word_change(old: u16, new: u16) -> u32 {
    (!old) as u32 + new as u32
}

/// `word_change` for both words of an IPv4 address.
#[inline(always)]
pub const fn addr_change(old: [u8; 4], new: [u8; 4]) -> u32 {
    word_change(
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    ) + word_change(
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// The terms for a 32-bit field (big-endian bytes `old` -> `new`) that
/// starts at an even (`odd == false`) or odd byte offset of the checksummed
/// data. At an odd offset its bytes straddle three checksum words: the
/// first byte is the low half of one, the last the high half of another.
#[inline(always)]
pub const fn field32_change(old: [u8; 4], new: [u8; 4], odd: bool) -> u32 {
    if odd {
        word_change(old[0] as u16, new[0] as u16)
            + word_change(
                u16::from_be_bytes([old[1], old[2]]),
                u16::from_be_bytes([new[1], new[2]]),
            )
            + word_change((old[3] as u16) << 8, (new[3] as u16) << 8)
    } else {
        addr_change(old, new)
    }
}

/// Checksum `check` after the changes whose terms sum to `change`
/// (HC' = ~(~HC + sum of ~m + m')). Exact for any sum of fewer than 2^15 terms.
#[inline(always)]
pub const fn apply(check: u16, change: u32) -> u16 {
    !fold((!check) as u32 + change)
}

/// UDP's rule: a computed checksum of zero is sent as 0xffff, because zero on
/// the wire means "no checksum".
#[inline(always)]
pub const fn udp_nonzero(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

/// One's-complement sum of a fixed-size even-length array as big-endian
/// words. Fixed bounds keep the BPF verifier happy where a slice would not.
#[inline(always)]
pub fn sum_array<const N: usize>(data: &[u8; N], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    acc
}

/// One's-complement sum of `data` as big-endian words (odd tail padded with zero).
pub fn sum_words(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        acc += u16::from_be_bytes([word[0], word[1]]) as u32;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Full IPv4 header checksum of `header` (its checksum field must be zero).
pub fn ipv4_header(header: &[u8]) -> u16 {
    !fold(sum_words(header, 0))
}

/// Full TCP/UDP checksum of `segment` (header with zero checksum field, plus
/// payload) under the IPv4 pseudo-header.
pub fn l4(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut acc = sum_words(&src, 0);
    acc = sum_words(&dst, acc);
    acc += proto as u32;
    acc += segment.len() as u32;
    !fold(sum_words(segment, acc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    extern crate std;
    use std::vec::Vec;

    /// RFC 1624 eqn. 3 for one word, folded at once: the reference the
    /// batched form is checked against.
    fn update_u16(check: u16, old: u16, new: u16) -> u16 {
        !fold((!check) as u32 + (!old) as u32 + new as u32)
    }

    fn segment_with_check(mut segment: Vec<u8>, offset: usize, check: u16) -> Vec<u8> {
        segment[offset..offset + 2].copy_from_slice(&check.to_be_bytes());
        segment
    }

    #[test]
    fn known_ipv4_header() {
        // Example header from RFC 1071 discussions / Wikipedia: checksum 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&header), 0xb861);
    }

    #[test]
    fn verifying_a_correct_header_sums_to_zero() {
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let check = ipv4_header(&header);
        header[10..12].copy_from_slice(&check.to_be_bytes());
        assert_eq!(ipv4_header(&header), 0);
    }

    proptest! {
        #[test]
        fn fixed_array_sum_matches_slice_sum(data in any::<[u8; 20]>()) {
            prop_assert_eq!(fold(sum_array(&data, 0)), fold(sum_words(&data, 0)));
        }

        #[test]
        fn address_and_port_rewrite_matches_full_recomputation(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            new_src in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
            sport in any::<u16>(), dport in any::<u16>(),
            new_sport in any::<u16>(), new_dport in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            // A TCP header (20 bytes, checksum at 16) followed by the payload.
            let mut segment = Vec::from([0u8; 20]);
            segment[0..2].copy_from_slice(&sport.to_be_bytes());
            segment[2..4].copy_from_slice(&dport.to_be_bytes());
            segment[12] = 0x50;
            segment.extend_from_slice(&payload);
            let check = l4(src, dst, 6, &segment);

            // As the XDP program does it: all four changes, one fold.
            let incremental = apply(
                check,
                addr_change(src, new_src)
                    + addr_change(dst, new_dst)
                    + word_change(sport, new_sport)
                    + word_change(dport, new_dport),
            );

            let mut rewritten = segment.clone();
            rewritten[0..2].copy_from_slice(&new_sport.to_be_bytes());
            rewritten[2..4].copy_from_slice(&new_dport.to_be_bytes());
            let full = l4(new_src, new_dst, 6, &rewritten);
            // 0x0000 and 0xffff are the same number in one's complement; the
            // receiver's verification (sum == 0) accepts either.
            let verify = l4(new_src, new_dst, 6, &segment_with_check(rewritten, 16, incremental));
            prop_assert!(verify == 0 || verify == 0xffff, "incremental {incremental:#x} full {full:#x}");
            prop_assert!(incremental == full || (incremental ^ full) == 0xffff);
        }

        #[test]
        fn one_batched_fold_matches_word_by_word_updates(
            check in any::<u16>(),
            words in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..16),
        ) {
            let stepwise = words.iter().fold(check, |c, &(old, new)| update_u16(c, old, new));
            let batched = apply(check, words.iter().map(|&(old, new)| word_change(old, new)).sum());
            // Same one's-complement number; only the sign of zero may differ.
            prop_assert!(batched == stepwise || (batched ^ stepwise) == 0xffff);
        }

        #[test]
        fn ip_header_rewrite_matches_full_recomputation(
            header in any::<[u8; 20]>(), new_src in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
        ) {
            let mut header = header;
            header[10] = 0;
            header[11] = 0;
            let check = ipv4_header(&header);
            let old_src = [header[12], header[13], header[14], header[15]];
            let old_dst = [header[16], header[17], header[18], header[19]];
            let incremental = apply(check, addr_change(old_src, new_src) + addr_change(old_dst, new_dst));
            header[12..16].copy_from_slice(&new_src);
            header[16..20].copy_from_slice(&new_dst);
            let full = ipv4_header(&header);
            prop_assert!(incremental == full || (incremental ^ full) == 0xffff);
            header[10..12].copy_from_slice(&incremental.to_be_bytes());
            let verify = ipv4_header(&header);
            prop_assert!(verify == 0 || verify == 0xffff);
        }

        #[test]
        fn a_32_bit_field_at_any_offset_matches_full_recomputation(
            segment in proptest::collection::vec(any::<u8>(), 24..60),
            offset in 0usize..20,
            new in any::<[u8; 4]>(),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
        ) {
            // The field (e.g. a TCP timestamp) somewhere after the checksum.
            let offset = 20 + offset.min(segment.len() - 24);
            let mut segment = segment;
            segment[16] = 0;
            segment[17] = 0;
            let check = l4(src, dst, 6, &segment);
            let old = [segment[offset], segment[offset + 1], segment[offset + 2], segment[offset + 3]];
            let incremental = apply(check, field32_change(old, new, offset % 2 == 1));
            segment[offset..offset + 4].copy_from_slice(&new);
            let full = l4(src, dst, 6, &segment);
            prop_assert!(incremental == full || (incremental ^ full) == 0xffff,
                "offset {offset}: incremental {incremental:#x} full {full:#x}");
        }

        #[test]
        fn udp_never_emits_zero(check in any::<u16>()) {
            prop_assert_ne!(udp_nonzero(check), 0);
        }
    }
}
