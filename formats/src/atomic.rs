//! Writing files so that nothing is lost or written where it should not be.
//!
//! - Atomic writes: a temporary file in the target's folder, synced, then renamed over it, so a
//!   reader (or a crash) never sees half a file. The file gets the mode `open(path, 0o666)` would
//!   give it (the umask applies), as Python's writers do; a temporary file's default 0600 would
//!   make embeddings unreadable to a web UI running as another user.
//! - Only regular files are replaced: a symbolic link, FIFO, device node, socket or folder at
//!   the destination is refused by name, so `convert x.pt /dev/null` cannot turn a device node
//!   into a file, and a link planted in an output folder cannot redirect a write elsewhere.
//! - Folders inside an output folder are created without following links ([`ensure_dir`]), and
//!   appends never follow a link ([`open_append`]).
//! - Every temporary file or folder in flight is registered ([`track`]); a signal handler calls
//!   [`remove_tracked`] so SIGINT/SIGTERM leave no `.tmp-*` behind.
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporaries that exist right now (files or folders), for [`remove_tracked`].
static TRACKED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Keeps a temporary path registered for removal on a signal while it lives.
#[must_use]
pub struct Tracked(PathBuf);

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut live = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = live.iter().rposition(|p| *p == self.0) {
            live.swap_remove(i);
        }
    }
}

/// Registers `path` (a temporary file or folder this process is writing) until the guard drops.
pub fn track(path: &Path) -> Tracked {
    TRACKED.lock().unwrap_or_else(|e| e.into_inner()).push(path.to_path_buf());
    Tracked(path.to_path_buf())
}

/// Removes every registered temporary (called from a signal handler's thread before exiting).
/// Returns how many were removed.
pub fn remove_tracked() -> usize {
    let live = std::mem::take(&mut *TRACKED.lock().unwrap_or_else(|e| e.into_inner()));
    let mut removed = 0;
    for p in live {
        let gone = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p).is_ok(),
            Ok(_) => std::fs::remove_file(&p).is_ok(),
            Err(_) => false,
        };
        removed += gone as usize;
    }
    removed
}

/// What kind of non-regular file `m` describes, for error messages.
fn kind_name(m: &std::fs::Metadata) -> &'static str {
    crate::regular::describe(&m.file_type())
}

/// Whether `path` may be replaced: it does not exist, or it is a regular file (not a link to
/// one). Returns whether it exists.
pub fn check_replaceable(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(true),
        Ok(m) => Err(Error::io(path, std::io::Error::other(format!("refusing to replace it: it is {}, and only regular files are replaced", kind_name(&m))))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |f| f.write_all(bytes))
}

/// Runs `fill` on a temporary file next to `path`, then renames it into place.
pub fn write_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    check_replaceable(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    let _tracked = track(tmp.path());
    fill(tmp.as_file_mut()).map_err(|e| Error::io(path, e))?;
    hold_for_tests();
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    // Checked again just before the rename: a link planted meanwhile is refused too.
    check_replaceable(path)?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// `TI_TEST_HOLD_TEMPORARY_MS`: keep each temporary for that long before its rename, so the
/// tests of the signal path can interrupt a write while its temporary exists.
fn hold_for_tests() {
    if let Some(ms) = std::env::var("TI_TEST_HOLD_TEMPORARY_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Opens `path` for appending (created if missing) without following a symbolic link, and only
/// if it is a regular file.
pub fn open_append(path: &Path) -> Result<std::fs::File> {
    check_replaceable(path)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = opts.open(path).map_err(|e| Error::io(path, e))?;
    let m = f.metadata().map_err(|e| Error::io(path, e))?;
    if !m.is_file() {
        return Err(Error::io(path, std::io::Error::other(format!("refusing to write to it: it is {}", kind_name(&m)))));
    }
    Ok(f)
}

/// Creates `root/rel` (and the folders between) where every component below `root` is a real
/// folder: an existing symbolic link (or file) on the way is refused, so nothing is ever
/// written outside `root` through a link. `root` itself is the user's choice and may be a link.
pub fn ensure_dir(root: &Path, rel: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let mut at = root.to_path_buf();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(name) => at.push(name),
            std::path::Component::CurDir => continue,
            _ => return Err(Error::io(root.join(rel), std::io::Error::other("must be a folder inside the output folder (no `..` or absolute parts)"))),
        }
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                return Err(Error::io(
                    &at,
                    std::io::Error::other(format!(
                        "is {} inside the output folder {}: nothing is written through it (remove it, or choose another output folder)",
                        kind_name(&m),
                        root.display()
                    )),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Raced with another creator: accept only a real folder.
                    if !std::fs::symlink_metadata(&at).map(|m| m.is_dir()).unwrap_or(false) {
                        return Err(Error::io(&at, e));
                    }
                }
                Err(e) => return Err(Error::io(&at, e)),
            },
            Err(e) => return Err(Error::io(&at, e)),
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_regular_files_only() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.bin");
        write(&f, b"one").unwrap();
        write(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        let target = d.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        #[cfg(unix)]
        {
            let link = d.path().join("link.bin");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let e = write(&link, b"x").unwrap_err().to_string();
            assert!(e.contains("symbolic link") && e.contains("link.bin"), "{e}");
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
            let e = open_append(&link).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let e = write(d.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(".tmp-")), "{left:?}");
    }

    #[cfg(unix)]
    #[test]
    fn ensure_dir_refuses_links_on_the_way() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path().join("out");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("validation")).unwrap();
        let e = ensure_dir(&root, Path::new("validation")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(ensure_dir(&root, Path::new("../x")).is_err());
        let made = ensure_dir(&root, Path::new("a/b")).unwrap();
        assert!(made.is_dir());
        // The root itself may be a link the user made.
        let link_root = d.path().join("root-link");
        std::os::unix::fs::symlink(&root, &link_root).unwrap();
        assert!(ensure_dir(&link_root, Path::new("a")).is_ok());
    }
}
