//! Loading checkpoint tensors straight into the modules that use them.
//!
//! Like candle's `VarBuilder`: a module asks for `prefix.name` with the shape it needs and gets
//! a tensor of the requested kind on the requested device. Nothing is randomly initialised
//! first, `.safetensors` files are memory-mapped (peak memory near one copy of the weights),
//! and `.bin` files go through the project's safe pickle reader. Every key the model never asked
//! for is reported by [`Weights::finish`], every missing or mis-shaped one at once.
use crate::formats::safetensors_io::SafetensorsFile;
use crate::formats::torch_file::TorchFile;
use crate::formats::{DType, Error as FormatError};
use crate::tensors::kind as tch_kind;
use anyhow::{bail, Context, Result};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Where and in which precision a model's tensors live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub device: Device,
    pub kind: Kind,
}

impl Placement {
    pub fn cpu_f32() -> Self {
        Placement { device: Device::Cpu, kind: Kind::Float }
    }
}

enum Source {
    Safetensors(SafetensorsFile),
    /// Boxed: the parsed pickle tree makes it several times larger than a mapped safetensors.
    Torch(Box<TorchFile>),
}

/// Where one tensor's bytes are.
#[derive(Clone)]
enum Entry {
    /// Byte range in a safetensors file (validated at open).
    Safetensors { file: usize, dtype: DType, shape: Vec<i64>, start: usize, end: usize },
    /// A tensor reference in a torch.save file.
    Torch { file: usize, tensor: crate::formats::pickle::TensorRef },
    /// Part of a stored tensor, or its transpose, under another name (single-file checkpoints).
    Derived { base: Box<Entry>, view: View },
}

/// How a single-file checkpoint's tensor becomes one of ours (see [`ModelFile::component`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Whole,
    /// Rows `start..start + len` of the first dimension: OpenCLIP's stacked q/k/v projections.
    Rows {
        start: i64,
        len: i64,
    },
    /// The transpose of a matrix: OpenCLIP's `text_projection` is applied as `x @ P`.
    Transposed,
}

impl Entry {
    fn dtype(&self) -> DType {
        match self {
            Entry::Safetensors { dtype, .. } => *dtype,
            Entry::Torch { tensor, .. } => tensor.storage.dtype,
            Entry::Derived { base, .. } => base.dtype(),
        }
    }

    /// A torch.save tensor (under any view) and how many elements its storage holds.
    fn torch_view(&self) -> Option<(&crate::formats::pickle::TensorRef, usize)> {
        match self {
            Entry::Torch { tensor, .. } => Some((tensor, tensor.storage.view.map_or(tensor.storage.numel, |(_, len)| len))),
            Entry::Derived { base, .. } => base.torch_view(),
            Entry::Safetensors { .. } => None,
        }
    }

    fn shape(&self) -> Vec<i64> {
        match self {
            Entry::Safetensors { shape, .. } => shape.clone(),
            Entry::Torch { tensor, .. } => tensor.shape.iter().map(|&d| d as i64).collect(),
            Entry::Derived { base, view } => {
                let mut s = base.shape();
                match view {
                    View::Whole => {}
                    View::Rows { len, .. } => {
                        if let Some(d) = s.first_mut() {
                            *d = *len;
                        }
                    }
                    View::Transposed => s.reverse(),
                }
                s
            }
        }
    }
}

/// Keeps memory-mapped weight files alive for as long as a model's tensors point into them.
#[derive(Clone)]
pub struct Backing(#[allow(dead_code)] Option<Arc<Vec<Source>>>);

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backing({} file(s))", self.0.as_ref().map_or(0, |s| s.len()))
    }
}

/// The tensors of one model component (possibly sharded over several files).
pub struct Weights {
    name: String,
    sources: Arc<Vec<Source>>,
    entries: HashMap<String, Entry>,
    placement: Placement,
    used: RefCell<BTreeSet<String>>,
    /// Problems found while building the model, reported together by `finish`.
    problems: RefCell<Vec<String>>,
    /// Whether a tensor handed out points into a mapped file (see [`Weights::backing`]).
    borrowed: std::cell::Cell<bool>,
    /// Inside [`Weights::check`]: names and shapes are compared, nothing is read or allocated.
    dry: std::cell::Cell<bool>,
}

