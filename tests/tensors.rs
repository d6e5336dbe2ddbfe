//! The bridge to libtorch: every dtype PyTorch wrote (fixtures/torch/dtypes.pt) reaches a
//! tch::Tensor with PyTorch's exact values, and comes back unchanged.
mod common;
use std::path::PathBuf;
use tch::{Kind, Tensor};
use textual_inversion::formats::pickle::Value;
use textual_inversion::formats::torch_file::TorchFile;
use textual_inversion::tensors::{from_tch, to_tch};

fn fixtures() -> PathBuf {
    common::fixtures().join("torch")
}

#[test]
fn every_dtype_reaches_libtorch_exactly() {
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap();
    let tf = TorchFile::open(&fixtures().join("dtypes.pt")).unwrap();
    let want = expected["files"]["dtypes.pt"]["dict"].as_array().unwrap();
    for item in want {
        let key = item[0].as_str().unwrap();
        let Some(Value::Tensor(t)) = tf.root.get(key) else { panic!("{key}") };
        let raw = tf.tensor(t).unwrap();
        let tensor = to_tch(&raw).unwrap();
        let values: Vec<f64> = Vec::<f64>::try_from(tensor.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let want: Vec<f64> = item[1]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(values, want, "{key}");
        assert_eq!(from_tch(&tensor).unwrap(), raw, "{key} round trip");
    }
}

#[test]
fn non_contiguous_tensors_are_copied_densely() {
    let t = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([3, 4]).transpose(0, 1);
    let raw = from_tch(&t).unwrap();
    assert_eq!(raw.shape, vec![4, 3]);
    assert_eq!(raw.to_f32_vec()[..4], [0.0, 4.0, 8.0, 1.0]);
}
