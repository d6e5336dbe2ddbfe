//! Hub ids where the training script's guide uses them: `--embedding sd-concepts-library/cat-toy`
//! (diffusers' `load_textual_inversion(id)`) and `--train_data_dir diffusers/cat_toy_example`
//! (the guide's `snapshot_download(..., repo_type="dataset")`). Files come through `hf-hub` and
//! the user's Hugging Face cache, laid out as huggingface_hub lays it out
//! (`<kind>s--owner--name/{blobs,snapshots/<commit>,refs/<revision>}`), offline from that cache
//! with `HF_HUB_OFFLINE=1`.
use super::files::HubOptions;
use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

/// diffusers' file names for `load_textual_inversion(id)` without `weight_name`, in the order it
/// tries them.
pub const EMBEDDING_FILES: [&str; 2] = ["learned_embeds.safetensors", "learned_embeds.bin"];

/// Whether `arg` names a Hub repository rather than a local path: it is no existing path and
/// reads `owner/name` (diffusers' rule: not a local file or folder, so a repo id).
pub fn is_hub_id(arg: &str) -> bool {
    !Path::new(arg).exists() && looks_like_id(arg)
}

/// `owner/name`, each of letters, digits, `-`, `_` and `.` (not starting with `.` or `-`).
pub fn looks_like_id(arg: &str) -> bool {
    let mut parts = arg.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) && !s.starts_with(['.', '-']);
    ok(owner) && ok(name) && !arg.contains("..")
}

/// One Hub repository at a revision: its cache folder and, online, the client.
struct HubRepo {
    id: String,
    kind: RepoType,
    revision: String,
    /// `<cache>/<kind>s--owner--name`.
    folder: PathBuf,
    api: Option<ApiRepo>,
}

impl HubRepo {
    fn new(id: &str, kind: RepoType, revision: Option<&str>, hub: &HubOptions) -> Result<Self> {
        let revision = revision.unwrap_or("main").to_string();
        let cache = hf_hub::Cache::new(hub.cache_dir.clone().unwrap_or_else(|| hf_hub::Cache::from_env().path().clone()));
        let repo = Repo::with_revision(id.to_string(), kind, revision.clone());
        let folder = cache.path().join(repo.folder_name());
        let api = if hub.offline { None } else { Some(hub.api(cache)?.repo(repo)) };
        Ok(HubRepo { id: id.to_string(), kind, revision, folder, api })
    }

    fn what(&self) -> String {
        let kind = if matches!(self.kind, RepoType::Dataset) { "dataset " } else { "" };
        format!("{kind}{}@{}", self.id, self.revision)
    }

    /// The cached snapshot of the revision: `refs/<revision>`'s commit, or the revision itself
    /// when it is a commit with a snapshot folder.
    fn cached_snapshot(&self) -> Option<PathBuf> {
        let by_ref = std::fs::read_to_string(self.folder.join("refs").join(&self.revision)).ok().map(|c| c.trim().to_string());
        let commit = by_ref.unwrap_or_else(|| self.revision.clone());
        if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
            return None;
        }
        let dir = self.folder.join("snapshots").join(commit);
        dir.is_dir().then_some(dir)
    }

    /// `file` from the cache, else downloaded (online); `Ok(None)` when the repository has no
    /// such file (offline: when the cache has none).
    fn file(&self, file: &str) -> Result<Option<PathBuf>> {
        if let Some(p) = self.cached_snapshot().map(|s| s.join(file)).filter(|p| p.exists()) {
            return Ok(Some(p));
        }
        let Some(api) = &self.api else { return Ok(None) };
        match api.download(file) {
            Ok(p) => Ok(Some(p)),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(401 | 404, _)) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("downloading {file} from {}{}", self.what(), ONLINE_HINT)),
        }
    }

    fn offline_hint(&self) -> &'static str {
        if self.api.is_none() {
            " in the local Hugging Face cache (offline: HF_HUB_OFFLINE is set; unset it to download)"
        } else {
            ""
        }
    }
}

const ONLINE_HINT: &str = " (no network? with the files already in the Hugging Face cache, set HF_HUB_OFFLINE=1)";

/// The embedding file of Hub repository `id`, as diffusers' `load_textual_inversion(id,
/// weight_name=..., revision=...)` picks it: `weight_name`, else `learned_embeds.safetensors`,
/// else `learned_embeds.bin`.
pub fn embedding_file(id: &str, weight_name: Option<&str>, revision: Option<&str>, hub: &HubOptions) -> Result<PathBuf> {
    let repo = HubRepo::new(id, RepoType::Model, revision, hub)?;
    let tried: Vec<&str> = match weight_name {
        Some(w) => vec![w],
        None => EMBEDDING_FILES.to_vec(),
    };
    if let Some(bad) = tried.iter().find(|w| w.is_empty() || w.starts_with('/') || w.split('/').any(|p| p == "..")) {
        bail!("--weight_name {bad:?}: expected a file name inside the repository");
    }
    for name in &tried {
        if let Some(path) = repo.file(name)? {
            check_link(&path, &repo.folder)?;
            tracing::info!("--embedding {id}: {name} of {}", repo.what());
            return Ok(path);
        }
    }
    bail!("--embedding {id}: no such file or folder, and the Hub repository {} has no {}{}", repo.what(), tried.join(" and no "), repo.offline_hint())
}

