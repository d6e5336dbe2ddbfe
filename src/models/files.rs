//! Where a model's files come from: a local folder, or a Hugging Face Hub id resolved
//! through `hf-hub` — the user's existing cache first (`HF_HUB_CACHE`, `HF_HOME`), then a
//! download unless offline (`HF_HUB_OFFLINE=1`) — and which weight files to load (variants,
//! safetensors before pickles, sharded checkpoints), as diffusers chooses them.
use super::component::WeightFormat;
use anyhow::{bail, Context, Result};
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

/// How to reach the Hub.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Cache folder (the `hub` folder: `models--org--name/...`); default from the environment.
    pub cache_dir: Option<PathBuf>,
    /// Never download (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    pub token: Option<String>,
    /// `HF_ENDPOINT`: another Hub (a mirror, an enterprise Hub); default `https://huggingface.co`.
    pub endpoint: Option<String>,
}

impl HubOptions {
    /// `HF_HUB_CACHE`, `HF_HOME`, `HF_HUB_OFFLINE`, `HF_TOKEN`, `HF_ENDPOINT`, as huggingface_hub
    /// reads them.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = env("HF_HUB_CACHE").map(PathBuf::from).or_else(|| env("HF_HOME").map(|h| PathBuf::from(h).join("hub")));
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| !matches!(v.as_str(), "0" | "false" | "False"));
        HubOptions { cache_dir, offline, token: env("HF_TOKEN"), endpoint: env("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_string()) }
    }

    /// The Hub client over `cache`, with the token (`HF_TOKEN`, else the one `hf auth login`
    /// stored beside the cache) and endpoint.
    pub fn api(&self, cache: hf_hub::Cache) -> Result<hf_hub::api::sync::Api> {
        let token = self.token.clone().or_else(|| cache.token());
        let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_token(token).with_progress(true);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        builder.build().context("setting up the Hub client")
    }
}

/// Where a model's files are: a local folder, or a Hub repository at a revision.
// One per run (or per --config): the Hub variant's size does not matter, boxing it would only
// add indirection to every match.
#[allow(clippy::large_enum_variant)]
pub enum ModelFiles {
    Local(PathBuf),
    Hub { id: String, revision: String, cache: hf_hub::Cache, snapshot: Option<PathBuf>, api: Option<hf_hub::api::sync::ApiRepo> },
}

impl ModelFiles {
    /// Resolves `--pretrained_model_name_or_path`: an existing folder, else a Hub id.
    pub fn resolve(name: &str, revision: Option<&str>, hub: &HubOptions) -> Result<Self> {
        let path = Path::new(name);
        if path.is_dir() {
            return Ok(ModelFiles::Local(path.to_path_buf()));
        }
        if path.exists() {
            bail!("{name} is a file; expected a diffusers model folder or a Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5");
        }
        let looks_like_id = name.split('/').count() == 2 && !name.starts_with('.') && !name.contains("..");
        if !looks_like_id {
            bail!("no folder named {name}, and it is not a Hub id (org/name)");
        }
        let revision = revision.unwrap_or("main").to_string();
        let cache = hf_hub::Cache::new(hub.cache_dir.clone().unwrap_or_else(|| hf_hub::Cache::from_env().path().clone()));
        // A commit hash has no ref file: use its snapshot folder directly.
        let snapshot = cache.path().join(format!("models--{}", name.replace('/', "--"))).join("snapshots").join(&revision);
        let snapshot = snapshot.is_dir().then_some(snapshot);
        let api = if hub.offline { None } else { Some(hub.api(cache.clone())?.repo(Repo::with_revision(name.to_string(), RepoType::Model, revision.clone()))) };
        Ok(ModelFiles::Hub { id: name.to_string(), revision, cache, snapshot, api })
    }

    /// Human-readable name for messages.
    pub fn describe(&self) -> String {
        match self {
            ModelFiles::Local(p) => p.display().to_string(),
            ModelFiles::Hub { id, revision, .. } => format!("{id}@{revision}"),
        }
    }

    /// The model's folder on disk, if it has one (a local folder, or a Hub snapshot).
    pub fn local_folder(&self) -> Option<&Path> {
        match self {
            ModelFiles::Local(p) => Some(p),
            ModelFiles::Hub { snapshot, .. } => snapshot.as_deref(),
        }
    }

