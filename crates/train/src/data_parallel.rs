//! The CPU half of data-parallel training (issue "Multi-GPU"), testable without GPUs: which
//! samples each rank takes from a global batch, and how gradients are grouped into buckets
//! for all-reduce. Not yet wired to NCCL: that needs a multi-GPU machine.
//!
//! Sampling is independent of the GPU count: with `world` ranks of `per_rank` images, global
//! batch `b` is exactly the batch `b` that one GPU with batch `world · per_rank` would take
//! (same epoch order, same (seed, epoch, position) augmentation keys, see
//! `tern_data::loader::plan_batch`), cut into contiguous, near-equal shards.

use std::ops::Range;

/// The positions of a global batch of `len` samples that rank `rank` of `world` takes: near
/// equal contiguous shards, the first `len % world` ranks one sample more (a short last batch
/// still gives every rank a share when it can).
pub fn shard(len: usize, rank: usize, world: usize) -> Range<usize> {
    assert!(world > 0 && rank < world, "rank {rank} of {world}");
    let (base, extra) = (len / world, len % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Groups gradients into all-reduce buckets of at most `cap_bytes` (a tensor larger than the
/// cap gets a bucket of its own), in the order the backward pass produces them — the reverse
/// of the parameters' forward order — so each bucket can be reduced while the backward pass
/// still runs. `bytes[i]` is parameter `i`'s gradient size in forward order; each bucket lists
/// parameter indices.
pub fn plan_buckets(bytes: &[usize], cap_bytes: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut filled = 0usize;
    for i in (0..bytes.len()).rev() {
        let fits = buckets.last().is_some_and(|b| !b.is_empty() && filled + bytes[i] <= cap_bytes);
        if !fits {
            buckets.push(Vec::new());
            filled = 0;
        }
        buckets.last_mut().expect("a bucket").push(i);
        filled += bytes[i];
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::Rng;

    #[test]
    fn shards_cover_the_global_batch_once_in_order() {
        for len in 0..40 {
            for world in 1..9 {
                let shards: Vec<Range<usize>> = (0..world).map(|r| shard(len, r, world)).collect();
                assert_eq!(shards[0].start, 0);
                assert_eq!(shards[world - 1].end, len);
                for w in shards.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "contiguous");
                    assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1, "near equal");
                }
            }
        }
        // 4 GPUs x 64 = one GPU with batch 256
        assert_eq!(shard(256, 2, 4), 128..192);
    }

    #[test]
    fn sharded_batches_are_the_single_gpu_batch_with_its_augmentation() {
        use tern_data::loader::{epoch_order, plan_batch};
        use tern_data::{Augment, LoaderConfig, Normalize};
        let cfg = LoaderConfig {
            batch_size: 24,
            shuffle: true,
            seed: 5,
            augment: Augment { crop_pad: 2, hflip: true },
            normalize: Normalize { mean: vec![0.0], std: vec![1.0] },
            input_shape: [1, 8, 8],
            prefetch: 1,
        };
        let (len, epoch, world) = (100, 3, 4);
        let order = epoch_order(len, cfg.seed, epoch, cfg.shuffle);
        for (b, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let start = b * cfg.batch_size;
            let whole = plan_batch(chunk, [1, 8, 8], &cfg, epoch, start, true);
            let mut joined = Vec::new();
            for rank in 0..world {
                let r = shard(chunk.len(), rank, world);
                joined.extend(plan_batch(&chunk[r.clone()], [1, 8, 8], &cfg, epoch, start + r.start, true));
            }
            assert_eq!(joined, whole, "batch {b}");
        }
    }

    #[test]
    fn buckets_follow_the_backward_order_and_respect_the_cap() {
        let mut rng = Rng::new(2);
        for _ in 0..50 {
            let n = 1 + rng.below(30);
            let bytes: Vec<usize> = (0..n).map(|_| 1 + rng.below(1000)).collect();
            let cap = 1 + rng.below(2500);
            let buckets = plan_buckets(&bytes, cap);
            let flat: Vec<usize> = buckets.iter().flatten().copied().collect();
            assert_eq!(flat, (0..n).rev().collect::<Vec<_>>(), "every gradient once, last layer first");
            for b in &buckets {
                let total: usize = b.iter().map(|&i| bytes[i]).sum();
                assert!(total <= cap || b.len() == 1, "{total} > {cap} in {b:?}");
            }
            // greedy: a bucket closes only when the next gradient would not fit
            for w in buckets.windows(2) {
                let total: usize = w[0].iter().map(|&i| bytes[i]).sum();
                assert!(total + bytes[w[1][0]] > cap);
            }
        }
        assert!(plan_buckets(&[], 10).is_empty());
    }
}
