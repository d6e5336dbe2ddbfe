//! Helpers shared by the integration tests: fixture paths and comparison with the JSON that
//! scripts/fixtures/make_fixtures_formats.py wrote from PyTorch's own view of each file.
#![allow(dead_code)]
use serde_json::Value as J;
use std::path::PathBuf;
use ti_formats::pickle::Value;
use ti_formats::torch_file::TorchFile;
use ti_formats::RawTensor;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(section: &str, name: &str) -> PathBuf {
    repo().join("fixtures").join(section).join(name)
}

pub fn expected(section: &str) -> serde_json::Map<String, J> {
    let text = std::fs::read_to_string(fixture(section, "expected.json")).expect("fixtures/<section>/expected.json (run scripts/make-fixtures.sh)");
    let v: J = serde_json::from_str(&text).expect("valid JSON");
    v["files"].as_object().expect("files").clone()
}

/// Compares a tensor with `{"tensor": dtype, "shape": [...], "values": [...]}`, exactly:
/// every dtype PyTorch writes widens to f64 without rounding.
pub fn assert_tensor(what: &str, t: &RawTensor, want: &J) {
    assert_eq!(t.dtype.torch_name(), want["tensor"].as_str().unwrap(), "{what}: dtype");
    let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(t.shape, shape, "{what}: shape");
    let values: Vec<f64> = want["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(t.to_f64_vec(), values, "{what}: values");
}

/// Compares a decoded pickle tree with PyTorch's description of the same object.
pub fn assert_value(tf: &TorchFile, what: &str, v: &Value, want: &J) {
    if want.get("tensor").is_some() {
        let Value::Tensor(t) = v else { panic!("{what}: expected a tensor, got {v:?}") };
        let raw = tf.tensor(t).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_tensor(what, &raw, want);
    } else if let Some(items) = want.get("dict") {
        let entries = v.dict_entries().unwrap_or_else(|| panic!("{what}: expected a dict, got {v:?}"));
        let items = items.as_array().unwrap();
        assert_eq!(entries.len(), items.len(), "{what}: dict size");
        for ((k, x), item) in entries.iter().zip(items) {
            let key = item[0].as_str().unwrap();
            assert_eq!(k.as_str(), Some(key), "{what}: key order");
            assert_value(tf, &format!("{what}.{key}"), x, &item[1]);
        }
    } else if let Some(items) = want.get("list").or(want.get("tuple")) {
        let (Value::List(xs) | Value::Tuple(xs)) = v else { panic!("{what}: expected a sequence, got {v:?}") };
        let items = items.as_array().unwrap();
        assert_eq!(xs.len(), items.len(), "{what}: length");
        for (i, (x, item)) in xs.iter().zip(items).enumerate() {
            assert_value(tf, &format!("{what}[{i}]"), x, item);
        }
    } else {
        let want = &want["value"];
        let ok = match (v, want) {
            (Value::None, J::Null) => true,
            (Value::Bool(b), J::Bool(w)) => b == w,
            (Value::Int(i), J::Number(n)) => n.as_i64() == Some(*i),
            (Value::Float(f), J::Number(n)) => n.as_f64() == Some(*f),
            (Value::Str(s), J::String(w)) => s == w,
            _ => false,
        };
        assert!(ok, "{what}: got {v:?}, want {want}");
    }
}

#[path = "support/skip.rs"]
mod skip;
#[allow(unused_imports)]
pub use skip::skip;

#[path = "support/realworld.rs"]
mod realworld;

/// See `formats/tests/support/realworld.rs`.
#[allow(dead_code)]
pub fn realworld_dir(test: &str) -> Option<PathBuf> {
    realworld::realworld_dir(&repo(), test)
}

#[path = "support/python.rs"]
mod python;
#[allow(unused_imports)]
pub use python::reference_python;
