//! Every torch.save variant the fixture script wrote with real PyTorch reads back to the values
//! PyTorch itself loads (exact equality: no conversion is lossy).
mod common;
use common::*;
use ti_formats::pickle::{TensorRef, Value};
use ti_formats::torch_file::{Container, TorchFile, TorchWriter};
use ti_formats::{DType, RawTensor};

#[test]
fn every_fixture_matches_pytorch() {
    let files = expected("torch");
    assert!(files.len() >= 12);
    for (name, want) in &files {
        let tf = TorchFile::open(&fixture("torch", name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_value(&tf, name, &tf.root, want);
    }
}

/// torch names the record folder after the file stem, so the stem's length sets the length of
/// every record name and central-directory entry: each length from 1 to 64 reads back.
#[test]
fn every_stem_length_reads_back() {
    let files = expected("torch-stems");
    let mut lengths = Vec::new();
    for (name, want) in &files {
        let path = fixture("torch-stems", name);
        let tf = TorchFile::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let stem = name.strip_suffix(".pt").unwrap();
        assert_eq!(tf.container, Container::Zip { prefix: stem.into() }, "{name}");
        assert_value(&tf, name, &tf.root, want);
        let f = ti_formats::embeddings::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(f.embeddings.len(), 1, "{name}");
        lengths.push(stem.len());
    }
    lengths.sort();
    assert_eq!(lengths, (1..=64).collect::<Vec<_>>());
}

#[test]
fn containers_are_recognised() {
    let open = |n: &str| TorchFile::open(&fixture("torch", n)).unwrap();
    assert_eq!(open("legacy.pt").container, Container::Legacy);
    assert_eq!(open("deflated.pt").container, Container::Zip { prefix: "some_other_name".into() });
    // torch ≥ 2 names the record folder after the file stem.
    assert_eq!(open("views.pt").container, Container::Zip { prefix: "views".into() });
}

#[test]
fn shared_storage_views_share_bytes() {
    let tf = TorchFile::open(&fixture("torch", "views.pt")).unwrap();
    let get = |k: &str| match tf.root.get(k) {
        Some(Value::Tensor(t)) => t.clone(),
        other => panic!("{k}: {other:?}"),
    };
    let (a, row) = (get("shared_a"), get("shared_row"));
    assert_eq!(a.storage.key, row.storage.key, "one storage for a tensor and its row");
    assert_eq!(row.offset, 12);
    assert_eq!(get("expanded").stride, vec![1, 0]);
}

fn sample() -> Vec<(String, RawTensor)> {
    let f32s = RawTensor::from_f32(vec![2, 3], &[1.0, -2.5, 3.25, 0.0, 1e-8, -7.0]).unwrap();
    let f16 = f32s.cast(DType::F16).unwrap();
    let bf16 = f32s.cast(DType::BF16).unwrap();
    let i64s = RawTensor::new(DType::I64, vec![3], [-1i64, 0, 1 << 40].iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap();
    let scalar = RawTensor::from_f32(vec![], &[3.5]).unwrap();
    let empty = RawTensor::from_f32(vec![0, 4], &[]).unwrap();
    vec![("f32".into(), f32s), ("f16".into(), f16), ("bf16".into(), bf16), ("i64".into(), i64s), ("scalar".into(), scalar), ("empty".into(), empty)]
}

#[test]
fn writer_roundtrips_through_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("learned_embeds.bin");
    ti_formats::torch_file::save_tensor_dict(&path, sample()).unwrap();
    let tf = TorchFile::open(&path).unwrap();
    assert_eq!(tf.container, Container::Zip { prefix: "learned_embeds".into() });
    let got = tf.tensors();
    let want = sample();
    assert_eq!(got.len(), want.len());
    for ((k, t), (wk, wt)) in got.iter().zip(&want) {
        assert_eq!(k, wk);
        assert_eq!(&tf.tensor(t).unwrap(), wt, "{k}");
    }
}

#[test]
fn writer_layout_matches_torch_save() {
    // Same record order as torch 2.x, every record's data 64-byte aligned, nothing compressed.
    let mut w = TorchWriter::new();
    let t = w.tensor(RawTensor::from_f32(vec![1, 3], &[1.0, 2.0, 3.0]).unwrap());
    let bytes = w.to_bytes(&Value::Dict(vec![(Value::Str("<tok>".into()), t)]), "learned_embeds").unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
    let names: Vec<String> = (0..zip.len()).map(|i| zip.by_index(i).unwrap().name().unwrap().to_string()).collect();
    assert_eq!(names, ["data.pkl", ".format_version", ".storage_alignment", "byteorder", "data/0", "version"].map(|n| format!("learned_embeds/{n}")));
    for i in 0..zip.len() {
        let f = zip.by_index(i).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
        assert_eq!(f.data_start().unwrap() % 64, 0, "{:?} aligned", f.name());
    }
}

/// The same archive with every record deflated.
fn deflate_records(bytes: &[u8]) -> Vec<u8> {
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut zout = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        zout.start_file(name, opts).unwrap();
        std::io::copy(&mut f, &mut zout).unwrap();
    }
    zout.finish().unwrap().into_inner()
}

#[test]
fn deflated_records_read_like_stored_ones() {
    // torch's views (transposed, sliced, expanded, shared), and sparse views of a larger storage
    // (a column, every 100th element) that are read element by element.
    let mut w = TorchWriter::new();
    let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let Value::Tensor(base) = w.tensor(RawTensor::from_f32(vec![10, 100], &values).unwrap()) else { unreachable!() };
    let sparse = |offset, shape: &[usize], stride: &[usize]| {
        Value::Tensor(Box::new(TensorRef { offset, shape: shape.to_vec(), stride: stride.to_vec(), ..(*base).clone() }))
    };
    let root = Value::Dict(vec![
        (Value::Str("column".into()), sparse(7, &[10], &[100])),
        (Value::Str("every_100th".into()), sparse(3, &[2, 5], &[500, 100])),
        (Value::Str("corners".into()), sparse(0, &[2, 2], &[900, 99])),
    ]);
    let ours = w.to_bytes(&root, "sparse").unwrap();
    let views = std::fs::read(fixture("torch", "views.pt")).unwrap();
    for (name, stored) in [("sparse.pt", ours), ("views.pt", views)] {
        let a = TorchFile::from_bytes(name, stored.clone()).unwrap();
        let b = TorchFile::from_bytes(name, deflate_records(&stored)).unwrap();
        let (ta, tb) = (a.tensors(), b.tensors());
        assert_eq!(ta.len(), tb.len());
        for ((k, x), (_, y)) in ta.iter().zip(&tb) {
            assert_eq!(a.tensor(x).unwrap(), b.tensor(y).unwrap(), "{name}: {k}");
        }
    }
    let tf = TorchFile::from_bytes("sparse.pt", deflate_records(&w.to_bytes(&root, "sparse").unwrap())).unwrap();
    let Some(Value::Tensor(column)) = tf.root.get("column") else { panic!() };
    assert_eq!(tf.tensor(column).unwrap().to_f32_vec(), (0..10).map(|i| (7 + 100 * i) as f32).collect::<Vec<_>>());
}
