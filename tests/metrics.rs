//! Training metrics (src/train/metrics/): the TensorBoard event file decoded here (TFRecord
//! framing with both CRCs, the protobuf fields) and, where a Python with `tensorboard` is found
//! ($TI_PYTHON, or the environment scripts/dev/python-env.sh creates), read back by tensorboard's
//! own EventAccumulator through scripts/fixtures/check_tensorboard.py; CRC32C known answers;
//! metrics.jsonl, loss.png and the `--report_to` values.
mod common;
use serde_json::Value as J;
use std::path::{Path, PathBuf};
use tch::Tensor;
use textual_inversion::train::metrics::{self, crc32c, masked_crc32c, Metrics, Record, ReportTo, Rgb8};

// ---------------------------------------------------------------------------------------------
// An independent reader: TFRecord framing and the protobuf wire format.

/// The records of a TFRecord file, after checking both masked CRCs of each.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mask = |c: u32| c.rotate_right(15).wrapping_add(0xa282_ead8);
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = &bytes[at..at + 8];
        let len = u64::from_le_bytes(header.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(len_crc, mask(crc32c(header)), "length CRC of the record at byte {at}");
        let data = &bytes[at + 12..at + 12 + len];
        let data_crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(data_crc, mask(crc32c(data)), "data CRC of the record at byte {at}");
        out.push(data.to_vec());
        at += 16 + len;
    }
    assert_eq!(at, bytes.len(), "trailing bytes");
    out
}

#[derive(Debug, Clone)]
enum F {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(Vec<u8>),
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return v;
        }
    }
    panic!("varint too long")
}

/// (field number, value) pairs of one message.
fn fields(b: &[u8]) -> Vec<(u64, F)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let key = varint(b, &mut at);
        let v = match key & 7 {
            0 => F::Varint(varint(b, &mut at)),
            1 => {
                at += 8;
                F::Fixed64(b[at - 8..at].try_into().unwrap())
            }
            5 => {
                at += 4;
                F::Fixed32(b[at - 4..at].try_into().unwrap())
            }
            2 => {
                let n = varint(b, &mut at) as usize;
                at += n;
                F::Bytes(b[at - n..at].to_vec())
            }
            w => panic!("wire type {w}"),
        };
        out.push((key >> 3, v));
    }
    assert_eq!(at, b.len());
    out
}

fn one(fs: &[(u64, F)], field: u64) -> Option<F> {
    let found: Vec<_> = fs.iter().filter(|f| f.0 == field).collect();
    assert!(found.len() <= 1, "field {field} repeated");
    found.first().map(|f| f.1.clone())
}

fn bytes_of(f: Option<F>) -> Vec<u8> {
    match f {
        Some(F::Bytes(b)) => b,
        other => panic!("expected bytes, got {other:?}"),
    }
}

fn varint_of(f: Option<F>) -> u64 {
    match f {
        Some(F::Varint(v)) => v,
        None => 0,
        other => panic!("expected varint, got {other:?}"),
    }
}

#[derive(Debug)]
enum Decoded {
    Version(String),
    Scalar { tag: String, value: f32 },
    Image { tag: String, width: u64, height: u64, colorspace: u64, png: Vec<u8> },
}

/// (wall_time, step, content) of an `Event`.
fn event(b: &[u8]) -> (f64, u64, Decoded) {
    let fs = fields(b);
    let wall_time = match one(&fs, 1) {
        Some(F::Fixed64(x)) => f64::from_le_bytes(x),
        other => panic!("wall_time: {other:?}"),
    };
    let step = varint_of(one(&fs, 2));
    if let Some(v) = one(&fs, 3) {
        return (wall_time, step, Decoded::Version(String::from_utf8(bytes_of(Some(v))).unwrap()));
    }
    let summary = fields(&bytes_of(one(&fs, 5)));
    assert_eq!(summary.len(), 1, "one value per summary");
    let value = fields(&bytes_of(one(&summary, 1)));
    let tag = String::from_utf8(bytes_of(one(&value, 1))).unwrap();
    if let Some(F::Fixed32(x)) = one(&value, 2) {
        return (wall_time, step, Decoded::Scalar { tag, value: f32::from_le_bytes(x) });
    }
    let image = fields(&bytes_of(one(&value, 4)));
    let d = Decoded::Image {
        tag,
        height: varint_of(one(&image, 1)),
        width: varint_of(one(&image, 2)),
        colorspace: varint_of(one(&image, 3)),
        png: bytes_of(one(&image, 4)),
    };
    (wall_time, step, d)
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

// ---------------------------------------------------------------------------------------------

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// A gradient-accumulation run: 2 micro-steps per optimizer step, 3 epochs of 4 micro-steps.
fn logged() -> Vec<(u64, u64, u64, f64, f64)> {
    (0..12u64).map(|m| (m / 2 + 1, m + 1, m / 4, 0.1 + 0.03 * ((m * 7) % 5) as f64 + 1e-9, 5e-4 * (m + 1) as f64 / 12.0)).collect()
}

fn test_images() -> Vec<Rgb8> {
    (0..3u8).map(|k| Rgb8::new(8, 6, (0..8 * 6 * 3).map(|i| (i as u8).wrapping_mul(k + 1)).collect()).unwrap()).collect()
}

#[test]
fn crc32c_known_answers() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    // RFC 3720 (iSCSI) B.4 test vectors.
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    assert_eq!(crc32c(&(0..32u8).collect::<Vec<_>>()), 0x46DD_794E);
    assert_eq!(crc32c(&(0..32u8).rev().collect::<Vec<_>>()), 0x113F_DB5C);
    // Masked values from tensorboard's own masked_crc32c.
    assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    assert_eq!(masked_crc32c(&[0u8; 8]), 0x0798_0329);
}

