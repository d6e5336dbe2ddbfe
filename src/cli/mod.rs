//! The command line: one file per subcommand, each with its clap arguments and `run`.
pub mod convert;
pub mod convert_model;
pub mod generate;
pub mod info;
pub mod inspect;
pub mod printable;
pub mod train;

use clap::{Parser, Subcommand};

/// Textual Inversion for Stable Diffusion on libtorch.
#[derive(Debug, Parser)]
#[command(name = "textual-inversion", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Versions, libtorch, CUDA/cuDNN availability, threads.
    Info(info::InfoArgs),
    /// Show what embedding files hold: format, token, vectors, width, dtype, norms, metadata.
    Inspect(inspect::InspectArgs),
    /// Convert an embedding between diffusers, A1111 and SDXL formats.
    Convert(convert::ConvertArgs),
    /// Text to image with a Stable Diffusion model and any embeddings, as diffusers'
    /// StableDiffusionPipeline.
    Generate(generate::GenerateArgs),
    /// Learn new tokens from a few images: diffusers' textual_inversion.py, same flags and files.
    Train(Box<train::TrainArgs>),
    /// Write a single-file (original layout) checkpoint as a diffusers model folder.
    ConvertModel(convert_model::ConvertModelArgs),
}

/// How a model given as one file (an original-layout `.safetensors`/`.ckpt`) is read; shared
/// by `generate`, `train` and `convert-model`.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelFileArgs {
    /// For a single-file checkpoint: the diffusers folder or Hub id whose configs and tokenizers
    /// it is read with (default: the bundled configs of the type its keys show: SD 1.5, SD 2.1
    /// or SDXL base), as diffusers' `from_single_file(config=...)`.
    #[arg(long)]
    pub config: Option<String>,
    /// epsilon or v_prediction: overrides the scheduler config's (and what a single file says).
    #[arg(long = "prediction_type", alias = "prediction-type", value_parser = ["epsilon", "v_prediction", "sample"])]
    pub prediction_type: Option<String>,
}

impl ModelFileArgs {
    pub fn source(&self, name_or_path: &str, revision: Option<String>) -> crate::models::repo::ModelSource {
        crate::models::repo::ModelSource {
            name_or_path: name_or_path.to_string(),
            revision,
            config: self.config.clone(),
            prediction_type: self.prediction_type.clone(),
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Train(a) => train::run(*a),
        Command::ConvertModel(a) => convert_model::run(a),
    }
}
