use clap::Parser;
use std::io::IsTerminal;
use textual_inversion::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // Before anything can ask libtorch about CUDA (see init_cuda).
    textual_inversion::device::init_cuda();
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .without_time()
        .init();
    // libtorch reports failures deep inside an op (e.g. out of GPU memory) as panics from tch:
    // show them as an error line, not a Rust backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown error");
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        tracing::error!("internal error: {msg}{at}");
    }));
    match std::panic::catch_unwind(|| cli::run(cli)) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => std::process::ExitCode::from(2),
    }
}
