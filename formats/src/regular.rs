//! Opening and reading the files a model folder names (configs, tokenizers, index files,
//! weights) only when they are regular files, and reading them only up to a bound.
//!
//! Why: a path in a downloaded or hand-made folder can be a symlink to `/dev/zero` (read
//! forever), a FIFO (whose `open` blocks until a writer appears) or a huge file. Here the path is
//! opened with `O_NONBLOCK`, so opening a FIFO returns at once, and the opened descriptor is
//! checked with `fstat` — the file actually read, not whatever the path named a moment earlier.
//! Symlinks are followed (Hub caches link every file into a blob store); their target must be a
//! regular file.
use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The bound for JSON configs, tokenizer files and checkpoint indexes: the largest real ones
/// (a tokenizer.json with a 250k vocabulary) are a few MiB.
pub const CONFIG_MAX_BYTES: u64 = 64 << 20;

/// Opens `path` for reading if it is (or links to) a regular file; an error naming the file and
/// what it is otherwise. Never blocks on a FIFO.
pub fn open(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // For a regular file O_NONBLOCK changes nothing (reads of regular files never block
        // in that sense); for a FIFO it makes open return instead of waiting for a writer.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let kind = file.metadata().map_err(|e| Error::io(path, e))?.file_type();
    if !kind.is_file() {
        return Err(Error::format(path.display().to_string(), format!("not a regular file (it is {}): refusing to read it", describe(&kind))));
    }
    Ok(file)
}

/// The whole of the regular file `path`, refused (before reading anything) when larger than
/// `max_bytes`.
pub fn read(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let file = open(path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let too_large = |n: u64| Error::too_large(path.display().to_string(), format!("{n} bytes is more than the {max_bytes} bytes a file of this kind may have"));
    if len > max_bytes {
        return Err(too_large(len));
    }
    // `take`: a file growing while it is read still stops at the bound.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text (an error naming the file where it is not).
pub fn read_to_string(path: &Path, max_bytes: u64) -> Result<String> {
    String::from_utf8(read(path, max_bytes)?).map_err(|e| Error::format(path.display().to_string(), format!("not UTF-8 text: {e}")))
}

/// What kind of file `kind` is, for errors that refuse it ("a FIFO", "a symbolic link", ...).
pub(crate) fn describe(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a folder"
    } else {
        "not a plain file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_and_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.json");
        std::fs::write(&f, "{}").unwrap();
        assert_eq!(read_to_string(&f, 2).unwrap(), "{}");
        // No bound at all (the size of what is really there) must not wrap around.
        assert_eq!(read(&f, u64::MAX).unwrap(), b"{}");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.json");
            std::os::unix::fs::symlink(&f, &link).unwrap();
            assert_eq!(read(&link, 10).unwrap(), b"{}");
        }
    }

    #[test]
    fn refuses_large_files_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big.json");
        std::fs::write(&f, vec![b' '; 100]).unwrap();
        let e = read(&f, 99).unwrap_err().to_string();
        assert!(e.contains("big.json") && e.contains("100 bytes") && e.contains("99 bytes"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_devices_fifos_and_folders_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read(&zero, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("zero.json") && e.contains("character device"), "{e}");
        let fifo = dir.path().join("fifo.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read(&fifo, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("fifo.json") && e.contains("FIFO"), "{e}");
        let e = read(dir.path(), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("folder") || e.contains("directory"), "{e}");
    }
}
