//! The training dataset against the Python script's preprocessing (fixtures/dataset, from
//! scripts/fixtures/make_fixtures_dataset.py with Pillow 12.0.0, numpy, torch 2.11.0, torchvision 0.26.0).
//!
//! Tolerances: none. On identical RGB input, crop + resize + flip + scaling are bit-identical to
//! Pillow's `resize(BICUBIC)` and the script's numpy code (max error 0, asserted). Every file
//! here (JPEG, CMYK JPEG, PNG, WebP lossless, GIF) decodes to Pillow's exact pixels, so the
//! whole pipeline is exact too (JPEG in every form: tests/jpeg.rs).
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};
use textual_inversion::train::dataset::{
    caption, center_crop, flip_from_torch_rand, load_rgb, placeholder_string, preprocess, resize_bicubic, to_pixels, Dataset, ImageOrder, LearnableProperty,
    MAX_PIXELS, OBJECT_TEMPLATES, STYLE_TEMPLATES,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/dataset")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

fn tensors() -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(dir().join("expected.safetensors")).unwrap().into_iter().collect()
}

fn rgb_from(t: &Tensor) -> image::RgbImage {
    let s = t.size();
    let (h, w) = (s[0] as u32, s[1] as u32);
    let len = (h * w * 3) as usize;
    let mut data = vec![0u8; len];
    t.copy_data_u8(&mut data, len);
    image::RgbImage::from_raw(w, h, data).unwrap()
}

