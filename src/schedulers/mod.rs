//! diffusers' noise schedulers: the samplers for generation and DDPM's forward process for
//! training, numerically equal to diffusers 0.42 (tests/schedulers.rs runs full loops against it).
//!
//! A generation loop, as diffusers' StableDiffusionPipeline runs it:
//!
//! ```ignore
//! let config = SchedulerConfig::read(&model.join("scheduler/scheduler_config.json"))?;
//! let mut scheduler = schedulers::load(&config, cli_override)?; // Option<SchedulerKind>
//! scheduler.set_timesteps(steps)?;
//! tch::manual_seed(seed);
//! let mut latents = schedulers::randn(&[1, 4, 64, 64], Kind::Float, device) * scheduler.init_noise_sigma();
//! for &t in scheduler.timesteps().to_vec().iter() {
//!     let input = scheduler.scale_model_input(&Tensor::cat(&[&latents, &latents], 0), t)?;
//!     let noise_pred = unet.forward(&input, &Tensor::from(t), &context); // guidance, then:
//!     latents = scheduler.step(&guided, t, &latents)?;
//! }
//! ```
//!
//! Loop over [`Scheduler::timesteps`], not `0..steps`: PNDM has one timestep more than steps (its
//! PLMS warm-up repeats one), and its Runge-Kutta mode many more.
//!
//! Randomness (Euler ancestral, KDPM2 ancestral, DDPM, SDE DPM-Solver++): diffusers draws with
//! `randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(S))`, on the CPU, then moves
//! the noise to the device. tch has no generator objects, but libtorch's global CPU generator
//! after `tch::manual_seed(S)` is the same mt19937 in the same state, so drawing from it in the
//! same order (initial latents, then one draw per step, in the dtype diffusers uses) gives the
//! same numbers: see [`randn`]. The global generator is shared by the whole process, so nothing
//! else may draw from it between the seed and the end of the loop.
pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod ddpm_sampler;
pub mod deis;
pub mod dpm_solver_multistep;
pub mod dpm_solver_singlestep;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
pub mod kdpm2;
pub mod kdpm2_ancestral;
pub mod lms;
pub mod pndm;
pub(crate) mod schedule;
pub mod unipc;

use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind, Tensor};

pub use config::{PredictionType, SchedulerConfig, TimestepSpacing};
pub use ddpm::DdpmScheduler;

/// An inference sampler. Timesteps are f64 holding diffusers' exact values: integers for PNDM,
/// DDIM and DPM-Solver (int64 in diffusers), f32 values for the Euler schedulers (float32 in
/// diffusers). Pass them back unchanged to [`Scheduler::scale_model_input`] and
/// [`Scheduler::step`], and to the UNet as `Tensor::from(t)`: it embeds timesteps in f32, where
/// every one of these values is exact.
pub trait Scheduler: Send {
    fn kind(&self) -> SchedulerKind;
    /// Prepares a run of `num_inference_steps` steps (and resets the multistep history).
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;
    /// The timesteps to visit, in order; empty before `set_timesteps`.
    fn timesteps(&self) -> &[f64];
    /// Factor for the initial N(0, 1) latents: 1 unless the scheduler works in sigmas (Euler:
    /// the largest sigma, or sqrt(sigma^2 + 1) with leading spacing).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// The UNet input for `sample` at `timestep`: the sample itself unless the scheduler works
    /// in sigmas (Euler divides by sqrt(sigma^2 + 1)).
    fn scale_model_input(&mut self, sample: &Tensor, _timestep: f64) -> Result<Tensor> {
        Ok(sample.shallow_clone())
    }
    /// One denoising step: the sample at the next timestep.
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor>;
    fn prediction_type(&self) -> PredictionType;
    /// diffusers' `order`: model calls per step; img2img skips `t_start * order` timesteps.
    fn order(&self) -> usize {
        1
    }
    /// diffusers' `set_begin_index`: img2img starts at this index of [`Scheduler::timesteps`]
    /// (call after `set_timesteps`). A no-op for the schedulers that find their place from the
    /// timestep value (DDIM, PNDM, DDPM).
    fn set_begin_index(&mut self, _index: usize) {}
    /// diffusers' `add_noise` for img2img: `original` (the image's latents) noised to
    /// `timestep`, the run's first. The default refuses: a scheduler supports img2img once its
    /// `add_noise` is written and compared with diffusers (tests/img2img.rs).
    fn add_noise(&self, _original: &Tensor, _noise: &Tensor, _timestep: f64) -> Result<Tensor> {
        bail!("--init_image (img2img) is not supported with {} yet: use pndm, ddim, ddpm, euler, euler-ancestral, dpm++2m or unipc", self.kind().class_name())
    }
}

