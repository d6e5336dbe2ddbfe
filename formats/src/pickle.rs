//! A safe unpickler for the subset of Python pickle that `torch.save` writes, and the small
//! pickler our writer needs.
//!
//! Nothing is ever executed: `GLOBAL` is resolved against a fixed allow-list ([`Global`]) and
//! anything else is refused with an error naming it. Calls (`REDUCE`, `NEWOBJ`) are interpreted
//! only for the allowed callables (tensor rebuilds, `OrderedDict`, `torch.Size`, ...). Every
//! length is checked against the bytes left before anything is allocated, nesting is bounded,
//! and the total number of values built (memo copies included) is bounded, so hostile input
//! costs at most a small multiple of its size.
use crate::error::{Error, Result};
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
    /// A storage reference produced by `persistent_load`.
    Storage(StorageRef),
    Tensor(TensorRef),
    /// An instance of an allowed class (e.g. `torch.nn.ParameterDict`) with its `__dict__` state.
    Object { class: Global, state: Box<Value> },
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
        let Value::Dict(items) = self else { return None };
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
            Value::Object { .. } => "object",
        }
    }
    fn nodes(&self) -> usize {
        1 + match self {
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => v.iter().map(Value::nodes).sum(),
            Value::Dict(v) => v.iter().map(|(k, x)| k.nodes() + x.nodes()).sum(),
            Value::Object { state, .. } => state.nodes(),
            _ => 0,
        }
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
    /// One past the last storage element the view touches (0 for empty tensors), or an error
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

/// The Python globals a checkpoint may name. Everything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    TensorClass,
    ParameterClass,
    Storage(DType),
    /// A dtype object such as `torch.float32`.
    DType(DType),
    TorchSize,
    CodecsEncode,
    Set,
    FrozenSet,
    /// `copyreg._reconstructor`, how protocol-2 pickles rebuild plain objects.
    Reconstructor,
    Object,
    /// `torch.nn.ParameterDict`: the original Textual Inversion code stored `string_to_param` as one.
    ParameterDict,
}

impl Global {
    pub fn lookup(module: &str, name: &str) -> Option<Global> {
        use Global::*;
        Some(match (module, name) {
            ("collections", "OrderedDict") => OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor") => RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => RebuildFromTypeV2,
            ("torch", "Tensor") | ("torch._tensor", "Tensor") => TensorClass,
            ("torch.nn.parameter", "Parameter") | ("torch.nn", "Parameter") => ParameterClass,
            ("torch", "Size") => TorchSize,
            ("torch", n) => match crate::tensor::DType::from_storage_class(n) {
                Some(d) => Storage(d),
                None => DType(dtype_object(n)?),
            },
            ("_codecs", "encode") => CodecsEncode,
            ("builtins" | "__builtin__", "set") => Set,
            ("builtins" | "__builtin__", "frozenset") => FrozenSet,
            ("builtins" | "__builtin__", "object") => Object,
            ("copyreg" | "copy_reg", "_reconstructor") => Reconstructor,
            ("torch.nn.modules.container", "ParameterDict") => ParameterDict,
            _ => return None,
        })
    }
    pub fn path(&self) -> String {
        use Global::*;
        match self {
            OrderedDict => "collections.OrderedDict".into(),
            RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            RebuildTensor => "torch._utils._rebuild_tensor".into(),
            RebuildParameter => "torch._utils._rebuild_parameter".into(),
            RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state".into(),
            RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2".into(),
            TensorClass => "torch.Tensor".into(),
            ParameterClass => "torch.nn.parameter.Parameter".into(),
            Storage(d) => format!("torch.{}", d.storage_class()),
            DType(d) => format!("torch.{}", d.torch_name()),
            TorchSize => "torch.Size".into(),
            CodecsEncode => "_codecs.encode".into(),
            Set => "builtins.set".into(),
            FrozenSet => "builtins.frozenset".into(),
            Reconstructor => "copyreg._reconstructor".into(),
            Object => "builtins.object".into(),
            ParameterDict => "torch.nn.modules.container.ParameterDict".into(),
        }
    }
}

