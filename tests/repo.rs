//! Model resolution (local folders, the Hugging Face cache layout offline, variants, shards),
//! loading into another dtype, and clear errors for weights that do not fit their config.
mod common;
use common::fixtures;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};
use textual_inversion::formats::safetensors_io;
use textual_inversion::formats::DType;
use textual_inversion::models::config::{self, UNetConfig};
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::ModelRepo;
use textual_inversion::models::unet::UNet2DConditionModel;
use textual_inversion::models::weights::{Placement, Weights};

fn unet_ref() -> (Tensor, Tensor, Tensor, Tensor) {
    let r: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(fixtures().join("model-refs/unet.safetensors")).unwrap().into_iter().collect();
    (r["sample"].shallow_clone(), r["timesteps"].shallow_clone(), r["context"].shallow_clone(), r["out"].shallow_clone())
}

fn unet_from(files: &[PathBuf], config: &Path, placement: Placement) -> anyhow::Result<UNet2DConditionModel> {
    let cfg: UNetConfig = config::read(config)?;
    cfg.validate(config)?;
    UNet2DConditionModel::load(&Weights::open(files, placement)?, &cfg)
}

fn offline(cache: &Path) -> HubOptions {
    HubOptions { cache_dir: Some(cache.to_path_buf()), offline: true, token: None, endpoint: None }
}

