//! DDPMScheduler's forward process, for training: `add_noise` and `get_velocity` exactly as
//! diffusers computes them. The training script loads it with
//! `DDPMScheduler.from_pretrained(model, subfolder="scheduler")`, i.e. from SD 1.5's PNDM config:
//! [`DdpmScheduler::new`] takes any scheduler config the same way (fields DDPM lacks, such as
//! `skip_prk_steps`, are ignored; fields it lacks take DDPM's defaults).
use super::config::{PredictionType, SchedulerConfig, DDPM};
use super::schedule::TrainSchedule;
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

pub struct DdpmScheduler {
    num_train_timesteps: i64,
    prediction_type: PredictionType,
    betas: Tensor,
    alphas_cumprod: Tensor,
    /// alphas_cumprod copied to each device it was used on (as diffusers keeps it on the
    /// device after the first call): one host-to-device copy, not one per step.
    on_device: std::sync::Mutex<Vec<(Device, Tensor)>>,
}

impl DdpmScheduler {
    /// Reads the training schedule (every beta_schedule DDPM has, "laplace" and "sigmoid"
    /// included). The sampling fields (variance_type, clip_sample, clip_sample_range,
    /// thresholding and its parameters, timestep_spacing, steps_offset) are not used by
    /// `add_noise` and `get_velocity`, and are not checked, as diffusers' training never reads them.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let c = config.common(&DDPM)?;
        let schedule = TrainSchedule::new(&c, false)?;
        Ok(DdpmScheduler {
            num_train_timesteps: c.num_train_timesteps,
            prediction_type: c.prediction_type,
            betas: schedule.betas,
            alphas_cumprod: schedule.alphas_cumprod,
            on_device: Default::default(),
        })
    }

    /// Draw training timesteps from `0..num_train_timesteps()`.
    pub fn num_train_timesteps(&self) -> i64 {
        self.num_train_timesteps
    }

    /// What the UNet is trained to predict: the noise (epsilon), or `get_velocity` (v).
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    /// `[num_train_timesteps]` f32 on the CPU.
    pub fn betas(&self) -> &Tensor {
        &self.betas
    }

    /// `[num_train_timesteps]` f32 on the CPU.
    pub fn alphas_cumprod(&self) -> &Tensor {
        &self.alphas_cumprod
    }

    fn alphas_cumprod_on(&self, device: Device) -> Tensor {
        if device == Device::Cpu {
            return self.alphas_cumprod.shallow_clone();
        }
        let mut cached = self.on_device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = cached.iter().find(|(d, _)| *d == device) {
            return t.shallow_clone();
        }
        let t = self.alphas_cumprod.to_device(device);
        cached.push((device, t.shallow_clone()));
        t
    }

    /// sqrt(alphas_cumprod[t]) and sqrt(1 - alphas_cumprod[t]) per sample, in `like`'s dtype and
    /// device, shaped to broadcast over it (diffusers casts alphas_cumprod to the sample dtype
    /// first, so fp16 training gets fp16 factors).
    fn factors(&self, like: &Tensor, other: &Tensor, timesteps: &Tensor) -> Result<(Tensor, Tensor)> {
        if like.size() != other.size() || like.device() != other.device() || !like.is_floating_point() {
            bail!("DDPMScheduler: the sample and the noise must be floating point tensors of one shape on one device");
        }
        if !matches!(timesteps.kind(), Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8) {
            bail!("DDPMScheduler: timesteps must be an integer tensor, got {:?}", timesteps.kind());
        }
        let batch = like.size().first().copied().unwrap_or(0);
        if timesteps.numel() as i64 != batch {
            bail!("DDPMScheduler: {} timesteps for a batch of {batch}", timesteps.numel());
        }
        // Out-of-range indices abort the process on CUDA; check where it costs no device sync.
        if timesteps.device() == Device::Cpu && timesteps.numel() > 0 {
            let (lo, hi) = (timesteps.min().int64_value(&[]), timesteps.max().int64_value(&[]));
            if lo < 0 || hi >= self.num_train_timesteps {
                bail!("DDPMScheduler: timesteps {lo}..={hi} are outside 0..{}", self.num_train_timesteps);
            }
        }
        let device = like.device();
        let ac = self.alphas_cumprod_on(device).to_kind(like.kind());
        let picked = ac.index_select(0, &timesteps.to_device(device).to_kind(Kind::Int64).flatten(0, -1));
        let shape: Vec<i64> = std::iter::once(-1).chain(std::iter::repeat_n(1, like.dim().saturating_sub(1))).collect();
        let sqrt_alpha = picked.pow_tensor_scalar(0.5).reshape(&shape);
        let sqrt_one_minus = (picked.neg() + 1.0).pow_tensor_scalar(0.5).reshape(&shape);
        Ok((sqrt_alpha, sqrt_one_minus))
    }

    /// The forward process q(x_t | x_0): sqrt(a_t) * original + sqrt(1 - a_t) * noise, with one
    /// integer timestep per sample.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        let (a, b) = self.factors(original, noise, timesteps)?;
        Ok(a * original + b * noise)
    }

    /// The v-prediction target: sqrt(a_t) * noise - sqrt(1 - a_t) * sample.
    pub fn get_velocity(&self, sample: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        let (a, b) = self.factors(sample, noise, timesteps)?;
        Ok(a * noise - b * sample)
    }
}