fn dtype_object(name: &str) -> Option<DType> {
    Some(match name {
        "float64" | "double" => DType::F64,
        "float32" | "float" => DType::F32,
        "float16" | "half" => DType::F16,
        "bfloat16" => DType::BF16,
        "int64" | "long" => DType::I64,
        "int32" | "int" => DType::I32,
        "int16" | "short" => DType::I16,
        "int8" => DType::I8,
        "uint8" => DType::U8,
        "bool" => DType::Bool,
        _ => return None,
    })
}

/// Deepest nesting accepted (Python's own recursion limit is about as deep).
pub const MAX_DEPTH: u32 = 512;

/// Decodes one pickle starting at `data[start..]`. Returns the value and the position just
/// after its `STOP`, so callers can read pickles written back to back (the legacy format).
pub fn load(data: &[u8], start: usize, context: &str) -> Result<(Value, usize)> {
    let mut u = Unpickler {
        data,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nodes_left: data.len().saturating_sub(start).saturating_mul(16).max(1 << 16),
        context,
    };
    let value = u.run()?;
    Ok((value, u.pos))
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Values with their nesting depth.
    stack: Vec<(Value, u32)>,
    marks: Vec<usize>,
    memo: HashMap<u32, (Value, u32)>,
    nodes_left: usize,
    context: &'a str,
}

