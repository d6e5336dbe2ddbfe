//! Masked loss (`--alpha_mask`, `--mask_dir`) against what kohya's sd-scripts and OneTrainer
//! compute (fixtures/masks, from scripts/fixtures/make_fixtures_masks.py, which imports their
//! `apply_masked_loss` and `masked_losses`); the masks' preprocessing against Pillow; one masked
//! step of the tiny model against PyTorch; then `train` end to end on the tiny model.
//!
//! Tolerances: losses within 1e-6 relative of kohya's reduction (`mean([1,2,3])` then the batch
//! mean, where the plain MSE here is one `F.mse_loss` mean of `pred·√w`, `target·√w`), their
//! gradients within 1e-5 (observed 2.0e-7 and 1.2e-7); an all-ones mask exactly the unmasked loss
//! and gradient; masks after crop and resize exactly Pillow's bytes; the model step as
//! tests/train_replay.rs (loss 1e-5, gradient 1e-4).
mod common;
use common::{ok, rel_err, repo};
use image::{GrayImage, Rgba, RgbaImage};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};
use textual_inversion::models::config::Named;
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::ModelRepo;
use textual_inversion::models::stable_diffusion::{self as sd, WeightOptions};
use textual_inversion::models::weights::Placement;
use textual_inversion::schedulers::{DdpmScheduler, SchedulerConfig};
use textual_inversion::train::config::{HuberSchedule, LossConfig, LossKind};
use textual_inversion::train::dataset::masks::{load_alpha, load_grey, mask_tensor, preprocess_mask, MaskSource};
use textual_inversion::train::dataset::{Dataset, ImageOrder, RESIDENT_BYTES};
use textual_inversion::train::step::{loss_of, loss_of_masked, loss_with, StepInputs};

fn dir() -> PathBuf {
    common::fixtures().join("masks")
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir().join(name)).unwrap().into_iter().collect()
}

fn record() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("record.json")).unwrap()).unwrap()
}

fn ddpm() -> DdpmScheduler {
    let mut cfg = SchedulerConfig::read(&repo().join("fixtures/tiny-sd/scheduler/scheduler_config.json")).unwrap();
    cfg.prediction_type = Some(Named::parse("epsilon"));
    DdpmScheduler::new(&cfg).unwrap()
}

fn objective(c: &serde_json::Value) -> LossConfig {
    let kind = match c["loss_type"].as_str().unwrap() {
        "l2" => LossKind::L2,
        "huber" => LossKind::Huber,
        _ => LossKind::SmoothL1,
    };
    let huber_schedule = match c["huber_schedule"].as_str() {
        Some("constant") => HuberSchedule::Constant,
        Some("exponential") => HuberSchedule::Exponential,
        _ => HuberSchedule::Snr,
    };
    LossConfig {
        kind,
        huber_c: c["huber_c"].as_f64().unwrap_or(0.1),
        huber_schedule,
        huber_scale: 1.0,
        snr_gamma: c["snr_gamma"].as_f64(),
        unmasked_weight: c["unmasked_weight"].as_f64().unwrap(),
        normalize_masked_area_loss: c["normalize_masked_area_loss"].as_bool().unwrap(),
        ..LossConfig::default()
    }
}

