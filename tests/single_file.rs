//! Single-file (original LDM layout) checkpoints against diffusers 0.42.1's
//! `from_single_file(file, config=DIR)`: tiny SD 1, SD 2 (OpenCLIP text tower with an unused
//! last block, v-prediction) and SDXL models written in the original layout by
//! scripts/fixtures/make_fixtures_single_file.py (which checks that diffusers reads every
//! component back exactly), references in fixtures/single-file/refs. A Lightning `.ckpt` of the
//! SD 1 model (callback classes and instances inside) loads the same tensors; `convert-model`
//! writes a folder that generates the same image; prediction types come from the places the
//! file or the user give them; what is not a supported checkpoint is refused by name.
//!
//! Tolerances: final latents 1e-4 max-abs relative to their magnitude (at least 1), prompt
//! embeddings the same, images 1/255 per pixel.
mod common;
use common::fixtures;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};
use textual_inversion::device::Precision;
use textual_inversion::models::component::Component;
use textual_inversion::models::config::Named;
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::{ModelRepo, ModelSource};
use textual_inversion::models::single_file::{defaults, Arch};
use textual_inversion::models::stable_diffusion::{LoadOptions, WeightOptions};
use textual_inversion::models::weights::ModelFile;
use textual_inversion::pipeline::{GenerateOptions, Models};
use textual_inversion::schedulers;
use textual_inversion::schedulers::PredictionType;

const TOL: f64 = 1e-4;

fn dir() -> PathBuf {
    fixtures().join("single-file")
}

fn cases() -> serde_json::Map<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    v["cases"].as_object().unwrap().clone()
}

fn load_options() -> LoadOptions {
    LoadOptions { weights: WeightOptions::default(), text_encoder_variant: true, tokenizer_dir: None, device: Device::Cpu, precision: Precision::Fp32 }
}

fn source(file: &Path, config: Option<&Path>) -> ModelSource {
    ModelSource { config: config.map(|c| c.display().to_string()), ..ModelSource::new(file.display().to_string()) }
}

/// max |a - b| / max(1, max |b|), asserted within TOL.
fn close(what: &str, a: &Tensor, b: &Tensor) -> f64 {
    common::close_within(what, a, b, TOL)
}

