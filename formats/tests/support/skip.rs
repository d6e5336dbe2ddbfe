//! A test that cannot run here (no published files, no reference Python, no CUDA libtorch)
//! says so in a way that is seen: one line on stderr, the same line appended to the file
//! `$TI_SKIP_LOG` (scripts/test.sh lists them after the run, since the test harness hides a
//! passing test's output), and with `TI_NO_SKIP=1` the test fails instead, so a machine that is
//! meant to have everything proves it does. Shared by both crates' tests through `#[path]`.

/// Records that `test` skips because of `why`; panics instead when `TI_NO_SKIP` is set.
pub fn skip(test: &str, why: &str) {
    let line = format!("skipped {test}: {why}");
    if std::env::var_os("TI_NO_SKIP").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{line} (TI_NO_SKIP is set: every test must run)");
    }
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("TI_SKIP_LOG").filter(|v| !v.is_empty()) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{line}");
        }
    }
}
