//! `--push_to_hub`, as the script does it: the repository `--hub_model_id` (default the output
//! folder's name, under the logged-in user) created if missing, and the output folder uploaded
//! with the model card the script's `save_model_card` writes (`README.md`, its YAML metadata,
//! the last validation images as `image_N.png`), leaving out `step_*` and `epoch_*`, in one
//! commit "End of training". The upload goes through huggingface_hub's own `hf` CLI, checked
//! (on PATH, logged in) before any model loads; `--hub_token` reaches it as `HF_TOKEN` in its
//! environment only, never in a file, a log line or a command line.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The script's `upload_folder(..., ignore_patterns=...)`.
pub const IGNORE_PATTERNS: [&str; 2] = ["step_*", "epoch_*"];
/// The script's commit message.
pub const COMMIT_MESSAGE: &str = "End of training";

/// What `--push_to_hub` needs.
#[derive(Clone)]
pub struct PushConfig {
    /// `--hub_model_id`: `owner/name` or `name` (under the logged-in user); default the output
    /// folder's name.
    pub hub_model_id: Option<String>,
    /// `--hub_token`.
    pub token: Option<String>,
    /// `--pretrained_model_name_or_path` as given: the card's `base_model`.
    pub base_model: String,
}

// By hand: the token must never reach a log line or an error message.
impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("hub_model_id", &self.hub_model_id)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("base_model", &self.base_model)
            .finish()
    }
}

/// The `hf` executable on PATH, or an error saying how to get it.
pub fn find_hf() -> Result<PathBuf> {
    #[cfg(unix)]
    let (name, runnable) = {
        use std::os::unix::fs::PermissionsExt;
        ("hf", |m: &std::fs::Metadata| m.permissions().mode() & 0o111 != 0)
    };
    #[cfg(not(unix))]
    let (name, runnable) = ("hf.exe", |_: &std::fs::Metadata| true);
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && runnable(&m)) {
            return Ok(candidate);
        }
    }
    bail!(
        "--push_to_hub uploads through huggingface_hub's `hf` command, which is not on PATH: install it (`pip install -U huggingface_hub`, or `curl -LsSf https://hf.co/cli/install.sh | bash`), log in with `hf auth login` (or pass --hub_token), and run again"
    )
}

/// One `hf` run, its output captured; the token in its environment.
fn hf(exe: &Path, token: Option<&str>, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().with_context(|| format!("running {} {}", exe.display(), args.join(" ")))
}

/// The account `hf auth whoami` names, or an error (not logged in, token refused) saying what
/// to run.
fn whoami(exe: &Path, token: Option<&str>) -> Result<String> {
    let out = hf(exe, token, &["auth", "whoami", "--format", "json"])?;
    let said = |o: &Output| {
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        crate::cli::printable::lines(text.trim()).chars().take(400).collect::<String>()
    };
    // click's usage error: an `hf` from before `--format` (huggingface_hub < 1.0).
    if out.status.code() == Some(2) {
        bail!(
            "--push_to_hub: `{} auth whoami --format json` is not understood by this hf ({}): update it with `pip install -U huggingface_hub` (tested with 2.5.0). It said: {}",
            exe.display(),
            out.status,
            said(&out)
        );
    }
    if !out.status.success() {
        let how = if token.is_some() { "the --hub_token was refused" } else { "not logged in to the Hub" };
        bail!(
            "--push_to_hub: `{} auth whoami` failed ({}): {how}. Run `hf auth login`, or pass a write token with --hub_token. It said: {}",
            exe.display(),
            out.status,
            said(&out)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let user = serde_json::from_str::<serde_json::Value>(stdout.trim())
        .ok()
        .and_then(|v| v.get("user").or_else(|| v.get("name")).and_then(|u| u.as_str()).map(str::to_string))
        .filter(|u| !u.is_empty() && !u.contains(['/', ' ']));
    user.with_context(|| {
        format!("--push_to_hub: `{} auth whoami --format json` named no account (a huggingface_hub older than 1.0?). It said: {}", exe.display(), said(&out))
    })
}

/// The repository id: `--hub_model_id`, else the output folder's name; under `user` when it
/// names no owner (as `create_repo` returns it).
pub fn repo_id(push: &PushConfig, output_dir: &Path, user: &str) -> Result<String> {
    let name = match &push.hub_model_id {
        Some(id) => id.clone(),
        None => {
            let abs = std::path::absolute(output_dir).with_context(|| format!("resolving --output_dir {}", output_dir.display()))?;
            abs.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("--output_dir {} has no name to make a repo id of: pass --hub_model_id", output_dir.display()))?
        }
    };
    let id = if name.contains('/') { name } else { format!("{user}/{name}") };
    if !crate::models::hub::looks_like_id(&id) {
        bail!("--push_to_hub: {id:?} is not a Hub repo id (owner/name, letters, digits, '-', '_', '.'): pass --hub_model_id");
    }
    Ok(id)
}

/// Checked before any model loads: `hf` on PATH, logged in (or --hub_token accepted), the repo
/// id formed. Returns the repo id.
pub fn preflight(push: &PushConfig, output_dir: &Path) -> Result<String> {
    let exe = find_hf()?;
    let user = whoami(&exe, push.token.as_deref())?;
    let id = repo_id(push, output_dir, &user)?;
    tracing::info!("--push_to_hub: logged in as {user}; the output folder goes to https://huggingface.co/{id} at the end");
    Ok(id)
}

/// The end of a run (rank 0): the model card and images written into `output_dir`, the repo
/// created (exist ok), the folder uploaded. A failed upload is an error that keeps every file.
pub fn publish(push: &PushConfig, output_dir: &Path) -> Result<()> {
    let exe = find_hf()?;
    let token = push.token.as_deref();
    let id = repo_id(push, output_dir, &whoami(&exe, token)?)?;
    let images = copy_validation_images(output_dir)?;
    crate::formats::atomic::write(&output_dir.join("README.md"), model_card(&id, &push.base_model, images).as_bytes())?;
    let out = output_dir.to_string_lossy().into_owned();
    let kept = || {
        format!(
            "the trained files are kept in {out}; upload them with `hf upload {id} {out} . --exclude 'step_*' --exclude 'epoch_*' --commit-message '{COMMIT_MESSAGE}'`"
        )
    };
    let run = |what: &str, args: &[&str]| -> Result<()> {
        let mut cmd = Command::new(&exe);
        cmd.args(args).stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("HF_TOKEN", t);
        }
        let status = cmd.status().with_context(|| format!("running {} {what}", exe.display()))?;
        if !status.success() {
            bail!("--push_to_hub: `hf {what}` failed ({status}): {}", kept());
        }
        Ok(())
    };
    tracing::info!("--push_to_hub: creating {id} (if it does not exist) and uploading {out}");
    run("repos create", &["repos", "create", &id, "--exist-ok"])?;
    let mut upload = vec!["upload", id.as_str(), out.as_str(), "."];
    for p in IGNORE_PATTERNS {
        upload.extend(["--exclude", p]);
    }
    upload.extend(["--commit-message", COMMIT_MESSAGE]);
    run("upload", &upload)?;
    tracing::info!("--push_to_hub: uploaded to https://huggingface.co/{id}");
    Ok(())
}

