//! The decoded value tree and the tensor/storage references torch pickles resolve to.
use super::Global;
use crate::tensor::{numel, DType};
use std::collections::HashMap;

/// A decoded Python value. Containers keep insertion order, as Python's do.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// `dict` and `OrderedDict`. Later duplicates of a key win, as in Python; see [`Value::get`].
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// An allow-listed callable or class not (yet) applied.
    Global(Global),
    /// A storage reference produced by `persistent_load`. Storages and tensors are boxed: every
    /// value is as large as the largest variant, and they are by far the largest.
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
    /// An instance of an allowed class (e.g. `torch.nn.ParameterDict`) with its `__dict__` state.
    Object {
        class: Global,
        state: Box<Value>,
    },
    /// A class, function or instance outside the allow-list that a training checkpoint may
    /// carry beside its weights (PyTorch Lightning callbacks, OmegaConf configs, numpy scalars),
    /// read only in [`Mode::Checkpoint`]: its dotted name, kept as a label and never called.
    Inert(String),
}

/// What a pickle may name beyond the tensor allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Weights and embeddings: any other global is refused.
    #[default]
    Tensors,
    /// A whole training checkpoint (`.ckpt`): globals of the libraries such files are known to
    /// pickle (`allow_list::INERT_MODULES`) become [`Value::Inert`]; the rest is refused.
    Checkpoint,
}

impl Value {
    /// Looks a string key up in a dict (the last occurrence wins, like repeated `SETITEM`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    /// Dict entries with duplicates removed (last wins), in first-insertion order.
    pub fn dict_entries(&self) -> Option<Vec<(&Value, &Value)>> {
        let Value::Dict(items) = self else {
            return None;
        };
        let mut out: Vec<(&Value, &Value)> = Vec::with_capacity(items.len());
        let mut index: HashMap<String, usize> = HashMap::new();
        for (k, v) in items {
            if let Some(s) = k.as_str() {
                if let Some(&i) = index.get(s) {
                    out[i].1 = v;
                    continue;
                }
                index.insert(s.to_string(), out.len());
            }
            out.push((k, v));
        }
        Some(out)
    }
    /// A short description for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::Global(_) => "class or function",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Object { .. } | Value::Inert(_) => "object",
        }
    }
    /// Bytes this value takes by itself: its own slot plus the heap buffers it owns directly
    /// (text, bytes, a container's item buffer), not its items'.
    pub(super) fn own_bytes(&self) -> usize {
        const SLOT: usize = std::mem::size_of::<Value>();
        SLOT + match self {
            Value::Str(s) | Value::Inert(s) => s.capacity(),
            Value::Bytes(b) => b.capacity(),
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => v.capacity() * SLOT,
            Value::Dict(v) => v.capacity() * 2 * SLOT,
            Value::Storage(s) => std::mem::size_of::<StorageRef>() + s.heap_bytes(),
            Value::Tensor(t) => {
                std::mem::size_of::<TensorRef>() + t.storage.heap_bytes() + (t.shape.capacity() + t.stride.capacity()) * std::mem::size_of::<usize>()
            }
            Value::Object { .. } => SLOT,
            Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Global(_) => 0,
        }
    }

    /// Bytes of the whole tree (what a copy of it allocates), or `None` once past `limit`: the
    /// walk stops there, so measuring never costs more than the copy would.
    pub(super) fn tree_bytes(&self, limit: usize) -> Option<usize> {
        let mut total = self.own_bytes();
        if total > limit {
            return None;
        }
        // Each item gets what is left, so `total` never passes `limit`.
        let mut add = |v: &Value| -> Option<()> {
            total += v.tree_bytes(limit - total)?;
            Some(())
        };
        match self {
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => v.iter().try_for_each(&mut add)?,
            Value::Dict(v) => v.iter().try_for_each(|(k, x)| {
                add(k)?;
                add(x)
            })?,
            Value::Object { state, .. } => add(state)?,
            _ => {}
        }
        Some(total)
    }
}

/// Where a tensor's elements live inside the file.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Record name (`data/<key>` in zip files, the key in legacy files).
    pub key: String,
    pub dtype: DType,
    /// Elements in the storage, as the pickle claims (checked against the file later).
    pub numel: usize,
    pub location: String,
    /// Legacy storage views: (offset in elements into `key`'s storage, view length).
    pub view: Option<(usize, usize)>,
}

impl StorageRef {
    fn heap_bytes(&self) -> usize {
        self.key.capacity() + self.location.capacity()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    /// In elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// In elements.
    pub stride: Vec<usize>,
    pub requires_grad: bool,
}

impl TensorRef {
    /// One past the last storage element the view touches (0 for empty tensors), or `None`
    /// if that overflows.
    pub fn extent(&self) -> Option<usize> {
        if numel(&self.shape)? == 0 {
            return Some(0);
        }
        let mut last = self.offset;
        for (&d, &s) in self.shape.iter().zip(&self.stride) {
            last = last.checked_add((d - 1).checked_mul(s)?)?;
        }
        last.checked_add(1)
    }
}

pub(super) fn as_usize(v: Option<&Value>) -> Option<usize> {
    match v {
        Some(Value::Int(i)) => usize::try_from(*i).ok(),
        _ => None,
    }
}

pub(super) fn usize_tuple(v: Option<&Value>) -> Option<Vec<usize>> {
    match v {
        Some(Value::Tuple(items) | Value::List(items)) => items.iter().map(|x| as_usize(Some(x))).collect(),
        _ => None,
    }
}
