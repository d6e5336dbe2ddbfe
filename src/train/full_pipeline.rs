//! `--save_as_full_pipeline`: output_dir becomes a diffusers model folder whose tokenizer(s) and
//! text encoder(s) already hold the new tokens, as the script's `save_pretrained` leaves it
//! (SDXL: both tokenizers and both encoders). The UNet, VAE and scheduler are the base model's
//! files (linked when the file system allows, else copied; the script re-saves them in the
//! training dtype); model_index.json lists only the components written (the script's folder
//! also holds the base's safety checker and feature extractor, which this one leaves out), and
//! the scheduler config carries `--prediction_type` when it was given. The folder is written
//! by [`FolderWriter`], which only ever replaces files
//! by renames, so the base model's files (which the output may hard-link) are never written
//! through; training into the model's own folder is refused before the run.
use crate::formats::safetensors_io;
use crate::formats::torch_file::TorchFile;
use crate::formats::RawTensor;
use crate::models::component::Component;
use crate::models::config;
use crate::models::diffusers_folder::{AddedTokens, FolderWriter, Listing, SchedulerFile, Style, Unchanged};
use crate::models::repo::ModelRepo;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use tch::Tensor;

/// All tensors of a weight file, in file order.
fn read_tensors(path: &Path) -> Result<Vec<(String, RawTensor)>> {
    // The base text encoder's weights, as large as they really are; a regular file only.
    let bytes = crate::formats::regular::read(path, u64::MAX)?;
    if crate::formats::torch_file::sniff(&bytes) {
        let tf = TorchFile::from_bytes(&path.display().to_string(), bytes)?;
        return tf.tensors().into_iter().map(|(k, t)| Ok((k, tf.tensor(t)?))).collect();
    }
    Ok(safetensors_io::read_all(&path.display().to_string(), &bytes)?)
}

/// Writes the pipeline into `out`. `tokens` are the placeholder tokens; each entry of
/// `encoders` is one text encoder's (folder, the tokens' ids in it and in its tokenizer, their
/// `[n, D]` rows).
pub fn save(repo: &ModelRepo, out: &Path, variant: Option<&str>, tokens: &[String], encoders: &[(Component, &[i64], &Tensor)]) -> Result<()> {
    // Unchanged files linked: the base weights cost no space twice.
    let style = Style { unchanged: Unchanged::Linked, json_newline: false };
    let folder = FolderWriter::update(repo, out, style)?;
    // model_index.json lists only what the folder holds: a base that lists a safety checker or
    // feature extractor (SD 1.5 does) would otherwise name folders diffusers cannot find.
    let mut written = vec![Component::Unet, Component::Vae, Component::Scheduler];
    for &(encoder, _, _) in encoders {
        written.push(encoder);
        written.extend(encoder.tokenizer());
    }
    folder.model_index(Listing::Written(&written))?;
    match &repo.prediction_type {
        // --prediction_type trained the rows for that prediction: the pipeline says so.
        Some(p) => folder.scheduler(SchedulerFile::Rewritten { prediction_type: Some(p.value) })?,
        None => folder.scheduler(SchedulerFile::AsInModel)?,
    }
    for component in [Component::Unet, Component::Vae] {
        folder.config(component, None)?;
        folder.base_weights(component, variant)?;
    }
    for &(encoder, ids, rows) in encoders {
        save_encoder(repo, &folder, encoder, ids, rows)?;
        let tokenizer = encoder.tokenizer().with_context(|| format!("{encoder} is not a text encoder"))?;
        folder.tokenizer(tokenizer, Some(AddedTokens { tokens, ids }))?;
    }
    folder.finish()?;
    tracing::info!("saved the full pipeline to {}", out.display());
    Ok(())
}

/// A text encoder whose vocabulary matrix grows by the new rows.
fn save_encoder(repo: &ModelRepo, folder: &FolderWriter<'_>, encoder: Component, ids: &[i64], rows: &Tensor) -> Result<()> {
    let n = rows.size()[0];
    let mut config: Value = config::read(&repo.require(&encoder.config_path())?)?;
    let vocab = config["vocab_size"].as_i64().unwrap_or(49408);
    if ids.first() != Some(&vocab) {
        bail!("placeholder ids {ids:?} do not follow the text encoder's {vocab} rows");
    }
    config["vocab_size"] = json!(vocab + n);
    let mut tensors = Vec::new();
    for f in repo.weight_files(encoder.folder(), None, None)? {
        tensors.extend(read_tensors(&f)?);
    }
    let key = tensors
        .iter()
        .position(|(k, _)| k.ends_with("embeddings.token_embedding.weight"))
        .with_context(|| format!("{encoder} has no embeddings.token_embedding.weight"))?;
    let old = &tensors[key].1;
    let extra = crate::tensors::from_tch(&rows.detach().to_device(tch::Device::Cpu).to_kind(crate::tensors::kind(old.dtype)))?;
    let mut data = old.data.clone();
    data.extend_from_slice(&extra.data);
    let shape = vec![old.shape[0] + n as usize, old.shape[1]];
    tensors[key].1 = RawTensor::new(old.dtype, shape, data)?;
    folder.config(encoder, Some(&config))?;
    folder.weights(encoder, &tensors)
}
