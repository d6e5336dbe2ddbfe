//! `torch.save` files: reading both containers PyTorch has used, and writing the current one.
//!
//! - Zip (PyTorch ≥ 1.6): `<prefix>/data.pkl` plus one `<prefix>/data/<key>` record per storage,
//!   under any prefix, stored or deflated, with or without `byteorder` and `.format_version`.
//! - Legacy (< 1.6): pickles back to back (magic number, protocol, system info, the object,
//!   storage keys) followed by each storage as an i64 element count and raw bytes.
//!
//! Storages are never trusted: every claimed size is checked against the bytes really present
//! before anything is allocated, and deflated records are bounded by deflate's maximum ratio.
//! A tensor in a deflated record inflates it only as far as its last element and keeps only the
//! bytes it reaches, so memory follows the tensors read, not the records' sizes; a view that
//! repeats elements (stride 0) is made dense only up to 64 MiB.
use crate::error::{Error, Result};
use crate::pickle::{self, StorageRef, TensorRef, Value};
use crate::tensor::{numel, RawTensor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

/// Deflate cannot expand more than ~1032:1; anything claiming more is corrupt or hostile.
const MAX_DEFLATE_RATIO: u64 = 1100;
/// data.pkl holds structure only; real ones are kilobytes to a few megabytes. What it may decode
/// to is bounded separately ([`pickle::MAX_VALUE_BYTES`]); this bounds the inflated record.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// How large a dense copy of a view that repeats its storage's elements (stride 0) may be: real
/// checkpoints hold such views only for small buffers.
const MAX_REPEATED_VIEW_BYTES: usize = 64 << 20;

/// What a file cloned without git-lfs holds instead of the weights.
pub const LFS_POINTER: &[u8] = b"version https://git-lfs";

/// The pickle at the start of every legacy file: `LONG1` 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];

enum Bytes {
    Mapped(memmap2::MmapMut),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Record {
    Stored { start: usize, len: usize },
    Deflated { start: usize, compressed: usize, size: usize },
}

/// An opened `torch.save` file: its decoded object tree and access to its storages.
pub struct TorchFile {
    name: String,
    bytes: Bytes,
    /// Storage key → where its bytes are.
    storages: HashMap<String, Record>,
    /// Which container the file uses, for `inspect`.
    pub container: Container,
    pub root: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Container {
    /// The zip container, with the folder name its records live under.
    Zip {
        prefix: String,
    },
    Legacy,
}

/// Whether `bytes` look like a `torch.save` file (zip or legacy).
pub fn sniff(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&LEGACY_MAGIC)
}

impl TorchFile {
    /// Opens a file, memory-mapped: storages are read (and copied) only when asked for.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_mode(path, pickle::Mode::Tensors)
    }

    /// Opens a whole training checkpoint (an original Stable Diffusion `.ckpt`): the classes
    /// Lightning and friends pickle beside the weights are kept as inert values
    /// ([`pickle::Mode::Checkpoint`]), never called. [`TorchFile::state_dict`] finds the weights.
    pub fn open_checkpoint(path: &Path) -> Result<Self> {
        Self::open_mode(path, pickle::Mode::Checkpoint)
    }

    fn open_mode(path: &Path, mode: pickle::Mode) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: a private copy-on-write mapping (so tensors may point into it, and a write
        // would never reach the file); a concurrent writer could change the bytes under us,
        // which at worst yields wrong values, never unsoundness in this code (all reads are
        // bounds-checked slices).
        let map = unsafe { memmap2::MmapOptions::new().map_copy(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.display().to_string(), Bytes::Mapped(map), mode)
    }

    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.to_string(), Bytes::Owned(bytes), pickle::Mode::Tensors)
    }

    /// [`TorchFile::open_checkpoint`] of bytes in memory.
    pub fn from_bytes_checkpoint(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.to_string(), Bytes::Owned(bytes), pickle::Mode::Checkpoint)
    }

    fn parse(name: String, bytes: Bytes, mode: pickle::Mode) -> Result<Self> {
        if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            Self::parse_zip(name, bytes, mode)
        } else if bytes.starts_with(&LEGACY_MAGIC) {
            Self::parse_legacy(name, bytes, mode)
        } else if bytes.starts_with(LFS_POINTER) {
            Err(Error::format(name, "this is a Git LFS pointer, not the file: fetch it with `git lfs pull`"))
        } else {
            Err(Error::format(name, "not a torch.save file (neither a zip archive nor the legacy pickle format)"))
        }
    }

    fn parse_zip(name: String, bytes: Bytes, mode: pickle::Mode) -> Result<Self> {
        let zerr = |e: zip::result::ZipError| Error::format(name.clone(), format!("broken zip archive: {e}"));
        let mut records: HashMap<String, Record> = HashMap::new();
        {
            // The archive starts at byte 0 (that is how it was recognised), so offsets are taken
            // as written. Left to detect a prefix, zip guesses the directory start as the end
            // record's position minus the directory size, which torch's zip64 end record and
            // locator (76 bytes between the directory and the end record) break whenever the
            // first directory entry is also 76 bytes long: every archive whose folder name has
            // 21 characters.
            let config = zip::read::Config { archive_offset: zip::read::ArchiveOffset::Known(0) };
            let mut zip = zip::ZipArchive::with_config(config, std::io::Cursor::new(&bytes[..])).map_err(zerr)?;
            for i in 0..zip.len() {
                let f = zip.by_index_raw(i).map_err(zerr)?;
                let fname = f.name().map_err(zerr)?.to_string();
                if f.is_dir() {
                    continue;
                }
                let start = f.data_start().ok_or_else(|| Error::format(name.clone(), format!("record {fname} has no data offset")))?;
                let (start, compressed, size) = (start, f.compressed_size(), f.size());
                let end = start.checked_add(compressed).filter(|&e| e <= bytes.len() as u64);
                if end.is_none() {
                    return Err(Error::too_large(
                        name.clone(),
                        format!("record {fname} claims {compressed} bytes past the end of the {}-byte file", bytes.len()),
                    ));
                }
                let rec = match f.compression() {
                    zip::CompressionMethod::Stored => {
                        if size != compressed {
                            return Err(Error::format(name.clone(), format!("stored record {fname} has size {size} but {compressed} bytes")));
                        }
                        Record::Stored { start: start as usize, len: size as usize }
                    }
                    zip::CompressionMethod::Deflated => {
                        if size > compressed.saturating_mul(MAX_DEFLATE_RATIO) + 1024 {
                            return Err(Error::too_large(
                                name.clone(),
                                format!("record {fname} claims to inflate {compressed} bytes to {size}, more than deflate can"),
                            ));
                        }
                        let size = usize::try_from(size).map_err(|_| Error::too_large(name.clone(), "record too large"))?;
                        Record::Deflated { start: start as usize, compressed: compressed as usize, size }
                    }
                    m => return Err(Error::format(name.clone(), format!("record {fname} uses unsupported compression {m}"))),
                };
                records.insert(fname, rec);
            }
        }
        // Like torch, the records live under one top-level folder of any name.
        let pkl = records
            .keys()
            .filter(|k| k.ends_with("/data.pkl") && k.matches('/').count() == 1)
            .min()
            .cloned()
            .ok_or_else(|| Error::format(name.clone(), "zip archive has no <folder>/data.pkl: not a torch.save file"))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Some(&rec) = records.get(&format!("{prefix}byteorder")) {
            let order = read_record(&name, &bytes, rec, 16)?;
            if order.as_ref() != b"little" {
                return Err(Error::format(name, format!("byteorder {:?} is not supported (only little-endian)", String::from_utf8_lossy(&order))));
            }
        }
        let pkl_rec = records[&pkl];
        let data = read_record(&name, &bytes, pkl_rec, MAX_PICKLE_BYTES)?;
        let (root, _) = pickle::load_mode(&data, 0, &format!("{name}: {pkl}"), mode)?;
        let storages =
            records.iter().filter_map(|(k, &r)| k.strip_prefix(&prefix).and_then(|k| k.strip_prefix("data/")).map(|key| (key.to_string(), r))).collect();
        Ok(TorchFile { name, bytes, storages, container: Container::Zip { prefix: prefix.trim_end_matches('/').to_string() }, root })
    }

    fn parse_legacy(name: String, bytes: Bytes, mode: pickle::Mode) -> Result<Self> {
        let ctx = |what: &str| format!("{name}: {what}");
        let mut pos = LEGACY_MAGIC.len();
        let (proto, p) = pickle::load(&bytes, pos, &ctx("protocol version"))?;
        if proto.as_int() != Some(1001) {
            return Err(Error::format(name, format!("unsupported legacy protocol version {proto:?}")));
        }
        let (sys_info, p) = pickle::load(&bytes, p, &ctx("system info"))?;
        if let Some(Value::Bool(false)) = sys_info.get("little_endian") {
            return Err(Error::format(name, "big-endian legacy files are not supported"));
        }
        let (root, p) = pickle::load_mode(&bytes, p, &ctx("object"), mode)?;
        let (keys, p) = pickle::load(&bytes, p, &ctx("storage keys"))?;
        pos = p;
        let Value::List(keys) = keys else {
            return Err(Error::format(name, "legacy storage key list missing"));
        };
        // Element sizes come from the storage references in the object tree.
        let mut elem: HashMap<String, usize> = HashMap::new();
        collect_storages(&root, &mut |s| {
            elem.insert(s.key.clone(), s.dtype.size());
        });
        let mut storages = HashMap::new();
        for k in keys {
            let key = match k {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                other => return Err(Error::format(name, format!("storage key is a {}", other.kind()))),
            };
            let size = *elem.get(&key).ok_or_else(|| Error::format(name.clone(), format!("storage {key} is listed but never used")))?;
            let head = bytes.get(pos..pos + 8).ok_or_else(|| Error::format(name.clone(), format!("storage {key}: truncated")))?;
            let mut a = [0u8; 8];
            a.copy_from_slice(head);
            let n = u64::from_le_bytes(a);
            let len = n
                .checked_mul(size as u64)
                .filter(|&l| l <= (bytes.len() - pos - 8) as u64)
                .ok_or_else(|| Error::too_large(name.clone(), format!("storage {key} claims {n} elements, more than the file holds")))?
                as usize;
            storages.insert(key, Record::Stored { start: pos + 8, len });
            pos += 8 + len;
        }
        Ok(TorchFile { name, bytes, storages, container: Container::Legacy, root })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bytes of a tensor, contiguous and little-endian, borrowed from the file when the
    /// tensor is already laid out that way (the usual case), copied otherwise.
    pub fn tensor_bytes(&self, t: &TensorRef) -> Result<Cow<'_, [u8]>> {
        let ctx = format!("{}: storage {}", self.name, t.storage.key);
        let rec = *self.storages.get(&t.storage.key).ok_or_else(|| Error::format(ctx.clone(), "record missing from the file"))?;
        let esize = t.storage.dtype.size();
        let need = t.storage.numel.checked_mul(esize).ok_or_else(|| Error::too_large(ctx.clone(), "storage size overflows"))?;
        let avail = match rec {
            Record::Stored { len, .. } => len,
            Record::Deflated { size, .. } => size,
        };
        // Legacy views address a window of a larger storage.
        let (base, storage_numel) = match t.storage.view {
            Some((off, len)) => {
                let end = off.checked_add(len).and_then(|e| e.checked_mul(esize));
                if end.is_none_or(|e| e > avail) {
                    return Err(Error::too_large(ctx, "storage view reaches past the storage"));
                }
                (off * esize, len)
            }
            None => {
                if need > avail {
                    return Err(Error::too_large(
                        ctx,
                        format!(
                            "pickle claims {} elements of {} ({need} bytes) but the record holds {avail} bytes",
                            t.storage.numel,
                            t.storage.dtype.torch_name()
                        ),
                    ));
                }
                (0, t.storage.numel)
            }
        };
        let extent = t.extent().ok_or_else(|| Error::too_large(ctx.clone(), "tensor view overflows"))?;
        if extent > storage_numel {
            return Err(Error::too_large(
                ctx,
                format!(
                    "tensor of shape {:?} (offset {}, stride {:?}) reaches element {extent} of a {storage_numel}-element storage",
                    t.shape, t.offset, t.stride
                ),
            ));
        }
        let n = numel(&t.shape).ok_or_else(|| Error::too_large(ctx.clone(), "shape overflows"))?;
        if n == 0 {
            return Ok(Cow::Owned(Vec::new()));
        }
        // A view with more elements than the storage window it spans repeats elements (stride
        // 0, as `expand` makes): materialising it costs more than the file holds.
        let out_bytes = n.checked_mul(esize).ok_or_else(|| Error::too_large(ctx.clone(), "shape overflows"))?;
        if n > extent - t.offset && out_bytes > MAX_REPEATED_VIEW_BYTES {
            return Err(Error::too_large(
                ctx,
                format!(
                    "tensor of shape {:?} (stride {:?}) repeats the {} elements it reaches; as a dense tensor it would take {out_bytes} bytes, more than the {} MiB allowed",
                    t.shape,
                    t.stride,
                    extent - t.offset,
                    MAX_REPEATED_VIEW_BYTES >> 20
                ),
            ));
        }
        let contiguous = is_contiguous(&t.shape, &t.stride);
        match rec {
            Record::Stored { start, .. } => {
                let storage = &self.bytes[start + base..start + avail];
                if contiguous {
                    return Ok(Cow::Borrowed(&storage[t.offset * esize..(t.offset + n) * esize]));
                }
                let mut out = Vec::with_capacity(out_bytes);
                strided_copy(storage, esize, t.offset, &t.shape, &t.stride, &mut out);
                Ok(Cow::Owned(out))
            }
            Record::Deflated { start, compressed, .. } => {
                // Only the bytes up to the last element the view reaches are inflated, and only
                // the window between its first and last element is kept, or, for a sparse view
                // (a column of a large matrix), only its elements.
                let record = Inflated { ctx: &ctx, data: &self.bytes[start..start + compressed] };
                let from = base + t.offset * esize;
                if contiguous {
                    return record.window(from, out_bytes).map(Cow::Owned);
                }
                let span = (extent - t.offset) * esize;
                if span / 2 > out_bytes {
                    return record.gather(base, esize, t).map(Cow::Owned);
                }
                let window = record.window(from, span)?;
                let mut out = Vec::with_capacity(out_bytes);
                strided_copy(&window, esize, 0, &t.shape, &t.stride, &mut out);
                Ok(Cow::Owned(out))
            }
        }
    }

    /// A tensor of the file as a dense [`RawTensor`].
    pub fn tensor(&self, t: &TensorRef) -> Result<RawTensor> {
        let bytes = self.tensor_bytes(t)?.into_owned();
        RawTensor::new(t.storage.dtype, t.shape.clone(), bytes)
    }

    /// The weights of a checkpoint: the dict under `state_dict` (followed while it nests, as
    /// diffusers' loader does), else the root when it is a dict.
    pub fn state_dict(&self) -> Option<&Value> {
        let mut v = &self.root;
        while let Some(inner @ Value::Dict(_)) = v.get("state_dict") {
            v = inner;
        }
        matches!(v, Value::Dict(_)).then_some(v)
    }

    /// The tensors of [`TorchFile::state_dict`] under their keys (nested dicts joined by dots).
    pub fn state_dict_tensors(&self) -> Vec<(String, &TensorRef)> {
        let mut out = Vec::new();
        if let Some(sd) = self.state_dict() {
            walk_tensors(sd, String::new(), &mut out);
        }
        out
    }

    /// Every tensor in a (possibly nested) dict, with dotted key paths, in file order.
    pub fn tensors(&self) -> Vec<(String, &TensorRef)> {
        let mut out = Vec::new();
        walk_tensors(&self.root, String::new(), &mut out);
        out
    }
}

