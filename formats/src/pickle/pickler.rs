//! The protocol-2 writer `torch_file` uses for `data.pkl`.
use super::Value;
use crate::error::{Error, Result};

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
