//! `--enable_bucket`: kohya-ss/sd-scripts' aspect-ratio buckets.
//!
//! - kohya's own `make_bucket_resolutions`, `BucketManager.select_bucket`,
//!   `trim_and_resize_if_required` and `get_crop_ltrb`, run by scripts/fixtures/make_fixtures_buckets.py
//!   over hundreds of sizes and 8 settings (fixtures/buckets/kohya.json): every bucket list,
//!   bucket, resized size, crop offset and SDXL crop coordinate equal, exactly; the errors
//!   kohya raises are errors here; `--random_crop`'s offsets equal `random.randint` after
//!   `random.seed(S)`.
//! - the dataset: each image resized with the Pillow-exact bicubic then cut to its bucket;
//!   SDXL time ids from kohya's crop; `buckets.json`.
//! - end to end on fixtures/tiny-sd and tiny-sdxl: a folder of several shapes trains with one
//!   bucket per batch, the epoch arithmetic follows the bucket batches, and a resumed run equals
//!   an uninterrupted one bit for bit.
mod common;
use common::{embedding_rows, fixtures, repo};
use image::RgbImage;
use std::path::Path;
use std::process::Command;
use textual_inversion::train::dataset::buckets::{make_bucket_resolutions, sdxl_crop_top_left};
use textual_inversion::train::dataset::{resize_bicubic, BucketConfig, BucketManager, Dataset, Geometry, ImageOrder};
use textual_inversion::train::script_rng::Mt19937;

fn kohya() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("buckets/kohya.json")).unwrap()).unwrap()
}

