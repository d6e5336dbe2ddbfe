//! The command line: one file per subcommand, each with its clap arguments and `run`.
pub mod convert;
pub mod convert_model;
pub mod evaluate;
pub mod generate;
pub mod info;
pub mod inspect;
pub mod printable;
pub mod train;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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

/// Parsed once per process, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Score images with CLIP: similarity to reference images and to a text; with --run, every
    /// saved step of a training run, and pick the best.
    Evaluate(evaluate::EvaluateArgs),
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
    /// What the model predicts, overriding the scheduler config (and what a single file says).
    #[arg(long = "prediction_type", value_enum)]
    pub prediction_type: Option<crate::schedulers::PredictionType>,
}

impl ModelFileArgs {
    pub fn source(&self, name_or_path: &str, revision: Option<String>) -> crate::models::repo::ModelSource {
        crate::models::repo::ModelSource {
            name_or_path: name_or_path.to_string(),
            revision,
            config: self.config.clone(),
            prediction_type: self.prediction_type,
        }
    }
}

/// The command line as users type it. Flags are spelled as the Python scripts spell them
/// (`--output_dir`); each also answers to its kebab-case form (`--output-dir`), added here for
/// every flag at once rather than written beside each.
pub fn command() -> clap::Command {
    with_kebab_aliases(Cli::command())
}

fn with_kebab_aliases(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_args(|arg| match arg.get_long().filter(|l| l.contains('_')).map(|l| l.replace('_', "-")) {
        Some(kebab) => arg.alias(kebab),
        None => arg,
    });
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.into_iter().fold(cmd, |cmd, name| cmd.mut_subcommand(name, with_kebab_aliases))
}

/// Parses the process's arguments with [`command`] (exits with clap's message on an error).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Train(a) => train::run(*a),
        Command::ConvertModel(a) => convert_model::run(a),
        Command::Evaluate(a) => evaluate::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag answers to both spellings, and both parse to the same value.
    #[test]
    fn every_snake_case_flag_has_its_kebab_alias() {
        let cmd = command();
        let mut checked = 0;
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long().filter(|l| l.contains('_')) {
                    let kebab = long.replace('_', "-");
                    assert!(arg.get_all_aliases().is_some_and(|a| a.contains(&kebab.as_str())), "{} --{long}", sub.get_name());
                    checked += 1;
                }
            }
        }
        assert!(checked > 70, "{checked}");
        let parse = |flag: &str| {
            let m = command().try_get_matches_from(["textual-inversion", "inspect", "x.pt"]).unwrap();
            let _ = Cli::from_arg_matches(&m).unwrap();
            let m = command().try_get_matches_from(["textual-inversion", "generate", "--model", "m", "--prompt", "p", flag, "7"]).unwrap();
            match Cli::from_arg_matches(&m).unwrap().command {
                Command::Generate(g) => g.steps,
                _ => unreachable!(),
            }
        };
        assert_eq!(parse("--num_inference_steps"), 7);
        assert_eq!(parse("--num-inference-steps"), 7);
    }
}
