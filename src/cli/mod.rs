//! The command line: one file per subcommand, each with its clap arguments and `run`.
pub mod convert;
pub mod generate;
pub mod info;
pub mod inspect;
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
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Train(a) => train::run(*a),
    }
}