fn pair(v: &serde_json::Value) -> (u32, u32) {
    (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
}

fn config(case: &serde_json::Value) -> BucketConfig {
    let n = |k: &str| case[k].as_u64().unwrap() as u32;
    BucketConfig {
        resolution: n("resolution"),
        min_bucket_reso: n("min_bucket_reso"),
        max_bucket_reso: n("max_bucket_reso"),
        bucket_reso_steps: n("bucket_reso_steps"),
        no_upscale: case["bucket_no_upscale"].as_bool().unwrap(),
        random_crop: false,
    }
}

#[test]
fn buckets_equal_kohyas_for_every_size_and_setting() {
    let k = kohya();
    let cases = k["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let mut checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg = config(case);
        cfg.check().unwrap();
        let manager = BucketManager::new(&cfg);
        let want: Vec<(u32, u32)> = case["predefined"].as_array().unwrap().iter().map(pair).collect();
        assert_eq!(manager.predefined(), &want[..], "{name}: make_bucket_resolutions");
        if !cfg.no_upscale {
            let area = u64::from(cfg.resolution).pow(2);
            assert_eq!(make_bucket_resolutions(area, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps), want, "{name}");
        }
        let mut used = std::collections::BTreeSet::new();
        for img in case["images"].as_array().unwrap() {
            let (w, h) = pair(&img["size"]);
            let got = manager.select(w, h);
            if img.get("error").is_some() {
                assert!(got.is_err(), "{name}: {w}x{h}: kohya raises {}, we chose {got:?}", img["error"]);
                continue;
            }
            let fit = got.unwrap_or_else(|e| panic!("{name}: {w}x{h}: {e:#}"));
            assert_eq!(fit.bucket, pair(&img["bucket"]), "{name}: {w}x{h}: bucket");
            assert_eq!(fit.resized, pair(&img["resized"]), "{name}: {w}x{h}: resized");
            used.insert(fit.bucket);
            if let Some(crop) = img.get("crop") {
                assert_eq!(fit.crop, pair(crop), "{name}: {w}x{h}: centre crop");
                let sdxl = |k: &str| (img[k][0].as_i64().unwrap(), img[k][1].as_i64().unwrap());
                assert_eq!(sdxl_crop_top_left(fit.bucket, (w, h), false), sdxl("sdxl_crop"), "{name}: {w}x{h}: crop_top_left");
                assert_eq!(sdxl_crop_top_left(fit.bucket, (w, h), true), sdxl("sdxl_crop_flipped"), "{name}: {w}x{h}: flipped crop_top_left");
            }
            checked += 1;
        }
        // kohya registers a bucket before `select_bucket` raises on its 0 height: those are not used.
        let buckets: Vec<(u32, u32)> = case["buckets"].as_array().unwrap().iter().map(pair).filter(|b| b.1 > 0).collect();
        assert_eq!(used.into_iter().collect::<Vec<_>>(), buckets, "{name}: the buckets used");
    }
    assert!(checked > 2000, "{checked}");
}

#[test]
fn random_crops_are_kohyas_randint_draws() {
    let k = kohya();
    let rc = &k["random_crop"];
    let case = k["cases"].as_array().unwrap().iter().find(|c| c["name"] == rc["setting"]).unwrap();
    let manager = BucketManager::new(&config(case));
    let mut rng = Mt19937::python(rc["seed"].as_u64().unwrap());
    let images = rc["images"].as_array().unwrap();
    assert!(images.len() > 100);
    let mut moved = 0;
    for img in images {
        let (w, h) = pair(&img["size"]);
        let fit = manager.select(w, h).unwrap().with_random_crop(&mut rng);
        assert_eq!(fit.crop, pair(&img["crop"]), "{w}x{h}");
        moved += usize::from(fit.crop != manager.select(w, h).unwrap().crop);
    }
    assert!(moved > 20, "{moved}");
}

#[test]
fn bad_bucket_flags_are_refused_with_the_flag_named() {
    let good = BucketConfig { resolution: 512, min_bucket_reso: 256, max_bucket_reso: 1024, bucket_reso_steps: 64, no_upscale: false, random_crop: false };
    good.check().unwrap();
    for (cfg, flag) in [
        (BucketConfig { bucket_reso_steps: 0, ..good.clone() }, "--bucket_reso_steps"),
        (BucketConfig { bucket_reso_steps: 12, ..good.clone() }, "--bucket_reso_steps"),
        (BucketConfig { min_bucket_reso: 100, ..good.clone() }, "--min_bucket_reso"),
        (BucketConfig { min_bucket_reso: 2048, max_bucket_reso: 1024, ..good.clone() }, "--min_bucket_reso"),
        (BucketConfig { max_bucket_reso: 256, ..good.clone() }, "--max_bucket_reso"),
    ] {
        let e = format!("{:#}", cfg.check().unwrap_err());
        assert!(e.contains(flag), "{e}");
    }
}

/// A textured image of `w x h`.
fn textured(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = x.wrapping_mul(2654435761).wrapping_add(y.wrapping_mul(40503)).wrapping_add(seed.wrapping_mul(977));
        image::Rgb([(v >> 3) as u8, (x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8])
    })
}

/// The tiny models' setting: buckets of 32 to 128 px by 16 around 64 x 64.
const TINY: [&str; 8] = ["--resolution", "64", "--enable_bucket", "--min_bucket_reso", "32", "--max_bucket_reso", "128", "--bucket_reso_steps"];

fn tiny_config() -> BucketConfig {
    BucketConfig { resolution: 64, min_bucket_reso: 32, max_bucket_reso: 128, bucket_reso_steps: 16, no_upscale: false, random_crop: false }
}

/// Images of several shapes: landscape, portrait, square, wide, tall.
const SHAPES: [(u32, u32); 6] = [(96, 64), (64, 96), (80, 80), (120, 60), (70, 50), (50, 70)];

fn shapes_folder(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("shapes");
    std::fs::create_dir_all(&data).unwrap();
    for (i, &(w, h)) in SHAPES.iter().enumerate() {
        textured(w, h, i as u32).save(data.join(format!("img-{i}-{w}x{h}.png"))).unwrap();
    }
    data
}

