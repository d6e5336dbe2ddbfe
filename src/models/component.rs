//! The parts of a diffusers pipeline folder and the names diffusers and transformers give their
//! files: each part's folder, its config file, its weight files, and a tokenizer's files. Every
//! reader and writer of a model folder takes the names from here, so each is spelled once and
//! a reader never looks for a file under another name than the writer gave it.
use std::fmt;

/// The pipeline's index: its class and each component's library and class.
pub const MODEL_INDEX: &str = "model_index.json";

/// The files a CLIP tokenizer folder may hold (transformers' slow tokenizer's vocabulary,
/// merges and settings, its fast tokenizer's `tokenizer.json`, and the added tokens), in the
/// order they are fetched and copied.
pub const TOKENIZER_FILES: &[&str] = &["tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.json", "added_tokens.json"];

/// The two formats of a model's weight files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Safetensors,
    /// `torch.save`'s pickle (`.bin`).
    Bin,
}

impl WeightFormat {
    /// The file name's extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            WeightFormat::Safetensors => "safetensors",
            WeightFormat::Bin => "bin",
        }
    }
}

/// The stem of a model folder's weight files in `format`, for any folder name: transformers'
/// names (`model.safetensors`, `pytorch_model.bin`) for a text encoder (`text_encoder`,
/// `text_encoder_2`, ...), diffusers' (`diffusion_pytorch_model.*`) for every other model.
pub fn weight_stem(folder: &str, format: WeightFormat) -> &'static str {
    match (folder.starts_with("text_encoder"), format) {
        (true, WeightFormat::Safetensors) => "model",
        (true, WeightFormat::Bin) => "pytorch_model",
        (false, _) => "diffusion_pytorch_model",
    }
}

/// One part of a Stable Diffusion (XL) pipeline folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Tokenizer,
    /// SDXL's second tokenizer.
    Tokenizer2,
    TextEncoder,
    /// SDXL's second text encoder (with its projection).
    TextEncoder2,
    Unet,
    Vae,
    Scheduler,
}

impl Component {
    /// Every component this tool reads or writes.
    pub const ALL: [Component; 7] =
        [Component::Tokenizer, Component::Tokenizer2, Component::TextEncoder, Component::TextEncoder2, Component::Unet, Component::Vae, Component::Scheduler];

    /// The component's folder, which is also its key in `model_index.json`.
    pub fn folder(self) -> &'static str {
        match self {
            Component::Tokenizer => "tokenizer",
            Component::Tokenizer2 => "tokenizer_2",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
            Component::Unet => "unet",
            Component::Vae => "vae",
            Component::Scheduler => "scheduler",
        }
    }

    /// The component a folder name is, if it is one of [`Component::ALL`].
    pub fn from_folder(name: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.folder() == name)
    }

    /// The name of its config file inside its folder.
    pub fn config_file(self) -> &'static str {
        match self {
            Component::Tokenizer | Component::Tokenizer2 => "tokenizer_config.json",
            Component::Scheduler => "scheduler_config.json",
            _ => "config.json",
        }
    }

    /// `folder/config_file` (e.g. `unet/config.json`), the path inside a model folder.
    pub fn config_path(self) -> String {
        self.file(self.config_file())
    }

    /// `folder/name`, the path of a file of this component inside a model folder.
    pub fn file(self, name: &str) -> String {
        format!("{}/{name}", self.folder())
    }

    /// Whether the component has weights (a text encoder, the UNet, the VAE).
    pub fn has_weights(self) -> bool {
        matches!(self, Component::TextEncoder | Component::TextEncoder2 | Component::Unet | Component::Vae)
    }

    /// The stem of its weight files in `format`; None for the parts without weights.
    pub fn weight_stem(self, format: WeightFormat) -> Option<&'static str> {
        self.has_weights().then(|| weight_stem(self.folder(), format))
    }

    /// The name of its unsharded weight file in `format` (e.g. `model.safetensors`), as
    /// `save_pretrained` writes it; None for the parts without weights.
    pub fn weight_file(self, format: WeightFormat) -> Option<String> {
        self.weight_stem(format).map(|stem| format!("{stem}.{}", format.extension()))
    }

    /// The name of its sharded checkpoint's index in `format` (e.g.
    /// `diffusion_pytorch_model.safetensors.index.json`).
    pub fn weight_index_file(self, format: WeightFormat) -> Option<String> {
        self.weight_file(format).map(|f| format!("{f}.index.json"))
    }

    /// The tokenizer that feeds a text encoder.
    pub fn tokenizer(self) -> Option<Component> {
        match self {
            Component::TextEncoder => Some(Component::Tokenizer),
            Component::TextEncoder2 => Some(Component::Tokenizer2),
            _ => None,
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_those_save_pretrained_writes() {
        assert_eq!(Component::TextEncoder2.weight_file(WeightFormat::Safetensors).as_deref(), Some("model.safetensors"));
        assert_eq!(Component::TextEncoder.weight_file(WeightFormat::Bin).as_deref(), Some("pytorch_model.bin"));
        assert_eq!(Component::Unet.weight_file(WeightFormat::Bin).as_deref(), Some("diffusion_pytorch_model.bin"));
        assert_eq!(Component::Vae.weight_index_file(WeightFormat::Safetensors).as_deref(), Some("diffusion_pytorch_model.safetensors.index.json"));
        assert_eq!(Component::Tokenizer.weight_file(WeightFormat::Safetensors), None);
        assert_eq!(Component::Scheduler.config_path(), "scheduler/scheduler_config.json");
        assert_eq!(Component::Tokenizer2.config_path(), "tokenizer_2/tokenizer_config.json");
        for c in Component::ALL {
            assert_eq!(Component::from_folder(c.folder()), Some(c));
        }
        assert_eq!(Component::from_folder("safety_checker"), None);
    }
}
