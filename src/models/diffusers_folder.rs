//! Writing a diffusers pipeline folder: the one writer behind `convert-model` (a single-file
//! checkpoint as a new folder) and `--save_as_full_pipeline` (the trained pipeline in
//! `--output_dir`). Each component's config and weights go under the names `save_pretrained`
//! gives them ([`Component`]), new weights as safetensors with `{"format": "pt"}` (the metadata
//! transformers' loaders check for), with the tokenizers' files, the scheduler config and
//! `model_index.json`.
//!
//! Nothing is written where it should not be. Every file is written atomically (a temporary
//! file, fsync, rename) into folders created without following links, and a file is only ever
//! replaced by a rename, so a base model's file the folder hard-links is never written through.
//! A new folder is written as a temporary folder beside it, registered for the signal handler,
//! and renamed into place whole ([`FolderWriter::create`]); an existing folder gets its files
//! one by one ([`FolderWriter::update`]).
use super::component::{Component, WeightFormat, MODEL_INDEX, TOKENIZER_FILES};
use super::config;
use super::repo::ModelRepo;
use crate::formats::atomic::{self, Tracked};
use crate::formats::{regular, safetensors_io, RawTensor};
use crate::schedulers::PredictionType;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// How the files taken unchanged from the model reach the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    /// Read (a regular file, bounded as a config) and written: the folder shares nothing with
    /// the files it came from, and a FIFO or device among them is refused, not read forever.
    Copied,
    /// Hard-linked where the file system allows, else copied: a trained pipeline beside its
    /// gigabytes of unchanged base weights costs no space. Only for files already read (the
    /// model was loaded from them), since a link copies no bytes to check.
    Linked,
}

/// How the two commands lay files down, where they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub unchanged: Unchanged,
    /// Whether the JSON files this writer serialises end with a newline.
    pub json_newline: bool,
}

/// What `model_index.json` lists.
#[derive(Debug, Clone, Copy)]
pub enum Listing<'c> {
    /// The model's own file, unchanged (none when the model has none).
    AsInModel,
    /// The model's file with every component but these listed as absent (`[null, null]`), as
    /// `save_pretrained` writes a pipeline loaded without them, so diffusers loads only folders
    /// that exist.
    Written(&'c [Component]),
}

/// What `scheduler/scheduler_config.json` is.
#[derive(Debug, Clone, Copy)]
pub enum SchedulerFile {
    /// The model's own file, unchanged.
    AsInModel,
    /// The model's config written anew, with this prediction type where one is given (the one
    /// a checkpoint is read with, so that the folder reads the same way).
    Rewritten { prediction_type: Option<PredictionType> },
}

/// Tokens added to a tokenizer, with their ids.
#[derive(Debug, Clone, Copy)]
pub struct AddedTokens<'t> {
    pub tokens: &'t [String],
    pub ids: &'t [i64],
}

/// A folder being written from a model's files (`repo`) and new contents.
pub struct FolderWriter<'a> {
    repo: &'a ModelRepo,
    /// Where files go now: the temporary folder of a new folder, or the existing folder.
    root: PathBuf,
    style: Style,
    staged: Option<Staged>,
}

/// A new folder's temporary folder and where it goes once complete.
struct Staged {
    // Unregistered after the temporary folder is removed or renamed (fields drop in order).
    _tracked: Tracked,
    tmp: tempfile::TempDir,
    target: PathBuf,
}

impl<'a> FolderWriter<'a> {
    /// A new folder at `target` (the caller checked that nothing is there): written in a
    /// temporary folder beside it, removed on an error, a drop, SIGINT or SIGTERM, and renamed
    /// into place by [`FolderWriter::finish`], so the folder appears complete or not at all.
    pub fn create(repo: &'a ModelRepo, target: &Path, style: Style) -> Result<Self> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let tmp = tempfile::Builder::new().prefix(".tmp-model-").tempdir_in(&parent).with_context(|| format!("creating a folder in {}", parent.display()))?;
        let _tracked = atomic::track(tmp.path());
        let root = tmp.path().to_path_buf();
        Ok(FolderWriter { repo, root, style, staged: Some(Staged { _tracked, tmp, target: target.to_path_buf() }) })
    }