impl<'a> Unpickler<'a> {
    fn err(&self, message: impl Into<String>) -> Error {
        Error::format(format!("{} (pickle byte {})", self.context, self.pos), message)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "needs {n} more bytes but only {} are left (truncated or corrupt)",
                self.data.len().saturating_sub(self.pos)
            ))),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }
    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(self.err("unterminated text argument")),
        }
    }
    fn line_str(&mut self) -> Result<&'a str> {
        let l = self.line()?;
        std::str::from_utf8(l).map_err(|_| self.err("text argument is not valid UTF-8"))
    }
    fn utf8(&self, bytes: &[u8]) -> Result<String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn charge(&mut self, nodes: usize) -> Result<()> {
        self.nodes_left = self
            .nodes_left
            .checked_sub(nodes)
            .ok_or_else(|| self.err("too many values for the size of the file (memo copies blow up)"))?;
        Ok(())
    }
    fn push(&mut self, v: Value) -> Result<()> {
        self.push_depth(v, 0)
    }
    fn push_depth(&mut self, v: Value, depth: u32) -> Result<()> {
        self.charge(1)?;
        if depth > MAX_DEPTH {
            return Err(self.err(format!("values nested deeper than {MAX_DEPTH} levels")));
        }
        self.stack.push((v, depth));
        Ok(())
    }
    fn pop(&mut self) -> Result<(Value, u32)> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top_mut(&mut self) -> Result<&mut (Value, u32)> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        let msg = self.err("stack underflow");
        self.stack.last_mut().ok_or(msg)
    }
    /// Items pushed since the last MARK, and the deepest of them.
    fn pop_mark(&mut self) -> Result<(Vec<Value>, u32)> {
        let m = self.marks.pop().ok_or_else(|| self.err("MARK expected"))?;
        let items = self.stack.split_off(m);
        let depth = items.iter().map(|(_, d)| *d).max().unwrap_or(0);
        Ok((items.into_iter().map(|(v, _)| v).collect(), depth))
    }
    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let (v, d) = self.memo.get(&idx).cloned().ok_or_else(|| self.err(format!("memo key {idx} missing")))?;
        self.charge(v.nodes())?;
        self.push_depth(v, d)
    }
    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let top = self.top_mut()?.clone();
        self.memo.insert(idx, top);
        Ok(())
    }
    fn global(&self, module: &str, name: &str) -> Result<Value> {
        match Global::lookup(module, name) {
            Some(g) => Ok(Value::Global(g)),
            None => Err(Error::RefusedGlobal {
                context: self.context.to_string(),
                module: module.to_string(),
                name: name.to_string(),
            }),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => {
                    let (v, _) = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top_mut()?.clone();
                    self.charge(top.0.nodes())?;
                    self.stack.push(top);
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Value::Int(v))?
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(Value::Int(v))?
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push(Value::Int(v))?
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let v = self.long_bytes(n)?;
                    self.push(v)?
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let v = self.long_bytes(n)?;
                    self.push(v)?
                }
                b'I' => {
                    let s = self.line_str()?.trim();
                    let v = match s {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(s.parse().map_err(|_| self.err(format!("bad INT {s:?}")))?),
                    };
                    self.push(v)?
                }
                b'L' => {
                    let s = self.line_str()?.trim().trim_end_matches('L');
                    let v = s.parse().map_err(|_| self.err(format!("LONG {s:?} out of range")))?;
                    self.push(Value::Int(v))?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?
                }
                b'F' => {
                    let s = self.line_str()?.trim();
                    let v = s.parse().map_err(|_| self.err(format!("bad FLOAT {s:?}")))?;
                    self.push(Value::Float(v))?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Value::Str(s))?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Value::Str(s))?
                }
                0x8d => {
                    let n = self.len64()?;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Value::Str(s))?
                }
                b'V' => {
                    let l = self.line()?;
                    if l.contains(&b'\\') {
                        return Err(self.err("escaped protocol-0 unicode strings are not supported"));
                    }
                    let s = self.utf8(l)?;
                    self.push(Value::Str(s))?
                }
                b'S' => {
                    let l = self.line()?;
                    let inner = match l {
                        [q, mid @ .., q2] if (*q == b'\'' || *q == b'"') && q == q2 => mid,
                        _ => return Err(self.err("badly quoted STRING")),
                    };
                    if inner.contains(&b'\\') {
                        return Err(self.err("escaped protocol-0 strings are not supported"));
                    }
                    let s = self.utf8(inner)?;
                    self.push(Value::Str(s))?
                }
                // Python 2 byte strings: decoded as text when they are UTF-8 (how py2 pickles
                // hold names), kept as bytes otherwise.
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'T' | b'B' => self.u32()? as usize,
                        b'U' | b'C' => self.u8()? as usize,
                        _ => self.len64()?,
                    };
                    let b = self.take(n)?;
                    let v = match (op, std::str::from_utf8(b)) {
                        (b'T' | b'U', Ok(s)) => Value::Str(s.to_string()),
                        _ => Value::Bytes(b.to_vec()),
                    };
                    self.push(v)?
                }
                b']' => self.push(Value::List(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b'}' => self.push(Value::Dict(Vec::new()))?,
                0x8f => self.push(Value::Set(Vec::new()))?,
                b'l' => {
                    let (items, d) = self.pop_mark()?;
                    self.push_depth(Value::List(items), d + 1)?
                }
                b't' => {
                    let (items, d) = self.pop_mark()?;
                    self.push_depth(Value::Tuple(items), d + 1)?
                }
                0x91 => {
                    let (items, d) = self.pop_mark()?;
                    self.push_depth(Value::Set(items), d + 1)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    let mut depth = 0;
                    for _ in 0..n {
                        let (v, d) = self.pop()?;
                        depth = depth.max(d);
                        items.push(v);
                    }
                    items.reverse();
                    self.push_depth(Value::Tuple(items), depth + 1)?
                }
                b'd' => {
                    let (items, d) = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push_depth(Value::Dict(pairs), d + 1)?
                }
                b'a' => {
                    let (v, d) = self.pop()?;
                    self.extend_top(vec![v], d)?
                }
                b'e' | 0x90 => {
                    let (items, d) = self.pop_mark()?;
                    self.extend_top(items, d)?
                }
                b's' => {
                    let (v, dv) = self.pop()?;
                    let (k, dk) = self.pop()?;
                    self.set_items(vec![(k, v)], dv.max(dk))?
                }
                b'u' => {
                    let (items, d) = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs, d)?
                }
                b'c' => {
                    let module = self.line_str()?.to_string();
                    let name = self.line_str()?.to_string();
                    let g = self.global(&module, &name)?;
                    self.push(g)?
                }
                0x93 => {
                    let (name, _) = self.pop()?;
                    let (module, _) = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(&module, &name)?;
                    self.push(g)?
                }
                b'R' => {
                    let (args, da) = self.pop()?;
                    let (func, _) = self.pop()?;
                    let Value::Tuple(args) = args else {
                        return Err(self.err(format!("REDUCE arguments must be a tuple, got {}", args.kind())));
                    };
                    let v = self.call(func, args)?;
                    self.push_depth(v, da + 1)?
                }
                0x81 => {
                    let (args, da) = self.pop()?;
                    let (cls, _) = self.pop()?;
                    let v = self.new_object(cls, args)?;
                    self.push_depth(v, da + 1)?
                }
                0x92 => {
                    let (_kwargs, _) = self.pop()?;
                    let (args, da) = self.pop()?;
                    let (cls, _) = self.pop()?;
                    let v = self.new_object(cls, args)?;
                    self.push_depth(v, da + 1)?
                }
                b'b' => {
                    let (state, ds) = self.pop()?;
                    self.build(state, ds)?
                }
                b'Q' => {
                    let (pid, _) = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                b'p' => {
                    let s = self.line_str()?.trim();
                    let i = s.parse().map_err(|_| self.err(format!("bad PUT index {s:?}")))?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo too large"))?;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                b'g' => {
                    let s = self.line_str()?.trim();
                    let i = s.parse().map_err(|_| self.err(format!("bad GET index {s:?}")))?;
                    self.memo_get(i)?
                }
                b'P' => return Err(self.err("text persistent ids (protocol 0) are not used by torch.save")),
                b'i' | b'o' => return Err(self.err("old-style class instances (INST/OBJ) are refused")),
                0x82..=0x84 => return Err(self.err("extension registry codes (EXT) are refused")),
                0x97 | 0x98 => return Err(self.err("out-of-band buffers are not supported")),
                _ => return Err(self.err(format!("unknown opcode 0x{op:02x}"))),
            }
        }
    }

    fn long_bytes(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        if n > 8 {
            // Sign-extension bytes beyond 8 are fine; anything else does not fit in i64.
            let fill = if b[n - 1] & 0x80 != 0 { 0xff } else { 0 };
            if b[8..].iter().any(|&x| x != fill) || (b[7] & 0x80 != 0) != (fill == 0xff) {
                return Err(self.err("integer does not fit in 64 bits"));
            }
        }
        if n == 0 {
            return Ok(Value::Int(0));
        }
        let k = n.min(8);
        let fill = if b[k - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut a = [fill; 8];
        a[..k].copy_from_slice(&b[..k]);
        Ok(Value::Int(i64::from_le_bytes(a)))
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
        if items.len() % 2 != 0 {
            return Err(self.err("odd number of items for a dict"));
        }
        let mut it = items.into_iter();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn extend_top(&mut self, items: Vec<Value>, depth: u32) -> Result<()> {
        let err = self.err("APPEND(S)/ADDITEMS target is not a list or set");
        let deep = self.err(format!("values nested deeper than {MAX_DEPTH} levels"));
        let top = self.top_mut()?;
        match &mut top.0 {
            Value::List(v) | Value::Set(v) => v.extend(items),
            _ => return Err(err),
        }
        top.1 = top.1.max(depth + 1);
        if top.1 > MAX_DEPTH {
            return Err(deep);
        }
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<(Value, Value)>, depth: u32) -> Result<()> {
        let err = self.err("SETITEM(S) target is not a dict");
        let deep = self.err(format!("values nested deeper than {MAX_DEPTH} levels"));
        let top = self.top_mut()?;
        match &mut top.0 {
            Value::Dict(v) => v.extend(pairs),
            _ => return Err(err),
        }
        top.1 = top.1.max(depth + 1);
        if top.1 > MAX_DEPTH {
            return Err(deep);
        }
        Ok(())
    }

    fn call(&self, func: Value, args: Vec<Value>) -> Result<Value> {
        let Value::Global(g) = func else {
            return Err(self.err(format!("cannot call a {}", func.kind())));
        };
        let bad = |what: &str| self.err(format!("{}: {what}", g.path()));
        match g {
            Global::OrderedDict => match args.as_slice() {
                [] => Ok(Value::Dict(Vec::new())),
                [Value::List(items)] => {
                    let mut pairs = Vec::new();
                    for item in items {
                        match item {
                            Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => pairs.push((kv[0].clone(), kv[1].clone())),
                            _ => return Err(bad("items must be (key, value) pairs")),
                        }
                    }
                    Ok(Value::Dict(pairs))
                }
                _ => Err(bad("unexpected arguments")),
            },
            Global::Set | Global::FrozenSet => match args.into_iter().next() {
                None => Ok(Value::Set(Vec::new())),
                Some(Value::List(v) | Value::Tuple(v) | Value::Set(v)) => Ok(Value::Set(v)),
                Some(_) => Err(bad("expects a sequence")),
            },
            Global::TorchSize => match args.into_iter().next() {
                Some(Value::Tuple(v) | Value::List(v)) => Ok(Value::Tuple(v)),
                None => Ok(Value::Tuple(Vec::new())),
                Some(_) => Err(bad("expects a tuple")),
            },
            Global::CodecsEncode => match args.as_slice() {
                [Value::Str(s), Value::Str(enc)] if enc == "latin1" || enc == "latin-1" => {
                    let mut out = Vec::with_capacity(s.len());
                    for c in s.chars() {
                        out.push(u8::try_from(c as u32).map_err(|_| bad("character outside latin-1"))?);
                    }
                    Ok(Value::Bytes(out))
                }
                [Value::Str(s), Value::Str(enc)] if enc == "utf-8" || enc == "utf8" => Ok(Value::Bytes(s.as_bytes().to_vec())),
                _ => Err(bad("unsupported arguments")),
            },
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                if args.len() < 4 {
                    return Err(bad("needs (storage, offset, size, stride, ...)"));
                }
                let mut it = args.into_iter();
                let (storage, offset, size, stride) = (it.next(), it.next(), it.next(), it.next());
                let requires_grad = matches!(it.next(), Some(Value::Bool(true)));
                let Some(Value::Storage(storage)) = storage else { return Err(bad("first argument must be a storage")) };
                let offset = as_usize(offset.as_ref()).ok_or_else(|| bad("offset must be a non-negative int"))?;
                let shape = usize_tuple(size.as_ref()).ok_or_else(|| bad("size must be a tuple of non-negative ints"))?;
                let stride = usize_tuple(stride.as_ref()).ok_or_else(|| bad("stride must be a tuple of non-negative ints"))?;
                if shape.len() != stride.len() {
                    return Err(bad(&format!("size {shape:?} and stride {stride:?} differ in length")));
                }
                let t = TensorRef { storage, offset, shape, stride, requires_grad };
                if t.extent().is_none() {
                    return Err(bad("tensor view overflows"));
                }
                Ok(Value::Tensor(t))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let mut it = args.into_iter();
                match (it.next(), it.next()) {
                    (Some(Value::Tensor(mut t)), rg) => {
                        t.requires_grad = matches!(rg, Some(Value::Bool(true)));
                        Ok(Value::Tensor(t))
                    }
                    _ => Err(bad("first argument must be a tensor")),
                }
            }
            Global::RebuildFromTypeV2 => {
                let mut it = args.into_iter();
                match (it.next(), it.next(), it.next()) {
                    (Some(f @ Value::Global(_)), Some(Value::Global(Global::TensorClass | Global::ParameterClass)), Some(Value::Tuple(a))) => {
                        self.call(f, a)
                    }
                    _ => Err(bad("only plain tensors and parameters can be rebuilt")),
                }
            }
            Global::Reconstructor => {
                let mut it = args.into_iter();
                match it.next() {
                    Some(Value::Global(cls @ Global::ParameterDict)) => {
                        Ok(Value::Object { class: cls, state: Box::new(Value::None) })
                    }
                    Some(Value::Global(Global::OrderedDict)) => Ok(Value::Dict(Vec::new())),
                    _ => Err(bad("only allow-listed classes can be reconstructed")),
                }
            }
            Global::ParameterDict => Ok(Value::Object { class: g, state: Box::new(Value::None) }),
            Global::TensorClass | Global::ParameterClass | Global::Storage(_) | Global::DType(_) | Global::Object => {
                Err(bad("cannot be called here"))
            }
        }
    }

    fn new_object(&self, cls: Value, args: Value) -> Result<Value> {
        match cls {
            Value::Global(Global::OrderedDict) => Ok(Value::Dict(Vec::new())),
            Value::Global(g @ Global::ParameterDict) => Ok(Value::Object { class: g, state: Box::new(Value::None) }),
            Value::Global(Global::Set) => self.call(Value::Global(Global::Set), vec![args]),
            other => Err(self.err(format!("cannot instantiate a {}", other.kind()))),
        }
    }

    fn build(&mut self, state: Value, depth: u32) -> Result<()> {
        let err = self.err("BUILD on a value that takes no state");
        let top = self.top_mut()?;
        match &mut top.0 {
            // `state_dict()` OrderedDicts carry `{'_metadata': ...}`; tensors may carry hooks.
            Value::Dict(_) | Value::Tensor(_) => Ok(()),
            Value::Object { state: s, .. } => {
                **s = state;
                top.1 = top.1.max(depth + 1);
                Ok(())
            }
            _ => Err(err),
        }
    }

    fn persistent_load(&self, pid: Value) -> Result<Value> {
        let Value::Tuple(items) = pid else {
            return Err(self.err(format!("persistent id must be a tuple, got {}", pid.kind())));
        };
        match items.as_slice() {
            [Value::Str(tag), ty, key, Value::Str(location), n, rest @ ..] if tag == "storage" && rest.len() <= 1 => {
                let dtype = match ty {
                    Value::Global(Global::Storage(d)) => *d,
                    other => return Err(self.err(format!("unsupported storage type {other:?}"))),
                };
                let key = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => return Err(self.err("storage key must be a string")),
                };
                let numel = as_usize(Some(n)).ok_or_else(|| self.err("storage size must be a non-negative int"))?;
                let view = match rest.first() {
                    None | Some(Value::None) => None,
                    Some(Value::Tuple(v)) if v.len() == 3 => {
                        let off = as_usize(v.get(1)).ok_or_else(|| self.err("bad storage view offset"))?;
                        let len = as_usize(v.get(2)).ok_or_else(|| self.err("bad storage view size"))?;
                        Some((off, len))
                    }
                    Some(_) => return Err(self.err("bad storage view")),
                };
                Ok(Value::Storage(StorageRef { key, dtype, numel, location: location.clone(), view }))
            }
            _ => Err(self.err("persistent id is not a torch storage reference")),
        }
    }
}

