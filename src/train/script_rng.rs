//! The random stream of `textual_inversion.py`, draw for draw, so that `--seed S` on CPU picks
//! the same images, captions, flips, posterior draws, noise and timesteps as the Python script
//! with the same seed.
//!
//! The script's order (single process, `--dataloader_num_workers 0`), after `set_seed(S)`:
//! 1. `resize_token_embeddings` draws a `[V+n, D]` normal init and (transformers' mean
//!    resizing) an `[n, D]` normal sample, both overwritten afterwards (SDXL's script resizes
//!    both encoders, the first then the second);
//! 2. each epoch, the DataLoader iterator draws an int64 base seed, the RandomSampler another,
//!    which seeds a private generator for `randperm(len)`;
//! 3. each item loaded: Python's `random.choice(templates)`, then torchvision's flip
//!    `torch.rand(1) < 0.5`; accelerate loads one batch ahead of the step that uses it;
//! 4. each micro-step: the posterior sample `randn`, the noise `randn_like`, the timesteps
//!    `randint(0, T, (B,))`.
//!
//! libtorch's global CPU generator gives the torch draws (same library, same order); Python's
//! Mersenne Twister (seeded as `random.seed(int)`) and the private `torch.Generator` of the
//! sampler are re-implemented here.
//!
//! Data-parallel under accelerate (N processes, every one seeded alike), three things differ:
//! `prepare` seeds the sampler's generator once with an extra global int64 draw and it carries
//! over between epochs (so an epoch makes the base-seed draw only, then `randperm` on that
//! generator and a second, discarded `randperm`: the sampler's empty tail); and each process
//! loads only its share of the epoch's batches ([`shard_batches`]).
use super::bucket_batches::{shard_bucket_batches, BucketBatching};
use std::collections::VecDeque;
use tch::{Device, Kind, Tensor};

/// MT19937 as libtorch's CPU generator seeds it (`mt19937(seed)`: the low 32 bits of the seed).
#[derive(Clone)]
pub struct Mt19937 {
    state: Vec<u32>,
    index: usize,
}

impl Mt19937 {
    pub fn torch(seed: u64) -> Self {
        let mut state = vec![0u32; 624];
        state[0] = seed as u32;
        for j in 1..624 {
            state[j] = 1812433253u32.wrapping_mul(state[j - 1] ^ (state[j - 1] >> 30)).wrapping_add(j as u32);
        }
        Mt19937 { state, index: 624 }
    }

    /// As CPython's `random.seed(int)` (`init_by_array` over the integer's 32-bit words).
    pub fn python(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
        let mut mt = Mt19937::torch(19650218).state;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1664525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1566083941)).wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        Mt19937 { state: mt, index: 624 }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % 624] & 0x7fff_ffff);
                self.state[k] = self.state[(k + 397) % 624] ^ (y >> 1) ^ if y & 1 == 1 { 0x9908_b0df } else { 0 };
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Python's `random.random()`: 53 bits from two words.
    pub fn random(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)
    }

    /// Python's `random.shuffle(x)`: from the end, each slot swapped with one below it.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.below(i + 1);
            x.swap(i, j);
        }
    }

    /// Python's `random.choice` index: `_randbelow(n)` by rejection on `getrandbits(k)`.
    pub fn below(&mut self, n: usize) -> usize {
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = (self.next_u32() >> (32 - k)) as usize;
            if r < n {
                return r;
            }
        }
    }
}

/// `torch.randperm(n, generator=torch.Generator().manual_seed(seed))` on CPU.
pub fn torch_randperm(n: usize, seed: u64) -> Vec<usize> {
    let mut g = Mt19937::torch(seed);
    let mut r: Vec<usize> = (0..n).collect();
    for i in 0..n.saturating_sub(1) {
        let z = g.next_u32() as usize % (n - i);
        r.swap(i, z + i);
    }
    r
}

