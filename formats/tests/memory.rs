//! Hostile files that are small on disk but could cost gigabytes: each case runs in a child
//! process (this test binary, filtered to the one test) whose peak resident memory (`VmHWM`) must
//! stay under [`LIMIT_MIB`]. The child also runs under an address-space limit, so a regression
//! fails the test instead of exhausting the machine. The inputs are generated here, never
//! committed.
#![cfg(target_os = "linux")]
use std::io::Write;
use std::process::Command;
use ti_formats::pickle::{self, StorageRef, TensorRef, Value};
use ti_formats::torch_file::{TorchFile, TorchWriter};
use ti_formats::{DType, RawTensor};

/// What every case may use at its peak, test harness included.
const LIMIT_MIB: u64 = 300;
/// The child's address-space limit (`ulimit -v`, KiB).
const ADDRESS_SPACE_KIB: u64 = 3 << 20;
/// Set in the child: the name of the test whose case it runs.
const CHILD: &str = "TI_FORMATS_MEMORY_CASE";

/// Runs `case` in a child process (with `env` added to its environment) and returns its peak
/// resident memory in MiB. In the child it runs `case` itself, prints the peak, and returns 0.
fn peak_mib(test: &str, env: &[(&str, &std::ffi::OsStr)], case: impl FnOnce()) -> u64 {
    if std::env::var(CHILD).is_ok_and(|t| t == test) {
        case();
        println!("\npeak-rss-kib={}", vm_hwm_kib());
        return 0;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{test}: child failed ({}):\n{stdout}\n{stderr}", out.status);
    let kib: u64 = stdout
        .lines()
        .find_map(|l| l.split_once("peak-rss-kib=").map(|(_, n)| n))
        .unwrap_or_else(|| panic!("{test}: the child printed no peak:\n{stdout}\n{stderr}"))
        .trim()
        .parse()
        .unwrap();
    eprintln!("{test}: peak resident memory {} MiB", kib >> 10);
    kib >> 10
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Writes a record's content in pieces, so large records never sit in memory.
type Fill<'a> = &'a dyn Fn(&mut dyn Write);

/// A zip holding `records` under `archive/`, deflated.
fn deflated_zip(records: &[(&str, Fill)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(true);
    for (name, fill) in records {
        zip.start_file(format!("archive/{name}"), opts).unwrap();
        fill(&mut zip);
    }
    zip.finish().unwrap().into_inner()
}

fn write_repeated(w: &mut dyn Write, byte: u8, n: usize) {
    let chunk = vec![byte; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        w.write_all(&chunk[..k]).unwrap();
        left -= k;
    }
}

#[test]
fn memo_copies_of_a_large_list_are_charged() {
    let peak = peak_mib("memo_copies_of_a_large_list_are_charged", &[], || {
        // A list of 2^13 values built by doubling through the memo, then memoized 10,000 more
        // times (one byte each): every MEMOIZE copies the whole list.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..12 {
            p.extend_from_slice(&[b'(', b'h', 0, b'h', 0, b'l', b'q', 0]);
        }
        p.extend(std::iter::repeat_n(0x94, 10_000)); // MEMOIZE
        p.push(b'.');
        assert!(p.len() < 11_000);
        let e = pickle::load(&p, 0, "memo.pkl").expect_err("must be refused").to_string();
        assert!(e.contains("memo.pkl") && e.contains("too many values"), "{e}");
    });
    assert!(peak < LIMIT_MIB, "peak {peak} MiB");
}

#[test]
fn a_small_zip_of_a_huge_pickle_is_refused_within_the_value_budget() {
    let peak = peak_mib("a_small_zip_of_a_huge_pickle_is_refused_within_the_value_budget", &[], || {
        // 16 MiB of NONE opcodes, deflated to about 16 KiB.
        let pkl = |w: &mut dyn Write| {
            w.write_all(&[0x80, 2]).unwrap();
            write_repeated(w, b'N', 16 << 20);
            w.write_all(b".").unwrap();
        };
        let bytes = deflated_zip(&[("data.pkl", &pkl)]);
        assert!(bytes.len() < 64 << 10, "{} bytes", bytes.len());
        let e = TorchFile::from_bytes("nones.pt", bytes).err().expect("must be refused").to_string();
        assert!(e.contains("nones.pt") && e.contains("too many values"), "{e}");
    });
    assert!(peak < LIMIT_MIB, "peak {peak} MiB");
}

fn view(numel: usize, offset: usize, shape: &[usize], stride: &[usize]) -> Value {
    Value::Tensor(Box::new(TensorRef {
        storage: StorageRef { key: "0".into(), dtype: DType::F32, numel, location: "cpu".into(), view: None },
        offset,
        shape: shape.to_vec(),
        stride: stride.to_vec(),
        requires_grad: false,
    }))
}

#[test]
fn a_tensor_inflates_only_the_bytes_it_reaches() {
    let peak = peak_mib("a_tensor_inflates_only_the_bytes_it_reaches", &[], || {
        // One 1 GiB deflated record (about 1 MiB in the zip) viewed by one-element tensors at
        // its start and at its end, and by a two-element view of both ends.
        let numel = 1usize << 28;
        let root = Value::Dict(vec![
            (Value::Str("first".into()), view(numel, 0, &[1], &[1])),
            (Value::Str("last".into()), view(numel, numel - 1, &[1], &[1])),
            (Value::Str("ends".into()), view(numel, 0, &[2], &[numel - 1])),
        ]);
        let pkl_bytes = pickle::dump(&root).unwrap();
        let pkl = |w: &mut dyn Write| w.write_all(&pkl_bytes).unwrap();
        let storage = |w: &mut dyn Write| write_repeated(w, 0, numel * 4);
        let bytes = deflated_zip(&[("data.pkl", &pkl), ("data/0", &storage)]);
        assert!(bytes.len() < 4 << 20, "{} bytes", bytes.len());
        let tf = TorchFile::from_bytes("bomb.pt", bytes).unwrap();
        for (key, t) in tf.tensors() {
            let raw = tf.tensor(t).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert!(raw.to_f32_vec().iter().all(|&x| x == 0.0), "{key}");
        }
    });
    assert!(peak < LIMIT_MIB, "peak {peak} MiB");
}

#[test]
fn a_view_repeating_one_element_is_not_materialised() {
    let peak = peak_mib("a_view_repeating_one_element_is_not_materialised", &[], || {
        // One stored float viewed as 2^30 copies (stride 0): 4 GiB as a dense tensor.
        let mut w = TorchWriter::new();
        w.tensor(RawTensor::from_f32(vec![1], &[1.0]).unwrap());
        let root = Value::Dict(vec![(Value::Str("t".into()), view(1, 0, &[1 << 30], &[0]))]);
        let bytes = w.to_bytes(&root, "archive").unwrap();
        let tf = TorchFile::from_bytes("expand.pt", bytes).unwrap();
        let Some(Value::Tensor(t)) = tf.root.get("t") else { panic!("{:?}", tf.root) };
        let e = tf.tensor(t).expect_err("must be refused").to_string();
        assert!(e.contains("expand.pt: storage 0") && e.contains("repeats"), "{e}");
    });
    assert!(peak < LIMIT_MIB, "peak {peak} MiB");
}

#[test]
fn a_huge_png_without_an_embedding_is_read_row_by_row() {
    let test = "a_huge_png_without_an_embedding_is_read_row_by_row";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.png");
    if std::env::var_os(CHILD).is_none() {
        // 16384 x 16384 greyscale (256 MiB of pixels, well under 1 MiB as a PNG), no text chunk.
        let side = 16384u32;
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut enc = png::Encoder::new(file, side, side);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap().into_stream_writer().unwrap();
        let row: Vec<u8> = (0..side).map(|x| (x % 251 + 1) as u8).collect();
        for _ in 0..side {
            w.write_all(&row).unwrap();
        }
        w.finish().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 4 << 20);
    }
    let peak = peak_mib(test, &[("TI_FORMATS_MEMORY_PNG", path.as_os_str())], || {
        let path = std::path::PathBuf::from(std::env::var("TI_FORMATS_MEMORY_PNG").unwrap());
        let e = ti_formats::embeddings::read(&path).expect_err("no embedding").to_string();
        assert!(e.contains("huge.png") && e.contains("without an embedding"), "{e}");
    });
    assert!(peak < LIMIT_MIB, "peak {peak} MiB");
}