#[test]
fn event_file_decodes_and_tensorboard_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let mut m = Metrics::new(dir.path(), "logs", ReportTo::Tensorboard).unwrap();
    for &(step, micro, epoch, loss, lr) in &logged() {
        m.log(step, micro, epoch, loss, lr).unwrap();
    }
    m.log_images(2, &test_images()).unwrap();
    m.finish().unwrap();
    let path = m.event_file().unwrap().to_path_buf();
    drop(m);

    let files = event_files(&dir.path().join("logs/textual_inversion"));
    assert_eq!(files, vec![path.clone()]);
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let secs: u64 = name.split('.').nth(3).unwrap().parse().unwrap();
    assert!(secs.abs_diff(t0 as u64) <= 5, "{name}");

    let events: Vec<_> = records(&std::fs::read(&path).unwrap()).iter().map(|r| event(r)).collect();
    assert_eq!(events.len(), 1 + 2 * logged().len() + 1);
    let (wt, step, Decoded::Version(v)) = &events[0] else { panic!("{:?}", events[0]) };
    assert_eq!((v.as_str(), *step), ("brain.Event:2", 0));
    assert!((wt - t0).abs() < 60.0);
    let mut expected_scalars = Vec::new();
    for (i, &(step, _, _, loss, lr)) in logged().iter().enumerate() {
        for (j, (tag, value)) in [("loss", loss), ("lr", lr)].into_iter().enumerate() {
            let (wt, s, d) = &events[1 + 2 * i + j];
            let Decoded::Scalar { tag: t, value: x } = d else { panic!("{d:?}") };
            assert_eq!((t.as_str(), *s, *x), (tag, step, value as f32));
            assert!(*wt >= events[0].0 && *wt - t0 < 60.0);
            expected_scalars.push((tag, step, value as f32));
        }
    }
    let (_, s, Decoded::Image { tag, width, height, colorspace, png }) = events.last().unwrap() else { panic!() };
    assert_eq!((tag.as_str(), *s, *width, *height, *colorspace), ("validation", 2, 24, 6, 3));
    // The grid: three 8x6 images side by side, as tensorboard's make_grid lays out add_images.
    let (w, h, pixels) = decode_png(png);
    assert_eq!((w, h), (24, 6));
    for (k, img) in test_images().iter().enumerate() {
        for y in 0..6 {
            let row = &pixels[(y * 24 + k * 8) * 3..(y * 24 + k * 8 + 8) * 3];
            assert_eq!(row, &img.data[y * 24..(y + 1) * 24], "image {k} row {y}");
        }
    }

    // tensorboard's own reader (checks CRCs too).
    let Some(py) = common::reference_python(&["tensorboard"], "the tensorboard cross-check") else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fixtures/check_tensorboard.py");
    let out = std::process::Command::new(&py).arg(&script).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: J = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["records"], events.len());
    assert_eq!(got["crcs_ok"], true);
    assert_eq!(got["canonical"], true, "each record re-serializes to the same bytes in Python");
    assert_eq!(got["file_version"], 2.0, "EventAccumulator keeps the version number of brain.Event:2");
    for tag in ["loss", "lr"] {
        let want: Vec<(u64, f32)> = expected_scalars.iter().filter(|e| e.0 == tag).map(|e| (e.1, e.2)).collect();
        let have: Vec<(u64, f32)> = got["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} scalars in {got}"))
            .iter()
            .map(|e| (e[0].as_u64().unwrap(), e[1].as_f64().unwrap() as f32))
            .collect();
        assert_eq!(have, want, "{tag}");
    }
    assert_eq!(got["images"]["validation"], serde_json::json!([[2, 24, 6, png.len()]]));
    eprintln!("tensorboard ({}) read the {} records back", py.display(), got["records"]);
}