impl Weights {
    /// Opens weight files (`.safetensors` or torch `.bin`, detected by content).
    pub fn open(files: &[PathBuf], placement: Placement) -> Result<Self> {
        Self::open_files(files, placement, false)
    }

    /// [`Weights::open`]; `checkpoint`: the files are whole training checkpoints, whose weights
    /// are their `state_dict` (see [`open_source`]).
    fn open_files(files: &[PathBuf], placement: Placement, checkpoint: bool) -> Result<Self> {
        let name = files.first().map(|p| p.display().to_string()).unwrap_or_default();
        let mut entries = HashMap::new();
        let mut sources = Vec::new();
        for path in files {
            let (source, list) = open_source(path, sources.len(), checkpoint)?;
            for (key, e) in list {
                if entries.insert(key.clone(), e).is_some() {
                    bail!("{}: tensor {key} appears in more than one weight file", path.display());
                }
            }
            sources.push(source);
        }
        Ok(Self::with_entries(name, Arc::new(sources), entries, placement))
    }

    fn with_entries(name: String, sources: Arc<Vec<Source>>, entries: HashMap<String, Entry>, placement: Placement) -> Self {
        Weights {
            name,
            sources,
            entries,
            placement,
            used: RefCell::new(BTreeSet::new()),
            problems: RefCell::new(Vec::new()),
            borrowed: std::cell::Cell::new(false),
            dry: std::cell::Cell::new(false),
        }
    }

    /// The (first) file's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What a model built from these weights must hold on to: the mapped files, where its
    /// tensors point into them (same dtype on the CPU); nothing when every tensor was
    /// converted, so the files are unmapped once loading is done (fp16 on a GPU keeps no host
    /// copy of the fp32 file).
    pub fn backing(&self) -> Backing {
        Backing(self.borrowed.get().then(|| self.sources.clone()))
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    pub fn root(&self) -> VarPath<'_> {
        VarPath { weights: self, prefix: String::new() }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Shape of a stored tensor, if present.
    pub fn shape_of(&self, key: &str) -> Option<Vec<i64>> {
        self.entries.get(key).map(Entry::shape)
    }

    /// The dtype a tensor is stored in, if present (read from the header: nothing is loaded).
    pub fn stored_dtype(&self, key: &str) -> Option<DType> {
        self.entries.get(key).map(Entry::dtype)
    }

    /// How many numbered children `prefix.0`, `prefix.1`, ... the stored keys have: one more
    /// than the highest index found (0 when none). A model's layer counts must equal it, which
    /// bounds what a config can make the loader build by what the weight files really hold.
    pub fn count(&self, prefix: &str) -> u64 {
        let head = format!("{prefix}.");
        let index = |k: &str| k.strip_prefix(&head)?.split('.').next()?.parse::<u64>().ok();
        self.entries.keys().filter_map(|k| index(k)).max().map_or(0, |i| i.saturating_add(1))
    }

    /// Fails, naming `field` and the weight file, unless the weights have exactly `want`
    /// numbered children under `prefix` (see [`Weights::count`]).
    pub fn expect_count(&self, prefix: &str, want: i64, field: &str) -> Result<()> {
        let have = self.count(prefix);
        if u64::try_from(want).ok() != Some(have) {
            bail!("{}: the config's {field} asks for {want} of {prefix}.*, the weights have {have}", self.name);
        }
        Ok(())
    }

    /// Runs `build` (a model's constructor over these weights) with every tensor replaced by a
    /// placeholder that costs no memory, then fails with every missing, mis-shaped and
    /// unexpected tensor (see [`Weights::finish`]): a config that does not fit the weight files
    /// is reported from their headers alone, before a byte is read or allocated. `build` must
    /// ask for exactly the tensors the real build asks for; it is run again afterwards for real.
    pub fn check<T>(&self, ignore: &[&str], build: impl FnOnce() -> T) -> Result<()> {
        // What an earlier build of these weights asked for does not count.
        self.used.borrow_mut().clear();
        self.problems.borrow_mut().clear();
        self.dry.set(true);
        drop(build());
        self.dry.set(false);
        let result = self.finish(ignore);
        self.used.borrow_mut().clear();
        self.problems.borrow_mut().clear();
        self.borrowed.set(false);
        result
    }

    /// All keys, sorted (for prefix detection and messages).
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        k.sort();
        k
    }

