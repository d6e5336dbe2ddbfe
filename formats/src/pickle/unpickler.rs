//! The unpickler: a stack machine over the opcodes `torch.save` emits, bounded in depth, in the
//! memory its values take, and in the bytes it reads.
use super::opcodes::OpCode;
use super::value::as_usize;
use super::{allow_list, Global, Mode, StorageRef, Value};
use crate::error::{Error, Result};
use std::collections::HashMap;

/// Deepest nesting accepted (Python's own recursion limit is about as deep).
pub const MAX_DEPTH: u32 = 512;

/// Memory one pickle's values may take, counted as they are built and never given back: each
/// value's slot, its text, bytes and item buffers, every copy the memo and `DUP` make, the
/// memo's entries and the open `MARK`s. The `data.pkl` of a whole SD or SDXL training checkpoint,
/// optimizer states included, decodes to a few MiB; a file needing more is hostile (memo copies
/// of a large list, or megabytes of opcodes deflated into a small zip).
pub const MAX_VALUE_BYTES: usize = 128 << 20;

const SLOT: usize = std::mem::size_of::<Value>();

/// Decodes one pickle starting at `data[start..]`. Returns the value and the position just
/// after its `STOP`, so callers can read pickles written back to back (the legacy format).
pub fn load(data: &[u8], start: usize, context: &str) -> Result<(Value, usize)> {
    load_mode(data, start, context, Mode::Tensors)
}

/// [`load`] under `mode` (what globals besides the tensor allow-list become).
pub fn load_mode(data: &[u8], start: usize, context: &str, mode: Mode) -> Result<(Value, usize)> {
    let (value, end, _) = load_measured(data, start, context, mode)?;
    Ok((value, end))
}

/// [`load_mode`], also returning how much of [`MAX_VALUE_BYTES`] the pickle used.
pub(super) fn load_measured(data: &[u8], start: usize, context: &str, mode: Mode) -> Result<(Value, usize, usize)> {
    let mut u = Unpickler { mode, data, pos: start, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), bytes_left: MAX_VALUE_BYTES, context };
    let value = u.run()?;
    Ok((value, u.pos, MAX_VALUE_BYTES - u.bytes_left))
}