/// `torch.randperm(n, generator=g)` on CPU, continuing `g`'s stream.
fn randperm_with(g: &mut Mt19937, n: usize) -> Vec<usize> {
    let mut r: Vec<usize> = (0..n).collect();
    for i in 0..n.saturating_sub(1) {
        let z = g.next_u32() as usize % (n - i);
        r.swap(i, z + i);
    }
    r
}

/// This process's place among the data-parallel processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

/// The batches of one epoch's `order` that process `rank` of `world` loads, as accelerate's
/// `BatchSamplerShard` (`even_batches=True`, `drop_last=False`): batch k of the epoch goes to
/// process k mod `world`; the last group is completed from the epoch's first indices (repeated
/// as often as needed), so every process gets the same number of full batches.
pub fn shard_batches(order: &[usize], batch: usize, shard: Shard) -> Vec<Vec<usize>> {
    let (rank, world) = (shard.rank, shard.world);
    let batches: Vec<&[usize]> = order.chunks(batch.max(1)).collect();
    let mut mine: Vec<Vec<usize>> = batches.iter().enumerate().filter(|(k, _)| k % world == rank).map(|(_, b)| b.to_vec()).collect();
    let Some(last) = batches.last() else { return mine };
    // The first `world` batches' indices, doubled until there are enough to complete a group.
    let mut initial: Vec<usize> = batches.iter().take(world).flat_map(|b| b.iter().copied()).collect();
    while initial.len() < world * batch {
        initial.extend_from_within(..);
    }
    let mut idx = batches.len();
    let mut partial: Vec<usize> = Vec::new();
    if last.len() < batch {
        // The short last batch is completed in place, for the process it fell to.
        idx -= 1;
        partial = last.to_vec();
        if idx % world == rank {
            mine.pop();
        }
    }
    let mut cycle = 0;
    while idx % world != 0 || !partial.is_empty() {
        let end = cycle + batch - partial.len();
        partial.extend_from_slice(&initial[cycle..end]);
        let full = std::mem::take(&mut partial);
        if idx % world == rank {
            mine.push(full);
        }
        cycle = end;
        idx += 1;
    }
    mine
}

/// Batches each process runs per epoch: `ceil(ceil(len / batch) / world)`.
pub fn batches_per_epoch(len: usize, batch: usize, world: usize) -> u64 {
    len.div_ceil(batch.max(1)).div_ceil(world.max(1)) as u64
}

/// One draw of the global generator as `torch.empty((), dtype=int64).random_()`.
fn torch_random_i64() -> u64 {
    let mut t = Tensor::empty([], (Kind::Int64, Device::Cpu));
    let _ = t.random_();
    t.int64_value(&[]) as u64
}

/// The draws `resize_token_embeddings` makes before the script overwrites the new rows.
pub fn resize_token_embeddings_draws(vocab_after: i64, width: i64, new: i64) {
    let _ = Tensor::randn([vocab_after, width], (Kind::Float, Device::Cpu));
    let _ = Tensor::randn([new, width], (Kind::Float, Device::Cpu));
}

/// One dataset item as the script's `__getitem__` draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub index: usize,
    pub template: usize,
    pub flip: bool,
    /// With tag draws: the caption's tags kept, in the drawn order (indices into its
    /// comma-separated tags).
    pub tags: Option<Vec<u16>>,
}

/// A1111's `create_text` draws after each item's template choice, on the same Python generator:
/// `random() > dropout` per tag (when dropout is on), then `random.shuffle` of those kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TagDraws {
    /// Tags of each image's caption (0: the image has none, and draws nothing).
    pub counts: Vec<usize>,
    pub dropout: f64,
    pub shuffle: bool,
}

impl TagDraws {
    /// The draws of one item showing `image`: the kept tags in their new order.
    pub fn draw(&self, python: &mut Mt19937, image: usize) -> Option<Vec<u16>> {
        let n = *self.counts.get(image)?;
        if n == 0 {
            return None;
        }
        let mut kept: Vec<u16> = (0..n.min(usize::from(u16::MAX)) as u16).collect();
        if self.dropout > 0.0 {
            kept.retain(|_| python.random() > self.dropout);
        }
        if self.shuffle {
            python.shuffle(&mut kept);
        }
        Some(kept)
    }
}

