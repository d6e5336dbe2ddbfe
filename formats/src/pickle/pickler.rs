//! The pickler `torch_file` writes `data.pkl` with: only what a checkpoint of tensors, dicts,
//! lists and scalars needs, in the opcodes `torch.load(weights_only=True)` accepts.
use super::opcodes::OpCode;
use super::Value;
use crate::error::{Error, Result};

const PROTOCOL: u8 = 2;

/// Writes `value` as a protocol-2 pickle, the protocol `torch.save` uses. Tensors must refer to
/// storages the caller writes as `data/<key>` records. Sets and objects cannot be written.
pub fn dump(value: &Value) -> Result<Vec<u8>> {
    let mut p = Pickler { out: Vec::new() };
    p.op(OpCode::Proto);
    p.out.push(PROTOCOL);
    p.value(value)?;
    p.op(OpCode::Stop);
    Ok(p.out)
}

struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn op(&mut self, op: OpCode) {
        self.out.push(op as u8);
    }

    /// An opcode followed by its argument bytes.
    fn op_arg(&mut self, op: OpCode, arg: &[u8]) {
        self.op(op);
        self.out.extend_from_slice(arg);
    }

    fn str(&mut self, s: &str) {
        self.op_arg(OpCode::BinUnicode, &(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn global(&mut self, module: &str, name: &str) {
        self.op(OpCode::Global);
        for line in [module, name] {
            self.out.extend_from_slice(line.as_bytes());
            self.out.push(b'\n');
        }
    }

    /// The narrowest fixed-width encoding; ints beyond 32 bits always take 8 `LONG1` bytes.
    fn int(&mut self, i: i64) {
        if let Ok(v) = u8::try_from(i) {
            self.op_arg(OpCode::BinInt1, &[v]);
        } else if let Ok(v) = u16::try_from(i) {
            self.op_arg(OpCode::BinInt2, &v.to_le_bytes());
        } else if let Ok(v) = i32::try_from(i) {
            self.op_arg(OpCode::BinInt, &v.to_le_bytes());
        } else {
            self.op_arg(OpCode::Long1, &[8]);
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn bool(&mut self, b: bool) {
        self.op(if b { OpCode::NewTrue } else { OpCode::NewFalse });
    }

    fn seq(&mut self, items: &[Value]) -> Result<()> {
        for v in items {
            self.value(v)?;
        }
        Ok(())
    }

    fn usize_tuple(&mut self, v: &[usize]) -> Result<()> {
        let items: Vec<Value> = v.iter().map(|&x| Value::Int(x as i64)).collect();
        self.value(&Value::Tuple(items))
    }

    fn value(&mut self, value: &Value) -> Result<()> {
        match value {
            Value::None => self.op(OpCode::None),
            Value::Bool(b) => self.bool(*b),
            Value::Int(i) => self.int(*i),
            Value::Float(f) => self.op_arg(OpCode::BinFloat, &f.to_be_bytes()),
            Value::Str(s) => self.str(s),
            Value::Bytes(b) => {
                // Protocol 2 has no bytes opcode: torch (and Python) write `_codecs.encode(s, 'latin1')`.
                self.global("_codecs", "encode");
                let s: String = b.iter().map(|&c| c as char).collect();
                self.str(&s);
                self.str("latin1");
                self.op(OpCode::Tuple2);
                self.op(OpCode::Reduce);
            }
            Value::List(items) => {
                self.op(OpCode::EmptyList);
                if !items.is_empty() {
                    self.op(OpCode::Mark);
                    self.seq(items)?;
                    self.op(OpCode::Appends);
                }
            }
            Value::Tuple(items) => match items.len() {
                0 => self.op(OpCode::EmptyTuple),
                n @ 1..=3 => {
                    self.seq(items)?;
                    self.op([OpCode::Tuple1, OpCode::Tuple2, OpCode::Tuple3][n - 1]);
                }
                _ => {
                    self.op(OpCode::Mark);
                    self.seq(items)?;
                    self.op(OpCode::Tuple);
                }
            },
            Value::Dict(items) => {
                self.op(OpCode::EmptyDict);
                if !items.is_empty() {
                    self.op(OpCode::Mark);
                    for (k, v) in items {
                        self.value(k)?;
                        self.value(v)?;
                    }
                    self.op(OpCode::SetItems);
                }
            }
            Value::Tensor(t) => {
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.op(OpCode::Mark);
                // persistent id ('storage', torch.XStorage, key, location, numel)
                self.op(OpCode::Mark);
                self.str("storage");
                self.global("torch", t.storage.dtype.storage_class());
                self.str(&t.storage.key);
                self.str(&t.storage.location);
                self.int(t.storage.numel as i64);
                self.op(OpCode::Tuple);
                self.op(OpCode::BinPersId);
                self.int(t.offset as i64);
                self.usize_tuple(&t.shape)?;
                self.usize_tuple(&t.stride)?;
                self.bool(t.requires_grad);
                // backward_hooks: an empty OrderedDict.
                self.global("collections", "OrderedDict");
                self.op(OpCode::EmptyTuple);
                self.op(OpCode::Reduce);
                self.op(OpCode::Tuple);
                self.op(OpCode::Reduce);
            }
            Value::Set(_) | Value::Global(_) | Value::Storage(_) | Value::Object { .. } | Value::Inert(_) => {
                return Err(Error::format("pickle writer", format!("cannot write a {}", value.kind())));
            }
        }
        Ok(())
    }
}
