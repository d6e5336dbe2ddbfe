//! A safe unpickler for the subset of Python pickle that `torch.save` writes, and the small
//! pickler our writer needs.
//!
//! Nothing is ever executed: `GLOBAL` is resolved against a fixed allow-list ([`Global`]) and
//! anything else is refused with an error naming it. Calls (`REDUCE`, `NEWOBJ`) are interpreted
//! only for the allowed callables (tensor rebuilds, `OrderedDict`, `torch.Size`, ...). Every
//! length is checked against the bytes left before anything is allocated, nesting is bounded,
//! and the total number of values built (memo copies included) is bounded, so hostile input
//! costs at most a small multiple of its size.
//!
//! `value` holds the decoded tree, `allow_list` the globals and what each builds, `unpickler`
//! the reader, `pickler` the writer, and `opcodes` the opcode names both share.

mod allow_list;
mod opcodes;
mod pickler;
mod unpickler;
mod value;

pub use allow_list::Global;
pub use pickler::dump;
pub use unpickler::{load, MAX_DEPTH};
pub use value::{StorageRef, TensorRef, Value};

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
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
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