struct Unpickler<'a> {
    mode: Mode,
    data: &'a [u8],
    pos: usize,
    /// Values with their nesting depth.
    stack: Vec<(Value, u32)>,
    /// Stack heights at each open `MARK`.
    marks: Vec<usize>,
    /// `PUT`/`MEMOIZE` slots, with their values' depth.
    memo: HashMap<u32, (Value, u32)>,
    /// What is left of [`MAX_VALUE_BYTES`].
    bytes_left: usize,
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
            None => Err(self.err(format!("needs {n} more bytes but only {} are left (truncated or corrupt)", self.data.len().saturating_sub(self.pos)))),
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

    fn over_budget(&self) -> Error {
        self.err(format!(
            "too many values: decoding needs more than {} MiB (a real checkpoint's pickle needs a few; \
             memo copies or a huge decompressed pickle blow up)",
            MAX_VALUE_BYTES >> 20
        ))
    }
    fn charge(&mut self, bytes: usize) -> Result<()> {
        self.bytes_left = self.bytes_left.checked_sub(bytes).ok_or_else(|| self.over_budget())?;
        Ok(())
    }
    /// Charges a copy before it is made, given [`Value::tree_bytes`] of the original measured
    /// against what is left (`None`: more than that).
    fn charge_copy_of(&mut self, tree_bytes: Option<usize>) -> Result<()> {
        let bytes = tree_bytes.ok_or_else(|| self.over_budget())?;
        self.charge(bytes)
    }
    fn push(&mut self, v: Value) -> Result<()> {
        self.push_depth(v, 0)
    }
    /// Pushes a newly built value, charging what it owns (its items were charged when built).
    fn push_depth(&mut self, v: Value, depth: u32) -> Result<()> {
        self.charge(v.own_bytes())?;
        self.push_charged(v, depth)
    }
    /// Pushes a value already charged for, charging its depth beside it on the stack.
    fn push_charged(&mut self, v: Value, depth: u32) -> Result<()> {
        self.charge(std::mem::size_of::<(Value, u32)>() - SLOT)?;
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
    /// [`Value::tree_bytes`] of the top value, measured against what is left of the budget.
    fn top_tree_bytes(&self) -> Result<Option<usize>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some((v, _)) if self.stack.len() > floor => Ok(v.tree_bytes(self.bytes_left)),
            _ => Err(self.err("stack underflow")),
        }
    }
    /// Items pushed since the last MARK, and the deepest of them.
    fn pop_mark(&mut self) -> Result<(Vec<Value>, u32)> {
        let m = self.marks.pop().ok_or_else(|| self.err("MARK expected"))?;
        let items = self.stack.split_off(m);
        let depth = items.iter().map(|(_, d)| *d).max().unwrap_or(0);
        Ok((items.into_iter().map(|(v, _)| v).collect(), depth))
    }
    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let bytes = match self.memo.get(&idx) {
            Some((v, _)) => v.tree_bytes(self.bytes_left),
            None => return Err(self.err(format!("memo key {idx} missing"))),
        };
        self.charge_copy_of(bytes)?;
        let (v, d) = self.memo.get(&idx).cloned().ok_or_else(|| self.err(format!("memo key {idx} missing")))?;
        self.push_charged(v, d)
    }
    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let bytes = self.top_tree_bytes()?;
        self.charge_copy_of(bytes)?;
        self.charge(std::mem::size_of::<(u32, (Value, u32))>())?;
        let top = self.top_mut()?.clone();
        self.memo.insert(idx, top);
        Ok(())
    }
    fn global(&self, module: &str, name: &str) -> Result<Value> {
        match Global::lookup(module, name) {
            Some(g) => Ok(Value::Global(g)),
            None if self.mode == Mode::Checkpoint && allow_list::is_inert(module, name) => Ok(Value::Inert(format!("{module}.{name}"))),
            None => Err(Error::RefusedGlobal { context: self.context.to_string(), module: module.to_string(), name: name.to_string() }),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = OpCode::try_from(self.u8()?).map_err(|unknown| self.err(unknown.to_string()))?;
            match op {
                OpCode::Proto => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                OpCode::Frame => {
                    self.u64()?; // a length hint only
                }
                OpCode::Stop => {
                    let (v, _) = self.pop()?;
                    return Ok(v);
                }
                OpCode::Mark => {
                    self.charge(std::mem::size_of::<usize>())?;
                    self.marks.push(self.stack.len())
                }
                OpCode::Pop => {
                    self.pop()?;
                }
                OpCode::PopMark => {
                    self.pop_mark()?;
                }
                OpCode::Dup => {
                    let bytes = self.top_tree_bytes()?;
                    self.charge_copy_of(bytes)?;
                    let (v, d) = self.top_mut()?.clone();
                    self.push_charged(v, d)?
                }
                OpCode::None => self.push(Value::None)?,
                OpCode::NewTrue => self.push(Value::Bool(true))?,
                OpCode::NewFalse => self.push(Value::Bool(false))?,
                OpCode::BinInt => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Value::Int(v))?
                }
                OpCode::BinInt1 => {
                    let v = self.u8()? as i64;
                    self.push(Value::Int(v))?
                }
                OpCode::BinInt2 => {
                    let v = self.u16()? as i64;
                    self.push(Value::Int(v))?
                }
                OpCode::Long1 => {
                    let n = self.u8()? as usize;
                    let v = self.long_bytes(n)?;
                    self.push(v)?
                }
                OpCode::Long4 => {
                    let n = self.u32()? as usize;
                    let v = self.long_bytes(n)?;
                    self.push(v)?
                }
                OpCode::Int => {
                    let s = self.line_str()?.trim();
                    let v = match s {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(s.parse().map_err(|_| self.err(format!("bad INT {s:?}")))?),
                    };
                    self.push(v)?
                }
                OpCode::Long => {
                    let s = self.line_str()?.trim().trim_end_matches('L');
                    let v = s.parse().map_err(|_| self.err(format!("LONG {s:?} out of range")))?;
                    self.push(Value::Int(v))?
                }
                OpCode::BinFloat => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?
                }
                OpCode::Float => {
                    let s = self.line_str()?.trim();
                    let v = s.parse().map_err(|_| self.err(format!("bad FLOAT {s:?}")))?;
                    self.push(Value::Float(v))?
                }
                OpCode::BinUnicode => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Value::Str(s))?
                }
                OpCode::ShortBinUnicode => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Value::Str(s))?
                }
                OpCode::BinUnicode8 => {
                    let n = self.len64()?;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Value::Str(s))?
                }
                OpCode::Unicode => {
                    let l = self.line()?;
                    if l.contains(&b'\\') {
                        return Err(self.err("escaped protocol-0 unicode strings are not supported"));
                    }
                    let s = self.utf8(l)?;
                    self.push(Value::Str(s))?
                }
                OpCode::String => {
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
                OpCode::BinString | OpCode::ShortBinString | OpCode::BinBytes | OpCode::ShortBinBytes | OpCode::BinBytes8 | OpCode::ByteArray8 => {
                    let n = match op {
                        OpCode::BinString | OpCode::BinBytes => self.u32()? as usize,
                        OpCode::ShortBinString | OpCode::ShortBinBytes => self.u8()? as usize,
                        _ => self.len64()?,
                    };
                    let b = self.take(n)?;
                    let v = match (op, std::str::from_utf8(b)) {
                        (OpCode::BinString | OpCode::ShortBinString, Ok(s)) => Value::Str(s.to_string()),
                        _ => Value::Bytes(b.to_vec()),
                    };
                    self.push(v)?
                }
                OpCode::EmptyList => self.push(Value::List(Vec::new()))?,
                OpCode::EmptyTuple => self.push(Value::Tuple(Vec::new()))?,
                OpCode::EmptyDict => self.push(Value::Dict(Vec::new()))?,
                OpCode::EmptySet => self.push(Value::Set(Vec::new()))?,
                OpCode::List => {
                    let (items, d) = self.pop_mark()?;
                    self.push_depth(Value::List(items), d + 1)?
                }
                OpCode::Tuple => {
                    let (items, d) = self.pop_mark()?;
                    self.push_depth(Value::Tuple(items), d + 1)?
                }
                OpCode::FrozenSet => {
                    let (items, d) = self.pop_mark()?;
                    self.push_depth(Value::Set(items), d + 1)?
                }
                OpCode::Tuple1 => self.tuple_from_top(1)?,
                OpCode::Tuple2 => self.tuple_from_top(2)?,
                OpCode::Tuple3 => self.tuple_from_top(3)?,
                OpCode::Dict => {
                    let (items, d) = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push_depth(Value::Dict(pairs), d + 1)?
                }
                OpCode::Append => {
                    let (v, d) = self.pop()?;
                    self.extend_top(vec![v], d)?
                }
                OpCode::Appends | OpCode::AddItems => {
                    let (items, d) = self.pop_mark()?;
                    self.extend_top(items, d)?
                }
                OpCode::SetItem => {
                    let (v, dv) = self.pop()?;
                    let (k, dk) = self.pop()?;
                    self.set_items(vec![(k, v)], dv.max(dk))?
                }
                OpCode::SetItems => {
                    let (items, d) = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs, d)?
                }
                OpCode::Global => {
                    let module = self.line_str()?.to_string();
                    let name = self.line_str()?.to_string();
                    let g = self.global(&module, &name)?;
                    self.push(g)?
                }
                OpCode::StackGlobal => {
                    let (name, _) = self.pop()?;
                    let (module, _) = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(&module, &name)?;
                    self.push(g)?
                }
                OpCode::Reduce => {
                    let (args, da) = self.pop()?;
                    let (func, _) = self.pop()?;
                    let Value::Tuple(args) = args else {
                        return Err(self.err(format!("REDUCE arguments must be a tuple, got {}", args.kind())));
                    };
                    let v = match inert_instance(&func, &args) {
                        Some(v) => v,
                        None => allow_list::call(func, args).map_err(|m| self.err(m))?,
                    };
                    self.push_depth(v, da + 1)?
                }
                OpCode::NewObj => {
                    let (args, da) = self.pop()?;
                    let (cls, _) = self.pop()?;
                    let v = self.new_object(cls, args)?;
                    self.push_depth(v, da + 1)?
                }
                OpCode::NewObjEx => {
                    let (_kwargs, _) = self.pop()?;
                    let (args, da) = self.pop()?;
                    let (cls, _) = self.pop()?;
                    let v = self.new_object(cls, args)?;
                    self.push_depth(v, da + 1)?
                }
                OpCode::Build => {
                    let (state, ds) = self.pop()?;
                    self.build(state, ds)?
                }
                OpCode::BinPersId => {
                    let (pid, _) = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?
                }
                OpCode::BinPut => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?
                }
                OpCode::LongBinPut => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                OpCode::Put => {
                    let s = self.line_str()?.trim();
                    let i = s.parse().map_err(|_| self.err(format!("bad PUT index {s:?}")))?;
                    self.memo_put(i)?
                }
                OpCode::Memoize => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo too large"))?;
                    self.memo_put(i)?
                }
                OpCode::BinGet => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?
                }
                OpCode::LongBinGet => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                OpCode::Get => {
                    let s = self.line_str()?.trim();
                    let i = s.parse().map_err(|_| self.err(format!("bad GET index {s:?}")))?;
                    self.memo_get(i)?
                }
                OpCode::PersId => return Err(self.err("text persistent ids (protocol 0) are not used by torch.save")),
                OpCode::Inst | OpCode::Obj => return Err(self.err("old-style class instances (INST/OBJ) are refused")),
                OpCode::Ext1 | OpCode::Ext2 | OpCode::Ext4 => return Err(self.err("extension registry codes (EXT) are refused")),
                OpCode::NextBuffer | OpCode::ReadonlyBuffer => return Err(self.err("out-of-band buffers are not supported")),
            }
        }
    }

    /// `TUPLE1` to `TUPLE3`: the top `n` values, in push order.
    fn tuple_from_top(&mut self, n: usize) -> Result<()> {
        let mut items = Vec::with_capacity(n);
        let mut depth = 0;
        for _ in 0..n {
            let (v, d) = self.pop()?;
            depth = depth.max(d);
            items.push(v);
        }
        items.reverse();
        self.push_depth(Value::Tuple(items), depth + 1)
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
        self.charge(items.len() * SLOT)?;
        let err = self.err("APPEND(S)/ADDITEMS target is not a list or set");
        let deep = self.err(format!("values nested deeper than {MAX_DEPTH} levels"));
        let top = self.top_mut()?;
        match &mut top.0 {
            Value::List(v) | Value::Set(v) => v.extend(items),
            // An inert list subclass (say a Lightning container): its items are dropped.
            Value::Inert(_) => {}
            _ => return Err(err),
        }
        top.1 = top.1.max(depth + 1);
        if top.1 > MAX_DEPTH {
            return Err(deep);
        }
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<(Value, Value)>, depth: u32) -> Result<()> {
        self.charge(pairs.len() * 2 * SLOT)?;
        let err = self.err("SETITEM(S) target is not a dict");
        let deep = self.err(format!("values nested deeper than {MAX_DEPTH} levels"));
        let top = self.top_mut()?;
        match &mut top.0 {
            Value::Dict(v) => v.extend(pairs),
            // An inert dict subclass (`collections.defaultdict`, an OmegaConf node): dropped.
            Value::Inert(_) => {}
            _ => return Err(err),
        }
        top.1 = top.1.max(depth + 1);
        if top.1 > MAX_DEPTH {
            return Err(deep);
        }
        Ok(())
    }

    /// `NEWOBJ`/`NEWOBJ_EX`: an allowed class's instance, or an inert one's.
    fn new_object(&self, cls: Value, args: Value) -> Result<Value> {
        match cls {
            Value::Inert(name) => Ok(Value::Inert(name)),
            cls => allow_list::new_object(cls, args).map_err(|m| self.err(m)),
        }
    }

    fn build(&mut self, state: Value, depth: u32) -> Result<()> {
        let err = self.err("BUILD on a value that takes no state");
        let top = self.top_mut()?;
        match &mut top.0 {
            // `state_dict()` OrderedDicts carry `{'_metadata': ...}`; tensors may carry hooks.
            Value::Dict(_) | Value::Tensor(_) | Value::Inert(_) => Ok(()),
            Value::Object { state: s, .. } => {
                **s = state;
                top.1 = top.1.max(depth + 1);
                Ok(())
            }
            _ => Err(err),
        }
    }

    /// `BINPERSID`: only torch's `('storage', type, key, location, numel[, view])` ids exist.
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
                Ok(Value::Storage(Box::new(StorageRef { key, dtype, numel, location: location.clone(), view })))
            }
            _ => Err(self.err("persistent id is not a torch storage reference")),
        }
    }
}

/// What calling an inert value builds: another inert value named after it (an instance, an
/// enum member...), for `cls(...)` and `copyreg._reconstructor(cls, ...)` alike. The arguments
/// are dropped; nothing is called.
fn inert_instance(func: &Value, args: &[Value]) -> Option<Value> {
    match (func, args.first()) {
        (Value::Inert(name), _) => Some(Value::Inert(name.clone())),
        (Value::Global(Global::Reconstructor), Some(Value::Inert(name))) => Some(Value::Inert(name.clone())),
        _ => None,
    }
}