/// The inference samplers: a diffusers class, with Karras sigmas forced on for the `-karras`
/// ones (diffusers' `Class.from_config(config, use_karras_sigmas=True)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Pndm,
    Ddim,
    Ddpm,
    Euler,
    EulerKarras,
    EulerAncestral,
    DpmSolverMultistep,
    DpmSolverMultistepKarras,
    UniPc,
    Heun,
    HeunKarras,
    Kdpm2,
    Kdpm2Karras,
    Kdpm2Ancestral,
    Kdpm2AncestralKarras,
    Deis,
    Lms,
    LmsKarras,
    UniPcKarras,
    DpmSolverSinglestep,
    DpmSolverSinglestepKarras,
}

/// Per kind: our name, then other names (A1111's sampler names, ComfyUI's, older spellings)
/// that `--scheduler` accepts. Names compare after lowercasing and dropping spaces, `-` and `_`.
const NAMES: &[(SchedulerKind, &str, &[&str])] = &[
    (SchedulerKind::Pndm, "pndm", &["PLMS"]),
    (SchedulerKind::Ddim, "ddim", &["DDIM"]),
    (SchedulerKind::Ddpm, "ddpm", &["DDPM"]),
    (SchedulerKind::Euler, "euler", &["Euler"]),
    (SchedulerKind::EulerKarras, "euler-karras", &["Euler Karras"]),
    (SchedulerKind::EulerAncestral, "euler-ancestral", &["Euler a", "euler_ancestral"]),
    (SchedulerKind::DpmSolverMultistep, "dpm++2m", &["DPM++ 2M", "dpmsolver++", "dpm-solver++", "dpm++", "dpmpp_2m"]),
    (SchedulerKind::DpmSolverMultistepKarras, "dpm++2m-karras", &["DPM++ 2M Karras", "dpmpp_2m_karras"]),
    (SchedulerKind::DpmSolverSinglestep, "dpm++2s", &["dpm-solver-singlestep", "dpmsolver++ singlestep"]),
    (SchedulerKind::DpmSolverSinglestepKarras, "dpm++2s-karras", &["dpm-solver-singlestep-karras"]),
    (SchedulerKind::UniPc, "unipc", &["UniPC", "uni_pc_bh2"]),
    (SchedulerKind::UniPcKarras, "unipc-karras", &["UniPC Karras"]),
    (SchedulerKind::Heun, "heun", &["Heun"]),
    (SchedulerKind::HeunKarras, "heun-karras", &["Heun Karras"]),
    (SchedulerKind::Deis, "deis", &["DEIS"]),
    (SchedulerKind::Lms, "lms", &["LMS"]),
    (SchedulerKind::LmsKarras, "lms-karras", &["LMS Karras", "lms_karras"]),
    (SchedulerKind::Kdpm2, "kdpm2", &["DPM2", "dpm_2"]),
    (SchedulerKind::Kdpm2Karras, "kdpm2-karras", &["DPM2 Karras", "dpm_2_karras"]),
    (SchedulerKind::Kdpm2Ancestral, "kdpm2-a", &["DPM2 a", "dpm_2_ancestral", "kdpm2-ancestral"]),
    (SchedulerKind::Kdpm2AncestralKarras, "kdpm2-a-karras", &["DPM2 a Karras", "dpm_2_ancestral_karras", "kdpm2-ancestral-karras"]),
];