#[test]
fn dataset_resizes_then_cuts_each_image_to_its_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes_folder(dir.path());
    let cfg = tiny_config();
    let ds = Dataset::load_bucketed(&data, &cfg, 2, ImageOrder::Sorted, None).unwrap();
    let manager = BucketManager::new(&cfg);
    let mut sizes = std::collections::BTreeSet::new();
    for (i, img) in ds.images().iter().enumerate() {
        let (h, w) = img.original_size;
        let fit = manager.fit(w, h).unwrap();
        assert_eq!(ds.geometry(i), Some(Geometry::Bucket(fit)));
        let src = image::open(&img.path).unwrap().to_rgb8();
        let want = image::imageops::crop_imm(&resize_bicubic(&src, fit.resized.0, fit.resized.1).unwrap(), fit.crop.0, fit.crop.1, fit.bucket.0, fit.bucket.1)
            .to_image();
        assert_eq!(*ds.resized(i).unwrap(), want, "{}", img.path.display());
        assert_eq!(ds.pixels(i, false).unwrap().size(), [3, i64::from(fit.bucket.1), i64::from(fit.bucket.0)]);
        for flip in [false, true] {
            let (top, left) = sdxl_crop_top_left(fit.bucket, (w, h), flip);
            assert_eq!(ds.time_ids(i, flip), [i64::from(h), i64::from(w), top, left, i64::from(fit.bucket.1), i64::from(fit.bucket.0)]);
        }
        sizes.insert(fit.bucket);
    }
    assert!(sizes.len() >= 3, "{sizes:?}");
    let table = ds.bucket_table().unwrap();
    assert_eq!(table.iter().map(|(_, n)| n).sum::<usize>(), ds.len());
}

fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .arg("-v")
        .arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(model)
        .arg("--train_data_dir")
        .arg(data)
        .args(["--placeholder_token", "<s>", "--initializer_token", "toy", "--num_vectors", "2", "--learning_rate", "5e-3"])
        .args(["--repeats", "2", "--report_to", "none", "--seed", "5", "--sort_images"])
        .args(TINY)
        .arg("16")
        .arg("--output_dir")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err + &String::from_utf8_lossy(&o.stdout)
}

#[test]
fn trains_with_one_bucket_per_batch_writes_buckets_json_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes_folder(dir.path());
    let model = repo().join("fixtures/tiny-sd");
    let straight = dir.path().join("straight");
    let common = ["--train_batch_size", "2", "--max_train_steps", "8", "--checkpointing_steps", "3"];
    let log = ok(train(&model, &data, &straight, &common));

    // buckets.json: exactly the specified shape, kohya's choices.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(straight.join("buckets.json")).unwrap()).unwrap();
    assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), ["buckets", "images"]);
    let manager = BucketManager::new(&tiny_config());
    let mut counts = std::collections::BTreeMap::new();
    for (i, &(w, h)) in SHAPES.iter().enumerate() {
        let entry = &json["images"][format!("img-{i}-{w}x{h}.png")];
        let fit = manager.fit(w, h).unwrap();
        assert_eq!(entry.as_object().unwrap().len(), 2, "{entry}");
        assert_eq!((pair(&entry["bucket"]), pair(&entry["resized"])), (fit.bucket, fit.resized), "{w}x{h}");
        *counts.entry(fit.bucket).or_insert(0u64) += 2;
    }
    let listed: Vec<((u32, u32), u64)> = json["buckets"].as_array().unwrap().iter().map(|b| (pair(&b["resolution"]), b["count"].as_u64().unwrap())).collect();
    assert_eq!(listed, counts.clone().into_iter().collect::<Vec<_>>());
    for ((w, h), n) in &counts {
        assert!(log.contains(&format!("resolution ({w}, {h}), count: {n}")), "the bucket table is logged");
    }

    // Every micro-step's batch is one bucket (the trainer refuses a mixed one), drawn at its size.
    let steps: Vec<&str> = log.lines().filter(|l| l.contains(": bucket Some(")).collect();
    assert_eq!(steps.len(), 8, "{log}");
    // The epoch is the bucket batches: per bucket ceil(count / 2).
    let per_epoch: u64 = counts.values().map(|n| n.div_ceil(2)).sum();
    assert!(log.contains(&format!("Num Epochs = {}", 8u64.div_ceil(per_epoch))), "{log}");

    // Resuming from checkpoint-6 ends where the uninterrupted run ends, bit for bit.
    let resumed = dir.path().join("resumed");
    ok(train(&model, &data, &resumed, &["--train_batch_size", "2", "--max_train_steps", "6", "--checkpointing_steps", "3"]));
    ok(train(&model, &data, &resumed, &[&common[..], &["--resume_from_checkpoint", "latest"]].concat()));
    assert_eq!(embedding_rows(&resumed.join("learned_embeds.safetensors")), embedding_rows(&straight.join("learned_embeds.safetensors")));
    // And buckets change the run (the square path is another run).
    let square = dir.path().join("square");
    let o = Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(&model)
        .arg("--train_data_dir")
        .arg(&data)
        .args(["--placeholder_token", "<s>", "--initializer_token", "toy", "--num_vectors", "2", "--learning_rate", "5e-3", "--resolution", "64"])
        .args(["--repeats", "2", "--report_to", "none", "--seed", "5", "--sort_images", "--train_batch_size", "2", "--max_train_steps", "8"])
        .arg("--output_dir")
        .arg(&square)
        .output()
        .unwrap();
    ok(o);
    assert!(!square.join("buckets.json").exists());
    assert_ne!(embedding_rows(&square.join("learned_embeds.safetensors")), embedding_rows(&straight.join("learned_embeds.safetensors")));
}