/// What the stream's draws depend on besides the seed.
#[derive(Debug, Clone)]
pub struct StreamShape {
    /// Dataset items (images x repeats).
    pub len: usize,
    pub batch_size: usize,
    pub templates: usize,
    pub tags: Option<TagDraws>,
    /// Data-parallel: this process's share (None: one process).
    pub shard: Option<Shard>,
}

/// The DataLoader (shuffled, `drop_last=False`) behind accelerate's one-batch lookahead.
pub struct ScriptStream {
    shape: StreamShape,
    python: Mt19937,
    /// Data-parallel: the sampler's own generator, seeded once at `prepare`.
    sampler: Option<Mt19937>,
    /// This epoch's batches (this process's share), and the next one to load.
    batches: Vec<Vec<usize>>,
    next_batch: usize,
    loaded: VecDeque<Vec<Item>>,
    in_epoch: bool,
    /// `--enable_bucket`: batches of one bucket each ([`super::bucket_batches`]).
    buckets: Option<BucketBatching>,
    /// Epochs started so far.
    epochs: u64,
}

impl ScriptStream {
    /// The stream after `set_seed(seed)`; data-parallel, `prepare`'s draw seeds the sampler, so
    /// call this where the script calls `accelerator.prepare`.
    pub fn new(seed: u64, shape: StreamShape) -> Self {
        let sampler = shape.shard.filter(|s| s.world > 1).map(|_| Mt19937::torch(torch_random_i64()));
        ScriptStream {
            shape,
            python: Mt19937::python(seed),
            sampler,
            batches: Vec::new(),
            next_batch: 0,
            loaded: VecDeque::new(),
            in_epoch: false,
            buckets: None,
            epochs: 0,
        }
    }

    /// The stream with each epoch's batches made from buckets (None: the script's batches).
    pub fn with_buckets(mut self, buckets: Option<BucketBatching>) -> Self {
        self.buckets = buckets;
        self
    }

    fn load_batch(&mut self) -> Option<Vec<Item>> {
        let s = &self.shape;
        let indices = self.batches.get(self.next_batch)?.clone();
        self.next_batch += 1;
        let mut batch = Vec::with_capacity(indices.len());
        for index in indices {
            let template = self.python.below(s.templates);
            let images = s.tags.as_ref().map_or(1, |t| t.counts.len().max(1));
            let tags = s.tags.as_ref().and_then(|t| t.draw(&mut self.python, index % images));
            let flip = f64::try_from(Tensor::rand([1], (Kind::Float, Device::Cpu))).unwrap_or(1.0) < 0.5;
            batch.push(Item { index, template, flip, tags });
        }
        Some(batch)
    }

    /// Starts an epoch: the iterator's and the sampler's seeds, the permutation, and the first
    /// batch loaded.
    pub fn start_epoch(&mut self) {
        let _base_seed = torch_random_i64();
        let (len, batch) = (self.shape.len, self.shape.batch_size);
        let (order, shard) = match (&mut self.sampler, self.shape.shard) {
            (Some(g), Some(shard)) => {
                let order = randperm_with(g, len);
                let _tail = randperm_with(g, len);
                (order, Some(shard))
            }
            _ => (torch_randperm(len, torch_random_i64()), None),
        };
        self.batches = match (&self.buckets, shard) {
            (Some(b), shard) => {
                let all = b.batches(&order, batch, self.epochs);
                match shard {
                    Some(s) => shard_bucket_batches(&all, s),
                    None => all,
                }
            }
            (None, Some(shard)) => shard_batches(&order, batch, shard),
            (None, None) => order.chunks(batch.max(1)).map(<[usize]>::to_vec).collect(),
        };
        self.epochs += 1;
        self.next_batch = 0;
        self.loaded.clear();
        if let Some(b) = self.load_batch() {
            self.loaded.push_back(b);
        }
        self.in_epoch = true;
    }