    /// Reads `key` as a tensor of `shape` in the placement's kind and device. A missing or
    /// mis-shaped key is recorded (see [`Weights::finish`]) and a placeholder returned, so one
    /// load reports every problem at once.
    pub fn get(&self, key: &str, shape: &[i64]) -> Tensor {
        self.get_kind(key, shape, self.placement.kind)
    }

    /// Like [`Weights::get`] with an explicit kind (e.g. norms kept in f32).
    pub fn get_kind(&self, key: &str, shape: &[i64], kind: Kind) -> Tensor {
        let result = if self.dry.get() { self.lookup(key, shape).map(|_| placeholder(shape, kind)) } else { self.try_get(key, shape, kind) };
        match result {
            Ok(t) => t,
            Err(e) => {
                self.problems.borrow_mut().push(format!("{e:#}"));
                placeholder(shape, kind)
            }
        }
    }

    /// The entry under `key` if its stored shape is `shape` (or the same up to size-1
    /// dimensions: then also `true`, it needs a reshape), marked used.
    fn lookup(&self, key: &str, shape: &[i64]) -> Result<(&Entry, bool)> {
        let entry = self.entries.get(key).with_context(|| format!("missing tensor {key} (expected shape {shape:?})"))?;
        // Asked for: reported as mis-shaped if it is, not also as unexpected.
        self.used.borrow_mut().insert(key.to_string());
        let stored = entry.shape();
        // Linear layers stored as 1x1 convolutions (old VAE attention checkpoints) and the reverse.
        let reshape = stored != shape && numel(&stored) == numel(shape) && numel(shape).is_some() && {
            let trim = |s: &[i64]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
            trim(&stored) == trim(shape)
        };
        if stored != shape && !reshape {
            bail!("tensor {key} has shape {stored:?}, expected {shape:?}");
        }
        Ok((entry, reshape))
    }

    fn try_get(&self, key: &str, shape: &[i64], kind: Kind) -> Result<Tensor> {
        let (entry, reshape) = self.lookup(key, shape)?;
        let t = self.stored(entry)?;
        let t = if reshape { t.f_reshape(shape)? } else { t };
        let stored_at = t.data_ptr() as usize;
        let t = t.f_to_kind(kind)?.f_to_device(self.placement.device)?;
        // Converted (another dtype or device) means copied: the mapping is not needed for it.
        if self.placement.device == Device::Cpu && t.data_ptr() as usize == stored_at && t.numel() > 0 {
            self.borrowed.set(true);
        }
        Ok(t)
    }

    /// The stored tensor under `key`, in the file's dtype, on the CPU (for `convert-model`).
    /// Densely copied: a stored view that repeats its storage's elements (stride 0) could
    /// claim terabytes from a few bytes, so one larger than its storage is refused (no real
    /// checkpoint saves one; a model's loader checks the shapes of those it uses anyway).
    pub fn stored_tensor(&self, key: &str) -> Result<Tensor> {
        let entry = self.entries.get(key).with_context(|| format!("{}: no tensor {key}", self.name))?;
        if let Some((tensor, elements)) = entry.torch_view() {
            let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
            if numel(&shape).is_none_or(|n| n as u64 > elements as u64) {
                bail!(
                    "{}: tensor {key} of shape {shape:?} (strides {:?}) is a view of more elements than its {elements}-element storage holds: refusing to expand it",
                    self.name,
                    tensor.stride
                );
            }
        }
        self.used.borrow_mut().insert(key.to_string());
        Ok(self.stored(entry)?.f_contiguous()?)
    }

    /// A stored tensor as a CPU tensor of the file's dtype, pointing into the mapping where it
    /// can (a row range of a contiguous tensor still does).
    fn stored(&self, entry: &Entry) -> Result<Tensor> {
        Ok(match entry {
            Entry::Safetensors { file, dtype, shape: s, start, end } => {
                let Source::Safetensors(st) = &self.sources[*file] else { unreachable!("entries point at their source") };
                mapped_tensor(&st.bytes()[*start..*end], s, *dtype)?
            }
            Entry::Torch { file, tensor } => {
                let Source::Torch(tf) = &self.sources[*file] else { unreachable!("entries point at their source") };
                let s: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
                match tf.tensor_bytes(tensor)? {
                    Cow::Borrowed(bytes) => mapped_tensor(bytes, &s, tensor.storage.dtype)?,
                    Cow::Owned(bytes) => Tensor::f_from_data_size(&bytes, &s, tch_kind(tensor.storage.dtype))?,
                }
            }
            Entry::Derived { base, view } => {
                let t = self.stored(base)?;
                match view {
                    View::Whole => t,
                    View::Rows { start, len } => t.f_narrow(0, *start, *len)?,
                    View::Transposed => t.f_transpose(0, 1)?.f_contiguous()?,
                }
            }
        })
    }