/// Max abs difference between two u8 images of the same size.
fn max_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn templates_are_the_scripts() {
    let e = expected();
    assert_eq!(OBJECT_TEMPLATES.len(), 27);
    assert_eq!(STYLE_TEMPLATES.len(), 19);
    let obj: Vec<&str> = e["object_templates"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let sty: Vec<&str> = e["style_templates"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(LearnableProperty::Object.templates(), obj.as_slice());
    assert_eq!(LearnableProperty::Style.templates(), sty.as_slice());
    // The duplicates are kept (they double those captions' probability).
    assert_eq!(STYLE_TEMPLATES[2], STYLE_TEMPLATES[11]);
    assert_eq!(STYLE_TEMPLATES[9], STYLE_TEMPLATES[13]);
    let placeholder = placeholder_string(&["<cat-toy>", "<cat-toy>_1", "<cat-toy>_2"]);
    assert_eq!(placeholder, "<cat-toy> <cat-toy>_1 <cat-toy>_2");
    assert_eq!(caption(OBJECT_TEMPLATES[0], &placeholder), "a photo of a <cat-toy> <cat-toy>_1 <cat-toy>_2");
    assert_eq!(caption(STYLE_TEMPLATES[18], "<x{}>"), "a large painting in the style of <x{}>");
    assert_eq!(placeholder_string(&["<t>".to_string()]), "<t>");
}

#[test]
fn resize_is_bit_identical_to_pillow() {
    let e = expected();
    let t = tensors();
    let src = load_rgb(&dir().join("images/toy-4.png")).unwrap().rgb; // lossless: Pillow's pixels
    let small = rgb_from(&t["resize/small_source"]);
    let mut checked = 0;
    for (key, wh) in e["resize_cases"].as_object().unwrap() {
        let (w, h) = (wh[0].as_u64().unwrap() as u32, wh[1].as_u64().unwrap() as u32);
        let input = if key.starts_with("resize/small_") { &small } else { &src };
        let ours = resize_bicubic(input, w, h).unwrap();
        assert_eq!(max_diff(&ours, &rgb_from(&t[key])), 0, "{key}");
        checked += 1;
    }
    assert_eq!(checked, 12);
    // Same size: a copy, as Pillow.
    assert_eq!(resize_bicubic(&src, src.width(), src.height()).unwrap(), src);
    assert!(resize_bicubic(&src, 0, 5).is_err());
}

#[test]
fn center_crop_takes_the_scripts_rows_and_columns() {
    // w = 7, h = 4: c = 4, columns [(7-4)//2, (7+4)//2) = [1, 5); rows [0, 4).
    let img = image::RgbImage::from_fn(7, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
    let c = center_crop(&img);
    assert_eq!(c.dimensions(), (4, 4));
    assert_eq!(c.get_pixel(0, 0).0, [1, 0, 0]);
    assert_eq!(c.get_pixel(3, 3).0, [4, 3, 0]);
    // h - c odd: h = 9, w = 4: rows [2, 6).
    let img = image::RgbImage::from_fn(4, 9, |x, y| image::Rgb([x as u8, y as u8, 0]));
    assert_eq!(center_crop(&img).get_pixel(0, 0).0, [0, 2, 0]);
}

/// Crop + resize equals the script exactly for every clean image, resolution and crop setting,
/// and our JPEG decoding is Pillow's.
#[test]
fn clean_images_preprocess_like_the_script() {
    let e = expected();
    let t = tensors();
    for name in e["clean"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()) {
        let ours = load_rgb(&dir().join("images").join(name)).unwrap().rgb;
        if let Some(pillow) = t.get(&format!("decoded/{name}")) {
            assert_eq!(max_diff(&ours, &rgb_from(pillow)), 0, "{name}: decoded unlike Pillow");
        }
        for size in [64u32, 96] {
            for crop in [0, 1] {
                let want = rgb_from(&t[&format!("images/{name}/r{size}_c{crop}")]);
                assert_eq!(max_diff(&preprocess(&ours, size, crop == 1).unwrap(), &want), 0, "{name} r{size} c{crop}");
            }
        }
    }
}

/// The full `pixel_values` (flip, then `x / 127.5 - 1.0` as float32, CHW) from the Dataset.
#[test]
fn pixel_values_equal_the_scripts() {
    let t = tensors();
    let crop = Dataset::load(&dir().join("images"), 64, true, 2).unwrap();
    let idx = crop.images().iter().position(|i| i.path.ends_with("toy-2.png")).unwrap();
    let want = &t["images/toy-2.png/r64_c1_f1_pixels"];
    let got = crop.pixels(idx, true).unwrap();
    assert_eq!(got.size(), [3, 64, 64]);
    assert_eq!(got.kind(), Kind::Float);
    assert!(got.equal(want), "flipped pixels differ by {}", (&got - want).abs().max().double_value(&[]));

    let stretch = Dataset::load(&dir().join("images"), 64, false, 1).unwrap();
    let idx = stretch.images().iter().position(|i| i.path.ends_with("toy-4.png")).unwrap();
    assert!(stretch.pixels(idx, false).unwrap().equal(&t["images/toy-4.png/r64_c0_f0_pixels"]));
    // Flip is a mirror of the unflipped values.
    assert!(stretch.pixels(idx, true).unwrap().equal(&stretch.pixels(idx, false).unwrap().flip([2])));
    let base = preprocess(&load_rgb(&dir().join("images/toy-4.png")).unwrap().rgb, 64, false).unwrap();
    assert!(to_pixels(&base, false).equal(&t["images/toy-4.png/r64_c0_f0_pixels"]));
}

/// A folder larger than the resident budget is decoded again when drawn: the same pixels as
/// the kept ones, and a file changed since the start is an error naming it.
#[test]
fn folders_past_the_memory_budget_decode_again_with_equal_pixels() {
    let kept = Dataset::load(&dir().join("images"), 64, true, 1).unwrap();
    let again = Dataset::load_bounded(&dir().join("images"), 64, true, 1, Default::default(), None, 0).unwrap();
    assert_eq!(again.num_images(), kept.num_images());
    for i in 0..kept.num_images() {
        for flip in [false, true] {
            assert!(again.pixels(i, flip).unwrap().equal(&kept.pixels(i, flip).unwrap()), "image {i} flip {flip}");
        }
    }
    let d = tempfile::tempdir().unwrap();
    for name in ["a.png", "b.png"] {
        std::fs::copy(dir().join("images/toy-2.png"), d.path().join(name)).unwrap();
    }
    let lazy = Dataset::load_bounded(d.path(), 32, true, 1, Default::default(), None, 0).unwrap();
    std::fs::write(d.path().join("a.png"), b"not an image any more").unwrap();
    std::fs::write(d.path().join("b.png"), b"not an image any more").unwrap();
    let e = format!("{:#}", lazy.pixels(0, false).unwrap_err());
    assert!(e.contains(".png") && e.contains("again"), "{e}");
}

#[test]
fn length_repeats_and_batches() {
    let ds = Dataset::load(&dir().join("images"), 32, true, 5).unwrap();
    assert_eq!(ds.num_images(), 4);
    assert_eq!(ds.len(), 20);
    assert_eq!(ds.image_index(13), 1);
    // The directory's own order (the script's os.listdir), or sorted names with ImageOrder::Sorted.
    let names: Vec<_> = ds.images().iter().map(|i| i.path.file_name().unwrap().to_owned()).collect();
    let listed: Vec<_> = std::fs::read_dir(dir().join("images")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, listed);
    let sorted = Dataset::load_ordered(&dir().join("images"), 32, true, 5, ImageOrder::Sorted).unwrap();
    let names: Vec<_> = sorted.images().iter().map(|i| i.path.file_name().unwrap().to_owned()).collect();
    assert_eq!(names, ["toy-1.jpg", "toy-2.png", "toy-3.jpg", "toy-4.png"]);
    assert_eq!(sorted.images()[0].original_size, (144, 192));
    let ds = sorted;
    let batch = ds.batch(&[(0, false), (5, true), (19, false)]).unwrap();
    assert!(ds.batch(&[]).is_err());
    assert_eq!(batch.size(), [3, 3, 32, 32]);
    assert!(batch.get(1).equal(&ds.pixels(1, true).unwrap()));
    assert!(batch.get(2).equal(&ds.pixels(3, false).unwrap()));
    let (lo, hi) = (batch.min().double_value(&[]), batch.max().double_value(&[]));
    assert!((-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi));
    assert!(Dataset::load(&dir().join("images"), 0, true, 1).is_err());
    assert!(Dataset::load(&dir().join("images"), 64, true, 0).is_err());
}

#[test]
fn flips_follow_torch_rand_like_torchvision() {
    let e = expected();
    for (seed, want) in e["flips"].as_object().unwrap() {
        tch::manual_seed(seed.parse().unwrap());
        let got: Vec<bool> = (0..want.as_array().unwrap().len()).map(|_| flip_from_torch_rand()).collect();
        let want: Vec<bool> = want.as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
        assert_eq!(got, want, "seed {seed}");
    }
}

/// A `tracing` writer into a shared buffer, to see what the user sees.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn load_logged(path: &Path, size: u32, crop: bool, repeats: usize) -> (anyhow::Result<Dataset>, String) {
    let out = Captured::default();
    let sink = out.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).with_max_level(tracing::Level::INFO).finish();
    let result = tracing::subscriber::with_default(subscriber, || Dataset::load(path, size, crop, repeats));
    let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    (result, log)
}

/// The messy folder, copied so that entries git may not keep (`.DS_Store`, folders) exist.
fn messy_copy() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_dir() {
                copy(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    copy(&dir().join("mixed"), tmp.path());
    let jpeg = dir().join("mixed/rgb.jpg");
    for sub in [".ipynb_checkpoints", "more"] {
        std::fs::create_dir_all(tmp.path().join(sub)).unwrap();
        std::fs::copy(&jpeg, tmp.path().join(sub).join("copy.jpg")).unwrap();
    }
    std::fs::write(tmp.path().join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    tmp
}

#[test]
fn messy_folder_skips_with_one_warning_and_converts_the_rest() {
    let e = expected();
    let t = tensors();
    let tmp = messy_copy();
    let (ds, log) = load_logged(tmp.path(), 64, true, 3);
    let ds = ds.unwrap();
    println!("{log}");
    let mixed = e["mixed"].as_object().unwrap();
    let used: Vec<&String> = mixed.iter().filter(|(_, v)| v["port"] == "used").map(|(k, _)| k).collect();
    let mut names: Vec<String> = ds.images().iter().map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    names.sort(); // taken in directory order; `used` is sorted
    assert_eq!(names, used.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(ds.len(), used.len() * 3);
    for (i, img) in ds.images().iter().enumerate() {
        let name = img.path.file_name().unwrap().to_string_lossy().into_owned();
        let want = &mixed[&name];
        assert_eq!(img.source_mode, want["source_mode"], "{name}");
        let size = (want["height"].as_u64().unwrap() as u32, want["width"].as_u64().unwrap() as u32);
        assert_eq!(img.original_size, size, "{name}");
        let d = max_diff(&ds.resized(i).unwrap(), &rgb_from(&t[&format!("mixed/{name}/r64_c1")]));
        println!("{name} ({}): max error {d} levels vs Pillow", img.source_mode);
        assert_eq!(d, 0, "{name}");
    }
    // Skipped: each with its reason, all in ONE warning.
    let skipped: BTreeMap<String, String> =
        ds.skipped().iter().map(|s| (s.path.file_name().unwrap().to_string_lossy().into_owned(), s.reason.clone())).collect();
    let want_skipped: Vec<&String> = mixed.iter().filter(|(_, v)| v["port"] == "skipped").map(|(k, _)| k).collect();
    assert_eq!(skipped.keys().collect::<Vec<_>>(), want_skipped);
    assert_eq!(log.matches(" WARN ").count(), 1, "{log}");
    let warning = &log[log.find(" WARN ").unwrap()..];
    assert!(warning.contains(&format!("skipped {} of {} entries", want_skipped.len(), mixed.len())), "{warning}");
    for (name, reason) in &skipped {
        let key = mixed[name]["reason"].as_str().unwrap();
        assert!(reason.contains(key), "{name}: {reason:?} lacks {key:?}");
        assert!(warning.contains(&format!("{name}: {reason}")), "{name} missing from the warning");
    }
    assert!(skipped["huge.png"].contains("20000x20000"));
    assert!(skipped["huge.png"].contains(&format!("limit of {:.1}", MAX_PIXELS as f64 / 1e6)));
    // Conversions are reported once at INFO.
    assert_eq!(log.matches(" INFO ").count(), 1, "{log}");
    assert!(log.contains("cmyk.jpg (CMYK)") && log.contains("exif-rotate90.jpg (EXIF Rotate90)"), "{log}");
}

#[test]
fn exif_orientation_is_applied() {
    let t = tensors();
    let rot90 = load_rgb(&dir().join("mixed/exif-rotate90.jpg")).unwrap();
    assert_eq!(rot90.rgb.dimensions(), (72, 96)); // stored 96 x 72, shown portrait
    assert_eq!(rot90.orientation, image::metadata::Orientation::Rotate90);
    let d = max_diff(&preprocess(&rot90.rgb, 64, false).unwrap(), &rgb_from(&t["mixed/exif-rotate90.jpg/r64_c0"]));
    assert_eq!(d, 0, "exif-rotate90.jpg stretched");
    let rot270 = load_rgb(&dir().join("mixed/exif-rotate270.png")).unwrap();
    assert_eq!(rot270.rgb.dimensions(), (72, 80));
    assert_eq!(rot270.orientation, image::metadata::Orientation::Rotate270);
    let want = rgb_from(&t["mixed/exif-rotate270.png/r64_c0"]);
    assert_eq!(max_diff(&preprocess(&rot270.rgb, 64, false).unwrap(), &want), 0);
}

#[test]
fn no_usable_image_is_an_error_naming_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Dataset::load(tmp.path(), 64, false, 1).err().unwrap().to_string();
    assert!(err.contains(&tmp.path().display().to_string()) && err.contains("empty"), "{err}");

    std::fs::write(tmp.path().join("notes.txt"), "captions").unwrap();
    std::fs::create_dir(tmp.path().join("photos")).unwrap();
    std::fs::copy(dir().join("images/toy-1.jpg"), tmp.path().join("photos/toy-1.jpg")).unwrap();
    let (result, log) = load_logged(tmp.path(), 64, false, 1);
    let err = format!("{:#}", result.err().unwrap());
    assert!(err.contains("no usable image") && err.contains(&tmp.path().display().to_string()), "{err}");
    assert!(err.contains("notes.txt: not an image") && err.contains("photos: a folder"), "{err}");
    assert!(!log.contains("WARN"), "the error already lists them: {log}");

    let missing = tmp.path().join("nope");
    let err = format!("{:#}", Dataset::load(&missing, 64, false, 1).err().unwrap());
    assert!(err.contains("nope"), "{err}");
}

/// FIFOs and links to devices in a training folder are skipped by name, never read (a FIFO
/// would block, `/dev/zero` never ends).
#[test]
fn special_files_in_the_folder_are_skipped_unread() {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(dir().join("images/toy-2.png"), d.path().join("a.png")).unwrap();
    let fifo = std::ffi::CString::new(d.path().join("pipe.png").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("/dev/zero", d.path().join("zero.png")).unwrap();
    let ds = Dataset::load(d.path(), 32, true, 1).unwrap();
    assert_eq!(ds.num_images(), 1);
    let reasons: Vec<String> = ds.skipped().iter().map(|s| s.reason.clone()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
}
