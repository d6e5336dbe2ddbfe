//! `textual-inversion convert-model IN OUT_DIR`: a single-file checkpoint written as the
//! diffusers folder `from_single_file(...).save_pretrained(OUT_DIR)` would give (configs,
//! tokenizers, one safetensors file per component), which any diffusers tool then loads.
use super::convert::DtypeArg;
use crate::formats::safetensors_io;
use crate::models::component::{Component, WeightFormat, MODEL_INDEX, TOKENIZER_FILES};
use crate::models::config;
use crate::models::repo::ModelRepo;
use crate::models::single_file::SingleFile;
use crate::models::stable_diffusion::{self as sd, WeightOptions};
use crate::models::weights::Placement;
use crate::tensors::from_tch;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
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
    let parent = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new().prefix(".tmp-convert-").tempdir_in(&parent).with_context(|| format!("creating a folder in {}", parent.display()))?;
    // Removed on SIGINT/SIGTERM too, not only when dropped.
    let _tracked = crate::formats::atomic::track(tmp.path());
    write_folder(&repo, file, tmp.path(), kind)?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, &args.output) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("moving the converted model to {}", args.output.display()));
    }
    tracing::info!("wrote {} ({}, from {})", args.output.display(), file.arch.name(), repo.describe());
    Ok(())
}

/// Writes the configs, tokenizers and weights of `file` (read as `repo`) into `out`.
fn write_folder(repo: &ModelRepo, file: &SingleFile, out: &Path, kind: Option<Kind>) -> Result<()> {
    let family = sd::family(repo)?;
    repo.check_pipeline(family.is_xl())?;
    let components = family.components();
    // model_index.json names only what the folder holds: a safety checker or feature extractor
    // the config lists is written as absent ([null, null]), as save_pretrained does for a
    // pipeline loaded without them.
    let mut index: serde_json::Value = config::read(&repo.require(MODEL_INDEX)?)?;
    if let Some(obj) = index.as_object_mut() {
        for (key, value) in obj.iter_mut() {
            let written = Component::from_folder(key)
                .is_some_and(|c| components.contains(&c) || matches!(c, Component::Tokenizer | Component::Tokenizer2 | Component::Scheduler));
            if value.is_array() && !key.starts_with('_') && !written {
                *value = serde_json::json!([null, null]);
            }
        }
    }
    std::fs::write(out.join(MODEL_INDEX), serde_json::to_string_pretty(&index)? + "\n").with_context(|| format!("writing {MODEL_INDEX}"))?;
    let mut copies: Vec<String> = Vec::new();
    for c in components {
        copies.push(c.config_path());
    }
    for tokenizer in components.iter().filter_map(|c| c.tokenizer()) {
        copies.extend(TOKENIZER_FILES.iter().map(|f| tokenizer.file(f)));
    }
    for rel in copies {
        if let Some(src) = repo.get(&rel)? {
            let dst = out.join(&rel);
            std::fs::create_dir_all(dst.parent().unwrap_or(out))?;
            // Read like any config (a regular file, bounded), never copied blindly: a FIFO or a
            // link to /dev/zero in the config folder would make the copy endless.
            let bytes = crate::formats::regular::read(&src, crate::formats::regular::CONFIG_MAX_BYTES)?;
            std::fs::write(&dst, bytes).with_context(|| format!("writing {}", dst.display()))?;
        }
    }
    // The scheduler config carries the prediction type the checkpoint is read with.
    let mut scheduler: serde_json::Value = config::read(&repo.require(&Component::Scheduler.config_path())?)?;
    if let (Some(p), Some(obj)) = (&repo.prediction_type, scheduler.as_object_mut()) {
        obj.insert("prediction_type".into(), serde_json::Value::String(p.value.name().into()));
    }
    let path = out.join(Component::Scheduler.config_path());
    std::fs::create_dir_all(out.join(Component::Scheduler.folder()))?;
    std::fs::write(&path, serde_json::to_string_pretty(&scheduler)? + "\n").with_context(|| format!("writing {}", path.display()))?;
    for &component in components {
        write_component(repo, file, component, out, kind)?;
    }
    Ok(())
}

/// Checks that `component` builds from the checkpoint (every tensor its config needs, none
/// mis-shaped), then writes its tensors under diffusers' names.
fn write_component(repo: &ModelRepo, file: &SingleFile, component: Component, out: &Path, kind: Option<Kind>) -> Result<()> {
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
    let name = component.weight_file(WeightFormat::Safetensors).with_context(|| format!("{component} has no weights"))?;
    let dir = out.join(component.folder());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    safetensors_io::save_pt(&dir.join(name), &tensors)?;
    tracing::info!("{component}: {} tensors", tensors.len());
    Ok(())
}
