//! A safe unpickler for the subset of Python pickle that `torch.save` writes, and the small
//! pickler our writer needs.
//!
//! Nothing is ever executed: `GLOBAL` is resolved against a fixed allow-list ([`Global`]) and
//! anything else is refused with an error naming it. Calls (`REDUCE`, `NEWOBJ`) are interpreted
//! only for the allowed callables (tensor rebuilds, `OrderedDict`, `torch.Size`, ...). Every
//! length is checked against the bytes left before anything is allocated, and nesting is
//! bounded. Memory is bounded whatever the input: the values one pickle builds, counted as
//! allocated (every memo and `DUP` copy, the stack, the memo and the open marks included), may
//! take at most [`MAX_VALUE_BYTES`] (128 MiB; real checkpoints need a few MiB), so decoding costs
//! at most that, about doubled by container growth, plus the pickle's own bytes.
//!
//! `value` holds the decoded tree, `allow_list` the globals and what each builds, `unpickler`
//! the reader, `pickler` the writer, and `opcodes` the opcode names both share.

mod allow_list;
mod opcodes;
mod pickler;
mod unpickler;
mod value;

pub use allow_list::{is_inert, Global};
pub use pickler::dump;
pub use unpickler::{load, load_mode, MAX_DEPTH, MAX_VALUE_BYTES};
pub use value::{Mode, StorageRef, TensorRef, Value};

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

    /// A Lightning checkpoint's extras (pickled by Python 3.11 with a stub ModelCheckpoint class):
    /// a class as a dict key, an instance with `__dict__` state, a `defaultdict(list)`.
    const LIGHTNING: &[u8] = b"\x80\x02}q\x00(X\x0b\x00\x00\x00global_stepq\x01K\x07X\t\x00\x00\x00callbacksq\x02}q\x03cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\nq\x04}q\x05X\x04\x00\x00\x00bestq\x06NssX\x04\x00\x00\x00loopq\x07h\x04)\x81q\x08}q\t(X\x07\x00\x00\x00dirpathq\nX\x04\x00\x00\x00logsq\x0bX\x07\x00\x00\x00monitorq\x0cNubX\x02\x00\x00\x00ddq\rccollections\ndefaultdict\nq\x0ec__builtin__\nlist\nq\x0f\x85q\x10Rq\x11X\x01\x00\x00\x00aq\x12]q\x13K\x01asX\n\x00\x00\x00state_dictq\x14}q\x15X\x01\x00\x00\x00wq\x16G?\xf8\x00\x00\x00\x00\x00\x00su.";

    #[test]
    fn checkpoint_mode_keeps_lightning_objects_inert() {
        let e = load(LIGHTNING, 0, "last.ckpt").unwrap_err();
        assert!(e.to_string().contains("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"), "{e}");
        let (v, _) = load_mode(LIGHTNING, 0, "last.ckpt", Mode::Checkpoint).unwrap();
        assert_eq!(v.get("global_step"), Some(&Value::Int(7)));
        assert_eq!(v.get("state_dict").and_then(|d| d.get("w")), Some(&Value::Float(1.5)));
        let inert = Value::Inert("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint".into());
        assert_eq!(v.get("loop"), Some(&inert));
        assert_eq!(v.get("dd"), Some(&Value::Inert("collections.defaultdict".into())));
        let Some(Value::Dict(callbacks)) = v.get("callbacks") else { panic!("callbacks: {v:?}") };
        assert_eq!(callbacks[0].0, inert);
        // What could run code stays refused, checkpoint or not.
        for p in [&b"cos\nsystem\n(S'echo hi'\ntR."[..], b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.", b"c__builtin__\ngetattr\n."] {
            assert!(load_mode(p, 0, "evil.ckpt", Mode::Checkpoint).is_err());
        }
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

    /// The budget leaves room for the largest real checkpoints: the SD 1.x-layout training
    /// checkpoint of the fixtures (376 tensors, pickled by torch with a Lightning callback),
    /// scaled to 12,000 tensors (SDXL with EMA weights and Adam's two states per parameter),
    /// still takes under half of it.
    #[test]
    fn a_large_training_checkpoint_fits_the_budget() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/single-file/sd1.ckpt");
        let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
        let mut pkl = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name("sd1/data.pkl").unwrap(), &mut pkl).unwrap();
        let (v, _, used) = unpickler::load_measured(&pkl, 0, "sd1.ckpt", Mode::Checkpoint).unwrap();
        let Some(Value::Dict(weights)) = v.get("state_dict") else { panic!("{v:?}") };
        assert_eq!(weights.len(), 376);
        assert!(used * 12_000 / 376 < MAX_VALUE_BYTES / 2, "{used} bytes for 376 tensors");
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