/// Runs `case` on `repo` and compares with its diffusers reference.
fn check_case(name: &str, case: &serde_json::Value, repo: &ModelRepo) {
    let m = Models::load(repo, &load_options()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert_eq!(
        m.scheduler_config.prediction_type.as_ref().map_or("epsilon", Named::name),
        case["prediction_type"].as_str().unwrap(),
        "{name}: prediction type"
    );
    let r: HashMap<String, Tensor> = Tensor::read_safetensors(dir().join(case["ref"].as_str().unwrap())).unwrap().into_iter().collect();
    let o = GenerateOptions {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance_scale"].as_f64(),
        seed: case["seed"].as_u64().unwrap(),
        height: case["height"].as_i64(),
        width: case["width"].as_i64(),
        ..GenerateOptions::default()
    };
    let mut s = schedulers::load(&m.scheduler_config, None).unwrap();
    let out = m.generate(s.as_mut(), &o, |_, _| {}).unwrap();
    let err = close(&format!("{name}: latents"), &out.latents, &r["latents"]);
    let pixels = textual_inversion::image_out::to_pixels(&out.decoded);
    let diff = (pixels.to_kind(Kind::Int) - r["image"].to_kind(Kind::Int)).abs().max().int64_value(&[]);
    eprintln!("{name}: latents {err:e}, image {diff}/255");
    assert!(diff <= 1, "{name}: image differs by {diff}/255");
}

#[test]
fn single_files_generate_what_diffusers_from_single_file_does() {
    for (name, case) in cases() {
        let file = dir().join(case["file"].as_str().unwrap());
        let config = dir().join(case["config"].as_str().unwrap());
        let repo = source(&file, Some(&config)).resolve().unwrap();
        let sf = repo.single_file().unwrap();
        let want = match name.split('-').next().unwrap() {
            "sd1" => Arch::Sd1,
            "sd2" => Arch::Sd2,
            _ => Arch::Xl,
        };
        assert_eq!(sf.arch, want, "{name}: model type");
        check_case(&name, &case, &repo);
    }
}

#[test]
fn a_lightning_ckpt_holds_the_same_tensors_and_generates_the_same_image() {
    let st = ModelFile::open(&dir().join("sd1.safetensors")).unwrap();
    let ck = ModelFile::open(&dir().join("sd1.ckpt")).unwrap();
    assert_eq!(ck.global_step, Some(470_000));
    assert_eq!(st.tensors().keys(), ck.tensors().keys(), "the .ckpt's state_dict has the .safetensors' keys");
    // The same bytes: a component built from each gives the same tensors.
    let cfg = dir().join("sd1");
    let a = source(&dir().join("sd1.safetensors"), Some(&cfg)).resolve().unwrap();
    let b = source(&dir().join("sd1.ckpt"), Some(&cfg)).resolve().unwrap();
    for component in [Component::Unet, Component::Vae, Component::TextEncoder] {
        let (wa, wb) = (a.single_file_weights(component, placement()).unwrap().unwrap(), b.single_file_weights(component, placement()).unwrap().unwrap());
        assert_eq!(wa.keys(), wb.keys(), "{component}");
        for k in wa.keys() {
            assert!(wa.stored_tensor(k).unwrap().equal(&wb.stored_tensor(k).unwrap()), "{component}: {k}");
        }
    }
    let case = cases()["sd1"].clone();
    check_case("sd1 from the .ckpt", &case, &b);
}

fn placement() -> textual_inversion::models::weights::Placement {
    textual_inversion::models::weights::Placement::cpu_f32()
}

#[test]
fn convert_model_writes_a_diffusers_folder_that_generates_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let mut converted = Vec::new();
    for (name, case) in cases() {
        if name.contains('-') {
            continue; // one run per model is enough here
        }
        let out = tmp.path().join(&name);
        let file = dir().join(case["file"].as_str().unwrap());
        let config = dir().join(case["config"].as_str().unwrap());
        let status = Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
            .args(["convert-model", file.to_str().unwrap(), out.to_str().unwrap(), "--config", config.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "{name}: convert-model failed");
        for f in [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors",
            "tokenizer/vocab.json",
        ] {
            assert!(out.join(f).is_file(), "{name}: {f} missing");
        }
        assert_eq!(out.join("text_encoder_2/model.safetensors").is_file(), name.starts_with("sdxl"));
        // model_index.json names only components the folder holds (diffusers loads each).
        let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("model_index.json")).unwrap()).unwrap();
        for (k, v) in index.as_object().unwrap() {
            if v.as_array().is_some_and(|a| !a[0].is_null()) {
                assert!(out.join(k).is_dir(), "{name}: model_index.json lists {k}, which was not written");
            }
        }
        // Nothing points back at the checkpoint: the folder alone reproduces the image.
        let repo = ModelRepo::resolve(out.to_str().unwrap(), None, &HubOptions::default()).unwrap();
        check_case(&format!("{name} converted"), &case, &repo);
        // An existing folder is never overwritten.
        let again = Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
            .args(["convert-model", file.to_str().unwrap(), out.to_str().unwrap(), "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("exists"), "{}", String::from_utf8_lossy(&again.stderr));
        converted.push(format!("{name}={}", out.display()));
    }
    // diffusers' own from_pretrained reads the folders and draws the same images.
    let Some(py) = common::reference_python(&["diffusers", "torch"], "convert-model folders in diffusers") else { return };
    let o = Command::new(py).arg(common::repo().join("scripts/fixtures/check_single_file.py")).args(&converted).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(lines.lines().count(), converted.len(), "{lines}");
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        eprintln!("diffusers from_pretrained on our folder: {line}");
        assert!(v["max_pixel_diff"].as_i64().unwrap() <= 1, "{line}");
    }
}

