//! Weighted round robin as a ring of backend ids: smooth weighted round
//! robin (nginx's algorithm) laid out once by the agent, walked per
//! connection by the XDP program, so backends interleave instead of taking
//! their share in bursts.

/// Builds the ring for `backends` = [(backend id, weight)]: one cycle of
/// the schedule, as long as the weights' sum. Weights are scaled down to fit
/// `ring_size`, each staying ≥ 1; with more backends than slots the first
/// `ring_size` get one each (configs cannot hold that many: `RING_SIZE` is
/// the node's backend limit). Empty input gives an empty ring.
pub fn build_ring(backends: &[(u32, u32)], ring_size: usize) -> Vec<u32> {
    let backends: Vec<(u32, u64)> = backends
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(id, w)| (*id, u64::from(*w)))
        .collect();
    if backends.is_empty() || ring_size == 0 {
        return Vec::new();
    }
    let weights = scale(&backends, ring_size as u64);
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += *w as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .unwrap_or((0, &0));
        current[best] -= total as i64;
        cycle.push(backends[best].0);
    }
    cycle.truncate(ring_size);
    cycle
}

/// Scales weights so their sum fits `limit`, keeping each at least 1 and
/// the proportions as close as the largest-remainder method allows.
fn scale(backends: &[(u32, u64)], limit: u64) -> Vec<u64> {
    let total: u64 = backends.iter().map(|(_, w)| w).sum();
    if total <= limit {
        return backends.iter().map(|(_, w)| *w).collect();
    }
    let count = backends.len() as u64;
    if count >= limit {
        return vec![1; backends.len()];
    }
    // Every backend keeps one slot; the rest is shared by weight.
    let spare = limit - count;
    let shares: Vec<(u64, u64)> = backends
        .iter()
        .map(|(_, w)| (w * spare / total, w * spare % total))
        .collect();
    let mut scaled: Vec<u64> = shares.iter().map(|(q, _)| q + 1).collect();
    let mut left = spare - shares.iter().map(|(q, _)| q).sum::<u64>();
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(shares[i].1));
    for i in order {
        if left == 0 {
            break;
        }
        scaled[i] += 1;
        left -= 1;
    }
    scaled
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_weights_alternate() {
        let ring = build_ring(&[(7, 1), (9, 1)], 256);
        assert_eq!(ring, vec![7, 9]);
        assert!(ring.windows(2).all(|w| w[0] != w[1]), "{ring:?}");
    }

    #[test]
    fn smooth_sequence_matches_nginx() {
        // nginx's documented example for weights 5, 1, 1: a a b a c a a.
        let ring = build_ring(&[(1, 5), (2, 1), (3, 1)], 7);
        assert_eq!(ring, vec![1, 1, 2, 1, 3, 1, 1]);
    }

    #[test]
    fn empty_and_zero_weights() {
        assert!(build_ring(&[], 256).is_empty());
        assert!(build_ring(&[(1, 0)], 256).is_empty());
    }

    #[test]
    fn heavy_weights_are_scaled_into_the_ring() {
        let ring = build_ring(&[(1, 100), (2, 100), (3, 100), (4, 1)], 256);
        assert!(ring.len() <= 256);
        assert!(ring.contains(&4), "light backend keeps a slot");
    }

    #[test]
    fn every_backend_keeps_a_slot_up_to_the_node_limit() {
        // 257 once overflowed a 256-slot ring: the service then refused
        // every connection.
        for count in [255u32, 256, 257, lb_common::MAX_BACKENDS] {
            let backends: Vec<(u32, u32)> = (0..count).map(|id| (id, 1 + id % 100)).collect();
            let ring = build_ring(&backends, lb_common::RING_SIZE as usize);
            assert!(
                ring.len() <= lb_common::RING_SIZE as usize,
                "{count} backends"
            );
            let mut seen = ring.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(
                seen.len(),
                count as usize,
                "{count} backends each get a slot"
            );
        }
    }

    #[test]
    fn more_backends_than_slots_never_overflow_the_ring() {
        let backends: Vec<(u32, u32)> = (0..300).map(|id| (id, 1)).collect();
        assert_eq!(build_ring(&backends, 256).len(), 256);
    }

    proptest! {
        #[test]
        fn shares_follow_weights(weights in proptest::collection::vec(1u32..=100, 1..20)) {
            let backends: Vec<(u32, u32)> = weights.iter().enumerate().map(|(i, w)| (i as u32, *w)).collect();
            let ring = build_ring(&backends, 256);
            prop_assert!(!ring.is_empty() && ring.len() <= 256);
            let scaled = scale(&backends.iter().map(|(i, w)| (*i, u64::from(*w))).collect::<Vec<_>>(), 256);
            let cycle: u64 = scaled.iter().sum();
            let repeats = ring.len() as u64 / cycle;
            for (i, (_, w)) in backends.iter().enumerate() {
                let count = ring.iter().filter(|id| **id == i as u32).count() as u64;
                prop_assert_eq!(count, scaled[i] * repeats, "backend {} weight {}", i, w);
                prop_assert!(count >= 1);
            }
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            if total <= 256 {
                prop_assert_eq!(scaled.to_vec(), weights.iter().map(|w| u64::from(*w)).collect::<Vec<_>>());
            }
        }
    }
}
