//! Hostile and broken input: every case is a clear error naming the problem, never a panic,
//! never an allocation driven by a size the file merely claims.
mod common;
use common::*;
use ti_formats::embeddings;
use ti_formats::pickle::{StorageRef, TensorRef, Value};
use ti_formats::torch_file::{TorchFile, TorchWriter};
use ti_formats::{DType, RawTensor};

fn err(bytes: &[u8]) -> String {
    embeddings::read_bytes("x", bytes).expect_err("must be refused").to_string()
}

#[test]
fn pickle_calling_os_system_is_refused_by_name() {
    let e = embeddings::read(&fixture("embeddings", "evil.pt")).unwrap_err().to_string();
    assert!(e.contains("posix.system") && e.contains("evil.pt"), "{e}");
}

#[test]
fn truncated_zip_is_an_error() {
    let bytes = std::fs::read(fixture("embeddings", "a1111.pt")).unwrap();
    for cut in [10, bytes.len() / 2, bytes.len() - 10] {
        let e = err(&bytes[..cut]);
        assert!(e.contains("zip") || e.contains("truncated") || e.contains("past the end"), "cut {cut}: {e}");
    }
}

/// A zip whose pickle claims `numel` elements while `data/0` holds 3 floats.
fn lying_storage(numel: usize) -> Vec<u8> {
    let mut w = TorchWriter::new();
    w.tensor(RawTensor::from_f32(vec![3], &[1.0, 2.0, 3.0]).unwrap());
    let t = Value::Tensor(Box::new(TensorRef {
        storage: StorageRef { key: "0".into(), dtype: DType::F32, numel, location: "cpu".into(), view: None },
        offset: 0,
        shape: vec![numel],
        stride: vec![1],
        requires_grad: false,
    }));
    w.to_bytes(&Value::Dict(vec![(Value::Str("<t>".into()), t)]), "archive").unwrap()
}

#[test]
fn storage_larger_than_the_file_is_refused() {
    let e = err(&lying_storage(1000));
    assert!(e.contains("claims 1000 elements") && e.contains("holds 12 bytes"), "{e}");
}

#[test]
fn terabyte_claims_are_refused_before_allocating() {
    // Pickle claiming 2^38 floats (1 TiB).
    let e = err(&lying_storage(1 << 38));
    assert!(e.contains("more than") || e.contains("claims"), "{e}");
    // safetensors header claiming a 1 TiB tensor.
    let header = br#"{"t":{"dtype":"F32","shape":[274877906944],"data_offsets":[0,1099511627776]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0; 16]);
    let e = err(&st);
    assert!(e.contains("safetensors"), "{e}");
    // safetensors header length claiming 1 TiB.
    let mut st = (1u64 << 40).to_le_bytes().to_vec();
    st.extend_from_slice(b"{}");
    assert!(embeddings::read_bytes("x", &st).is_err());
    // Zip record claiming to inflate to 1 TiB.
    let mut bytes = std::fs::read(fixture("torch", "deflated.pt")).unwrap();
    patch_uncompressed_sizes(&mut bytes, 1 << 39);
    let e = TorchFile::from_bytes("bomb.pt", bytes).err().expect("refused").to_string();
    assert!(e.contains("bomb.pt"), "{e}");
}

/// Rewrites the uncompressed-size fields of every zip header (local and central).
fn patch_uncompressed_sizes(bytes: &mut [u8], size: u64) {
    let v = (size.min(u32::MAX as u64 - 1) as u32).to_le_bytes();
    let mut i = 0;
    while i + 30 < bytes.len() {
        if bytes[i..].starts_with(b"PK\x03\x04") {
            bytes[i + 22..i + 26].copy_from_slice(&v);
        } else if bytes[i..].starts_with(b"PK\x01\x02") && i + 46 < bytes.len() {
            bytes[i + 24..i + 28].copy_from_slice(&v);
        }
        i += 1;
    }
}

#[test]
fn git_lfs_pointers_and_empty_files_are_named() {
    let e = err(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n");
    assert!(e.contains("not an embedding") || e.contains("LFS"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.safetensors");
    std::fs::write(&p, b"").unwrap();
    assert!(embeddings::read(&p).unwrap_err().to_string().contains("empty"));
    let p = dir.path().join("lfs.bin");
    std::fs::write(&p, b"version https://git-lfs.github.com/spec/v1\n").unwrap();
    assert!(embeddings::read(&p).unwrap_err().to_string().contains("git lfs pull"));
    assert!(embeddings::read(dir.path()).unwrap_err().to_string().contains("folder"));
}

/// Small deterministic generator so failures reproduce.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_bytes_and_mutated_files_never_panic() {
    let mut rng = XorShift(0x9E3779B97F4A7C15);
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for section in ["embeddings", "torch"] {
        for entry in std::fs::read_dir(repo().join("fixtures").join(section)).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e != "json") {
                seeds.push(std::fs::read(p).unwrap());
            }
        }
    }
    for i in 0..3000 {
        let bytes: Vec<u8> = if i % 3 == 0 {
            let n = (rng.next() % 4096) as usize;
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            let mut b = seeds[(rng.next() as usize) % seeds.len()].clone();
            for _ in 0..1 + rng.next() % 8 {
                let at = (rng.next() as usize) % b.len();
                b[at] = rng.next() as u8;
            }
            if rng.next() % 4 == 0 {
                b.truncate((rng.next() as usize) % b.len());
            }
            b
        };
        let _ = embeddings::read_bytes("fuzz", &bytes);
        let _ = ti_formats::pickle::load(&bytes, 0, "fuzz");
        if let Ok(tf) = TorchFile::from_bytes("fuzz", bytes.clone()) {
            for (_, t) in tf.tensors() {
                let _ = tf.tensor(t);
            }
        }
    }
}

#[test]
fn two_hundred_thousand_tensors_open_and_list_in_seconds() {
    // Anything quadratic in the number of tensors takes minutes here.
    let n = 200_000;
    let tensors: Vec<(String, RawTensor)> = (0..n).map(|i| (format!("<tok{i}>"), RawTensor::from_f32(vec![1], &[i as f32]).unwrap())).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.safetensors");
    ti_formats::safetensors_io::save(&path, &tensors, None).unwrap();
    let start = std::time::Instant::now();
    let st = ti_formats::safetensors_io::SafetensorsFile::open(&path).unwrap();
    assert_eq!(st.view().unwrap().names().len(), n);
    let f = embeddings::read(&path).unwrap();
    assert_eq!(f.embeddings.len(), n);
    let last = f.embeddings.iter().find(|e| e.stored_token.as_deref() == Some("<tok199999>")).unwrap();
    assert_eq!(last.parts[0].tensor.to_f32_vec(), [199_999.0]);
    let took = start.elapsed();
    eprintln!("{n} tensors: opened, listed and read in {took:?}");
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
}
