//! Where the published embedding files are, for the tests of both crates (included with
//! `#[path]` by `formats/tests/common.rs` and `tests/common/mod.rs`).
use std::path::{Path, PathBuf};

/// The embedding files people published (`../shared/realworld` beside the checkout `repo`, or
/// `$TI_REALWORLD_DIR`, an absolute path), or None after recording that the test skips
/// (`skip.rs`): a user's clone has no `../shared`, and those files are not redistributed.
pub fn realworld_dir(repo: &Path, test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TI_REALWORLD_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("../shared/realworld"));
    if dir.join("bad-artist.pt").is_file() {
        return Some(dir);
    }
    super::skip::skip(test, &format!("the published embedding files are not in {} (set TI_REALWORLD_DIR to a folder holding them)", dir.display()));
    None
}