    /// Files written into the existing folder `dir` beside what it already holds, each
    /// replacing its namesake by a rename.
    pub fn update(repo: &'a ModelRepo, dir: &Path, style: Style) -> Result<Self> {
        Ok(FolderWriter { repo, root: dir.to_path_buf(), style, staged: None })
    }

    /// Moves a new folder into place (nothing to do for an existing one).
    pub fn finish(self) -> Result<()> {
        let Some(Staged { _tracked, tmp, target }) = self.staged else { return Ok(()) };
        let tmp = tmp.keep();
        if let Err(e) = std::fs::rename(&tmp, &target) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e).with_context(|| format!("moving the written model folder to {}", target.display()));
        }
        Ok(())
    }

    /// `model_index.json`.
    pub fn model_index(&self, listing: Listing<'_>) -> Result<()> {
        match listing {
            Listing::AsInModel => self.keep_if_present(MODEL_INDEX).map(drop),
            Listing::Written(written) => {
                let mut index: Value = config::read(&self.repo.require(MODEL_INDEX)?)?;
                if let Some(obj) = index.as_object_mut() {
                    for (key, value) in obj.iter_mut() {
                        let listed = Component::from_folder(key).is_some_and(|c| written.contains(&c));
                        if value.is_array() && !key.starts_with('_') && !listed {
                            *value = json!([null, null]);
                        }
                    }
                }
                self.write_json(MODEL_INDEX, &index)
            }
        }
    }

    /// `scheduler/scheduler_config.json`.
    pub fn scheduler(&self, file: SchedulerFile) -> Result<()> {
        let rel = Component::Scheduler.config_path();
        match file {
            SchedulerFile::AsInModel => self.keep(&self.repo.require(&rel)?, &rel),
            SchedulerFile::Rewritten { prediction_type } => {
                let mut scheduler: Value = config::read(&self.repo.require(&rel)?)?;
                if let (Some(p), Some(obj)) = (prediction_type, scheduler.as_object_mut()) {
                    obj.insert("prediction_type".into(), Value::String(p.name().into()));
                }
                self.write_json(&rel, &scheduler)
            }
        }
    }

    /// A component's config: the model's own (`None`), or `edited`.
    pub fn config(&self, component: Component, edited: Option<&Value>) -> Result<()> {
        let rel = component.config_path();
        match edited {
            None => self.keep(&self.repo.require(&rel)?, &rel),
            Some(v) => self.write_json(&rel, v),
        }
    }

    /// New weights of a model component, in its safetensors file.
    pub fn weights(&self, component: Component, tensors: &[(String, RawTensor)]) -> Result<()> {
        let name = component.weight_file(WeightFormat::Safetensors).with_context(|| format!("{component} has no weights to write"))?;
        let path = self.path(&component.file(&name))?;
        safetensors_io::save_pt(&path, tensors)?;
        Ok(())
    }

    /// A model component's weight files as the model has them (the `variant`'s where it has
    /// them, a sharded checkpoint's shards), with its unsuffixed shard indexes.
    pub fn base_weights(&self, component: Component, variant: Option<&str>) -> Result<()> {
        for f in self.repo.weight_files(component.folder(), variant, None)? {
            let name = f.file_name().context("weight file name")?.to_string_lossy().to_string();
            self.keep(&f, &component.file(&name))?;
        }
        for format in [WeightFormat::Safetensors, WeightFormat::Bin] {
            if let Some(index) = component.weight_index_file(format) {
                self.keep_if_present(&component.file(&index))?;
            }
        }
        Ok(())
    }

    /// A tokenizer folder: the model's files, plus `added` tokens where transformers looks for
    /// them (`added_tokens.json`, `tokenizer_config.json`'s `added_tokens_decoder`,
    /// `tokenizer.json`'s `added_tokens`).
    pub fn tokenizer(&self, component: Component, added: Option<AddedTokens<'_>>) -> Result<()> {
        for f in TOKENIZER_FILES {
            self.keep_if_present(&component.file(f))?;
        }
        let Some(AddedTokens { tokens, ids }) = added else { return Ok(()) };
        let entry =
            |t: &str, id: i64| json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false});
        // Edited as the folder now holds them (the model's files, just kept).
        let here = |f: &str| self.root.join(component.file(f));
        let rel = component.file("added_tokens.json");
        let mut map = if here("added_tokens.json").is_file() { config::read(&here("added_tokens.json"))? } else { json!({}) };
        for (t, &id) in tokens.iter().zip(ids) {
            map[t] = json!(id);
        }
        self.write_json(&rel, &map)?;
        if here("tokenizer_config.json").is_file() {
            let mut cfg: Value = config::read(&here("tokenizer_config.json"))?;
            if let Some(dec) = cfg.get_mut("added_tokens_decoder").and_then(Value::as_object_mut) {
                for (t, &id) in tokens.iter().zip(ids) {
                    let mut e = entry(t, id);
                    e.as_object_mut().map(|o| o.remove("id"));
                    dec.insert(id.to_string(), e);
                }
                self.write_json(&component.file("tokenizer_config.json"), &cfg)?;
            }
        }
        if here("tokenizer.json").is_file() {
            let mut tj: Value = config::read(&here("tokenizer.json"))?;
            if let Some(list) = tj.get_mut("added_tokens").and_then(Value::as_array_mut) {
                for (t, &id) in tokens.iter().zip(ids) {
                    list.push(entry(t, id));
                }
            }
            self.write_json(&component.file("tokenizer.json"), &tj)?;
        }
        Ok(())
    }

    /// `root/rel`, its folders created inside the root without following links.
    fn path(&self, rel: &str) -> Result<PathBuf> {
        if let Some(dir) = Path::new(rel).parent() {
            atomic::ensure_dir(&self.root, dir)?;
        }
        Ok(self.root.join(rel))
    }

    fn write_json(&self, rel: &str, v: &Value) -> Result<()> {
        let mut text = serde_json::to_string_pretty(v)?;
        if self.style.json_newline {
            text.push('\n');
        }
        atomic::write(&self.path(rel)?, text.as_bytes())?;
        Ok(())
    }

    /// The model's file `rel`, unchanged, if it has one; whether it had.
    fn keep_if_present(&self, rel: &str) -> Result<bool> {
        match self.repo.get(rel)? {
            Some(from) => self.keep(&from, rel).map(|()| true),
            None => Ok(false),
        }
    }

    /// `from`'s content at `rel`, as [`Style::unchanged`] says.
    fn keep(&self, from: &Path, rel: &str) -> Result<()> {
        let to = self.path(rel)?;
        match self.style.unchanged {
            Unchanged::Copied => {
                // Read like any config (a regular file, bounded), never copied blindly: a FIFO or
                // a link to /dev/zero in the model's folder would make the copy endless.
                let bytes = regular::read(from, regular::CONFIG_MAX_BYTES)?;
                atomic::write(&to, &bytes).with_context(|| format!("writing {}", to.display()))
            }
            Unchanged::Linked => link_or_copy(from, &to),
        }
    }
}