fn walk_tensors<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a TensorRef)>) {
    match v {
        Value::Tensor(t) => out.push((path, &**t)),
        Value::Dict(_) => {
            for (k, x) in v.dict_entries().unwrap_or_default() {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                walk_tensors(x, if path.is_empty() { key } else { format!("{path}.{key}") }, out);
            }
        }
        _ => {}
    }
}

fn collect_storages(v: &Value, f: &mut dyn FnMut(&StorageRef)) {
    match v {
        Value::Tensor(t) => f(&t.storage),
        Value::Storage(s) => f(s),
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => items.iter().for_each(|x| collect_storages(x, f)),
        Value::Dict(items) => items.iter().for_each(|(k, x)| {
            collect_storages(k, f);
            collect_storages(x, f)
        }),
        Value::Object { state, .. } => collect_storages(state, f),
        _ => {}
    }
}

fn read_record<'a>(name: &str, bytes: &'a [u8], rec: Record, max: u64) -> Result<Cow<'a, [u8]>> {
    match rec {
        Record::Stored { start, len } => {
            if len as u64 > max {
                return Err(Error::too_large(name, format!("record of {len} bytes is larger than the {max} allowed")));
            }
            Ok(Cow::Borrowed(&bytes[start..start + len]))
        }
        Record::Deflated { start, compressed, size } => {
            if size as u64 > max {
                return Err(Error::too_large(name, format!("record of {size} bytes is larger than the {max} allowed")));
            }
            // Grown by what really inflates, not preallocated from the claimed size.
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(&bytes[start..start + compressed])
                .take(size as u64)
                .read_to_end(&mut out)
                .map_err(|e| Error::format(name, format!("corrupt deflated record: {e}")))?;
            if out.len() != size {
                return Err(Error::format(name, format!("deflated record inflates to {} bytes, header says {size}", out.len())));
            }
            Ok(Cow::Owned(out))
        }
    }
}