fn name_key(s: &str) -> String {
    s.trim().chars().filter(|c| !matches!(c, ' ' | '-' | '_')).flat_map(char::to_lowercase).collect()
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 21] = [
        SchedulerKind::Pndm,
        SchedulerKind::Ddim,
        SchedulerKind::Ddpm,
        SchedulerKind::Euler,
        SchedulerKind::EulerKarras,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::DpmSolverMultistepKarras,
        SchedulerKind::UniPc,
        SchedulerKind::Heun,
        SchedulerKind::HeunKarras,
        SchedulerKind::Kdpm2,
        SchedulerKind::Kdpm2Karras,
        SchedulerKind::Kdpm2Ancestral,
        SchedulerKind::Kdpm2AncestralKarras,
        SchedulerKind::Deis,
        SchedulerKind::Lms,
        SchedulerKind::LmsKarras,
        SchedulerKind::UniPcKarras,
        SchedulerKind::DpmSolverSinglestep,
        SchedulerKind::DpmSolverSinglestepKarras,
    ];

    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Euler | SchedulerKind::EulerKarras => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverMultistepKarras => "DPMSolverMultistepScheduler",
            SchedulerKind::UniPc | SchedulerKind::UniPcKarras => "UniPCMultistepScheduler",
            SchedulerKind::Heun | SchedulerKind::HeunKarras => "HeunDiscreteScheduler",
            SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Karras => "KDPM2DiscreteScheduler",
            SchedulerKind::Deis => "DEISMultistepScheduler",
            SchedulerKind::DpmSolverSinglestep | SchedulerKind::DpmSolverSinglestepKarras => "DPMSolverSinglestepScheduler",
            SchedulerKind::Lms | SchedulerKind::LmsKarras => "LMSDiscreteScheduler",
            SchedulerKind::Kdpm2Ancestral | SchedulerKind::Kdpm2AncestralKarras => "KDPM2AncestralDiscreteScheduler",
        }
    }

    /// Whether this kind forces `use_karras_sigmas` on, whatever the config says.
    pub fn karras(self) -> bool {
        matches!(
            self,
            SchedulerKind::EulerKarras
                | SchedulerKind::DpmSolverMultistepKarras
                | SchedulerKind::HeunKarras
                | SchedulerKind::Kdpm2Karras
                | SchedulerKind::Kdpm2AncestralKarras
                | SchedulerKind::LmsKarras
                | SchedulerKind::UniPcKarras
                | SchedulerKind::DpmSolverSinglestepKarras
        )
    }

    /// The command-line name.
    pub fn cli_name(self) -> &'static str {
        NAMES.iter().find(|(k, _, _)| *k == self).map_or("", |(_, name, _)| name)
    }

    /// The other names `--scheduler` accepts for this kind.
    pub fn aliases(self) -> &'static [&'static str] {
        NAMES.iter().find(|(k, _, _)| *k == self).map_or(&[], |(_, _, aliases)| aliases)
    }

    /// From a config's `_class_name` (the plain kind: Karras sigmas then come from the config).
    pub fn from_class_name(name: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|k| !k.karras() && k.class_name() == name) {
            Some(k) => Ok(k),
            None => bail!(
                "scheduler class {name:?} is not supported (supported: {}); choose one of {} instead",
                Self::ALL.into_iter().filter(|k| !k.karras()).map(|k| k.class_name()).collect::<Vec<_>>().join(", "),
                Self::ALL.map(|k| k.cli_name()).join(", ")
            ),
        }
    }

    /// Every accepted name, one line per kind, for `--help`.
    pub fn help_listing() -> String {
        let lines: Vec<String> = Self::ALL
            .into_iter()
            .map(|k| {
                let karras = if k.karras() { ", use_karras_sigmas" } else { "" };
                format!("{} ({}{karras}; also: {})", k.cli_name(), k.class_name(), k.aliases().join(", "))
            })
            .collect();
        lines.join("\n")
    }
}