fn as_usize(v: Option<&Value>) -> Option<usize> {
    match v {
        Some(Value::Int(i)) => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn usize_tuple(v: Option<&Value>) -> Option<Vec<usize>> {
    match v {
        Some(Value::Tuple(items) | Value::List(items)) => items.iter().map(|x| as_usize(Some(x))).collect(),
        _ => None,
    }
}

/// Writes `value` as a protocol-2 pickle, the protocol `torch.save` uses. Tensors must refer to
/// storages the caller writes as `data/<key>` records. Sets and objects cannot be written.
pub fn dump(value: &Value) -> Result<Vec<u8>> {
    let mut out = vec![0x80, 2];
    write_value(&mut out, value)?;
    out.push(b'.');
    Ok(out)
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

fn write_int(out: &mut Vec<u8>, i: i64) {
    if (0..=0xff).contains(&i) {
        out.extend_from_slice(&[b'K', i as u8]);
    } else if (0..=0xffff).contains(&i) {
        out.push(b'M');
        out.extend_from_slice(&(i as u16).to_le_bytes());
    } else if let Ok(v) = i32::try_from(i) {
        out.push(b'J');
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.extend_from_slice(&[0x8a, 8]);
        out.extend_from_slice(&i.to_le_bytes());
    }
}

fn write_seq(out: &mut Vec<u8>, items: &[Value]) -> Result<()> {
    for v in items {
        write_value(out, v)?;
    }
    Ok(())
}

fn write_usize_tuple(out: &mut Vec<u8>, v: &[usize]) -> Result<()> {
    let items: Vec<Value> = v.iter().map(|&x| Value::Int(x as i64)).collect();
    write_value(out, &Value::Tuple(items))
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<()> {
    match value {
        Value::None => out.push(b'N'),
        Value::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
        Value::Int(i) => write_int(out, *i),
        Value::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => write_str(out, s),
        Value::Bytes(b) => {
            // Protocol 2 has no bytes opcode: torch (and Python) write `_codecs.encode(s, 'latin1')`.
            write_global(out, "_codecs", "encode");
            let s: String = b.iter().map(|&c| c as char).collect();
            write_str(out, &s);
            write_str(out, "latin1");
            out.extend_from_slice(&[0x86, b'R']);
        }
        Value::List(items) => {
            out.push(b']');
            if !items.is_empty() {
                out.push(b'(');
                write_seq(out, items)?;
                out.push(b'e');
            }
        }
        Value::Tuple(items) => match items.len() {
            0 => out.push(b')'),
            1..=3 => {
                write_seq(out, items)?;
                out.push(0x84 + items.len() as u8);
            }
            _ => {
                out.push(b'(');
                write_seq(out, items)?;
                out.push(b't');
            }
        },
        Value::Dict(items) => {
            out.push(b'}');
            if !items.is_empty() {
                out.push(b'(');
                for (k, v) in items {
                    write_value(out, k)?;
                    write_value(out, v)?;
                }
                out.push(b'u');
            }
        }
        Value::Tensor(t) => {
            write_global(out, "torch._utils", "_rebuild_tensor_v2");
            out.push(b'(');
            // persistent id ('storage', torch.XStorage, key, location, numel)
            out.push(b'(');
            write_str(out, "storage");
            write_global(out, "torch", t.storage.dtype.storage_class());
            write_str(out, &t.storage.key);
            write_str(out, &t.storage.location);
            write_int(out, t.storage.numel as i64);
            out.extend_from_slice(b"tQ");
            write_int(out, t.offset as i64);
            write_usize_tuple(out, &t.shape)?;
            write_usize_tuple(out, &t.stride)?;
            out.push(if t.requires_grad { 0x88 } else { 0x89 });
            write_global(out, "collections", "OrderedDict");
            out.extend_from_slice(b")R");
            out.extend_from_slice(b"tR");
        }
        Value::Set(_) | Value::Global(_) | Value::Storage(_) | Value::Object { .. } => {
            return Err(Error::format("pickle writer", format!("cannot write a {}", value.kind())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: Value) {
        let bytes = dump(&v).unwrap();
        let (back, end) = load(&bytes, 0, "test").unwrap();
        assert_eq!(end, bytes.len());
        assert_eq!(back, v);
    }

    #[test]
    fn plain_values_roundtrip() {
        roundtrip(Value::Dict(vec![
            (Value::Str("a".into()), Value::Int(-5)),
            (Value::Str("big".into()), Value::Int(1 << 40)),
            (Value::Str("neg".into()), Value::Int(-(1 << 40))),
            (Value::Str("f".into()), Value::Float(1.5)),
            (Value::Str("n".into()), Value::None),
            (Value::Str("t".into()), Value::Tuple(vec![Value::Int(1), Value::Int(70000), Value::Int(3), Value::Int(4)])),
            (Value::Str("l".into()), Value::List(vec![Value::Bool(true), Value::Str("é".into())])),
            (Value::Str("b".into()), Value::Bytes(vec![0, 200, 255])),
        ]));
    }

    #[test]
    fn refuses_os_system() {
        // cos\nsystem\n(S'echo hi'\ntR.
        let p = b"cos\nsystem\n(S'echo hi'\ntR.";
        let e = load(p, 0, "evil.pkl").unwrap_err();
        assert!(e.to_string().contains("os.system"), "{e}");
        let p = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        let e = load(p, 0, "evil.pkl").unwrap_err();
        assert!(e.to_string().contains("builtins.eval"), "{e}");
    }

    #[test]
    fn memo_blowup_is_bounded() {
        // A list doubled through the memo 60 times would hold 2^60 items.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..60 {
            p.extend_from_slice(&[b'(', b'h', 0, b'h', 0, b'l', b'q', 0]);
        }
        p.push(b'.');
        let e = load(&p, 0, "bomb").unwrap_err();
        assert!(e.to_string().contains("too many values"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = vec![0x80, 2];
        for _ in 0..100_000 {
            p.push(b']');
        }
        for _ in 0..99_999 {
            p.push(b'a');
        }
        p.push(b'.');
        let e = load(&p, 0, "deep").unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
    }

    #[test]
    fn truncated_lengths_are_errors() {
        let p = [0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f, b'a'];
        let e = load(&p, 0, "trunc").unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
