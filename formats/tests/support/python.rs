//! The reference Python (torch, diffusers, transformers at the pinned versions) for the tests
//! that cross-check with PyTorch, found as `scripts/dev/python-env.sh` makes it; shared by both
//! crates' tests through `#[path]`.
use std::path::PathBuf;

/// `$TI_PYTHON`, else the environment `scripts/dev/python-env.sh` creates
/// (`${TI_LIBTORCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/textual-inversion}/pyenv-fixtures`), if
/// it can import every module in `modules`; otherwise None after recording that `test` skips
/// and why (`skip.rs`).
pub fn reference_python(modules: &[&str], test: &str) -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cache = env("TI_LIBTORCH_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|c| c.join("textual-inversion")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/textual-inversion")));
    let candidates: Vec<PathBuf> = env("TI_PYTHON").into_iter().chain(cache.map(|c| c.join("pyenv-fixtures/bin/python"))).collect();
    let import = format!("import {}", modules.join(", "));
    for p in &candidates {
        if std::process::Command::new(p).args(["-c", &import]).output().is_ok_and(|o| o.status.success()) {
            return Some(p.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    super::skip::skip(
        test,
        &format!(
            "no Python that can `{import}` (tried {}; run scripts/dev/python-env.sh or set TI_PYTHON)",
            if tried.is_empty() { "nothing".to_string() } else { tried.join(", ") }
        ),
    );
    None
}
