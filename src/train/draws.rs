//! Each micro-step's random draws (the posterior sample, the noise, the timesteps), made as the
//! script makes them, and the whole stream replayed without computing anything: to resume, and
//! to put the generator back after validation re-seeded it. The data order and captions come
//! from [`super::script_rng`].
use super::bucket_batches::BucketBatching;
use super::script_rng::{Item, ScriptStream, StreamShape};
use tch::{Device, Kind, Tensor};

/// The shapes and counts the draws depend on.
pub struct StepDraws {
    /// Precision the script draws the posterior and noise in (its latents' dtype).
    pub kind: Kind,
    /// Latent side: resolution / 8.
    pub latent_size: i64,
    pub num_train_timesteps: i64,
    pub seed: u64,
    /// `[V + n, D]` of each text encoder after `resize_token_embeddings` (its draws come first).
    pub resized: Vec<(i64, i64)>,
    pub num_vectors: i64,
    /// The data order's and captions' draws.
    pub shape: StreamShape,
    /// `--noise_offset`: one more `randn(B, C, 1, 1)` after the noise.
    pub noise_offset: bool,
}

/// One micro-step's draws, on the CPU.
pub struct Draws {
    /// Standard normal for `mean + std * eps`.
    pub posterior: Tensor,
    pub noise: Tensor,
    pub timesteps: Tensor,
    /// `--noise_offset`'s `[B, 4, 1, 1]` f32 draw.
    pub offset: Option<Tensor>,
}

impl StepDraws {
    /// A batch of `bsz`'s draws, from libtorch's global CPU generator, in the script's order.
    pub fn draw(&self, bsz: i64) -> Draws {
        self.draw_sized(bsz, (self.latent_size, self.latent_size))
    }

    /// [`StepDraws::draw`] for latents of `(height, width)`.
    pub fn draw_sized(&self, bsz: i64, (lat_h, lat_w): (i64, i64)) -> Draws {
        let posterior = Tensor::randn([bsz, 4, lat_h, lat_w], (self.kind, Device::Cpu));
        // The script's `randn_like(latents)`: with more than one image its latents come out of
        // the VAE channels-last, and libtorch fills such a tensor element by element (not in
        // the vectorised blocks of a contiguous one), which draws different numbers.
        let noise = if bsz > 1 {
            let mut t = Tensor::empty([bsz, lat_h, lat_w, 4], (self.kind, Device::Cpu)).permute([0, 3, 1, 2]);
            let _ = t.normal_(0.0, 1.0);
            t.contiguous()
        } else {
            Tensor::randn([bsz, 4, lat_h, lat_w], (self.kind, Device::Cpu))
        };
        // diffusers' training scripts draw the offset in f32, right after the noise.
        let offset = self.noise_offset.then(|| Tensor::randn([bsz, 4, 1, 1], (Kind::Float, Device::Cpu)));
        let timesteps = Tensor::randint(self.num_train_timesteps, [bsz], (Kind::Int64, Device::Cpu));
        Draws { posterior, noise, timesteps, offset }
    }

    /// The stream after `micro_steps` micro-steps from `set_seed`, every draw made again, and
    /// the epoch it is in.
    pub fn replay(&self, micro_steps: u64) -> (ScriptStream, u64) {
        self.replay_with(None, micro_steps)
    }

    /// The draws of a batch of `items`: with buckets, at the latent size of their bucket.
    pub fn draw_items(&self, items: &[Item], buckets: Option<&BucketShapes>) -> Draws {
        let bsz = items.len() as i64;
        match (buckets, items.first()) {
            (Some(b), Some(first)) => self.draw_sized(bsz, b.latent_of(first.index)),
            _ => self.draw(bsz),
        }
    }

    /// [`StepDraws::replay`] with bucket batches and each bucket's latent size.
    pub fn replay_with(&self, buckets: Option<&BucketShapes>, micro_steps: u64) -> (ScriptStream, u64) {
        let batching = buckets.map(|b| b.batching.clone());
        ScriptStream::replay_with(self.seed, &self.resized, self.num_vectors, self.shape.clone(), batching, micro_steps, &|items| {
            let _ = self.draw_items(items, buckets);
        })
    }
}

/// `--enable_bucket`: the batching and each image's latent `(height, width)`.
#[derive(Debug, Clone)]
pub struct BucketShapes {
    pub batching: BucketBatching,
    pub latent: Vec<(i64, i64)>,
}

impl BucketShapes {
    /// The latent size of dataset item `item` (image `item % images`).
    pub fn latent_of(&self, item: usize) -> (i64, i64) {
        self.latent.get(item % self.latent.len().max(1)).copied().unwrap_or_default()
    }
}