    pub fn in_epoch(&self) -> bool {
        self.in_epoch
    }

    /// Re-creates the stream after `micro_steps` micro-steps from `set_seed(seed)`, making every
    /// draw again without computing anything (`step_draws(batch_size)` makes a step's draws).
    /// Used to resume, and to give the global generator back after validation re-seeded it.
    /// Returns the stream and the epoch it is in.
    pub fn replay(seed: u64, resized: &[(i64, i64)], new: i64, shape: StreamShape, micro_steps: u64, step_draws: &dyn Fn(i64)) -> (ScriptStream, u64) {
        Self::replay_with(seed, resized, new, shape, None, micro_steps, &|items: &[Item]| step_draws(items.len() as i64))
    }

    /// [`ScriptStream::replay`] with bucket batches; `step_draws` gets each batch's items.
    pub fn replay_with(
        seed: u64,
        resized: &[(i64, i64)],
        new: i64,
        shape: StreamShape,
        buckets: Option<BucketBatching>,
        micro_steps: u64,
        step_draws: &dyn Fn(&[Item]),
    ) -> (ScriptStream, u64) {
        tch::manual_seed(seed as i64);
        for &(vocab_after, width) in resized {
            resize_token_embeddings_draws(vocab_after, width, new);
        }
        let mut stream = ScriptStream::new(seed, shape).with_buckets(buckets);
        let mut epoch = 0;
        let mut done = 0;
        while done < micro_steps {
            if !stream.in_epoch() {
                stream.start_epoch();
            }
            match stream.next_batch() {
                Some((items, last)) => {
                    step_draws(&items);
                    done += 1;
                    if last {
                        epoch += 1;
                    }
                }
                None => epoch += 1,
            }
        }
        (stream, epoch)
    }

    /// The next batch of the epoch, with whether it is the epoch's last; loads the batch after
    /// it first, as accelerate does. None at the end of the epoch.
    pub fn next_batch(&mut self) -> Option<(Vec<Item>, bool)> {
        if !self.in_epoch {
            return None;
        }
        let current = self.loaded.pop_front()?;
        if let Some(b) = self.load_batch() {
            self.loaded.push_back(b);
        }
        let last = self.loaded.is_empty();
        if last {
            self.in_epoch = false;
        }
        Some((current, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_and_choices_match_torch_and_python() {
        // From fixtures/train/single/record.json (the real script's log).
        assert_eq!(torch_randperm(16, 4600501050014744444), [13, 12, 2, 6, 11, 8, 5, 7, 4, 0, 1, 3, 14, 9, 10, 15]);
        // random.seed(0); [random.randrange(27) for _ in range(5)]
        let mut py = Mt19937::python(0);
        let got: Vec<usize> = (0..5).map(|_| py.below(27)).collect();
        assert_eq!(got, [12, 24, 13, 1, 8]);
    }

    /// Every case of fixtures/train/dist/shards.json (accelerate's BatchSamplerShard over
    /// indices 0..L-1, scripts/fixtures/make_fixtures_dist.py): the same batches on every rank.
    #[test]
    fn shards_are_accelerates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/train/dist/shards.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() > 100);
        for c in cases {
            let n = |k: &str| c[k].as_u64().unwrap() as usize;
            let (items, batch, world) = (n("items"), n("batch"), n("world"));
            let order: Vec<usize> = (0..items).collect();
            for (rank, want) in c["ranks"].as_array().unwrap().iter().enumerate() {
                let want: Vec<Vec<usize>> = serde_json::from_value(want.clone()).unwrap();
                let got = shard_batches(&order, batch, Shard { rank, world });
                assert_eq!(got, want, "items {items}, batch {batch}, world {world}, rank {rank}");
                assert_eq!(got.len() as u64, batches_per_epoch(items, batch, world), "items {items}, batch {batch}, world {world}");
            }
        }
    }
}