#[test]
fn masked_losses_match_kohya_and_onetrainer() {
    let t = tensors("losses.safetensors");
    let cases = record()["losses"].as_object().unwrap().clone();
    assert_eq!(cases.len(), 11);
    let sched = ddpm();
    for (name, c) in cases {
        let get = |k: &str| t[&format!("{name}/{k}")].shallow_clone();
        let p = get("pred").detach().copy().set_requires_grad(true);
        let mask = get("mask").unsqueeze(1);
        let loss = loss_of_masked(&p, &get("target"), Some(&mask), &get("timesteps"), &sched, &objective(&c)).unwrap();
        loss.backward();
        let (e_loss, e_grad) = (rel_err(&loss.detach(), &get("loss")), rel_err(&p.grad(), &get("grad")));
        // The mask matters: without it the gradient is another, far beyond the tolerance (the
        // normalised loss itself can come close: the random masks do not follow the errors).
        let q = get("pred").detach().copy().set_requires_grad(true);
        loss_of(&q, &get("target"), &get("timesteps"), &sched, &objective(&c)).unwrap().backward();
        let e_unmasked = rel_err(&q.grad(), &get("grad"));
        eprintln!("{name}: loss rel {e_loss:.2e}, grad rel {e_grad:.2e} (unmasked gradient: {e_unmasked:.2e})");
        assert!(e_loss < 1e-6 && e_grad < 1e-5, "{name}: loss {e_loss:.2e}, grad {e_grad:.2e}");
        assert!(e_unmasked > 1e-2, "{name}: masking changed nothing");
    }
}

#[test]
fn an_all_ones_mask_is_the_unmasked_loss_bit_for_bit() {
    let t = tensors("losses.safetensors");
    let sched = ddpm();
    for (name, c) in record()["losses"].as_object().unwrap() {
        let get = |k: &str| t[&format!("{name}/{k}")].shallow_clone();
        let ones = get("mask").unsqueeze(1).ones_like();
        let run = |mask: Option<&Tensor>| {
            let p = get("pred").detach().copy().set_requires_grad(true);
            let loss = loss_of_masked(&p, &get("target"), mask, &get("timesteps"), &sched, &objective(c)).unwrap();
            loss.backward();
            (loss.detach(), p.grad())
        };
        let ((l1, g1), (l0, g0)) = (run(Some(&ones)), run(None));
        assert!(l1.equal(&l0) && g1.equal(&g0), "{name}: {} vs {}", l1.double_value(&[]), l0.double_value(&[]));
    }
}