/// `--train_data_dir` as given, or for a Hub dataset id its snapshot folder: every top-level
/// file of the repository fetched into the cache (sub-folders are left out, as training leaves
/// a local folder's sub-folders out), each snapshot entry checked to link inside the repo's
/// own cache folder ([`check_links`]).
pub fn train_data_dir(dir: &Path, revision: Option<&str>, hub: &HubOptions) -> Result<PathBuf> {
    let Some(id) = dir.to_str().filter(|s| is_hub_id(s)) else { return Ok(dir.to_path_buf()) };
    let repo = HubRepo::new(id, RepoType::Dataset, revision, hub)?;
    let snapshot = match &repo.api {
        None => repo.cached_snapshot().with_context(|| {
            format!(
                "--train_data_dir {id}: no folder of that name, and the Hub dataset {} is not in the Hugging Face cache {} (offline: HF_HUB_OFFLINE is set; unset it to download)",
                repo.what(),
                repo.folder.display()
            )
        })?,
        Some(api) => download_dataset(&repo, api)?,
    };
    check_links(&snapshot, &repo.folder)?;
    tracing::info!("--train_data_dir {id}: the Hub dataset's snapshot {}", snapshot.display());
    Ok(snapshot)
}

/// Lists the dataset's files at the revision and fetches the top-level ones the cache lacks.
fn download_dataset(repo: &HubRepo, api: &ApiRepo) -> Result<PathBuf> {
    let info = match api.info() {
        Ok(info) => info,
        // The Hub answers 401 for a repo that does not exist (or that the token may not see).
        Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(401 | 404, _)) => {
            bail!("--train_data_dir {}: no folder of that name, and no Hub {} (a private one needs HF_TOKEN)", repo.id, repo.what())
        }
        Err(e) => return Err(e).with_context(|| format!("--train_data_dir {}: listing the Hub dataset {}{}", repo.id, repo.what(), ONLINE_HINT)),
    };
    if info.sha.is_empty() || info.sha.contains(['/', '\\']) || info.sha.starts_with('.') {
        bail!("--train_data_dir {}: the Hub answered an unusable commit {:?}", repo.id, info.sha);
    }
    let snapshot = repo.folder.join("snapshots").join(&info.sha);
    let files: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).filter(|f| !f.contains('/') && !f.is_empty() && !f.starts_with('.')).collect();
    tracing::info!("--train_data_dir {}: {} file(s) at commit {}", repo.id, files.len(), info.sha);
    for file in files {
        if snapshot.join(file).exists() {
            continue;
        }
        let got = api.download(file).with_context(|| format!("--train_data_dir {}: downloading {file} from {}{}", repo.id, repo.what(), ONLINE_HINT))?;
        if got.parent() != Some(snapshot.as_path()) {
            bail!(
                "--train_data_dir {}: {} changed while it was downloaded ({file} came from another commit than {}): run again",
                repo.id,
                repo.what(),
                info.sha
            );
        }
    }
    std::fs::create_dir_all(&snapshot).with_context(|| format!("creating {}", snapshot.display()))?;
    Ok(snapshot)
}

/// Every entry of a cached snapshot folder that is a symlink must resolve inside the repo's
/// own cache folder (`repo_folder`, where huggingface_hub keeps its blobs) to a regular file:
/// a link planted elsewhere (`/etc/...`, `/dev/zero`, another repo) is refused by name.
pub fn check_links(snapshot: &Path, repo_folder: &Path) -> Result<()> {
    let entries = std::fs::read_dir(snapshot).with_context(|| format!("cannot read the Hub snapshot {}", snapshot.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", snapshot.display()))?;
        if entry.file_type().map(|t| t.is_symlink()).unwrap_or(false) {
            check_link(&entry.path(), repo_folder)?;
        }
    }
    Ok(())
}

/// [`check_links`] for one path (no check when it is not a symlink).
fn check_link(path: &Path, repo_folder: &Path) -> Result<()> {
    if !std::fs::symlink_metadata(path).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
        return Ok(());
    }
    let root = repo_folder.canonicalize().with_context(|| format!("resolving the Hub cache folder {}", repo_folder.display()))?;
    let target = path.canonicalize().with_context(|| format!("{}: a link in the Hub cache whose target does not exist", path.display()))?;
    if !target.starts_with(&root) {
        bail!(
            "{}: a link in the Hub cache pointing outside its repository's cache folder {} (to {}): refusing to read it",
            path.display(),
            root.display(),
            target.display()
        );
    }
    if !std::fs::metadata(&target).map(|m| m.is_file()).unwrap_or(false) {
        bail!("{}: a link in the Hub cache to {}, which is not a regular file: refusing to read it", path.display(), target.display());
    }
    Ok(())
}