#[test]
fn jsonl_lines_parse_and_resume_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Metrics::new(dir.path(), "logs", ReportTo::None).unwrap();
    assert!(m.event_file().is_none());
    for &(step, micro, epoch, loss, lr) in &logged()[..6] {
        m.log(step, micro, epoch, loss, lr).unwrap();
    }
    m.log(4, 7, 1, f64::NAN, 1e-4).unwrap();
    drop(m);
    assert!(!dir.path().join("logs").exists(), "--report_to none writes no event file");
    // A crash mid-record leaves a partial line; the next run starts on a fresh line.
    let jsonl = dir.path().join(metrics::METRICS_FILE);
    std::fs::OpenOptions::new().append(true).open(&jsonl).unwrap().write_all_str("{\"step\": 4, \"mic");
    let mut m = Metrics::new(dir.path(), "logs", ReportTo::None).unwrap();
    for &(step, micro, epoch, loss, lr) in &logged()[6..] {
        m.log(step, micro, epoch, loss, lr).unwrap();
    }
    drop(m);

    let text = std::fs::read_to_string(&jsonl).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12 + 1 + 1);
    assert_eq!(lines[7], "{\"step\": 4, \"mic");
    let good: Vec<Record> = lines.iter().enumerate().filter(|(i, _)| *i != 7).map(|(_, l)| serde_json::from_str(l).unwrap()).collect();
    let keys: Vec<String> = serde_json::from_str::<J>(lines[0]).unwrap().as_object().unwrap().keys().cloned().collect();
    let mut want_keys = ["step", "micro_step", "epoch", "loss", "lr", "elapsed_s", "it_per_s"].map(String::from);
    want_keys.sort();
    assert_eq!(keys, want_keys);
    assert!(lines[0].starts_with("{\"step\":1,\"micro_step\":1,\"epoch\":0,\"loss\":"), "{}", lines[0]);
    let mut want: Vec<_> = logged();
    want.insert(6, (4, 7, 1, f64::NAN, 1e-4));
    for (r, &(step, micro, epoch, loss, lr)) in good.iter().zip(&want) {
        assert_eq!((r.step, r.micro_step, r.epoch, r.lr), (step, micro, epoch, Some(lr)));
        assert_eq!(r.loss, loss.is_finite().then_some(loss));
        assert!(r.elapsed_s >= 0.0 && r.elapsed_s < 60.0 && r.it_per_s >= 0.0 && r.it_per_s.is_finite(), "{r:?}");
    }
}

trait WriteStr {
    fn write_all_str(self, s: &str);
}
impl WriteStr for std::fs::File {
    fn write_all_str(mut self, s: &str) {
        std::io::Write::write_all(&mut self, s.as_bytes()).unwrap();
    }
}

#[test]
fn loss_png_is_written_and_plots_the_curve() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Metrics::new(dir.path(), "logs", ReportTo::None).unwrap();
    for i in 0..500u64 {
        let loss = 0.05 + 0.2 * (-(i as f64) / 150.0).exp() + 0.05 * ((i * 7919) % 13) as f64 / 13.0;
        m.log(i + 1, i + 1, 0, loss, 1e-3).unwrap();
    }
    m.finish().unwrap();
    if let Some(keep) = std::env::var_os("TI_KEEP_LOSS_PNG") {
        std::fs::copy(dir.path().join(metrics::LOSS_PNG), keep).unwrap(); // to look at it
    }
    let (w, h, px) = decode_png(&std::fs::read(dir.path().join(metrics::LOSS_PNG)).unwrap());
    assert_eq!((w, h), metrics::LOSS_PNG_SIZE);
    let count = |c: [u8; 3]| px.chunks(3).filter(|p| *p == c).count();
    assert!(count([170, 200, 240]) > 500, "raw loss pixels");
    assert!(count([20, 60, 160]) > 500, "smoothed curve pixels");
    assert!(count([90, 90, 90]) > 1000, "axes, ticks and labels");
    // No temporary file is left next to it.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
}

