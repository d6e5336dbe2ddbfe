//! The CLIP scorer and `evaluate` against transformers on a tiny random CLIPModel
//! (scripts/fixtures/make_fixtures_clip.py: fixtures/tiny-clip-model, fixtures/clip-eval), in
//! fp32 on CPU.
//!
//! Tolerances: pixel values 1e-6 (the PIL processor's, through the same Pillow-exact resize),
//! image and text features 1e-5, the command's scores 1e-5. Observed (torch 2.11.0 CPU on both
//! sides): pixel values equal, features within about 1e-7, scores within about 1e-9; run with
//! `-- --nocapture` to see each error.
mod common;
use common::fixtures;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{Device, Tensor};
use textual_inversion::eval::ClipScorer;
use textual_inversion::train::dataset::load_rgb;

const TEXTS: [&str; 3] = ["a photo of a cat", "an oil painting of a red house by the sea", "x"];

fn model_dir() -> PathBuf {
    fixtures().join("tiny-clip-model")
}

fn eval_dir() -> PathBuf {
    fixtures().join("clip-eval")
}

fn refs() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(eval_dir().join("refs.safetensors")).unwrap().into_iter().collect()
}

fn expected_scores() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(eval_dir().join("scores.json")).unwrap()).unwrap()
}

/// The fixture's references then images, sorted by name, as the script lists them.
fn fixture_images() -> Vec<image::RgbImage> {
    let mut out = Vec::new();
    for dir in ["reference", "images"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(eval_dir().join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        out.extend(paths.iter().filter(|p| p.extension().is_some_and(|e| e == "png")).map(|p| load_rgb(p).unwrap().rgb));
    }
    out
}

fn scorer() -> ClipScorer {
    ClipScorer::load(model_dir().to_str().unwrap(), None, Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{what}");
    let err = (got - want).abs().max().double_value(&[]);
    eprintln!("{what}: max abs error {err:e}");
    assert!(err < tol, "{what}: max abs error {err:e} >= {tol:e}");
}

#[test]
fn pixel_values_equal_the_pil_clip_image_processor() {
    let got = scorer().pixel_values(&fixture_images()).unwrap();
    assert_close("pixel_values", &got, &refs()["pixel_values"], 1e-6);
}

#[test]
fn image_and_text_features_equal_transformers() {
    let (s, r) = (scorer(), refs());
    // The towers alone, on the processor's own pixel values.
    let model = &s.bundle().model;
    let from_pixels = tch::no_grad(|| model.image_features(&r["pixel_values"])).unwrap();
    assert_close("get_image_features (transformers' pixel values)", &from_pixels, &r["image_embeds"], 1e-5);
    // Files to features, in batches that do not divide the count.
    let s = s.with_batch_size(4).unwrap();
    assert_close("get_image_features (files, batches of 4)", &s.image_embeds(&fixture_images()).unwrap(), &r["image_embeds"], 1e-5);
    assert!(s.text_ids(&TEXTS).unwrap().equal(&r["text_ids"]), "token ids differ from the tokenizer's");
    assert_close("get_text_features", &s.text_embeds(&TEXTS).unwrap(), &r["text_embeds"], 1e-5);
}

#[test]
fn scores_from_images_equal_pytorch() {
    let images = fixture_images();
    let (references, generated) = images.split_at(3);
    let scores = scorer().score(generated, references, TEXTS[0]).unwrap();
    let want = expected_scores();
    for (key, got) in [("image_similarity", scores.image_similarity), ("text_similarity", scores.text_similarity)] {
        let want = want[key].as_f64().unwrap();
        eprintln!("{key}: {got} (PyTorch {want})");
        assert!((got - want).abs() < 1e-5, "{key}: {got} vs {want}");
    }
}

fn evaluate(args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_textual-inversion"));
    cmd.arg("evaluate").args(args).current_dir(cwd).env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The standard arguments with `model`, the fixture's folders and text.
fn args(model: &str) -> Vec<String> {
    let (r, i) = (eval_dir().join("reference"), eval_dir().join("images"));
    ["--clip_model", model, "--reference_dir", r.to_str().unwrap(), "--images", i.to_str().unwrap(), "--text", TEXTS[0]].map(String::from).to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn evaluate_prints_and_writes_the_pytorch_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("out/scores.json");
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    let mut a = args(model_dir().to_str().unwrap());
    a.extend(["--json".into(), json.to_str().unwrap().into(), "--batch_size".into(), "2".into()]);
    let out = evaluate(&strs(&a), tmp.path(), &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("notes.txt") && stderr.contains("skipped 1 of 4"), "one warning names the non-image: {stderr}");
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let want = expected_scores();
    for key in ["image_similarity", "text_similarity"] {
        let want = want[key].as_f64().unwrap();
        let printed: f64 = stdout.lines().find_map(|l| l.strip_prefix(&format!("{key} "))).unwrap_or_else(|| panic!("{key} in {stdout}")).parse().unwrap();
        assert!((printed - want).abs() < 1e-5, "printed {key} {printed} vs {want}");
        let got = written[key].as_f64().unwrap();
        assert!((got - want).abs() < 1e-5, "--json {key} {got} vs {want}");
    }
    assert_eq!((written["images"].as_u64(), written["references"].as_u64()), (Some(3), Some(3)));
    // Nothing but the named file was written.
    assert_eq!(common::listing(tmp.path()), ["out"]);
    assert_eq!(common::listing(&tmp.path().join("out")), ["scores.json"]);
    // Without --json nothing is written at all.
    let out = evaluate(&strs(&args(model_dir().to_str().unwrap())), tmp.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(common::listing(tmp.path()), ["out"]);
}

#[test]
fn evaluate_reads_a_hub_id_from_the_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let snapshot = tmp.path().join("hub/models--owner--tiny-clip/snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&snapshot).unwrap();
    for e in std::fs::read_dir(model_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), snapshot.join(e.file_name())).unwrap();
    }
    std::fs::create_dir_all(tmp.path().join("hub/models--owner--tiny-clip/refs")).unwrap();
    std::fs::write(tmp.path().join("hub/models--owner--tiny-clip/refs/main"), "0123456789abcdef0123456789abcdef01234567").unwrap();
    let out = evaluate(&strs(&args("owner/tiny-clip")), tmp.path(), &[("HF_HUB_CACHE", &tmp.path().join("hub"))]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = expected_scores()["image_similarity"].as_f64().unwrap();
    assert!(text(&out.stdout).contains(&format!("image_similarity {want:.6}")), "{}", text(&out.stdout));
    let out = evaluate(&strs(&args("owner/absent")), tmp.path(), &[("HF_HUB_CACHE", &tmp.path().join("hub"))]);
    assert!(!out.status.success() && text(&out.stderr).contains("HF_HUB_OFFLINE"), "{}", text(&out.stderr));
}

/// A copy of the tiny model in `tmp` with `edit` applied to the named JSON file.
fn edited_model(tmp: &Path, file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = tmp.join(format!("model-{}", file.replace('.', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(model_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(dir.join(file), v.to_string()).unwrap();
    dir.to_str().unwrap().to_string()
}

#[test]
fn evaluate_explains_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = model_dir().to_str().unwrap().to_string();
    let fails = |a: Vec<String>, want: &[&str]| {
        let out = evaluate(&strs(&a), t, &[]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{a:?} succeeded");
        for w in want {
            assert!(stderr.contains(w), "{a:?}: {w:?} not in {stderr}");
        }
    };
    let with = |model: &str, flag: &str, value: &str| {
        let mut a = args(model);
        let i = a.iter().position(|x| x == flag);
        match i {
            Some(i) => a[i + 1] = value.to_string(),
            None => a.extend([flag.to_string(), value.to_string()]),
        }
        a
    };
    // Folders.
    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(with(&model, "--images", empty.to_str().unwrap()), &["no usable image in --images", "the folder is empty"]);
    let texts = t.join("texts");
    std::fs::create_dir(&texts).unwrap();
    std::fs::write(texts.join("a.png"), "not a png").unwrap();
    fails(with(&model, "--reference_dir", texts.to_str().unwrap()), &["no usable image in --reference_dir", "a.png", "not an image"]);
    fails(with(&model, "--reference_dir", t.join("absent").to_str().unwrap()), &["--reference_dir", "is not a folder"]);
    // Models.
    let text_encoder = fixtures().join("tiny-sd/text_encoder");
    fails(args(text_encoder.to_str().unwrap()), &["config.json", "no vision_config", "CLIPModel"]);
    fails(args(t.join("nothing").to_str().unwrap()), &["no folder named"]);
    let no_processor = edited_model(t, "config.json", |_| {});
    std::fs::remove_file(Path::new(&no_processor).join("preprocessor_config.json")).unwrap();
    fails(args(&no_processor), &["has no preprocessor_config.json"]);
    let wrong_crop = edited_model(t, "preprocessor_config.json", |v| v["crop_size"] = serde_json::json!({"height": 32, "width": 32}));
    fails(args(&wrong_crop), &["preprocessor_config.json", "32x32", "vision_config.image_size"]);
    let bilinear = edited_model(t, "preprocessor_config.json", |v| v["resample"] = 2.into());
    fails(args(&bilinear), &["preprocessor_config.json", "resample is 2"]);
    let layers = edited_model(t, "config.json", |v| v["vision_config"]["num_hidden_layers"] = 3.into());
    fails(args(&layers), &["vision_config.num_hidden_layers asks for 3", "the weights have 2"]);
    let width = edited_model(t, "config.json", |v| v["vision_config"]["intermediate_size"] = 41.into());
    fails(args(&width), &["model.safetensors does not fit", "vision_model.encoder.layers.0.mlp.fc1.weight"]);
    let heads = edited_model(t, "config.json", |v| v["vision_config"]["num_attention_heads"] = 5.into());
    fails(args(&heads), &["config.json", "vision_config.hidden_size 24 is not divisible into 5 heads"]);
    // Flags.
    fails(with(&model, "--batch_size", "0"), &["batch size must be at least 1"]);
    let json_dir = t.join("a-folder");
    std::fs::create_dir(&json_dir).unwrap();
    fails(with(&model, "--json", json_dir.to_str().unwrap()), &["--json", "a-folder"]);
}

/// The layouts of older checkpoints (openai/clip-vit-large-patch14's): `*_config_dict` beside
/// `*_config` (the dict wins, as in transformers' `CLIPConfig`), `null` values, and a
/// processor config with plain numbers for `size` and `crop_size`.
#[test]
fn older_config_layouts_give_the_same_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let config = edited_model(tmp.path(), "config.json", |v| {
        let (text, vision) = (v["text_config"].take(), v["vision_config"].take());
        v["text_config_dict"] = text;
        v["vision_config_dict"] = vision;
        v["text_config"] = serde_json::json!({"hidden_size": 999, "num_hidden_layers": 7});
        v["vision_config"] = serde_json::json!({"hidden_size": 999});
        v["text_config_dict"]["pad_token_id"] = serde_json::Value::Null;
    });
    let processor = Path::new(&config).join("preprocessor_config.json");
    let old = serde_json::json!({
        "crop_size": 30, "do_center_crop": true, "do_normalize": true, "do_resize": true,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 30,
    });
    std::fs::write(&processor, old.to_string()).unwrap();
    let s = ClipScorer::load(&config, None, Device::Cpu).unwrap();
    let r = refs();
    assert_close("pixel_values (old processor config)", &s.pixel_values(&fixture_images()).unwrap(), &r["pixel_values"], 1e-6);
    assert_close("get_image_features (config dicts)", &s.image_embeds(&fixture_images()).unwrap(), &r["image_embeds"], 1e-5);
    assert_close("get_text_features (config dicts)", &s.text_embeds(&TEXTS).unwrap(), &r["text_embeds"], 1e-5);
}
