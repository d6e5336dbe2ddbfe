//! `textual-inversion convert IN OUT`
use crate::formats::embeddings::{self, OutFormat};
use crate::formats::DType;
use anyhow::{bail, Context};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// `{token: [n, D]}` safetensors with `{"format": "pt"}` metadata (textual_inversion.py).
    Diffusers,
    /// The same dict as a torch.save `.bin` (textual_inversion.py --no_safe_serialization).
    DiffusersBin,
    /// The A1111 web UI's `.pt` (string_to_param, name, step, ...).
    A1111,
    /// `clip_l` + `clip_g` safetensors for SDXL (A1111, kohya).
    Sdxl,
    /// kohya-ss's `emb_params` safetensors (SD 1.x/2.x).
    Kohya,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    Keep,
    Fp32,
    Fp16,
    Bf16,
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Embedding file in any format.
    pub input: PathBuf,
    /// File to write (atomically; an existing file is replaced).
    pub output: PathBuf,
    /// Output format; by default from OUT's extension (.safetensors diffusers, .bin
    /// diffusers-bin, .pt a1111).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Token (diffusers key, A1111 name); by default the input's trigger word.
    #[arg(long)]
    pub token: Option<String>,
    /// Element type of the written vectors.
    #[arg(long, value_enum, default_value = "keep")]
    pub dtype: DtypeArg,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    // Only a regular file (or nothing) is ever replaced: a device node, FIFO, folder or
    // symbolic link at OUT is refused before anything is read.
    crate::formats::atomic::check_replaceable(&args.output)?;
    let src = embeddings::read(&args.input)?;
    let format = match args.format {
        Some(FormatArg::Diffusers) => OutFormat::Diffusers,
        Some(FormatArg::DiffusersBin) => OutFormat::DiffusersBin,
        Some(FormatArg::A1111) => OutFormat::A1111,
        Some(FormatArg::Sdxl) => OutFormat::Sdxl,
        Some(FormatArg::Kohya) => OutFormat::Kohya,
        None => OutFormat::from_extension(&args.output)
            .context(format!("cannot tell the output format from {}: pass --format diffusers|diffusers-bin|a1111|sdxl|kohya", args.output.display()))?,
    };
    // An SDXL source written to a .safetensors name means SDXL, not diffusers.
    let format = match (format, args.format, src.layout) {
        (OutFormat::Diffusers, None, embeddings::Layout::Sdxl) => OutFormat::Sdxl,
        (f, _, _) => f,
    };
    if src.embeddings.len() != 1 {
        let tokens: Vec<String> = src.embeddings.iter().filter_map(|e| e.stored_token.clone()).collect();
        bail!("{} holds {} embeddings ({}); convert writes one per file", args.input.display(), src.embeddings.len(), tokens.join(", "));
    }
    let token = args.token.clone().unwrap_or_else(|| src.trigger(0, &embeddings::file_stem(&args.input)));
    let dtype = match args.dtype {
        DtypeArg::Keep => None,
        DtypeArg::Fp32 => Some(DType::F32),
        DtypeArg::Fp16 => Some(DType::F16),
        DtypeArg::Bf16 => Some(DType::BF16),
    };
    embeddings::write(&args.output, format, &token, &src.embeddings[0], Some(&src), dtype)?;
    println!("wrote {} ({}, token {}, {} vector(s))", args.output.display(), format.name(), super::printable::line(&token), src.embeddings[0].vectors());
    Ok(())
}