/// A deflated storage record, read as a stream: a tensor inflates the record only as far as its
/// last element, keeping just the bytes it needs, so a record that inflates to gigabytes costs
/// no memory beyond the tensor itself.
struct Inflated<'a> {
    /// `<file>: storage <key>`, for errors.
    ctx: &'a str,
    data: &'a [u8],
}

impl Inflated<'_> {
    fn reader(&self) -> flate2::read::DeflateDecoder<&[u8]> {
        flate2::read::DeflateDecoder::new(self.data)
    }

    fn corrupt(&self, e: std::io::Error) -> Error {
        Error::format(self.ctx, format!("corrupt deflated record: {e}"))
    }

    fn short(&self, end: usize) -> Error {
        Error::format(self.ctx, format!("deflated record ends before byte {end}, which the tensor reads"))
    }

    /// Reads past `n` bytes of `r`, keeping none.
    fn skip(&self, r: &mut impl Read, n: usize, end: usize) -> Result<()> {
        let skipped = std::io::copy(&mut r.take(n as u64), &mut std::io::sink()).map_err(|e| self.corrupt(e))?;
        if skipped != n as u64 {
            return Err(self.short(end));
        }
        Ok(())
    }

    /// Bytes `from..from + len` of the inflated record (the buffer grows with what really
    /// inflates, not with what the header claims).
    fn window(&self, from: usize, len: usize) -> Result<Vec<u8>> {
        let mut r = self.reader();
        self.skip(&mut r, from, from + len)?;
        let mut out = Vec::new();
        r.take(len as u64).read_to_end(&mut out).map_err(|e| self.corrupt(e))?;
        if out.len() != len {
            return Err(self.short(from + len));
        }
        Ok(out)
    }

    /// A sparse view's elements, in the view's order, keeping nothing else: the record is
    /// inflated twice, once to check it really holds the last element (so nothing is allocated
    /// for a record that only claims to), then once more visiting the elements in storage order.
    fn gather(&self, base: usize, esize: usize, t: &TensorRef) -> Result<Vec<u8>> {
        let extent = t.extent().unwrap_or(0);
        let end = base + extent * esize;
        self.skip(&mut self.reader(), end, end)?;
        // Output element `i`'s index in the storage.
        let at = |mut i: usize| {
            let mut p = t.offset;
            for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
                p += (i % d) * s;
                i /= d;
            }
            p
        };
        let n = numel(&t.shape).unwrap_or(0);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_unstable_by_key(|&i| at(i));
        let mut out = vec![0u8; n * esize];
        let mut r = self.reader();
        let (mut pos, mut elem) = (0usize, [0u8; 16]);
        let mut last = None;
        for i in order {
            let p = at(i);
            if last != Some(p) {
                let byte = base + p * esize;
                self.skip(&mut r, byte - pos, end)?;
                r.read_exact(&mut elem[..esize]).map_err(|_| self.short(end))?;
                pos = byte + esize;
                last = Some(p);
            }
            out[i * esize..(i + 1) * esize].copy_from_slice(&elem[..esize]);
        }
        Ok(out)
    }
}

fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

fn strided_copy(src: &[u8], esize: usize, offset: usize, shape: &[usize], stride: &[usize], out: &mut Vec<u8>) {
    if shape.is_empty() {
        out.extend_from_slice(&src[offset * esize..(offset + 1) * esize]);
        return;
    }
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; shape.len()];
    loop {
        let at: usize = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&src[at * esize..(at + 1) * esize]);
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Builds a `torch.save` file: register tensors with [`TorchWriter::tensor`], put the returned
/// values in the object tree, then [`TorchWriter::save`].
#[derive(Default)]
pub struct TorchWriter {
    storages: Vec<RawTensor>,
}

impl TorchWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a tensor (stored as its own storage) and returns the pickle value naming it.
    pub fn tensor(&mut self, t: RawTensor) -> Value {
        let key = self.storages.len().to_string();
        let mut stride = vec![1usize; t.shape.len()];
        for i in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * t.shape[i + 1];
        }
        let v = Value::Tensor(Box::new(TensorRef {
            storage: StorageRef { key, dtype: t.dtype, numel: t.numel(), location: "cpu".into(), view: None },
            offset: 0,
            shape: t.shape.clone(),
            stride,
            requires_grad: false,
        }));
        self.storages.push(t);
        v
    }

    /// The file's bytes: what `torch.save(obj, "<prefix>.ext")` writes with PyTorch 2.x
    /// (stored records, data aligned to 64 bytes, `byteorder` and `version`).
    pub fn to_bytes(&self, root: &Value, prefix: &str) -> Result<Vec<u8>> {
        let pkl = pickle::dump(root)?;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .with_alignment(64);
        let add = |zip: &mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>, name: &str, data: &[u8]| -> Result<()> {
            let large = data.len() as u64 >= u32::MAX as u64;
            zip.start_file(format!("{prefix}/{name}"), opts.large_file(large)).map_err(|e| Error::format("torch writer", e.to_string()))?;
            zip.write_all(data).map_err(|e| Error::format("torch writer", e.to_string()))
        };
        add(&mut zip, "data.pkl", &pkl)?;
        add(&mut zip, ".format_version", b"1")?;
        add(&mut zip, ".storage_alignment", b"64")?;
        add(&mut zip, "byteorder", b"little")?;
        for (i, t) in self.storages.iter().enumerate() {
            add(&mut zip, &format!("data/{i}"), &t.data)?;
        }
        add(&mut zip, "version", b"3\n")?;
        let cursor = zip.finish().map_err(|e| Error::format("torch writer", e.to_string()))?;
        Ok(cursor.into_inner())
    }

    /// Writes the file atomically. The record folder is the file stem, as torch names it.
    pub fn save(&self, path: &Path, root: &Value) -> Result<()> {
        let prefix = path.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty() && !s.contains('/')).unwrap_or("archive");
        let bytes = self.to_bytes(root, prefix)?;
        crate::atomic::write(path, &bytes)
    }
}

/// Convenience for the common case: a `{name: tensor}` dict, as `torch.save(dict)` writes it.
pub fn save_tensor_dict(path: &Path, tensors: Vec<(String, RawTensor)>) -> Result<()> {
    let mut w = TorchWriter::new();
    let items = tensors.into_iter().map(|(k, t)| (Value::Str(k), w.tensor(t))).collect();
    w.save(path, &Value::Dict(items))
}
