use std::io::IsTerminal;
use textual_inversion::cli;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // Before libtorch allocates anything: freed tensors are reused, not faulted in again.
    textual_inversion::malloc::keep_freed_memory();
    // Before anything can ask libtorch about CUDA (see init_cuda).
    textual_inversion::device::init_cuda();
    let cli = cli::parse();
    let default = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal();
    // Log fields (file names, keys and tokens from files among them) with their control
    // characters escaped: nothing from a file drives the terminal.
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = textual_inversion::cli::printable::lines(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{}={text}", field.name())
        }
    })
    .delimited(" ");
    tracing_subscriber::fmt().fmt_fields(fields).with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).with_target(false).without_time().init();
    // libtorch reports failures deep inside an op (e.g. out of GPU memory) as panics from tch:
    // show them as an error line, not a Rust backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg =
            info.payload().downcast_ref::<String>().map(String::as_str).or_else(|| info.payload().downcast_ref::<&str>().copied()).unwrap_or("unknown error");
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        tracing::error!("internal error: {msg}{at}");
    }));
    remove_temporaries_on_signals();
    match std::panic::catch_unwind(|| cli::run(cli)) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => std::process::ExitCode::from(2),
    }
}

/// SIGINT/SIGTERM: the temporaries in flight (atomic writes, half-written checkpoint and model
/// folders) are removed, then the signal ends the process as it would have.
fn remove_temporaries_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let removed = textual_inversion::formats::atomic::remove_tracked();
                    eprintln!("interrupted: removed {removed} temporary file(s) or folder(s)");
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            });
        }
        Err(e) => tracing::warn!("cannot watch for SIGINT/SIGTERM (temporaries may be left behind on a signal): {e}"),
    }
}
