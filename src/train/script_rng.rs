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
}

/// The DataLoader (shuffled, `drop_last=False`) behind accelerate's one-batch lookahead.
pub struct ScriptStream {
    shape: StreamShape,
    python: Mt19937,
    order: Vec<usize>,
    next_item: usize,
    loaded: VecDeque<Vec<Item>>,
    in_epoch: bool,
}

impl ScriptStream {
    pub fn new(seed: u64, shape: StreamShape) -> Self {
        ScriptStream { shape, python: Mt19937::python(seed), order: Vec::new(), next_item: 0, loaded: VecDeque::new(), in_epoch: false }
    }

    fn load_batch(&mut self) -> Option<Vec<Item>> {
        let s = &self.shape;
        if self.next_item >= s.len {
            return None;
        }
        let end = (self.next_item + s.batch_size).min(s.len);
        let mut batch = Vec::with_capacity(end - self.next_item);
        for k in self.next_item..end {
            let index = self.order[k];
            let template = self.python.below(s.templates);
            let images = s.tags.as_ref().map_or(1, |t| t.counts.len().max(1));
            let tags = s.tags.as_ref().and_then(|t| t.draw(&mut self.python, index % images));
            let flip = f64::try_from(Tensor::rand([1], (Kind::Float, Device::Cpu))).unwrap_or(1.0) < 0.5;
            batch.push(Item { index, template, flip, tags });
        }
        self.next_item = end;
        Some(batch)
    }

    /// Starts an epoch: the iterator's and the sampler's seeds, the permutation, and the first
    /// batch loaded.
    pub fn start_epoch(&mut self) {
        let _base_seed = torch_random_i64();
        let sampler_seed = torch_random_i64();
        self.order = torch_randperm(self.shape.len, sampler_seed);
        self.next_item = 0;
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
        tch::manual_seed(seed as i64);
        for &(vocab_after, width) in resized {
            resize_token_embeddings_draws(vocab_after, width, new);
        }
        let mut stream = ScriptStream::new(seed, shape);
        let mut epoch = 0;
        let mut done = 0;
        while done < micro_steps {
            if !stream.in_epoch() {
                stream.start_epoch();
            }
            match stream.next_batch() {
                Some((items, last)) => {
                    step_draws(items.len() as i64);
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
}