#[test]
fn prediction_type_comes_from_the_flag_the_metadata_or_a_yaml_beside_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sd1 = dir().join("sd1.safetensors");
    let cfg = dir().join("sd1");
    let prediction = |file: &Path, flag: Option<&str>| {
        let s = ModelSource { prediction_type: flag.map(|f| <PredictionType as clap::ValueEnum>::from_str(f, false).unwrap()), ..source(file, Some(&cfg)) };
        let repo = s.resolve().unwrap();
        textual_inversion::models::stable_diffusion::load_scheduler_config(&repo)
            .unwrap()
            .prediction_type
            .map_or("epsilon".to_string(), |p| p.name().to_string())
    };
    assert_eq!(prediction(&sd1, None), "epsilon");
    assert_eq!(prediction(&sd1, Some("v_prediction")), "v_prediction");
    // The web UI's convention: model.yaml beside model.safetensors.
    let copy = tmp.path().join("model.safetensors");
    std::fs::copy(&sd1, &copy).unwrap();
    std::fs::write(tmp.path().join("model.yaml"), "model:\n  params:\n    parameterization: \"v\"\n").unwrap();
    assert_eq!(prediction(&copy, None), "v_prediction");
    assert_eq!(prediction(&copy, Some("epsilon")), "epsilon", "the flag wins");
    // SD 2's own scheduler config says v_prediction.
    let sd2 = dir().join("sd2.safetensors");
    let s = ModelSource { prediction_type: Some(PredictionType::Epsilon), ..source(&sd2, Some(&dir().join("sd2"))) };
    let repo = s.resolve().unwrap();
    assert_eq!(textual_inversion::models::stable_diffusion::load_scheduler_config(&repo).unwrap().prediction_type.as_ref().map(Named::name), Some("epsilon"));
    // The flag applies to diffusers folders too.
    let folder = ModelSource { prediction_type: Some(PredictionType::VPrediction), ..ModelSource::new(fixtures().join("tiny-sd").display().to_string()) };
    let repo = folder.resolve().unwrap();
    assert_eq!(
        textual_inversion::models::stable_diffusion::load_scheduler_config(&repo).unwrap().prediction_type.as_ref().map(Named::name),
        Some("v_prediction")
    );
    let plain = ModelSource::new(fixtures().join("tiny-sd").display().to_string()).resolve().unwrap();
    assert_eq!(
        textual_inversion::models::stable_diffusion::load_scheduler_config(&plain).unwrap().prediction_type.as_ref().map_or("epsilon", Named::name),
        "epsilon"
    );
}

#[test]
fn bundled_configs_are_written_once_and_read_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in [Arch::Sd1, Arch::Sd2, Arch::Xl] {
        let folder = defaults::folder_in(tmp.path(), arch).unwrap();
        assert!(folder.starts_with(tmp.path()), "{}", folder.display());
        let repo = ModelRepo::local(folder.clone());
        use textual_inversion::models::config::{self, ClipTextConfig, UNetConfig, VaeConfig};
        let unet: UNetConfig = config::read(&folder.join("unet/config.json")).unwrap();
        unet.validate(&folder.join("unet/config.json")).unwrap();
        let _: VaeConfig = config::read(&folder.join("vae/config.json")).unwrap();
        let _: ClipTextConfig = config::read(&folder.join("text_encoder/config.json")).unwrap();
        let tok = textual_inversion::models::stable_diffusion::load_tokenizer(&repo).unwrap();
        assert_eq!(tok.encode("a photo of a cat").unwrap()[..3], [49406, 320, 1125], "{arch:?}: the real CLIP vocabulary");
        let family = textual_inversion::models::stable_diffusion::family(&repo).unwrap();
        assert_eq!(family.is_xl(), arch == Arch::Xl);
        // Read again: the same folder, not rewritten.
        assert_eq!(defaults::folder_in(tmp.path(), arch).unwrap(), folder);
    }
    // Without --config, a tiny model does not fit SD 1.5's configs: the error says what to do.
    let repo = source(&dir().join("sd1.safetensors"), None).resolve().unwrap();
    let e = format!("{:#}", Models::load(&repo, &load_options()).err().expect("tiny weights do not fit SD 1.5"));
    assert!(e.contains("--config"), "{e}");
}