    /// The local path of `file` (e.g. `unet/config.json`), downloading it if needed and
    /// allowed; `Ok(None)` if the model has no such file.
    pub fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        match self {
            ModelFiles::Local(root) => {
                // Anything there but a folder is the file: its reader refuses what is not a
                // regular file (a FIFO, a link to a device) by name, rather than this saying
                // the model has no such file.
                let p = root.join(file);
                Ok((p.exists() && !p.is_dir()).then_some(p))
            }
            ModelFiles::Hub { cache, id, revision, snapshot, api } => {
                if let Some(s) = snapshot {
                    let p = s.join(file);
                    if p.exists() && !p.is_dir() {
                        return Ok(Some(p));
                    }
                }
                let cached = cache.repo(Repo::with_revision(id.clone(), RepoType::Model, revision.clone())).get(file);
                if cached.is_some() {
                    return Ok(cached);
                }
                match api {
                    None => Ok(None),
                    Some(api) => match api.get(file) {
                        Ok(p) => Ok(Some(p)),
                        Err(hf_hub::api::sync::ApiError::RequestError(e)) if is_not_found(&e) => Ok(None),
                        Err(e) => Err(e).with_context(|| format!("downloading {file} from {id}@{revision}")),
                    },
                }
            }
        }
    }

    /// Like [`ModelFiles::get`], but the file must exist.
    pub fn require(&self, file: &str) -> Result<PathBuf> {
        match self.get(file)? {
            Some(p) => Ok(p),
            None => bail!("{} has no {file}{}", self.describe(), self.offline_hint()),
        }
    }

    /// Why a file may be missing that is there online: said after "has no X".
    pub fn offline_hint(&self) -> &'static str {
        match self {
            ModelFiles::Hub { api: None, .. } => " in the local Hugging Face cache (offline: HF_HUB_OFFLINE is set)",
            _ => "",
        }
    }

    /// The weight files of a component, chosen as diffusers does: the variant's files when a
    /// variant is asked for, safetensors before `.bin` unless `use_safetensors` says otherwise,
    /// a sharded checkpoint's index expanded to its shards. "None found" is
    /// `Ok(Err(files looked for))` rather than an error (network and parse failures are errors).
    pub fn find_weight_files(&self, component: &str, variant: Option<&str>, use_safetensors: Option<bool>) -> Result<Result<Vec<PathBuf>, Vec<String>>> {
        let v = variant.map(|v| format!(".{v}")).unwrap_or_default();
        let mut candidates = Vec::new();
        for format in match use_safetensors {
            Some(true) => vec![WeightFormat::Safetensors],
            Some(false) => vec![WeightFormat::Bin],
            None => vec![WeightFormat::Safetensors, WeightFormat::Bin],
        } {
            let (stem, ext) = (super::component::weight_stem(component, format), format.extension());
            candidates.push((format!("{component}/{stem}{v}.{ext}"), false));
            candidates.push((format!("{component}/{stem}.{ext}.index{v}.json"), true));
            candidates.push((format!("{component}/{stem}.{ext}.index.json"), true));
        }
        for (file, is_index) in &candidates {
            let Some(path) = self.get(file)? else { continue };
            if !is_index {
                return Ok(Ok(vec![path]));
            }
            let shards = shard_files(&path)?;
            // An un-suffixed index only serves a variant through variant-named shards.
            if let Some(v) = variant {
                if !file.contains(&format!(".{v}.")) && !shards.iter().all(|s| s.contains(&format!(".{v}."))) {
                    continue;
                }
            }
            return shards.iter().map(|s| self.require(&format!("{component}/{s}"))).collect::<Result<_>>().map(Ok);
        }
        Ok(Err(candidates.into_iter().filter(|(_, idx)| !idx).map(|(f, _)| f).collect()))
    }
}

/// A file the repository does not have (the Hub answers 404), as opposed to a network failure.
fn is_not_found(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Status(404, _))
}

/// The distinct shard files a `*.index.json` lists.
fn shard_files(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = crate::formats::regular::read_to_string(index, crate::formats::regular::CONFIG_MAX_BYTES)?;
    let idx: Index = serde_json::from_str(&text).with_context(|| format!("{}: not a checkpoint index", index.display()))?;
    let mut files: Vec<String> = idx.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    if let Some(bad) = files.iter().find(|f| f.contains('/') || f.contains("..")) {
        bail!("{}: shard name {bad:?} points outside the folder", index.display());
    }
    Ok(files)
}
