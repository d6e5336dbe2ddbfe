//! What each item's caption says, beyond the script's templates: caption files beside the
//! images (`--caption_extension`), A1111-style template files (`--template_file`, with
//! `[name]` and `[filewords]`), and A1111's tag shuffling and dropout.
//!
//! Every item still draws its template index first (the script's `random.choice`), so the
//! other draws (flips, noise, timesteps) stay the script's. The tag draws follow on the same
//! Python generator, as A1111's `create_text`: one `random()` per tag for `--tag_dropout`, then
//! `random.shuffle` of the tags kept ([`super::super::script_rng`] makes them).
use super::templates::caption;
use super::{file_name, Dataset, LearnableProperty};
use crate::train::config::CaptionConfig;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Caption and template files are small; anything larger is not one.
pub const MAX_TEXT_BYTES: u64 = 1 << 20;

/// Where the placeholder goes in a caption or template line (besides the trigger word itself).
const MARKERS: [&str; 2] = ["[name]", "{}"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The script: `template.format(placeholder)`.
    Templates,
    /// `--caption_extension` alone: an image's caption replaces the template.
    CaptionFiles,
    /// `--template_file`: its lines, `[filewords]` filled with each image's words.
    TemplateFile,
}

/// The captions of a run: the template list each item draws from, and each image's words.
pub struct Captions {
    mode: Mode,
    templates: Vec<String>,
    /// Per image: its caption (or, with a template file, the words of its file name); None:
    /// the image uses the templates alone.
    words: Vec<Option<String>>,
    shuffle: bool,
    dropout: f64,
    /// The trigger word as users write it (replaced by all placeholder tokens).
    trigger: String,
}

/// Reads a caption or template file: UTF-8, at most [`MAX_TEXT_BYTES`].
fn read_text(path: &Path, what: &str) -> Result<String> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {what} {}", path.display()))?.len();
    if len > MAX_TEXT_BYTES {
        bail!("{what} {} is {len} bytes; at most {MAX_TEXT_BYTES} are read", path.display());
    }
    let bytes = crate::formats::regular::read(path, MAX_TEXT_BYTES).with_context(|| format!("cannot read {what} {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{what} {} is not UTF-8 text", path.display()))
}

/// A caption file's text on one line: trimmed, line breaks as spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A1111's words of a file name: its stem without leading digits and dashes
/// (`re.sub(r"^[-\d]+\s*", "", stem)`).
pub fn filename_words(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let rest = stem.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-');
    rest.trim_start().to_string()
}

/// The caption file of `image` for `extension` (`.txt` or `txt`): `NAME.txt` beside it.
pub fn caption_path(image: &Path, extension: &str) -> PathBuf {
    image.with_extension(extension.trim_start_matches('.'))
}

/// The extension caption files have in this run: `--caption_extension`, or `.txt` with a
/// template file (A1111 reads `NAME.txt` for `[filewords]`).
pub fn caption_extension(cfg: &CaptionConfig) -> Option<String> {
    cfg.extension.clone().or_else(|| cfg.template_file.as_ref().map(|_| ".txt".to_string()))
}

/// The lines of an A1111 template file (blank lines left out), checked to name the concept.
fn template_lines(path: &Path) -> Result<Vec<String>> {
    let text = read_text(path, "--template_file")?;
    let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if lines.is_empty() {
        bail!("--template_file {} has no template lines", path.display());
    }
    let unnamed: Vec<&str> = lines.iter().filter(|l| !MARKERS.iter().any(|m| l.contains(m))).map(String::as_str).collect();
    if unnamed.len() == lines.len() {
        bail!("--template_file {}: no line contains [name], so the new token would never be trained", path.display());
    }
    if !unnamed.is_empty() {
        tracing::warn!("--template_file {}: {} line(s) without [name] teach the token nothing: {:?}", path.display(), unnamed.len(), unnamed);
    }
    Ok(lines)
}