#[test]
fn loss_plot_survives_odd_input() {
    let cases: Vec<Vec<(u64, f64)>> = vec![
        vec![],
        vec![(5, 0.3)],
        vec![(1, 0.3), (2, 0.3), (3, 0.3)],
        vec![(1, 0.0), (2, 0.0)],
        vec![(1, f64::NAN), (2, f64::INFINITY), (3, 0.2), (4, f64::NEG_INFINITY)],
        vec![(1, 1e300), (2, -1e300), (3, 1e-300)],
        vec![(1, 1e-12), (2, 2e-12), (u64::MAX, 3e-12)],
        vec![(0, -5.0), (10, 5.0)],
    ];
    for points in cases {
        let img = metrics::loss_plot(&points, 200, 100);
        assert_eq!((img.width, img.height, img.data.len()), (200, 100, 200 * 100 * 3), "{points:?}");
        let (w, h, _) = decode_png(&img.to_png().unwrap());
        assert_eq!((w, h), (200, 100));
    }
    let s = metrics::smooth(&[1.0, 1.0, 1.0]);
    assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-12), "debiased EMA of a constant is the constant: {s:?}");
}

#[test]
fn empty_run_still_writes_loss_png() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Metrics::new(dir.path(), "logs", ReportTo::Tensorboard).unwrap();
    m.finish().unwrap();
    let (w, h, _) = decode_png(&std::fs::read(dir.path().join("loss.png")).unwrap());
    assert_eq!((w, h), metrics::LOSS_PNG_SIZE);
    let events = records(&std::fs::read(m.event_file().unwrap()).unwrap());
    assert_eq!(events.len(), 1, "only the file_version event");
}

#[test]
fn absolute_logging_dir_and_two_writers_in_one_second() {
    let out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let abs = logs.path().to_str().unwrap();
    let a = Metrics::new(out.path(), abs, ReportTo::Tensorboard).unwrap();
    let b = Metrics::new(out.path(), abs, ReportTo::Tensorboard).unwrap();
    assert_ne!(a.event_file(), b.event_file());
    assert_eq!(event_files(&logs.path().join("textual_inversion")).len(), 2);
    assert!(!out.path().join(abs.trim_start_matches('/')).exists());
}

#[test]
fn images_from_tensors_and_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Metrics::new(dir.path(), "logs", ReportTo::Tensorboard).unwrap();
    let pixels = Tensor::arange(10 * 4 * 5 * 3, (tch::Kind::Int64, tch::Device::Cpu)).remainder(256).to_kind(tch::Kind::Uint8).reshape([10, 4, 5, 3]);
    m.log_image_tensor(1, &pixels).unwrap();
    let events: Vec<_> = records(&std::fs::read(m.event_file().unwrap()).unwrap()).iter().map(|r| event(r)).collect();
    let (_, _, Decoded::Image { width, height, png, .. }) = &events[1] else { panic!() };
    // Ten 5x4 images: 8 columns, 2 rows, the six cells after the last one black.
    assert_eq!((*width, *height), (40, 8));
    let (_, _, px) = decode_png(png);
    let at = |x: usize, y: usize| &px[(y * 40 + x) * 3..(y * 40 + x) * 3 + 3];
    // Image 9 (row 1, column 1), its pixel (1, 1): flat index 9 * 60 + (1 * 5 + 1) * 3 = 558.
    assert_eq!(at(6, 5), &[46, 47, 48]);
    assert!((4..8).all(|y| (10..40).all(|x| at(x, y) == [0, 0, 0])));
    assert_eq!(at(0, 0), &[0, 1, 2]);

    let err = m.log_image_tensor(1, &Tensor::zeros([2, 4, 4], (tch::Kind::Uint8, tch::Device::Cpu))).unwrap_err();
    assert!(err.to_string().contains("expected [n, H, W, 3]"), "{err}");
    let err = m.log_image_tensor(1, &Tensor::zeros([1, 4, 4, 3], (tch::Kind::Float, tch::Device::Cpu))).unwrap_err();
    assert!(err.to_string().contains("u8"), "{err}");
    let mixed = [Rgb8::new(2, 2, vec![0; 12]).unwrap(), Rgb8::new(3, 2, vec![0; 18]).unwrap()];
    assert!(m.log_images(1, &mixed).unwrap_err().to_string().contains("different sizes"));
    assert!(m.log_images(1, &[]).is_err());
    assert!(Rgb8::new(2, 2, vec![0; 11]).is_err());
}

#[test]
fn report_to_values() {
    assert_eq!("tensorboard".parse::<ReportTo>().unwrap(), ReportTo::Tensorboard);
    assert_eq!("none".parse::<ReportTo>().unwrap(), ReportTo::None);
    assert_eq!(ReportTo::default(), ReportTo::Tensorboard);
    for v in ["wandb", "comet_ml", "all"] {
        let err = v.parse::<ReportTo>().unwrap_err().to_string();
        assert_eq!(err, format!("--report_to {v} is not available in this tool; use tensorboard or none"));
    }
    let err = "tensorbored".parse::<ReportTo>().unwrap_err().to_string();
    assert!(err.contains("tensorbored") && err.contains("use tensorboard or none"), "{err}");
}