    /// Records a problem found by a module (e.g. an unsupported layout) for `finish`.
    pub fn problem(&self, message: String) {
        self.problems.borrow_mut().push(message);
    }

    /// Fails with every missing, mis-shaped and unexpected tensor, naming the file. Keys
    /// matching `ignore` (substrings, e.g. buffers such as `position_ids`) may stay unused.
    pub fn finish(&self, ignore: &[&str]) -> Result<()> {
        let used = self.used.borrow();
        let unexpected: Vec<&String> = self.entries.keys().filter(|k| !used.contains(*k) && !ignore.iter().any(|i| k.contains(i))).collect();
        let problems = self.problems.borrow();
        if problems.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let mut msg = format!("{} does not fit the model its config describes:", self.name);
        for p in problems.iter().take(20) {
            msg.push_str(&format!("\n  - {p}"));
        }
        if problems.len() > 20 {
            msg.push_str(&format!("\n  - ... and {} more", problems.len() - 20));
        }
        let mut unexpected: Vec<&&String> = unexpected.iter().collect();
        unexpected.sort();
        for k in unexpected.iter().take(20) {
            msg.push_str(&format!("\n  - unexpected tensor {k}"));
        }
        if unexpected.len() > 20 {
            msg.push_str(&format!("\n  - ... and {} more unexpected tensors", unexpected.len() - 20));
        }
        bail!(msg)
    }
}

/// Opens one weight file (safetensors or torch.save, told apart by content) as source number
/// `idx`, with its tensors. `checkpoint`: a whole training checkpoint, whose weights are its
/// `state_dict` and whose other objects stay inert.
fn open_source(path: &Path, idx: usize, checkpoint: bool) -> Result<(Source, Vec<(String, Entry)>)> {
    let head = {
        use std::io::Read;
        let mut buf = [0u8; 16];
        // Only a regular file is mapped: a FIFO would block, a device map endless zeros.
        let mut f = crate::formats::regular::open(path)?;
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        buf[..n].to_vec()
    };
    let mut entries = Vec::new();
    if crate::formats::torch_file::sniff(&head) || head.starts_with(crate::formats::torch_file::LFS_POINTER) {
        let tf = if checkpoint { TorchFile::open_checkpoint(path)? } else { TorchFile::open(path)? };
        let tensors = if checkpoint { tf.state_dict_tensors() } else { tf.tensors() };
        for (key, t) in tensors {
            entries.push((key, Entry::Torch { file: idx, tensor: t.clone() }));
        }
        Ok((Source::Torch(Box::new(tf)), entries))
    } else {
        let st = SafetensorsFile::open(path)?;
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(st.bytes()).map_err(|e| FormatError::format(path.display().to_string(), e.to_string()))?;
        let base = 8 + header_len;
        for (key, info) in meta.tensors() {
            let dtype =
                DType::from_safetensors(info.dtype).with_context(|| format!("{}: tensor {key} has unsupported dtype {:?}", path.display(), info.dtype))?;
            let shape = info.shape.iter().map(|&d| d as i64).collect();
            let (s, e) = info.data_offsets;
            entries.push((key, Entry::Safetensors { file: idx, dtype, shape, start: base + s, end: base + e }));
        }
        Ok((Source::Safetensors(st), entries))
    }
}

/// A single-file model (the original LDM layout: every component's tensors in one
/// `.safetensors` or `.ckpt`), opened once and shared by the components built from it. (A
/// training run's `checkpoint-N` folder is `train::state::Checkpoint`.)
pub struct ModelFile {
    /// Every tensor under its stored name.
    all: Weights,
    /// The safetensors header's `__metadata__` (model-spec keys such as `modelspec.prediction_type`).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// A Lightning checkpoint's `global_step`.
    pub global_step: Option<i64>,
}

