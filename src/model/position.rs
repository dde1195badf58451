//! T5's relative position buckets.
//!
//! Attention in T5 has no absolute positions: each head adds a learned
//! scalar to every query/key score, looked up by the bucket of the key's
//! offset from the query. Small offsets get a bucket each; larger ones share
//! logarithmically wider buckets up to `max_distance`. The encoder tells
//! left from right (half the buckets each); the decoder only looks left.

/// The bucket of one offset `relative = key_position - query_position`.
///
/// The arithmetic follows `transformers`' `_relative_position_bucket` step
/// for step in `f32`, so that offsets on a bucket boundary land in the same
/// bucket as there.
pub fn relative_position_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let rel = if bidirectional {
        num_buckets /= 2;
        if relative > 0 {
            bucket += num_buckets;
        }
        relative.abs()
    } else {
        (-relative).max(0)
    };
    let max_exact = num_buckets / 2;
    if rel < max_exact {
        bucket += rel;
    } else {
        // torch: log(rel.float() / max_exact) / math.log(max_distance / max_exact)
        //        * (num_buckets - max_exact), truncated towards zero.
        let denom = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let scaled =
            (rel as f32 / max_exact as f32).ln() / denom * (num_buckets - max_exact) as f32;
        let large = (max_exact + scaled as i64).min(num_buckets - 1);
        bucket += large;
    }
    bucket as u32
}

/// Buckets for queries at positions `q_offset..q_offset + q_len` against keys
/// at `0..k_len`, row-major `[q_len, k_len]`.
pub fn bucket_matrix(
    q_offset: usize,
    q_len: usize,
    k_len: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(q_len * k_len);
    for q in q_offset..q_offset + q_len {
        for k in 0..k_len {
            out.push(relative_position_bucket(
                k as i64 - q as i64,
                bidirectional,
                num_buckets,
                max_distance,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_offsets_have_their_own_bucket() {
        // Bidirectional, 32 buckets: 16 per direction, 8 exact.
        assert_eq!(relative_position_bucket(0, true, 32, 128), 0);
        assert_eq!(relative_position_bucket(-3, true, 32, 128), 3);
        assert_eq!(relative_position_bucket(3, true, 32, 128), 16 + 3);
        // Causal: keys to the right all share bucket 0.
        assert_eq!(relative_position_bucket(5, false, 32, 128), 0);
        assert_eq!(relative_position_bucket(-5, false, 32, 128), 5);
    }

    #[test]
    fn far_offsets_saturate_at_the_last_bucket() {
        assert_eq!(relative_position_bucket(-10_000, true, 32, 128), 15);
        assert_eq!(relative_position_bucket(10_000, true, 32, 128), 31);
        assert_eq!(relative_position_bucket(-10_000, false, 32, 128), 31);
    }

    #[test]
    fn buckets_never_decrease_with_distance() {
        let mut last = 0;
        for d in 0..500 {
            let b = relative_position_bucket(-d, false, 32, 128);
            assert!(b >= last, "bucket fell at distance {d}");
            last = b;
        }
    }
}