#[test]
fn random_crop_trains_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes_folder(dir.path());
    let model = repo().join("fixtures/tiny-sd");
    let straight = dir.path().join("straight");
    let common = ["--random_crop", "--train_batch_size", "3", "--max_train_steps", "4", "--checkpointing_steps", "2"];
    ok(train(&model, &data, &straight, &common));
    let resumed = dir.path().join("resumed");
    ok(train(&model, &data, &resumed, &["--random_crop", "--train_batch_size", "3", "--max_train_steps", "2", "--checkpointing_steps", "2"]));
    ok(train(&model, &data, &resumed, &[&common[..], &["--resume_from_checkpoint", "latest"]].concat()));
    assert_eq!(embedding_rows(&resumed.join("learned_embeds.safetensors")), embedding_rows(&straight.join("learned_embeds.safetensors")));
    // Other bucket flags would replay other batches: refused, both settings named.
    let o = train(&model, &data, &resumed, &["--train_batch_size", "3", "--max_train_steps", "6", "--resume_from_checkpoint", "latest"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--bucket_reso_steps 16 --random_crop; this run is with --enable_bucket"), "{err}");
}

#[test]
fn sdxl_trains_with_buckets_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes_folder(dir.path());
    let model = fixtures().join("tiny-sdxl");
    let straight = dir.path().join("straight");
    let common = ["--train_batch_size", "2", "--max_train_steps", "4", "--checkpointing_steps", "2"];
    let log = ok(train(&model, &data, &straight, &common));
    assert!(straight.join("learned_embeds_2.safetensors").is_file());
    assert_eq!(log.lines().filter(|l| l.contains(": bucket Some(")).count(), 4);
    let resumed = dir.path().join("resumed");
    ok(train(&model, &data, &resumed, &["--train_batch_size", "2", "--max_train_steps", "2", "--checkpointing_steps", "2"]));
    ok(train(&model, &data, &resumed, &[&common[..], &["--resume_from_checkpoint", "latest"]].concat()));
    for f in ["learned_embeds.safetensors", "learned_embeds_2.safetensors"] {
        assert_eq!(embedding_rows(&resumed.join(f)), embedding_rows(&straight.join(f)), "{f}");
    }
}