#[test]
fn local_folder_prefers_safetensors_and_honours_use_safetensors() {
    let repo = ModelRepo::resolve(fixtures().join("tiny-sd").to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let st = repo.weight_files("unet", None, None).unwrap();
    assert!(st[0].ends_with("unet/diffusion_pytorch_model.safetensors"));
    let bin = repo.weight_files("unet", None, Some(false)).unwrap();
    assert!(bin[0].ends_with("unet/diffusion_pytorch_model.bin"));
    assert!(repo.weight_files("text_encoder", None, None).unwrap()[0].ends_with("text_encoder/model.safetensors"));
    assert!(repo.weight_files("text_encoder", None, Some(false)).unwrap()[0].ends_with("text_encoder/pytorch_model.bin"));
    let e = repo.weight_files("unet", Some("fp16"), None).unwrap_err().to_string();
    assert!(e.contains("variant fp16") && e.contains("diffusion_pytorch_model.fp16.safetensors"), "{e}");
}

/// A Hub cache as huggingface_hub lays it out: refs/main naming a snapshot folder.
fn fake_cache(dir: &Path, id: &str, commit: &str) -> PathBuf {
    let repo = dir.join(format!("models--{}", id.replace('/', "--")));
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(snap.join("unet")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::copy(fixtures().join("tiny-sd/unet/config.json"), snap.join("unet/config.json")).unwrap();
    snap
}

#[test]
fn hub_cache_offline_with_fp16_variant_loads_into_f32() {
    let dir = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = fake_cache(dir.path(), "org/tiny-sd", commit);
    // The fp16 variant file, made from the fp32 weights.
    let src = std::fs::read(fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors")).unwrap();
    let half: Vec<_> = safetensors_io::read_all("unet", &src).unwrap().into_iter().map(|(k, t)| (k, t.cast(DType::F16).unwrap())).collect();
    safetensors_io::save(&snap.join("unet/diffusion_pytorch_model.fp16.safetensors"), &half, None).unwrap();

    for revision in [None, Some(commit)] {
        let repo = ModelRepo::resolve("org/tiny-sd", revision, &offline(dir.path())).unwrap();
        let files = repo.weight_files("unet", Some("fp16"), None).unwrap();
        assert!(files[0].ends_with("diffusion_pytorch_model.fp16.safetensors"));
        let unet = unet_from(&files, &repo.require("unet/config.json").unwrap(), Placement::cpu_f32()).unwrap();
        let (s, t, c, want) = unet_ref();
        let out = tch::no_grad(|| unet.forward(&s, &t, &c, None).unwrap());
        assert_eq!(out.kind(), Kind::Float);
        let err = (&out - &want).abs().max().double_value(&[]);
        // fp16 weights: about 3 decimal digits.
        assert!(err < 2e-2, "fp16 variant: max abs error {err}");
    }
    let e = ModelRepo::resolve("org/absent", None, &offline(dir.path())).unwrap().require("unet/config.json").unwrap_err().to_string();
    assert!(e.contains("org/absent@main has no unet/config.json") && e.contains("offline"), "{e}");
}

#[test]
fn sharded_checkpoints_load_all_shards() {
    let dir = tempfile::tempdir().unwrap();
    let snap = fake_cache(dir.path(), "org/sharded", "c0ffee");
    let src = std::fs::read(fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors")).unwrap();
    let all = safetensors_io::read_all("unet", &src).unwrap();
    let (a, b) = all.split_at(all.len() / 2);
    let mut map = serde_json::Map::new();
    for (part, name) in [(a, "diffusion_pytorch_model-00001-of-00002.safetensors"), (b, "diffusion_pytorch_model-00002-of-00002.safetensors")] {
        safetensors_io::save(&snap.join("unet").join(name), part, None).unwrap();
        for (k, _) in part {
            map.insert(k.clone(), name.into());
        }
    }
    std::fs::write(snap.join("unet/diffusion_pytorch_model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": map}).to_string())
        .unwrap();
    let repo = ModelRepo::resolve("org/sharded", None, &offline(dir.path())).unwrap();
    let files = repo.weight_files("unet", None, None).unwrap();
    assert_eq!(files.len(), 2);
    let unet = unet_from(&files, &repo.require("unet/config.json").unwrap(), Placement::cpu_f32()).unwrap();
    let (s, t, c, want) = unet_ref();
    // Tolerance 1e-4 as tests/models.rs (the reference was computed on another machine).
    let err = (tch::no_grad(|| unet.forward(&s, &t, &c, None).unwrap()) - want).abs().max().double_value(&[]);
    assert!(err < 1e-4, "sharded UNet: max abs error {err:e}");
}

#[test]
fn loads_into_bf16_whatever_the_file_holds() {
    let files = [fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors")];
    let p = Placement { device: tch::Device::Cpu, kind: Kind::BFloat16 };
    let unet = unet_from(&files, &fixtures().join("tiny-sd/unet/config.json"), p).unwrap();
    let (s, t, c, want) = unet_ref();
    let out = tch::no_grad(|| unet.forward(&s.to_kind(Kind::BFloat16), &t, &c.to_kind(Kind::BFloat16), None).unwrap());
    assert_eq!(out.kind(), Kind::BFloat16);
    let rel = (out.to_kind(Kind::Float) - &want).norm().double_value(&[]) / want.norm().double_value(&[]);
    assert!(rel < 5e-2, "bf16 relative error {rel}");
}

#[test]
fn weights_that_do_not_fit_the_config_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let files = [fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors")];
    // Wider cross-attention than the weights: every to_k/to_v is mis-shaped.
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-sd/unet/config.json")).unwrap()).unwrap();
    cfg["cross_attention_dim"] = 48.into();
    let path = dir.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = format!("{:#}", unet_from(&files, &path, Placement::cpu_f32()).unwrap_err());
    assert!(e.contains("attn2.to_k.weight has shape [16, 32], expected [16, 48]"), "{e}");
    // One resnet fewer per block: the layer count is compared with the weights' keys first.
    cfg["cross_attention_dim"] = 32.into();
    cfg["layers_per_block"] = 1.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = format!("{:#}", unet_from(&files, &path, Placement::cpu_f32()).unwrap_err());
    assert!(e.contains("layers_per_block asks for 1 of down_blocks.0.resnets.*, the weights have 2"), "{e}");
    // SDXL's conditioning needs its sizes, then its weights; other kinds are refused by name.
    cfg["layers_per_block"] = 2.into();
    cfg["addition_embed_type"] = "text_time".into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = format!("{:#}", unet_from(&files, &path, Placement::cpu_f32()).unwrap_err());
    assert!(e.contains("addition_embed_type") && e.contains("needs addition_time_embed_dim"), "{e}");
    cfg["addition_time_embed_dim"] = 8.into();
    cfg["projection_class_embeddings_input_dim"] = 80.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = format!("{:#}", unet_from(&files, &path, Placement::cpu_f32()).unwrap_err());
    assert!(e.contains("missing tensor add_embedding.linear_1.weight (expected shape [64, 80])"), "{e}");
    cfg["addition_embed_type"] = "image".into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = format!("{:#}", unet_from(&files, &path, Placement::cpu_f32()).unwrap_err());
    assert!(e.contains("addition_embed_type \"image\"") && e.contains("not supported"), "{e}");
}

/// A copy of the tiny model in `dir` whose UNet also has an fp16 variant file and whose other
/// components have plain files only (folders linked).
fn tiny_sd_with_fp16_unet(dir: &Path) -> PathBuf {
    let src = fixtures().join("tiny-sd");
    let dst = dir.join("mixed-variant");
    std::fs::create_dir_all(dst.join("unet")).unwrap();
    for part in ["model_index.json", "scheduler", "tokenizer", "text_encoder", "vae"] {
        std::os::unix::fs::symlink(src.join(part), dst.join(part)).unwrap();
    }
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join("unet").join(f), dst.join("unet").join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let half: Vec<_> = safetensors_io::read_all("unet", &bytes).unwrap().into_iter().map(|(k, t)| (k, t.cast(DType::F16).unwrap())).collect();
    safetensors_io::save(&dst.join("unet/diffusion_pytorch_model.fp16.safetensors"), &half, None).unwrap();
    dst
}

/// `--variant fp16` where only the UNet has fp16 files: as diffusers' pipelines, the UNet loads
/// its variant, the VAE and text encoder their plain files with a warning, for generate and
/// train; a model without any fp16 file is an error.
#[test]
fn variant_mixture_loads_like_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_sd_with_fp16_unet(dir.path());
    let bin = env!("CARGO_BIN_EXE_textual-inversion");
    let out = std::process::Command::new(bin)
        .args(["-v", "generate", "--model"])
        .arg(&model)
        .args(["--prompt", "a cat", "--num_inference_steps", "2", "--seed", "1", "--variant", "fp16", "--output_dir"])
        .arg(dir.path().join("images"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("unet: ") && log.contains("diffusion_pytorch_model.fp16.safetensors"), "the UNet loads its variant: {log}");
    for c in ["vae", "text_encoder"] {
        assert!(log.contains(&format!("{c} has no fp16 variant")), "warning for {c}: {log}");
    }

    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(fixtures().join("dataset/images/toy-2.png"), data.join("a.png")).unwrap();
    let out = std::process::Command::new(bin)
        .arg("train")
        .arg("--pretrained_model_name_or_path")
        .arg(&model)
        .arg("--train_data_dir")
        .arg(&data)
        .args(["--placeholder_token", "<t>", "--initializer_token", "toy", "--resolution", "64", "--max_train_steps", "1"])
        .args(["--train_batch_size", "1", "--repeats", "1", "--variant", "fp16", "--report_to", "none", "--output_dir"])
        .arg(dir.path().join("trained"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("trained/learned_embeds.safetensors").is_file());

    let out = std::process::Command::new(bin)
        .args(["generate", "--model"])
        .arg(fixtures().join("tiny-sd"))
        .args(["--prompt", "a cat", "--num_inference_steps", "1", "--variant", "fp16", "--output_dir"])
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(log.contains("`variant=fp16`, but no such modeling files are available") && log.contains("tiny-sd"), "{log}");
}