/// Puts `from`'s content at `to` (a hard link when the file system allows, else a copy),
/// replacing `to` only by a rename once the new file is whole: `to` is never removed first,
/// and `to` already being `from` (a run writing into the folder it reads) leaves it untouched.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if same_file(from, to) {
        return Ok(());
    }
    atomic::check_replaceable(to)?;
    let name = to.file_name().context("file name")?.to_string_lossy().to_string();
    let tmp = to.with_file_name(format!(".tmp-link-{}-{name}", std::process::id()));
    let _tracked = atomic::track(&tmp);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_ok() {
        let renamed = std::fs::rename(&tmp, to);
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        return renamed.with_context(|| format!("renaming {} to {}", tmp.display(), to.display()));
    }
    let mut src = std::fs::File::open(from).with_context(|| format!("reading {}", from.display()))?;
    atomic::write_with(to, |f| std::io::copy(&mut src, f).map(drop)).with_context(|| format!("copying {} to {}", from.display(), to.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_sd() -> ModelRepo {
        ModelRepo::local(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-sd"))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    const COPIED: Style = Style { unchanged: Unchanged::Copied, json_newline: true };
    const LINKED: Style = Style { unchanged: Unchanged::Linked, json_newline: false };

    #[test]
    fn a_new_folder_appears_whole_or_not_at_all() {
        let repo = tiny_sd();
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out");
        {
            let w = FolderWriter::create(&repo, &target, COPIED).unwrap();
            w.model_index(Listing::Written(&[Component::Unet])).unwrap();
            assert!(!target.exists());
            assert_eq!(names(d.path()).len(), 1, "one temporary folder");
            // Dropped unfinished (an error on the way): nothing is left.
        }
        assert!(names(d.path()).is_empty(), "{:?}", names(d.path()));
        let w = FolderWriter::create(&repo, &target, COPIED).unwrap();
        w.model_index(Listing::Written(&[Component::Unet, Component::Scheduler])).unwrap();
        w.scheduler(SchedulerFile::Rewritten { prediction_type: Some(PredictionType::VPrediction) }).unwrap();
        w.finish().unwrap();
        assert_eq!(names(d.path()), ["out"]);
        let index = std::fs::read_to_string(target.join(MODEL_INDEX)).unwrap();
        assert!(index.ends_with("}\n"), "{index}");
        let index: Value = serde_json::from_str(&index).unwrap();
        assert_eq!(index["unet"], json!(["diffusers", "UNet2DConditionModel"]));
        assert_eq!(index["text_encoder"], json!([null, null]));
        let scheduler: Value = config::read(&target.join("scheduler/scheduler_config.json")).unwrap();
        assert_eq!(scheduler["prediction_type"], "v_prediction");
    }

    #[cfg(unix)]
    #[test]
    fn unchanged_files_are_linked_or_copied_as_the_style_says() {
        use std::os::unix::fs::MetadataExt;
        let repo = tiny_sd();
        let d = tempfile::tempdir().unwrap();
        let source = repo.require("unet/config.json").unwrap();
        let can_link = std::fs::hard_link(&source, d.path().join("probe")).is_ok();
        for (style, linked) in [(COPIED, false), (LINKED, true)] {
            let out = d.path().join(format!("{linked}"));
            let w = FolderWriter::update(&repo, &out, style).unwrap();
            w.config(Component::Unet, None).unwrap();
            w.tokenizer(Component::Tokenizer, None).unwrap();
            let written = out.join("unet/config.json");
            assert_eq!(std::fs::read(&written).unwrap(), std::fs::read(&source).unwrap());
            let same = std::fs::metadata(&written).unwrap().ino() == std::fs::metadata(&source).unwrap().ino();
            // Where the file system refuses hard links, Linked copies too.
            assert_eq!(same, linked && can_link, "linked: {linked}");
            assert_eq!(names(&out.join("tokenizer")), ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]);
        }
    }

    #[test]
    fn new_weights_get_save_pretrained_names_and_format_pt() {
        let repo = tiny_sd();
        let d = tempfile::tempdir().unwrap();
        let w = FolderWriter::update(&repo, d.path(), LINKED).unwrap();
        let t = RawTensor::new(crate::formats::DType::F32, vec![1], 1f32.to_le_bytes().to_vec()).unwrap();
        w.weights(Component::TextEncoder2, &[("w".into(), t.clone())]).unwrap();
        w.weights(Component::Vae, &[("w".into(), t.clone())]).unwrap();
        let bytes = std::fs::read(d.path().join("text_encoder_2/model.safetensors")).unwrap();
        let meta = safetensors_io::metadata("model.safetensors", &bytes).unwrap();
        assert_eq!(meta.into_iter().collect::<Vec<_>>(), [("format".to_string(), "pt".to_string())]);
        assert!(d.path().join("vae/diffusion_pytorch_model.safetensors").is_file());
        assert!(w.weights(Component::Tokenizer, &[("w".into(), t)]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn nothing_is_written_through_a_link_in_the_folder() {
        let repo = tiny_sd();
        let d = tempfile::tempdir().unwrap();
        let (out, outside) = (d.path().join("out"), d.path().join("outside"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("unet")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim.json"), out.join(MODEL_INDEX)).unwrap();
        for style in [COPIED, LINKED] {
            let w = FolderWriter::update(&repo, &out, style).unwrap();
            let e = w.config(Component::Unet, None).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
            let e = format!("{:#}", w.model_index(Listing::AsInModel).unwrap_err());
            assert!(e.contains("symbolic link"), "{e}");
        }
        assert!(names(&outside).is_empty(), "{:?}", names(&outside));
    }
}
