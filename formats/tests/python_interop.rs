//! Our writers' files, loaded by PyTorch (`torch.load(weights_only=True)`, safetensors) and by
//! diffusers' `load_textual_inversion`, through scripts/fixtures/check_interop.py.
//!
//! Runs where a Python with torch and diffusers is available: $TI_PYTHON, or the pinned
//! environment that scripts/dev/python-env.sh creates. Elsewhere it says so and passes.
mod common;
use common::repo;
use serde_json::{json, Value as J};
use std::collections::HashMap;
use std::path::Path;
use ti_formats::embeddings::{self, Embedding, Encoder, OutFormat, Part};
use ti_formats::pickle::Value;
use ti_formats::torch_file::TorchWriter;
use ti_formats::{DType, RawTensor};

fn describe_tensor(t: &RawTensor) -> J {
    json!({"tensor": t.dtype.torch_name(), "shape": t.shape, "values": t.to_f64_vec()})
}

fn describe(v: &Value, tensors: &HashMap<String, RawTensor>) -> J {
    match v {
        Value::Tensor(t) => describe_tensor(&tensors[&t.storage.key]),
        Value::Dict(items) => {
            json!({"dict": items.iter().map(|(k, x)| json!([k.as_str().unwrap(), describe(x, tensors)])).collect::<Vec<_>>()})
        }
        Value::List(items) => {
            json!({"list": items.iter().map(|x| describe(x, tensors)).collect::<Vec<_>>()})
        }
        Value::Tuple(items) => {
            json!({"tuple": items.iter().map(|x| describe(x, tensors)).collect::<Vec<_>>()})
        }
        Value::Bytes(b) => json!({"bytes": b}),
        Value::None => json!({"value": null}),
        Value::Bool(b) => json!({"value": b}),
        Value::Int(i) => json!({"value": i}),
        Value::Float(f) => json!({"value": f}),
        Value::Str(s) => json!({"value": s}),
        other => panic!("cannot describe {other:?}"),
    }
}

fn rows(n: usize, width: usize, seed: f32) -> RawTensor {
    let v: Vec<f32> = (0..n * width).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
    RawTensor::from_f32(vec![n, width], &v).unwrap()
}

fn embedding_entry(path: &Path, tokens: &[&str], t: &RawTensor, token_arg: Option<&str>) -> J {
    let width = t.shape[1];
    let rows: Vec<Vec<f32>> = t.to_f32_vec().chunks(width).map(|c| c.to_vec()).collect();
    json!({"path": path, "tokens": tokens, "rows": rows, "width": width, "token_arg": token_arg})
}