impl ModelFile {
    pub fn open(path: &Path) -> Result<Self> {
        let all = Weights::open_files(&[path.to_path_buf()], Placement::cpu_f32(), true)?;
        if all.entries.is_empty() {
            bail!("{} holds no tensors (for a .ckpt: no state_dict)", path.display());
        }
        let (metadata, global_step) = match &all.sources[0] {
            Source::Safetensors(st) => (st.metadata().unwrap_or_default(), None),
            Source::Torch(tf) => (Default::default(), tf.root.get("global_step").and_then(|v| v.as_int())),
        };
        Ok(ModelFile { all, metadata, global_step })
    }

    /// The stored tensors under their stored names.
    pub fn tensors(&self) -> &Weights {
        &self.all
    }

    /// One component's weights under diffusers' names: `map` gives, for a stored key and its
    /// shape, the names (and views) it provides; keys it maps to nothing are not this
    /// component's. Fails when two stored tensors claim one name or nothing maps at all.
    pub fn component(&self, component: &str, placement: Placement, map: impl Fn(&str, &[i64]) -> Vec<(String, View)>) -> Result<Weights> {
        let name = &self.all.name;
        let mut entries = HashMap::new();
        for (key, e) in &self.all.entries {
            for (new, view) in map(key, &e.shape()) {
                let derived = if view == View::Whole { e.clone() } else { Entry::Derived { base: Box::new(e.clone()), view } };
                if entries.insert(new.clone(), derived).is_some() {
                    bail!("{name}: two tensors map to {component}'s {new}");
                }
            }
        }
        if entries.is_empty() {
            bail!("{name} has no tensors of the {component}");
        }
        Ok(Weights::with_entries(format!("{name} ({component})"), self.all.sources.clone(), entries, placement))
    }
}

/// The element count of `shape`; `None` for a negative dimension or an overflow.
fn numel(shape: &[i64]) -> Option<i64> {
    shape.iter().try_fold(1i64, |n, &d| if d < 0 { None } else { n.checked_mul(d) })
}

/// What a module gets for a tensor that is missing, mis-shaped or not read yet (in
/// [`Weights::check`]): one zero expanded to `shape`, so a wrong config costs no memory before
/// [`Weights::finish`] reports it. Always on the CPU: it is never computed with.
fn placeholder(shape: &[i64], kind: Kind) -> Tensor {
    let zero = Tensor::zeros([], (kind, Device::Cpu));
    zero.f_expand(shape, false).unwrap_or(zero)
}

/// A CPU tensor over `bytes` of the mapped file without copying them (when aligned for the
/// element type; else a copy). Converting kind or device later makes the one copy needed.
/// Valid while the file's mapping lives: models keep it through [`Weights::backing`].
fn mapped_tensor(bytes: &[u8], shape: &[i64], dtype: DType) -> Result<Tensor> {
    let kind = tch_kind(dtype);
    if bytes.is_empty() || (bytes.as_ptr() as usize) % dtype.size() != 0 {
        return Ok(Tensor::f_from_data_size(bytes, shape, kind)?);
    }
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    // SAFETY: `bytes` holds exactly numel * size bytes (checked by the readers), is aligned for
    // the element type, and lives in a copy-on-write mapping kept alive by every model built
    // from these weights (`Backing`); weights are never written in place.
    Ok(unsafe { Tensor::f_from_blob(bytes.as_ptr(), shape, &strides, kind, Device::Cpu)? })
}

/// A position in the weight tree: `p.pp("down_blocks").pp(0).get("weight", ...)` reads
/// `down_blocks.0.weight`, mirroring the checkpoint keys exactly.
#[derive(Clone)]
pub struct VarPath<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> VarPath<'a> {
    pub fn pp(&self, name: impl std::fmt::Display) -> VarPath<'a> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        VarPath { weights: self.weights, prefix }
    }
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
    pub fn get(&self, name: &str, shape: &[i64]) -> Tensor {
        self.weights.get(&self.key(name), shape)
    }
    pub fn get_kind(&self, name: &str, shape: &[i64], kind: Kind) -> Tensor {
        self.weights.get_kind(&self.key(name), shape, kind)
    }
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.key(name))
    }
    pub fn shape_of(&self, name: &str) -> Option<Vec<i64>> {
        self.weights.shape_of(&self.key(name))
    }
    pub fn weights(&self) -> &'a Weights {
        self.weights
    }
    pub fn placement(&self) -> Placement {
        self.weights.placement
    }
}
