//! The batches of an epoch with aspect-ratio buckets (`--enable_bucket`): every batch holds
//! items of one bucket, as kohya's `BucketBatchIndex` batches do.
//!
//! The epoch's permutation of items is the script's (the same draws as without buckets, so
//! the rest of the stream keeps its structure); each bucket's items are taken in that order and
//! cut into batches of `--train_batch_size` (a bucket's last batch may be short, as kohya's);
//! then the batches are shuffled as kohya shuffles them each epoch: `random.seed(seed + epoch)`,
//! `random.shuffle(batches)`. All of it is a function of the seed and the epoch, so a resumed run
//! replays it exactly. Data-parallel, batch k goes to process k mod N, and the last round is
//! completed with the epoch's first batches, so every process runs the same number.
use super::script_rng::{Mt19937, Shard};

/// Which bucket each image is in (item `i` shows image `i % images`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketBatching {
    pub image_bucket: Vec<usize>,
    /// The run's seed: epoch `e`'s batches are shuffled with `random.seed(seed + e)`.
    pub seed: u64,
}

impl BucketBatching {
    fn buckets(&self) -> usize {
        self.image_bucket.iter().max().map_or(0, |m| m + 1)
    }

    fn bucket_of(&self, item: usize) -> usize {
        self.image_bucket[item % self.image_bucket.len().max(1)]
    }

    /// Epoch `epoch`'s batches from the permutation `order` of the items (see the module).
    pub fn batches(&self, order: &[usize], batch: usize, epoch: u64) -> Vec<Vec<usize>> {
        let mut per_bucket: Vec<Vec<usize>> = vec![Vec::new(); self.buckets()];
        for &item in order {
            per_bucket[self.bucket_of(item)].push(item);
        }
        let mut batches: Vec<Vec<usize>> = per_bucket.iter().flat_map(|items| items.chunks(batch.max(1)).map(<[usize]>::to_vec)).collect();
        Mt19937::python(self.seed.wrapping_add(epoch)).shuffle(&mut batches);
        batches
    }

    /// Batches per epoch over `len` items (one process): each bucket's `ceil(count / batch)`.
    pub fn batch_count(&self, len: usize, batch: usize) -> usize {
        let mut counts = vec![0usize; self.buckets()];
        for item in 0..len {
            counts[self.bucket_of(item)] += 1;
        }
        counts.iter().map(|c| c.div_ceil(batch.max(1))).sum()
    }

    /// Batches each of `world` processes runs per epoch.
    pub fn batches_per_epoch(&self, len: usize, batch: usize, world: usize) -> u64 {
        self.batch_count(len, batch).div_ceil(world.max(1)) as u64
    }
}

/// Process `shard.rank`'s batches: batch k goes to process k mod world; the last round is
/// completed with the epoch's first batches (cycled), so every process gets `ceil(n / world)`.
pub fn shard_bucket_batches(batches: &[Vec<usize>], shard: Shard) -> Vec<Vec<usize>> {
    let world = shard.world.max(1);
    let rounds = batches.len().div_ceil(world);
    (0..rounds * world).filter(|k| k % world == shard.rank).filter_map(|k| batches.get(k).or_else(|| batches.get(k % batches.len().max(1))).cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_single_bucket_and_cover_the_epoch() {
        let b = BucketBatching { image_bucket: vec![0, 1, 0, 2, 1], seed: 7 };
        let len = 15;
        let order: Vec<usize> = (0..len).rev().collect();
        let batches = b.batches(&order, 2, 3);
        assert_eq!(batches.len(), b.batch_count(len, 2));
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..len).collect::<Vec<_>>());
        for batch in &batches {
            assert!(batch.iter().all(|&i| b.bucket_of(i) == b.bucket_of(batch[0])), "{batch:?}");
        }
        // Another epoch, another order; the same epoch, the same.
        assert_ne!(b.batches(&order, 2, 4), batches);
        assert_eq!(b.batches(&order, 2, 3), batches);
    }

    #[test]
    fn shards_cover_every_batch_evenly() {
        let batches: Vec<Vec<usize>> = (0..7).map(|k| vec![k]).collect();
        let shards: Vec<Vec<Vec<usize>>> = (0..3).map(|rank| shard_bucket_batches(&batches, Shard { rank, world: 3 })).collect();
        assert!(shards.iter().all(|s| s.len() == 3));
        assert_eq!(shards[0], [vec![0], vec![3], vec![6]]);
        assert_eq!(shards[1], [vec![1], vec![4], vec![0]]);
        assert_eq!(shards[2], [vec![2], vec![5], vec![1]]);
    }
}
