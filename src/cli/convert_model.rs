//! `textual-inversion convert-model IN OUT_DIR`: a single-file checkpoint written as the
//! diffusers folder `from_single_file(...).save_pretrained(OUT_DIR)` would give (configs,
//! tokenizers, one safetensors file per component), which any diffusers tool then loads.
use super::convert::DtypeArg;
use crate::models::component::Component;
use crate::models::diffusers_folder::{FolderWriter, Listing, SchedulerFile, Style, Unchanged};
use crate::models::repo::ModelRepo;
use crate::models::single_file::SingleFile;
use crate::models::stable_diffusion::{self as sd, WeightOptions};
use crate::models::weights::Placement;
use crate::tensors::from_tch;
use anyhow::{bail, Result};
use std::path::PathBuf;
use tch::{Device, Kind};

#[derive(Debug, clap::Args)]
pub struct ConvertModelArgs {
    /// Original-layout checkpoint (`.safetensors` or `.ckpt`) of SD 1.x, 2.x or SDXL base.
    pub input: PathBuf,
    /// Folder to create (it must not exist; it appears complete or not at all).
    pub output: PathBuf,
    #[command(flatten)]
    pub model_file: super::ModelFileArgs,
    /// Precision of the written weights (default: as stored).
    #[arg(long, value_enum, default_value = "keep")]
    pub dtype: DtypeArg,
}

pub fn run(args: ConvertModelArgs) -> Result<()> {
    let input = args.input.to_string_lossy().to_string();
    if !args.input.is_file() {
        bail!("{input} is not a file: convert-model reads a single-file checkpoint (.safetensors or .ckpt)");
    }
    if args.output.exists() {
        bail!("{} exists: give a new folder (nothing was written)", args.output.display());
    }
    let repo = args.model_file.source(&input, None).resolve()?;
    let Some(file) = repo.single_file() else { bail!("{input} is not a single-file checkpoint") };
    let kind = match args.dtype {
        DtypeArg::Keep => None,
        DtypeArg::Fp32 => Some(Kind::Float),
        DtypeArg::Fp16 => Some(Kind::Half),
        DtypeArg::Bf16 => Some(Kind::BFloat16),
    };
    // Configs copied, never linked: the folder stands on its own, apart from the config folder.
    let style = Style { unchanged: Unchanged::Copied, json_newline: true };
    let folder = FolderWriter::create(&repo, &args.output, style)?;
    write_folder(&repo, file, &folder, kind)?;
    folder.finish()?;
    tracing::info!("wrote {} ({}, from {})", args.output.display(), file.arch.name(), repo.describe());
    Ok(())
}

/// Writes the configs, tokenizers and weights of `file` (read as `repo`) into `folder`.
fn write_folder(repo: &ModelRepo, file: &SingleFile, folder: &FolderWriter<'_>, kind: Option<Kind>) -> Result<()> {
    let family = sd::family(repo)?;
    repo.check_pipeline(family.is_xl())?;
    let components = family.components();
    let tokenizers: Vec<Component> = components.iter().filter_map(|c| c.tokenizer()).collect();
    let written: Vec<Component> = components.iter().chain(&tokenizers).copied().chain([Component::Scheduler]).collect();
    folder.model_index(Listing::Written(&written))?;
    for &c in components {
        folder.config(c, None)?;
    }
    for &t in &tokenizers {
        folder.tokenizer(t, None)?;
    }
    // The scheduler config carries the prediction type the checkpoint is read with.
    folder.scheduler(SchedulerFile::Rewritten { prediction_type: repo.prediction_type.as_ref().map(|p| p.value) })?;
    for &component in components {
        write_component(repo, file, component, folder, kind)?;
    }
    Ok(())
}

/// Checks that `component` builds from the checkpoint (every tensor its config needs, none
/// mis-shaped), then writes its tensors under diffusers' names.
fn write_component(repo: &ModelRepo, file: &SingleFile, component: Component, folder: &FolderWriter<'_>, kind: Option<Kind>) -> Result<()> {
    let config = repo.require(&component.config_path())?;
    let weights = file.weights(component, &config, Placement::cpu_f32())?;
    // From the header: nothing is read before the model check below has compared every
    // tensor's shape with the config's (a stored view can claim terabytes).
    let stored_kind = weights.keys().first().and_then(|k| weights.stored_dtype(k)).map(crate::tensors::kind).unwrap_or(Kind::Float);
    // Built in the stored precision, the model points into the mapped file: no copy.
    let placement = Placement { device: Device::Cpu, kind: stored_kind };
    let opts = WeightOptions::default();
    match component {
        Component::Unet => drop(sd::load_unet(repo, &opts, placement)?),
        Component::Vae => drop(sd::load_vae(repo, &opts, placement)?),
        _ => drop(sd::load_text_encoder_from(repo, component, &opts, Placement { device: Device::Cpu, kind: Kind::Float })?),
    }
    let mut tensors = Vec::new();
    for key in weights.keys() {
        let mut t = weights.stored_tensor(key)?;
        // The VAE's attention projections are 1x1 convolutions in the original layout and
        // linears in diffusers' (its loader refuses the conv shape).
        if component == Component::Vae && key.contains(".attentions.") && t.dim() == 4 && t.size()[2..] == [1, 1] {
            let s = t.size();
            t = t.f_reshape([s[0], s[1]])?;
        }
        let t = match kind {
            Some(k) if k != t.kind() && t.is_floating_point() => t.f_to_kind(k)?,
            _ => t,
        };
        tensors.push((key.to_string(), from_tch(&t)?));
    }
    folder.weights(component, &tensors)?;
    tracing::info!("{component}: {} tensors", tensors.len());
    Ok(())
}
