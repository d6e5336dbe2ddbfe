//! `--save_as_full_pipeline`: output_dir becomes a diffusers model folder whose tokenizer(s) and
//! text encoder(s) already hold the new tokens, as the script's `save_pretrained` leaves it
//! (SDXL: both tokenizers and both encoders). The UNet, VAE and scheduler are the base model's files (linked
//! when the file system allows, else copied; the script re-saves them in the training dtype).
//! Files are only ever replaced by renames, so the base model's files (which the output may
//! hard-link) are never written through; training into the model's own folder is refused.
use crate::formats::atomic;
use crate::formats::safetensors_io;
use crate::formats::torch_file::TorchFile;
use crate::formats::RawTensor;
use crate::models::component::{Component, WeightFormat, MODEL_INDEX, TOKENIZER_FILES};
use crate::models::repo::ModelRepo;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use tch::Tensor;

/// Puts `from`'s content at `to` (a hard link when the file system allows, else a copy),
/// replacing `to` only by a rename once the new file is whole: `to` is never removed first,
/// and `to` already being `from` (a run writing into the folder it reads) leaves it untouched.
fn link_or_copy(from: &Path, out: &Path, rel: &str) -> Result<()> {
    let to = out.join(rel);
    if let Some(dir) = Path::new(rel).parent() {
        atomic::ensure_dir(out, dir)?;
    }
    if same_file(from, &to) {
        return Ok(());
    }
    atomic::check_replaceable(&to)?;
    let name = to.file_name().context("file name")?.to_string_lossy().to_string();
    let tmp = to.with_file_name(format!(".tmp-link-{}-{name}", std::process::id()));
    let _tracked = atomic::track(&tmp);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_ok() {
        let renamed = std::fs::rename(&tmp, &to);
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        return renamed.with_context(|| format!("renaming {} to {}", tmp.display(), to.display()));
    }
    let mut src = std::fs::File::open(from).with_context(|| format!("reading {}", from.display()))?;
    atomic::write_with(&to, |f| std::io::copy(&mut src, f).map(drop)).with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
#[cfg(not(unix))]
fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&crate::formats::regular::read_to_string(path, crate::formats::regular::CONFIG_MAX_BYTES)?)
        .with_context(|| format!("{}: not JSON", path.display()))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    crate::formats::atomic::write(path, serde_json::to_string_pretty(v)?.as_bytes())?;
    Ok(())
}

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
    if let Some(p) = repo.get(MODEL_INDEX)? {
        link_or_copy(&p, out, MODEL_INDEX)?;
    }
    let scheduler = Component::Scheduler.config_path();
    link_or_copy(&repo.require(&scheduler)?, out, &scheduler)?;
    for component in [Component::Unet, Component::Vae] {
        link_or_copy(&repo.require(&component.config_path())?, out, &component.config_path())?;
        for f in repo.weight_files(component.folder(), variant, None)? {
            let name = f.file_name().context("weight file name")?.to_string_lossy().to_string();
            link_or_copy(&f, out, &component.file(&name))?;
        }
        for index in [WeightFormat::Safetensors, WeightFormat::Bin].into_iter().filter_map(|f| component.weight_index_file(f)) {
            if let Some(p) = repo.get(&component.file(&index))? {
                link_or_copy(&p, out, &component.file(&index))?;
            }
        }
    }

    for &(encoder, ids, rows) in encoders {
        let tokenizer = encoder.tokenizer().with_context(|| format!("{encoder} is not a text encoder"))?;
        save_encoder(repo, out, encoder, ids, rows)?;
        save_tokenizer(repo, out, tokenizer, tokens, ids)?;
    }
    tracing::info!("saved the full pipeline to {}", out.display());
    Ok(())
}

/// A text encoder whose vocabulary matrix grows by the new rows.
fn save_encoder(repo: &ModelRepo, out: &Path, folder: Component, ids: &[i64], rows: &Tensor) -> Result<()> {
    let n = rows.size()[0];
    let mut config = read_json(&repo.require(&folder.config_path())?)?;
    let vocab = config["vocab_size"].as_i64().unwrap_or(49408);
    if ids.first() != Some(&vocab) {
        bail!("placeholder ids {ids:?} do not follow the text encoder's {vocab} rows");
    }
    config["vocab_size"] = json!(vocab + n);
    let mut tensors = Vec::new();
    for f in repo.weight_files(folder.folder(), None, None)? {
        tensors.extend(read_tensors(&f)?);
    }
    let key = tensors
        .iter()
        .position(|(k, _)| k.ends_with("embeddings.token_embedding.weight"))
        .with_context(|| format!("{folder} has no embeddings.token_embedding.weight"))?;
    let old = &tensors[key].1;
    let extra = crate::tensors::from_tch(&rows.detach().to_device(tch::Device::Cpu).to_kind(crate::tensors::kind(old.dtype)))?;
    let mut data = old.data.clone();
    data.extend_from_slice(&extra.data);
    let shape = vec![old.shape[0] + n as usize, old.shape[1]];
    tensors[key].1 = RawTensor::new(old.dtype, shape, data)?;
    atomic::ensure_dir(out, Path::new(folder.folder()))?;
    write_json(&out.join(folder.config_path()), &config)?;
    let name = folder.weight_file(WeightFormat::Safetensors).with_context(|| format!("{folder} has no weights"))?;
    safetensors_io::save_pt(&out.join(folder.file(&name)), &tensors)?;
    Ok(())
}

/// A tokenizer folder: the base files plus the added tokens where transformers looks for them.
fn save_tokenizer(repo: &ModelRepo, out: &Path, folder: Component, tokens: &[String], ids: &[i64]) -> Result<()> {
    let tok_dir = atomic::ensure_dir(out, Path::new(folder.folder()))?;
    for f in TOKENIZER_FILES {
        if let Some(p) = repo.get(&folder.file(f))? {
            link_or_copy(&p, out, &folder.file(f))?;
        }
    }
    let added =
        |t: &str, id: i64| json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false});
    let mut map = if tok_dir.join("added_tokens.json").is_file() { read_json(&tok_dir.join("added_tokens.json"))? } else { json!({}) };
    for (t, &id) in tokens.iter().zip(ids) {
        map[t] = json!(id);
    }
    write_json(&tok_dir.join("added_tokens.json"), &map)?;
    if tok_dir.join("tokenizer_config.json").is_file() {
        let mut cfg = read_json(&tok_dir.join("tokenizer_config.json"))?;
        if let Some(dec) = cfg.get_mut("added_tokens_decoder").and_then(Value::as_object_mut) {
            for (t, &id) in tokens.iter().zip(ids) {
                let mut e = added(t, id);
                e.as_object_mut().map(|o| o.remove("id"));
                dec.insert(id.to_string(), e);
            }
            write_json(&tok_dir.join("tokenizer_config.json"), &cfg)?;
        }
    }
    if tok_dir.join("tokenizer.json").is_file() {
        let mut tj = read_json(&tok_dir.join("tokenizer.json"))?;
        if let Some(list) = tj.get_mut("added_tokens").and_then(Value::as_array_mut) {
            for (t, &id) in tokens.iter().zip(ids) {
                list.push(added(t, id));
            }
        }
        write_json(&tok_dir.join("tokenizer.json"), &tj)?;
    }
    Ok(())
}