#[test]
fn pytorch_and_diffusers_load_our_files() {
    let Some(py) = common::reference_python(&["torch", "diffusers"], "pytorch_and_diffusers_load_our_files") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut files = Vec::new();
    let mut embeds = Vec::new();

    // A general object tree with every dtype and plain value our pickler writes.
    let mut w = TorchWriter::new();
    let mut tensors = HashMap::new();
    let mut add = |w: &mut TorchWriter, t: RawTensor| {
        let v = w.tensor(t.clone());
        if let Value::Tensor(r) = &v {
            tensors.insert(r.storage.key.clone(), t);
        }
        v
    };
    let f32s = rows(3, 4, 0.0);
    let i64s = RawTensor::new(DType::I64, vec![3], [-1i64, 0, 1 << 40].iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap();
    let root = Value::Dict(vec![
        (Value::Str("f32".into()), add(&mut w, f32s.clone())),
        (Value::Str("f16".into()), add(&mut w, f32s.cast(DType::F16).unwrap())),
        (Value::Str("bf16".into()), add(&mut w, f32s.cast(DType::BF16).unwrap())),
        (Value::Str("f64".into()), add(&mut w, f32s.cast(DType::F64).unwrap())),
        (Value::Str("i64".into()), add(&mut w, i64s)),
        (Value::Str("scalar".into()), add(&mut w, RawTensor::from_f32(vec![], &[2.5]).unwrap())),
        (
            Value::Str("meta".into()),
            Value::Dict(vec![
                (Value::Str("int".into()), Value::Int(5)),
                (Value::Str("neg".into()), Value::Int(-70000)),
                (Value::Str("big".into()), Value::Int(1 << 40)),
                (Value::Str("float".into()), Value::Float(1.5)),
                (Value::Str("none".into()), Value::None),
                (Value::Str("flag".into()), Value::Bool(true)),
                (Value::Str("text".into()), Value::Str("é <tok>".into())),
                (Value::Str("list".into()), Value::List(vec![Value::Int(1), Value::Str("a".into())])),
                (Value::Str("tuple".into()), Value::Tuple((0..5).map(Value::Int).collect())),
                (Value::Str("bytes".into()), Value::Bytes(vec![0, 127, 255])),
            ]),
        ),
    ]);
    let general = d.join("general.pt");
    w.save(&general, &root).unwrap();
    files.push(json!({"path": general, "expect": describe(&root, &tensors)}));

    // Embeddings in every format we write.
    let t = rows(2, 32, 1.0);
    let emb = Embedding { stored_token: None, parts: vec![Part { encoder: Encoder::TextEncoder, tensor: t.clone() }] };
    let expect_dict = |key: &str, t: &RawTensor| json!({"dict": [[key, describe_tensor(t)]]});
    for (name, format) in [("learned_embeds.safetensors", OutFormat::Diffusers), ("learned_embeds.bin", OutFormat::DiffusersBin)] {
        let p = d.join(name);
        embeddings::write(&p, format, "<cat-toy>", &emb, None, None).unwrap();
        files.push(json!({"path": p, "expect": expect_dict("<cat-toy>", &t)}));
        embeds.push(embedding_entry(&p, &["<cat-toy>", "<cat-toy>_1"], &t, None));
    }
    let a1111 = d.join("my-style.pt");
    embeddings::write(&a1111, OutFormat::A1111, "my-style", &emb, None, None).unwrap();
    files.push(json!({"path": a1111, "expect": {"dict": [
        ["string_to_token", {"dict": [["*", {"value": 265}]]}],
        ["string_to_param", {"dict": [["*", describe_tensor(&t)]]}],
        ["name", {"value": "my-style"}],
        ["step", {"value": null}],
        ["sd_checkpoint", {"value": null}],
        ["sd_checkpoint_name", {"value": null}],
    ]}}));
    embeds.push(embedding_entry(&a1111, &["my-style", "my-style_1"], &t, None));
    // As training writes it (--save_format a1111): step and model name from the run.
    let trained = d.join("trained.pt");
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("step".to_string(), "500".to_string());
    metadata.insert("sd_checkpoint_name".to_string(), "sd15".to_string());
    let run =
        embeddings::EmbeddingFile { kind: embeddings::FileKind::TorchZip("trained".into()), layout: embeddings::Layout::A1111, metadata, embeddings: vec![] };
    embeddings::write(&trained, OutFormat::A1111, "trained", &emb, Some(&run), None).unwrap();
    files.push(json!({"path": trained, "expect": {"dict": [
        ["string_to_token", {"dict": [["*", {"value": 265}]]}],
        ["string_to_param", {"dict": [["*", describe_tensor(&t)]]}],
        ["name", {"value": "trained"}],
        ["step", {"value": 500}],
        ["sd_checkpoint", {"value": null}],
        ["sd_checkpoint_name", {"value": "sd15"}],
    ]}}));
    // kohya's layout (--save_format kohya, convert --format kohya).
    let kohya = d.join("my-kohya.safetensors");
    embeddings::write(&kohya, OutFormat::Kohya, "my-kohya", &emb, None, None).unwrap();
    files.push(json!({"path": kohya, "expect": expect_dict("emb_params", &t)}));
    embeds.push(embedding_entry(&kohya, &["my-kohya", "my-kohya_1"], &t, Some("my-kohya")));
    let single = Embedding { stored_token: None, parts: vec![Part { encoder: Encoder::TextEncoder, tensor: rows(1, 32, 2.0) }] };
    let p = d.join("one.safetensors");
    embeddings::write(&p, OutFormat::Diffusers, "<one>", &single, None, None).unwrap();
    embeds.push(embedding_entry(&p, &["<one>"], &rows(1, 32, 2.0), None));
    let (l, g) = (rows(2, 768, 3.0), rows(2, 1280, 4.0));
    let sdxl =
        Embedding { stored_token: None, parts: vec![Part { encoder: Encoder::ClipL, tensor: l.clone() }, Part { encoder: Encoder::ClipG, tensor: g.clone() }] };
    let p = d.join("sdxl.safetensors");
    embeddings::write(&p, OutFormat::Sdxl, "x", &sdxl, None, None).unwrap();
    files.push(json!({"path": p, "expect": {"dict": [["clip_g", describe_tensor(&g)], ["clip_l", describe_tensor(&l)]]}}));

    let manifest = d.join("manifest.json");
    std::fs::write(&manifest, serde_json::to_vec(&json!({"files": files, "embeddings": embeds})).unwrap()).unwrap();
    let out = std::process::Command::new(&py).arg(repo().join("scripts/fixtures/check_interop.py")).arg(&manifest).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "PyTorch/diffusers refused our files");
    assert_eq!(stdout.matches("ok  ").count(), files.len() + embeds.len());
}