#[test]
fn masks_are_preprocessed_as_pillow_resizes_them() {
    let t = tensors("preprocess.safetensors");
    let cases = record()["preprocess"].as_object().unwrap().clone();
    let mut checked = 0;
    for (case, c) in cases {
        let (size, crop) = (c["size"].as_u64().unwrap() as u32, c["center_crop"].as_bool().unwrap());
        for folder in ["images", "mask_dir"] {
            for entry in std::fs::read_dir(dir().join(folder)).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                let full = if folder == "images" {
                    // No alpha: an opaque mask, as kohya's convert("RGBA") gives.
                    load_alpha(&path).unwrap().unwrap_or_else(|| {
                        let (w, h) = image::image_dimensions(&path).unwrap();
                        GrayImage::from_pixel(w, h, image::Luma([255]))
                    })
                } else {
                    load_grey(&path).unwrap()
                };
                let got = preprocess_mask(&full, size, crop).unwrap();
                let key = format!("{case}/{folder}/{name}");
                let want = &t[&key];
                assert_eq!(want.size(), [i64::from(size), i64::from(size)], "{key}");
                assert_eq!(got.as_raw().as_slice(), Vec::<u8>::try_from(want.flatten(0, -1)).unwrap().as_slice(), "{key}");
                assert!(mask_tensor(&got, true).equal(&t[&format!("{key}/flipped")]), "{key}: flipped values");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 32);
}

/// Through the dataset: each image's mask found by stem, preprocessed with its image and
/// mirrored with it, kept in memory or (past the memory bound) made again from the files.
#[test]
fn the_dataset_gives_each_image_its_mask() {
    let t = tensors("preprocess.safetensors");
    for resident_bytes in [RESIDENT_BYTES, 1] {
        let data = Dataset::load_bounded(&dir().join("images"), 16, true, 1, ImageOrder::Sorted, None, resident_bytes).unwrap();
        for (source, folder) in [(MaskSource::Alpha, "images"), (MaskSource::Dir(dir().join("mask_dir")), "mask_dir")] {
            let data = Dataset::load_bounded(&dir().join("images"), 16, true, 1, ImageOrder::Sorted, None, resident_bytes)
                .unwrap()
                .with_masks(Some(&source), false)
                .unwrap();
            for (i, image) in data.images().iter().enumerate() {
                let name = image.path.file_name().unwrap().to_string_lossy();
                let got = data.mask(i, true).unwrap().unwrap();
                assert!(got.equal(&t[&format!("16_crop/{folder}/{name}/flipped")]), "{folder}/{name}, resident bytes {resident_bytes}");
            }
        }
        assert!(data.mask(0, false).unwrap().is_none(), "no masks asked, none given");
    }
}

/// One training step on the tiny model with a mask, against the Python step (transformers'
/// text encoder, diffusers' UNet, kohya's apply_masked_loss) on the inputs diffusers' script drew
/// at its first micro-step (fixtures/train/multi): loss within 1e-5 relative and the new rows'
/// gradient within 1e-4, as tests/train_replay.rs allows the unmasked step.
#[test]
fn a_masked_step_equals_the_python_step() {
    let step = tensors("step.safetensors");
    let rec: HashMap<String, Tensor> = Tensor::read_safetensors(common::fixtures().join("train/multi/record.safetensors")).unwrap().into_iter().collect();
    let repo = ModelRepo::resolve(common::tiny_sd().to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let (w, p) = (WeightOptions::default(), Placement::cpu_f32());
    let mut te = sd::load_text_encoder(&repo, &w, p).unwrap();
    let unet = sd::load_unet(&repo, &w, p).unwrap();
    let ddpm = DdpmScheduler::new(&SchedulerConfig::read(&repo.require("scheduler/scheduler_config.json").unwrap()).unwrap()).unwrap();
    te.set_new_rows(rec["initial_placeholder_rows"].copy().set_requires_grad(true)).unwrap();
    let rows = te.new_rows().unwrap().shallow_clone();
    let inputs = |mask: Option<Tensor>| StepInputs {
        mask,
        ..StepInputs::sd(rec["step_input_ids"].get(0), rec["step_latents"].get(0), rec["step_noise"].get(0), rec["step_timesteps"].get(0))
    };
    let unmasked = loss_with(&[&te], &unet, &ddpm, &inputs(None), Kind::Float, &LossConfig::default()).unwrap();
    let e_unmasked = rel_err(&unmasked.detach(), &step["unmasked_loss"]);
    let loss = loss_with(&[&te], &unet, &ddpm, &inputs(Some(step["mask"].unsqueeze(1))), Kind::Float, &LossConfig::default()).unwrap();
    loss.backward();
    let (e_loss, e_grad) = (rel_err(&loss.detach(), &step["loss"]), rel_err(&rows.grad(), &step["grad_rows"]));
    eprintln!("masked step: loss rel {e_loss:.2e}, rows' gradient rel {e_grad:.2e} (unmasked loss rel {e_unmasked:.2e})");
    assert!(e_unmasked < 1e-5 && e_loss < 1e-5 && e_grad < 1e-4, "loss {e_loss:.2e}, gradient {e_grad:.2e}, unmasked {e_unmasked:.2e}");
    assert!(rel_err(&unmasked.detach(), &step["loss"]) > 0.1, "the mask changes the loss");
}

// ---- end to end on the tiny model ----

fn train(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    train_on(&common::tiny_sd(), data, out, extra)
}

fn train_on(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .env("OMP_NUM_THREADS", "1")
        .arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(model)
        .arg("--train_data_dir")
        .arg(data)
        .args(["--placeholder_token", "<t>", "--initializer_token", "toy", "--resolution", "64", "--train_batch_size", "2"])
        .args(["--learning_rate", "5e-3", "--repeats", "2", "--max_train_steps", "3", "--report_to", "none", "--seed", "3", "--sort_images"])
        .arg("--output_dir")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn failed(o: std::process::Output) -> String {
    assert!(!o.status.success(), "should fail");
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The dataset's PNGs as RGBA, alpha from `alpha(x, y, w, h)`.
fn rgba_folder(to: &Path, alpha: impl Fn(u32, u32, u32, u32) -> u8) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for name in ["toy-2.png", "toy-4.png"] {
        let rgb = image::open(repo().join("fixtures/dataset/images").join(name)).unwrap().into_rgb8();
        let (w, h) = rgb.dimensions();
        let img = RgbaImage::from_fn(w, h, |x, y| {
            let p = rgb.get_pixel(x, y);
            Rgba([p[0], p[1], p[2], alpha(x, y, w, h)])
        });
        img.save(to.join(name)).unwrap();
    }
    to.to_path_buf()
}

fn embedding(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("learned_embeds.safetensors")).unwrap()
}

/// The `.safetensors` files a run wrote, by name.
fn tensor_files(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn max_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (common::embedding_rows(&a.join("learned_embeds.safetensors")), common::embedding_rows(&b.join("learned_embeds.safetensors")));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// SDXL (both encoders' files), gradient checkpointing (the recomputed backward weighs by the
/// mask too: within 1e-5, as tests/train.rs allows for checkpointing) and two data-parallel
/// ranks (each mask travels with its batch item).
#[test]
fn masks_compose_with_sdxl_checkpointing_and_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let opaque = rgba_folder(&tmp.path().join("opaque"), |_, _, _, _| 255);
    let half = rgba_folder(&tmp.path().join("half"), |x, _, w, _| if x < w / 2 { 0 } else { 255 });
    let o = |n: &str| tmp.path().join(n);
    let xl = common::fixtures().join("tiny-sdxl");
    ok(train_on(&xl, &opaque, &o("xl_plain"), &[]));
    ok(train_on(&xl, &opaque, &o("xl_alpha"), &["--alpha_mask"]));
    ok(train_on(&xl, &half, &o("xl_half"), &["--alpha_mask"]));
    let (plain, alpha, halved) = (tensor_files(&o("xl_plain")), tensor_files(&o("xl_alpha")), tensor_files(&o("xl_half")));
    assert!(plain.iter().any(|(n, _)| n == "learned_embeds_2.safetensors"), "{:?}", plain.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert_eq!(plain, alpha, "SDXL: an opaque mask changes nothing");
    assert_ne!(plain, halved, "SDXL: half transparent");

    ok(train(&half, &o("half_out"), &["--alpha_mask"]));
    ok(train(&half, &o("half_recomputed"), &["--alpha_mask", "--gradient_checkpointing"]));
    ok(train(&half, &o("unmasked_recomputed"), &["--gradient_checkpointing"]));
    let (same, other) = (max_diff(&o("half_out"), &o("half_recomputed")), max_diff(&o("half_recomputed"), &o("unmasked_recomputed")));
    eprintln!("checkpointing: masked {same:e}, masked vs unmasked {other:e}");
    assert!(same < 1e-5 && other > 1e-4, "checkpointed masked run differs by {same}, from the unmasked one by {other}");

    if !common::c10d_available("train_masks::masks_compose_with_sdxl_checkpointing_and_ranks".into()) {
        return;
    }
    let two = ["--num_processes", "2"];
    ok(train(&opaque, &o("r2_plain"), &two));
    ok(train(&opaque, &o("r2_alpha"), &[&two[..], &["--alpha_mask"]].concat()));
    ok(train(&half, &o("r2_half"), &[&two[..], &["--alpha_mask"]].concat()));
    assert_eq!(tensor_files(&o("r2_plain")), tensor_files(&o("r2_alpha")), "2 ranks: an opaque mask changes nothing");
    assert_ne!(embedding(&o("r2_plain")), embedding(&o("r2_half")), "2 ranks: half transparent");
}

#[test]
fn opaque_masks_train_byte_identically_and_transparency_changes_the_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let opaque = rgba_folder(&tmp.path().join("opaque"), |_, _, _, _| 255);
    let half = rgba_folder(&tmp.path().join("half"), |x, _, w, _| if x < w / 2 { 0 } else { 255 });
    let o = |n: &str| tmp.path().join(n);
    ok(train(&opaque, &o("plain"), &[]));
    ok(train(&opaque, &o("alpha"), &["--alpha_mask"]));
    let files = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(files(&o("plain")), files(&o("alpha")));
    assert_eq!(tensor_files(&o("plain")), tensor_files(&o("alpha")));
    // Composes with huber, min-SNR and OneTrainer's weights, and an all-white --mask_dir is the
    // same as no mask there too.
    let white = o("white");
    std::fs::create_dir_all(&white).unwrap();
    for name in ["toy-2", "toy-4"] {
        let (w, h) = image::image_dimensions(opaque.join(format!("{name}.png"))).unwrap();
        GrayImage::from_pixel(w, h, image::Luma([255])).save(white.join(format!("{name}.png"))).unwrap();
    }
    let objective = ["--loss_type", "huber", "--snr_gamma", "5", "--normalize_masked_area_loss", "--unmasked_weight", "0.1"];
    ok(train(&opaque, &o("huber"), &objective[..4]));
    let mut with_dir = objective.to_vec();
    with_dir.extend(["--mask_dir", white.to_str().unwrap()]);
    ok(train(&opaque, &o("huber_white"), &with_dir));
    assert_eq!(embedding(&o("huber")), embedding(&o("huber_white")));
    // Half transparent: another embedding.
    ok(train(&half, &o("half_out"), &["--alpha_mask"]));
    assert_ne!(embedding(&o("plain")), embedding(&o("half_out")));
}

#[test]
fn bad_masks_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = rgba_folder(&tmp.path().join("data"), |_, _, _, _| 255);
    let masks = tmp.path().join("masks");
    std::fs::create_dir_all(&masks).unwrap();
    let (w, h) = image::image_dimensions(data.join("toy-2.png")).unwrap();
    GrayImage::from_pixel(w, h, image::Luma([200])).save(masks.join("toy-2.png")).unwrap();
    let out = tmp.path().join("out");
    let m = masks.to_str().unwrap();
    // Missing: kohya refuses a missing mask too.
    let e = failed(train(&data, &out, &["--mask_dir", m]));
    assert!(e.contains("no mask for 1 of 2 images") && e.contains("toy-4.png"), "{e}");
    // Another size: both files named.
    GrayImage::from_pixel(w + 1, h, image::Luma([200])).save(masks.join("toy-4.jpg")).unwrap();
    let e = failed(train(&data, &out, &["--mask_dir", m]));
    assert!(e.contains("masks/toy-4.jpg") && e.contains("data/toy-4.png") && e.contains("size"), "{e}");
    assert!(!out.join("learned_embeds.safetensors").exists());
    // Flags that make no sense together or alone.
    let e = failed(train(&data, &out, &["--mask_dir", m, "--alpha_mask"]));
    assert!(e.contains("--alpha_mask") && e.contains("cannot be used with"), "{e}");
    let e = failed(train(&data, &out, &["--unmasked_weight", "0.2"]));
    assert!(e.contains("give --alpha_mask or --mask_dir"), "{e}");
    let e = failed(train(&data, &out, &["--alpha_mask", "--unmasked_weight", "1.5"]));
    assert!(e.contains("--unmasked_weight must be in [0, 1]"), "{e}");
    // A fully transparent image under --normalize_masked_area_loss would divide by 0.
    let clear = rgba_folder(&tmp.path().join("clear"), |_, _, _, _| 0);
    let e = failed(train(&clear, &out, &["--alpha_mask", "--normalize_masked_area_loss"]));
    assert!(e.contains("clear/toy-2.png is 0 everywhere"), "{e}");
}