impl Captions {
    /// The captions `cfg` asks for over `dataset`'s images, with one warning listing the images
    /// that have no caption file.
    pub fn load(cfg: &CaptionConfig, property: LearnableProperty, dataset: &Dataset, trigger: &str) -> Result<Self> {
        let builtin = || property.templates().iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let mode = match (&cfg.template_file, &cfg.extension) {
            (Some(_), _) => Mode::TemplateFile,
            (None, Some(_)) => Mode::CaptionFiles,
            (None, None) => Mode::Templates,
        };
        let templates = match &cfg.template_file {
            Some(path) => template_lines(path)?,
            None => builtin(),
        };
        let mut words = vec![None; dataset.num_images()];
        let mut missing = Vec::new();
        if let Some(ext) = caption_extension(cfg) {
            for (slot, image) in words.iter_mut().zip(dataset.images()) {
                let path = caption_path(&image.path, &ext);
                if path.is_file() {
                    *slot = Some(one_line(&read_text(&path, "caption file")?));
                } else {
                    missing.push(file_name(&image.path));
                    if mode == Mode::TemplateFile {
                        *slot = Some(filename_words(&image.path));
                    }
                }
            }
        }
        if !missing.is_empty() {
            let ext = caption_extension(cfg).unwrap_or_default();
            let instead = match mode {
                Mode::TemplateFile => "[filewords] uses the words of their file names",
                _ => match property {
                    LearnableProperty::Object => "they use the object templates",
                    LearnableProperty::Style => "they use the style templates",
                },
            };
            tracing::warn!("{} of {} images have no {ext} caption file ({instead}): {}", missing.len(), words.len(), missing.join(", "));
        }
        if (cfg.shuffle_tags || cfg.tag_dropout > 0.0) && words.iter().all(Option::is_none) {
            tracing::warn!("--shuffle_tags/--tag_dropout act on captions, and this run has none (use --caption_extension or --template_file)");
        }
        Ok(Captions { mode, templates, words, shuffle: cfg.shuffle_tags, dropout: cfg.tag_dropout, trigger: trigger.to_string() })
    }

    /// How many templates an item draws from.
    pub fn num_templates(&self) -> usize {
        self.templates.len()
    }

    /// Per image, how many comma-separated tags get A1111's draws (0: none), when shuffling or
    /// dropout is on.
    pub fn tag_draws(&self) -> Option<crate::train::script_rng::TagDraws> {
        if !self.shuffle && self.dropout <= 0.0 {
            return None;
        }
        let counts = self.words.iter().map(|w| w.as_ref().map_or(0, |w| w.split(',').count())).collect();
        Some(crate::train::script_rng::TagDraws { counts, dropout: self.dropout, shuffle: self.shuffle })
    }

    /// The caption of an item showing `image` with template `template`, its tags in the drawn
    /// order `tags` (indices of the tags kept; ignored when the run draws none), the trigger
    /// written as `placeholder` (all placeholder tokens).
    pub fn text(&self, image: usize, template: usize, tags: Option<&[u16]>, placeholder: &str) -> String {
        let template = &self.templates[template % self.templates.len()];
        let words = self.words.get(image).and_then(|w| w.as_deref()).map(|w| match tags {
            Some(order) => {
                let all: Vec<&str> = w.split(',').collect();
                order.iter().filter_map(|&i| all.get(usize::from(i)).copied()).collect::<Vec<_>>().join(",")
            }
            None => w.to_string(),
        });
        match (self.mode, words) {
            (Mode::Templates, _) | (Mode::CaptionFiles, None) => caption(template, placeholder),
            (Mode::CaptionFiles, Some(words)) => {
                if self.names_concept(&words) {
                    self.fill(&words, placeholder)
                } else {
                    format!("{placeholder}, {words}")
                }
            }
            (Mode::TemplateFile, words) => self.fill(&template.replace("[filewords]", &words.unwrap_or_default()), placeholder),
        }
    }

    fn names_concept(&self, text: &str) -> bool {
        MARKERS.iter().any(|m| text.contains(m)) || text.split(|c: char| c.is_whitespace() || c == ',').any(|w| w == self.trigger)
    }

    /// The trigger word, `[name]` and `{}` written as all placeholder tokens (the trigger first:
    /// the placeholder string starts with it).
    fn fill(&self, text: &str, placeholder: &str) -> String {
        let mut out = text.to_string();
        if self.trigger != placeholder && !self.trigger.is_empty() {
            out = out
                .split(' ')
                .map(|w| if w.trim_matches(',') == self.trigger { w.replace(&self.trigger, placeholder) } else { w.to_string() })
                .collect::<Vec<_>>()
                .join(" ");
        }
        out.replace("[name]", placeholder).replace("{}", placeholder)
    }
}