#[test]
fn what_is_not_a_supported_checkpoint_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    // One diffusers component's file.
    let unet = fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors");
    let e = source(&unet, None).resolve().err().unwrap().to_string();
    assert!(e.contains("not an original-layout") && e.contains("diffusers component"), "{e}");
    // A .ckpt whose pickle would run a command: refused, naming what it asked for.
    let evil = tmp.path().join("evil.ckpt");
    write_zip_pickle(&evil, b"\x80\x02cposix\nsystem\nq\x00X\x08\x00\x00\x00echo pwnq\x01\x85q\x02Rq\x03.");
    let e = format!("{:#}", source(&evil, None).resolve().err().unwrap());
    assert!(e.contains("posix.system"), "{e}");
    // --config on a folder model is a mistake, said so.
    let s = ModelSource { config: Some("x".into()), ..ModelSource::new(fixtures().join("tiny-sd").display().to_string()) };
    assert!(s.resolve().err().unwrap().to_string().contains("--config"));
}

/// A torch.save-style zip holding `pickle` as `archive/data.pkl`.
fn write_zip_pickle(path: &Path, pickle: &[u8]) {
    use std::io::Write;
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/version", o).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}

#[test]
fn training_from_a_single_file_equals_training_from_its_converted_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_textual-inversion");
    let (file, config) = (dir().join("sd1.ckpt"), dir().join("sd1"));
    let folder = tmp.path().join("converted");
    let ok =
        Command::new(bin).args(["convert-model", file.to_str().unwrap(), folder.to_str().unwrap(), "--config", config.to_str().unwrap()]).status().unwrap();
    assert!(ok.success());
    let train = |model: &Path, extra: &[&str], out: &str| {
        let out = tmp.path().join(out);
        let mut c = Command::new(bin);
        c.args(["train", "--pretrained_model_name_or_path", model.to_str().unwrap(), "--train_data_dir"])
            .arg(fixtures().join("dataset/images"))
            .args(["--placeholder_token", "<cat-toy>", "--initializer_token", "cat", "--resolution", "32", "--max_train_steps", "2"])
            .args(["--learning_rate", "5e-3", "--seed", "1", "--report_to", "none", "--output_dir", out.to_str().unwrap()])
            .args(extra);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let t: HashMap<String, Tensor> = Tensor::read_safetensors(out.join("learned_embeds.safetensors")).unwrap().into_iter().collect();
        t["<cat-toy>"].shallow_clone()
    };
    let a = train(&file, &["--config", config.to_str().unwrap()], "from-file");
    let b = train(&folder, &[], "from-folder");
    assert!(a.equal(&b), "the same run from the same weights: {a} vs {b}");
    let e = Command::new(bin)
        .args(["train", "--pretrained_model_name_or_path", file.to_str().unwrap(), "--config", config.to_str().unwrap(), "--save_as_full_pipeline"])
        .args(["--train_data_dir", "x", "--placeholder_token", "<t>", "--initializer_token", "cat", "--output_dir"])
        .arg(tmp.path().join("full"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("convert-model"), "{}", String::from_utf8_lossy(&e.stderr));
}

#[test]
fn convert_model_lists_only_what_it_writes() {
    // A config folder listing a safety checker and feature extractor (as SD 1.5's does).
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    copy_dir(&dir().join("sd1"), &config);
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config.join("model_index.json")).unwrap()).unwrap();
    index["safety_checker"] = serde_json::json!(["stable_diffusion", "StableDiffusionSafetyChecker"]);
    index["feature_extractor"] = serde_json::json!(["transformers", "CLIPImageProcessor"]);
    std::fs::write(config.join("model_index.json"), index.to_string()).unwrap();
    let out = tmp.path().join("out");
    let ok = Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .args(["convert-model", dir().join("sd1.safetensors").to_str().unwrap(), out.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(ok.success());
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("model_index.json")).unwrap()).unwrap();
    assert_eq!(written["safety_checker"], serde_json::json!([null, null]));
    assert_eq!(written["feature_extractor"], serde_json::json!([null, null]));
    assert_eq!(written["unet"], serde_json::json!(["diffusers", "UNet2DConditionModel"]));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn inspect_says_a_model_checkpoint_is_not_an_embedding() {
    for f in ["sd1.safetensors", "sd1.ckpt", "sdxl.safetensors"] {
        let o = Command::new(env!("CARGO_BIN_EXE_textual-inversion")).args(["inspect"]).arg(dir().join(f)).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("model checkpoint") && err.contains("convert-model"), "{f}: {err}");
    }
}
