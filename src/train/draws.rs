//! Each micro-step's random draws (the posterior sample, the noise, the timesteps), made as the
//! script makes them, and the whole stream replayed without computing anything: to resume, and
//! to put the generator back after validation re-seeded it. The data order and captions come
//! from [`super::script_rng`].
use super::script_rng::{ScriptStream, StreamShape};
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
        let lat = self.latent_size;
        let posterior = Tensor::randn([bsz, 4, lat, lat], (self.kind, Device::Cpu));
        // The script's `randn_like(latents)`: with more than one image its latents come out of
        // the VAE channels-last, and libtorch fills such a tensor element by element (not in
        // the vectorised blocks of a contiguous one), which draws different numbers.
        let noise = if bsz > 1 {
            let mut t = Tensor::empty([bsz, lat, lat, 4], (self.kind, Device::Cpu)).permute([0, 3, 1, 2]);
            let _ = t.normal_(0.0, 1.0);
            t.contiguous()
        } else {
            Tensor::randn([bsz, 4, lat, lat], (self.kind, Device::Cpu))
        };
        // diffusers' training scripts draw the offset in f32, right after the noise.
        let offset = self.noise_offset.then(|| Tensor::randn([bsz, 4, 1, 1], (Kind::Float, Device::Cpu)));
        let timesteps = Tensor::randint(self.num_train_timesteps, [bsz], (Kind::Int64, Device::Cpu));
        Draws { posterior, noise, timesteps, offset }
    }

    /// The stream after `micro_steps` micro-steps from `set_seed`, every draw made again, and
    /// the epoch it is in.
    pub fn replay(&self, micro_steps: u64) -> (ScriptStream, u64) {
        ScriptStream::replay(self.seed, &self.resized, self.num_vectors, self.shape.clone(), micro_steps, &|b| {
            let _ = self.draw(b);
        })
    }
}
