//! JPEG decoding against Pillow 12.0.0's `Image.open(p).convert("RGB")` (fixtures/jpeg, from
//! scripts/fixtures/make_fixtures_jpeg.py): baseline 4:2:0/4:2:2/4:4:4/4:4:0/4:1:1,
//! progressive, optimised tables, greyscale, Adobe CMYK, YCCK, RGB without YCbCr, restart
//! markers, missing Huffman tables, scrambled entropy data, odd sizes down to 1x1.
//!
//! Tolerance: none. Every pixel of every file equals Pillow's (max difference 0, asserted), and
//! every file Pillow refuses is an error here too, never a panic or an abort.
mod common;

use std::path::PathBuf;
use textual_inversion::train::dataset::{load_rgb, MAX_PIXELS};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/jpeg")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

#[test]
fn every_form_decodes_to_pillows_exact_pixels() {
    let checked = common::assert_decodes_as_pillow(&dir());
    assert!(checked >= 20, "{checked} files");
}

/// What Pillow refuses is an error here, with a reason; nothing panics or aborts.
#[test]
fn files_pillow_refuses_are_errors() {
    let e = expected();
    let mut refused = 0;
    for (name, want) in e["files"].as_object().unwrap() {
        if want["pillow"] == "ok" {
            continue;
        }
        let err = format!("{:#}", load_rgb(&dir().join(name)).err().unwrap_or_else(|| panic!("{name}: decoded, Pillow says {}", want["pillow"])));
        println!("{name}: {err} (Pillow: {})", want["pillow"].as_str().unwrap());
        let reason = match name.as_str() {
            "truncated-header.jpg" | "truncated-scan.jpg" => "truncated",
            "precision-12.jpg" => "precision",
            "zero-width.jpg" => "empty",
            "missing-quant-table.jpg" => "quantization table",
            _ => "jpeg",
        };
        assert!(err.to_lowercase().contains(reason), "{name}: {err:?} lacks {reason:?}");
        refused += 1;
    }
    assert!(refused >= 5, "{refused} files");
}

/// Damage anywhere (every prefix of a file, bytes flipped at every 7th offset) gives pixels or
/// an error, never a panic or an abort: libjpeg's fatal errors unwind into a `Result`.
#[test]
fn damaged_files_never_panic_or_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("x.jpg");
    let (mut ok, mut errors) = (0, 0);
    for source in ["baseline-420.jpg", "progressive-420.jpg", "ycck.jpg"] {
        let good = std::fs::read(dir().join(source)).unwrap();
        let mut variants: Vec<Vec<u8>> = (1..good.len()).step_by(13).map(|n| good[..n].to_vec()).collect();
        for at in (2..good.len()).step_by(7) {
            let mut v = good.clone();
            v[at] ^= 0xA5;
            variants.push(v);
        }
        for v in variants {
            std::fs::write(&path, &v).unwrap();
            match load_rgb(&path) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(!format!("{e:#}").is_empty());
                    errors += 1;
                }
            }
        }
    }
    println!("{ok} damaged variants decoded, {errors} refused");
    assert!(ok > 0 && errors > 0);
}

/// The size comes from the frame header, before any pixel is decoded: a JPEG claiming 40000 x
/// 40000 is refused at once.
#[test]
fn oversized_frames_are_refused_before_decoding() {
    let mut data = std::fs::read(dir().join("baseline-420.jpg")).unwrap();
    let sof = data.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
    data[sof + 5..sof + 9].copy_from_slice(&[0x9C, 0x40, 0x9C, 0x40]); // height, width 40000
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.jpg");
    std::fs::write(&path, &data).unwrap();
    let start = std::time::Instant::now();
    let err = format!("{:#}", load_rgb(&path).err().unwrap());
    assert!(err.contains("40000x40000") && err.contains(&format!("limit of {:.1}", MAX_PIXELS as f64 / 1e6)), "{err}");
    assert!(start.elapsed().as_secs() < 5, "decoded before refusing");
}

/// Not a timed test: `cargo test --release --test jpeg -- --ignored --nocapture` prints how
/// long a 12-megapixel phone-sized JPEG (4000 x 3000, 4:2:0, quality 90) takes to decode here
/// and with the `image` crate's zune-jpeg (the decoder before).
#[test]
#[ignore]
fn decode_time_of_a_12_megapixel_photo() {
    let (w, h) = (4000u32, 3000u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let n = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) >> 27;
        image::Rgb([(x * 255 / w) as u8 ^ n as u8, (y * 255 / h) as u8, ((x / 7 + y / 5) % 2 * 180) as u8 + n as u8])
    });
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("phone.jpg");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
    drop(out);
    let bytes = std::fs::read(&path).unwrap();
    let time = |f: &dyn Fn()| {
        f();
        let runs = 5;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            f();
        }
        start.elapsed().as_secs_f64() / runs as f64
    };
    let ours = time(&|| {
        load_rgb(&path).unwrap();
    });
    let zune = time(&|| {
        let _ = image::load_from_memory(&bytes).unwrap().to_rgb8();
    });
    println!("12 MP JPEG ({} KB): load_rgb {:.0} ms, image crate (zune-jpeg) {:.0} ms", bytes.len() / 1024, ours * 1e3, zune * 1e3);
}