#[test]
fn bucket_flags_without_enable_bucket_or_with_center_crop_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes_folder(dir.path());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
            .arg("train")
            .arg("--pretrained_model_name_or_path")
            .arg(repo().join("fixtures/tiny-sd"))
            .arg("--train_data_dir")
            .arg(&data)
            .args(["--placeholder_token", "<s>", "--initializer_token", "toy", "--resolution", "64", "--output_dir"])
            .arg(dir.path().join("o"))
            .args(args)
            .output()
            .unwrap()
    };
    for (args, want) in [
        (&["--random_crop"][..], "--random_crop has no effect without --enable_bucket"),
        (&["--bucket_reso_steps", "32"][..], "--bucket_reso_steps has no effect without --enable_bucket"),
        (&["--enable_bucket", "--center_crop"][..], "--center_crop and --enable_bucket"),
        (&["--enable_bucket", "--bucket_reso_steps", "20"][..], "--bucket_reso_steps must be a positive multiple of 8"),
        (&["--enable_bucket", "--max_bucket_reso", "32", "--min_bucket_reso", "16"][..], "--max_bucket_reso (32) must be at least --resolution (64)"),
    ] {
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    }
}

/// Data-parallel: each rank's share of the bucket batches (batch k on rank k mod 2), one bucket
/// per batch on every rank, and a 2-rank resume ends with the uninterrupted run's rows.
#[test]
fn two_ranks_train_with_buckets_and_resume_exactly() {
    if !common::c10d_available("buckets::two_ranks_train_with_buckets_and_resume_exactly".into()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = shapes_folder(dir.path());
    let model = repo().join("fixtures/tiny-sd");
    let straight = dir.path().join("straight");
    let common = ["--num_processes", "2", "--train_batch_size", "2", "--max_train_steps", "5", "--checkpointing_steps", "2"];
    let log = ok(train(&model, &data, &straight, &common));
    assert!(log.matches(": bucket Some(").count() >= 5, "{log}");
    let resumed = dir.path().join("resumed");
    ok(train(&model, &data, &resumed, &["--num_processes", "2", "--train_batch_size", "2", "--max_train_steps", "2", "--checkpointing_steps", "2"]));
    ok(train(&model, &data, &resumed, &[&common[..], &["--resume_from_checkpoint", "latest"]].concat()));
    assert_eq!(embedding_rows(&resumed.join("learned_embeds.safetensors")), embedding_rows(&straight.join("learned_embeds.safetensors")));
}

/// Masks go through their image's bucket geometry (`Geometry::apply`): an RGBA folder with
/// `--alpha_mask` trains with buckets, and each kept mask has its bucket's size.
#[test]
fn alpha_masks_follow_the_bucket_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rgba");
    std::fs::create_dir_all(&data).unwrap();
    for (i, &(w, h)) in SHAPES.iter().enumerate() {
        let rgb = textured(w, h, i as u32);
        let rgba = image::RgbaImage::from_fn(w, h, |x, y| {
            let p = rgb.get_pixel(x, y);
            image::Rgba([p[0], p[1], p[2], if x < w / 2 { 255 } else { 0 }])
        });
        rgba.save(data.join(format!("img-{i}.png"))).unwrap();
    }
    let ds = Dataset::load_bucketed(&data, &tiny_config(), 1, ImageOrder::Sorted, None)
        .unwrap()
        .with_masks(Some(&textual_inversion::train::dataset::masks::MaskSource::Alpha), false)
        .unwrap();
    for i in 0..ds.num_images() {
        let (w, h) = ds.geometry(i).unwrap().size();
        let m = ds.mask(i, false).unwrap().unwrap();
        assert_eq!(m.size(), [1, i64::from(h), i64::from(w)]);
    }
    ok(train(&repo().join("fixtures/tiny-sd"), &data, &dir.path().join("o"), &["--alpha_mask", "--train_batch_size", "2", "--max_train_steps", "2"]));
}