impl FromStr for SchedulerKind {
    type Err = anyhow::Error;
    /// One of the names in `NAMES` (ours or an alias), or a class name, case-insensitive; spaces, `-` and
    /// `_` do not count, so "DPM++ 2M Karras" is `dpm++2m-karras`.
    fn from_str(s: &str) -> Result<Self> {
        let key = name_key(s);
        let by_name = NAMES.iter().find(|(_, name, aliases)| name_key(name) == key || aliases.iter().any(|a| name_key(a) == key));
        if let Some((k, _, _)) = by_name {
            return Ok(*k);
        }
        match Self::ALL.into_iter().find(|k| !k.karras() && k.class_name().eq_ignore_ascii_case(s.trim())) {
            Some(k) => Ok(k),
            None => bail!("unknown scheduler {s:?} (choose one of {})", Self::ALL.map(|k| k.cli_name()).join(", ")),
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// `kind` built from `config`, like diffusers' `Kind.from_config(config)`: the config's values
/// for the fields `kind` has, `kind`'s defaults for the rest (and `use_karras_sigmas=True` for
/// the Karras kinds).
pub fn build(kind: SchedulerKind, config: &SchedulerConfig) -> Result<Box<dyn Scheduler>> {
    let karras;
    let config = if kind.karras() {
        karras = SchedulerConfig { use_karras_sigmas: Some(true), ..config.clone() };
        &karras
    } else {
        config
    };
    Ok(match kind {
        SchedulerKind::Pndm => Box::new(pndm::PndmScheduler::new(config)?),
        SchedulerKind::Ddim => Box::new(ddim::DdimScheduler::new(config)?),
        SchedulerKind::Ddpm => Box::new(ddpm_sampler::DdpmSampler::new(config)?),
        SchedulerKind::Euler | SchedulerKind::EulerKarras => Box::new(euler::EulerDiscreteScheduler::new(config)?.with_kind(kind)),
        SchedulerKind::EulerAncestral => Box::new(euler_ancestral::EulerAncestralDiscreteScheduler::new(config)?),
        SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverMultistepKarras => {
            Box::new(dpm_solver_multistep::DpmSolverMultistepScheduler::new(config)?.with_kind(kind))
        }
        SchedulerKind::UniPc | SchedulerKind::UniPcKarras => Box::new(unipc::UniPcScheduler::new(config)?.with_kind(kind)),
        SchedulerKind::Heun | SchedulerKind::HeunKarras => Box::new(heun::HeunScheduler::new(config)?.with_kind(kind)),
        SchedulerKind::Deis => Box::new(deis::DeisScheduler::new(config)?),
        SchedulerKind::DpmSolverSinglestep | SchedulerKind::DpmSolverSinglestepKarras => {
            Box::new(dpm_solver_singlestep::DpmSolverSinglestepScheduler::new(config)?.with_kind(kind))
        }
        SchedulerKind::Lms | SchedulerKind::LmsKarras => Box::new(lms::LmsScheduler::new(config)?.with_kind(kind)),
        SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Karras => Box::new(kdpm2::Kdpm2Scheduler::new(config)?.with_kind(kind)),
        SchedulerKind::Kdpm2Ancestral | SchedulerKind::Kdpm2AncestralKarras => Box::new(kdpm2_ancestral::Kdpm2AncestralScheduler::new(config)?.with_kind(kind)),
    })
}

/// The config's own scheduler (`_class_name`), or `override_kind` built from the same config.
pub fn load(config: &SchedulerConfig, override_kind: Option<SchedulerKind>) -> Result<Box<dyn Scheduler>> {
    let kind = match override_kind {
        Some(k) => k,
        None => config.class_kind()?,
    };
    build(kind, config)
}

/// N(0, 1) noise drawn like diffusers' `randn_tensor` with a CPU generator: on the CPU from
/// libtorch's global generator (seed it with `tch::manual_seed`), in `kind` (the numbers depend
/// on the dtype they are drawn in), then moved to `device`.
pub fn randn(shape: &[i64], kind: Kind, device: Device) -> Tensor {
    Tensor::randn(shape, (kind, Device::Cpu)).to_device(device)
}

/// The checks every `step` makes before touching tensors (libtorch would abort the process on a
/// shape or device mismatch).
pub(crate) fn check_step_inputs(class: &str, model_output: &Tensor, sample: &Tensor) -> Result<()> {
    if model_output.size() != sample.size() {
        bail!("{class}: model output {:?} and sample {:?} differ in shape", model_output.size(), sample.size());
    }
    if model_output.device() != sample.device() {
        bail!("{class}: model output and sample are on different devices");
    }
    if !model_output.is_floating_point() || !sample.is_floating_point() {
        bail!("{class}: model output and sample must be floating point");
    }
    Ok(())
}

/// The step index diffusers' Euler and DPM-Solver schedulers start from: the position of the
/// first timestep they are given, the second one if it occurs twice (a rule for img2img, kept).
/// The step index the sigma-based schedulers keep: found from the first timestep they are
/// given, then advanced by each step (as diffusers' `_init_step_index`).
pub(crate) fn cached_step_index(cache: &mut Option<usize>, timesteps: &[f64], t: f64, name: &str) -> anyhow::Result<usize> {
    if let Some(i) = *cache {
        return Ok(i);
    }
    let i = index_for_timestep(timesteps, t).ok_or_else(|| anyhow::anyhow!("{name}: timestep {t} is not one of this run's timesteps"))?;
    *cache = Some(i);
    Ok(i)
}

/// Euler-style `scale_model_input`: the sample divided by sqrt(sigma^2 + 1) at the step's sigma.
pub(crate) fn sigma_scaled_input(
    sigmas: &[f32],
    step_index: &mut Option<usize>,
    timesteps: &[f64],
    sample: &Tensor,
    t: f64,
    name: &str,
) -> anyhow::Result<Tensor> {
    if sigmas.is_empty() {
        return Err(not_ready(name));
    }
    let i = cached_step_index(step_index, timesteps, t, name)?;
    let sigma = *sigmas.get(i).ok_or_else(|| anyhow::anyhow!("{name}: stepped past the last timestep"))?;
    use schedule::TorchF32;
    Ok(sample / (sigma * sigma + 1.0).t_sqrt() as f64)
}

/// The start of a multistep solver's `step` (DPM-Solver++ multi- and single-step, DEIS): checks
/// the inputs and that `set_timesteps` ran, and returns the step's index: the cached one, else
/// the timestep's, else (an unknown timestep) the last step, as diffusers does; refuses a step
/// past the last sigma.
pub(crate) fn multistep_index(
    name: &str,
    model_output: &Tensor,
    sample: &Tensor,
    step_index: &mut Option<usize>,
    timesteps: &[f64],
    sigmas_len: usize,
    timestep: f64,
) -> anyhow::Result<usize> {
    check_step_inputs(name, model_output, sample)?;
    if sigmas_len == 0 {
        return Err(not_ready(name));
    }
    let n = timesteps.len();
    let i = *step_index.get_or_insert_with(|| index_for_timestep(timesteps, timestep).unwrap_or(n - 1));
    if i + 1 >= sigmas_len {
        anyhow::bail!("{name}: stepped past the last timestep");
    }
    Ok(i)
}

pub(crate) fn index_for_timestep(timesteps: &[f64], t: f64) -> Option<usize> {
    let hits: Vec<usize> = timesteps.iter().enumerate().filter(|(_, &v)| v == t).map(|(i, _)| i).collect();
    match hits.len() {
        0 => None,
        1 => Some(hits[0]),
        _ => Some(hits[1]),
    }
}

/// `add_noise` of the schedulers that noise with `alphas_cumprod` (DDPM, DDIM, PNDM):
/// `sqrt(a_t) * original + sqrt(1 - a_t) * noise`, with `a_t` cast to the sample's dtype first,
/// as diffusers computes it.
pub(crate) fn alphas_add_noise(alphas_cumprod: &[f32], train: i64, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor> {
    check_step_inputs("add_noise", noise, original)?;
    let a = alphas_cumprod[schedule::train_index(timestep as i64, train)?];
    let a = Tensor::from_slice(&[a]).to_kind(original.kind()).to_device(original.device());
    let sqrt_a = a.sqrt();
    let sqrt_one_minus_a = (a.ones_like() - &a).sqrt();
    Ok(sqrt_a * original + sqrt_one_minus_a * noise)
}

/// The sigma index img2img noises to: the step index `set_begin_index` set, else the
/// timestep's place (diffusers' `add_noise` of the sigma-based schedulers).
pub(crate) fn add_noise_sigma(sigmas: &[f32], step_index: Option<usize>, timesteps: &[f64], timestep: f64, name: &str) -> Result<f32> {
    if sigmas.is_empty() {
        return Err(not_ready(name));
    }
    let i = match step_index {
        Some(i) => i,
        None => index_for_timestep(timesteps, timestep).ok_or_else(|| anyhow::anyhow!("{name}: timestep {timestep} is not one of this run's timesteps"))?,
    };
    sigmas.get(i).copied().ok_or_else(|| anyhow::anyhow!("{name}: step index {i} is past the last sigma"))
}

/// Euler-type `add_noise`: `original + noise * sigma`, sigma in the sample's dtype.
pub(crate) fn sigma_add_noise(sigma: f32, original: &Tensor, noise: &Tensor) -> Result<Tensor> {
    check_step_inputs("add_noise", noise, original)?;
    let sigma = Tensor::from_slice(&[sigma]).to_kind(original.kind()).to_device(original.device());
    Ok(original + noise * sigma)
}

/// DPM-Solver/UniPC `add_noise`: `alpha_t * original + sigma_t * noise` with
/// `alpha_t = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha_t`, in the sample's dtype.
pub(crate) fn alpha_sigma_add_noise(sigma: f32, original: &Tensor, noise: &Tensor) -> Result<Tensor> {
    check_step_inputs("add_noise", noise, original)?;
    let sigma = Tensor::from_slice(&[sigma]).to_kind(original.kind()).to_device(original.device());
    let alpha_t = (sigma.square() + 1.0).sqrt().reciprocal();
    let sigma_t = &sigma * &alpha_t;
    Ok(alpha_t * original + sigma_t * noise)
}

/// Errors for calling a sampler out of order.
pub(crate) fn not_ready(class: &str) -> anyhow::Error {
    anyhow::anyhow!("{class}: call set_timesteps before stepping")
}

/// Checks the number of inference steps against the training timesteps, as DDIM does for all.
pub(crate) fn check_steps(class: &str, n: usize, train: i64) -> Result<()> {
    if n == 0 {
        bail!("{class}: the number of inference steps must be at least 1");
    }
    if n as i64 > train {
        bail!("{class}: {n} inference steps are more than the {train} training timesteps");
    }
    Ok(())
}