/// The last validation's images (`validation/step-N-I.png` of the largest N) copied to
/// `image_I.png`, as the script saves the images of its last validation; their count.
fn copy_validation_images(output_dir: &Path) -> Result<usize> {
    let dir = output_dir.join("validation");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(0) };
    let mut found: Vec<(u64, usize, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let parsed = name.strip_prefix("step-").and_then(|r| r.strip_suffix(".png")).and_then(|r| r.split_once('-'));
        if let Some((Ok(step), Ok(i))) = parsed.map(|(s, i)| (s.parse::<u64>(), i.parse::<usize>())) {
            found.push((step, i, entry.path()));
        }
    }
    let Some(last) = found.iter().map(|f| f.0).max() else { return Ok(0) };
    let mut images: Vec<(usize, PathBuf)> = found.into_iter().filter(|f| f.0 == last).map(|f| (f.1, f.2)).collect();
    images.sort();
    // Only an unbroken 0..n run: the card links image_0 .. image_{n-1}.
    let n = images.iter().enumerate().take_while(|(k, (i, _))| k == i).count();
    for (i, path) in images.iter().take(n) {
        let bytes = crate::formats::regular::read(path, 256 << 20)?;
        crate::formats::atomic::write(&output_dir.join(format!("image_{i}.png")), &bytes)?;
    }
    Ok(n)
}

/// `README.md` as the script's `save_model_card(repo_id, images, base_model)` writes it for a
/// new repo: diffusers' training card template (`load_or_create_model_card(from_training=True,
/// license="creativeml-openrail-m", inference=True)`) with the script's tags
/// (`populate_model_card`), byte for byte (tests/hub.rs compares it with Python's).
pub fn model_card(repo_id: &str, base_model: &str, images: usize) -> String {
    let tags = ["stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "diffusers", "textual_inversion", "diffusers-training"];
    let mut card = format!("---\nbase_model: {}\nlibrary_name: diffusers\nlicense: creativeml-openrail-m\ninference: true\ntags:\n", yaml_scalar(base_model));
    for t in tags {
        card += &format!("- {t}\n");
    }
    card += "---\n\n<!-- This model card has been generated automatically according to the information the training script had access to. You\nshould probably proofread and complete it, then remove this comment. -->\n\n";
    let img_str: String = (0..images).map(|i| format!("![img_{i}](./image_{i}.png)\n")).collect();
    card += &format!(
        "\n# Textual inversion text2image fine-tuning - {repo_id}\nThese are textual inversion adaption weights for {base_model}. You can find some example images in the following. \n\n{img_str}\n"
    );
    card += "\n\n## Intended uses & limitations\n\n#### How to use\n\n```python\n# TODO: add an example code snippet for running this diffusion pipeline\n```\n\n#### Limitations and bias\n\n[TODO: provide examples of latent issues and potential remediations]\n\n## Training details\n\n[TODO: describe the data used to train the model]";
    card
}

/// `s` as PyYAML's `safe_dump` writes a string value: plain when it reads back as the same
/// string, else single-quoted.
fn yaml_scalar(s: &str) -> String {
    let plain_chars = s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-' | '+'));
    let special = ["true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"].iter().any(|w| s.eq_ignore_ascii_case(w));
    let starts_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/'));
    if plain_chars && starts_ok && !special && s.parse::<f64>().is_err() {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}
