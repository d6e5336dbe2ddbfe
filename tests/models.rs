//! Every model part against the outputs diffusers/transformers computed on the same tiny random
//! models (scripts/fixtures/make_fixtures_models.py), in fp32 on CPU.
//!
//! Tolerances: 1e-4 max-abs for activations, 1e-4 relative (L2) for gradients. Observed (torch
//! 2.11.0 CPU on both sides, 2026-11): 0 everywhere, i.e. bit-identical, including the gradient;
//! run with `-- --nocapture` to see each error.
mod common;
use common::fixtures;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};
use textual_inversion::models::clip::ClipTextModel;
use textual_inversion::models::config::{self, ClipTextConfig, UNetConfig, VaeConfig};
use textual_inversion::models::unet::UNet2DConditionModel;
use textual_inversion::models::vae::AutoencoderKL;
use textual_inversion::models::weights::{Placement, Weights};

fn refs(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("model-refs").join(name)).unwrap().into_iter().collect()
}

fn weights(files: &[&str]) -> Weights {
    let files: Vec<PathBuf> = files.iter().map(|f| fixtures().join(f)).collect();
    Weights::open(&files, Placement::cpu_f32()).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) -> f64 {
    let err = max_abs(got, want);
    assert!(err < tol, "{what}: max abs error {err:e} >= {tol:e}");
    eprintln!("{what}: max abs error {err:e}");
    err
}

fn clip(dir: &str, file: &str) -> ClipTextModel {
    let cfg: ClipTextConfig = config::read(&fixtures().join(dir).join("config.json")).unwrap();
    cfg.validate(Path::new(dir)).unwrap();
    ClipTextModel::load(&weights(&[&format!("{dir}/{file}")]), &cfg).unwrap()
}

fn unet(dir: &str, file: &str) -> UNet2DConditionModel {
    let cfg: UNetConfig = config::read(&fixtures().join(dir).join("config.json")).unwrap();
    cfg.validate(Path::new(dir)).unwrap();
    UNet2DConditionModel::load(&weights(&[&format!("{dir}/{file}")]), &cfg).unwrap()
}

fn vae(dir: &str, file: &str) -> AutoencoderKL {
    let cfg: VaeConfig = config::read(&fixtures().join(dir).join("config.json")).unwrap();
    cfg.validate(Path::new(dir)).unwrap();
    AutoencoderKL::load(&weights(&[&format!("{dir}/{file}")]), &cfg).unwrap()
}

#[test]
fn text_encoder_hidden_states_match_transformers() {
    let r = refs("text_encoder.safetensors");
    // safetensors from transformers 5 (no prefix) and a state_dict() .bin (text_model. prefix).
    for file in ["model.safetensors", "pytorch_model.bin"] {
        let m = clip("tiny-sd/text_encoder", file);
        let _guard = tch::no_grad_guard();
        let out = m.forward(&r["input_ids"]);
        assert_close(&format!("{file} last_hidden_state"), &out.last_hidden_state, &r["last_hidden_state"], 1e-4);
        assert_eq!(out.hidden_states.len(), 6);
        for (i, h) in out.hidden_states.iter().enumerate() {
            assert_close(&format!("{file} hidden_states.{i}"), h, &r[&format!("hidden_states.{i}")], 1e-4);
        }
    }
}

#[test]
fn gelu_text_encoder_with_prefixed_keys_and_clip_skip() {
    let r = refs("clip_gelu.safetensors");
    let m = clip("tiny-clip-gelu", "model.safetensors");
    let _guard = tch::no_grad_guard();
    let out = m.forward(&r["input_ids"]);
    assert_close("gelu last_hidden_state", &out.last_hidden_state, &r["last_hidden_state"], 1e-4);
    assert_close("gelu hidden_states[-2]", &out.hidden_states[4], &r["penultimate"], 1e-4);
    // clip_skip=1 is the penultimate state through the final layer norm, as diffusers does.
    let skip = m.encode(&r["input_ids"], Some(1)).unwrap();
    assert_close("clip_skip 1", &skip, &m.final_layer_norm(&r["penultimate"]), 1e-6);
}

#[test]
fn unet_output_matches_diffusers() {
    let r = refs("unet.safetensors");
    for file in ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"] {
        let m = unet("tiny-sd/unet", file);
        let _guard = tch::no_grad_guard();
        let out = m.forward(&r["sample"], &r["timesteps"], &r["context"], None).unwrap();
        assert_close(&format!("{file} unet"), &out, &r["out"], 1e-4);
        let odd = m.forward(&r["odd_sample"], &r["odd_timestep"], &r["context"].narrow(0, 0, 1), None).unwrap();
        assert_close(&format!("{file} unet 9x7"), &odd, &r["odd_out"], 1e-4);
    }
}

#[test]
fn sd2_style_unet_matches_diffusers() {
    let r = refs("unet_sd2.safetensors");
    let m = unet("tiny-sd2-unet", "diffusion_pytorch_model.safetensors");
    let _guard = tch::no_grad_guard();
    let out = m.forward(&r["sample"], &r["timesteps"], &r["context"], None).unwrap();
    assert_close("sd2 unet", &out, &r["out"], 1e-4);
}

#[test]
fn vae_posterior_and_decoder_match_diffusers() {
    let r = refs("vae.safetensors");
    for (dir, file) in [
        ("tiny-sd/vae", "diffusion_pytorch_model.safetensors"),
        ("tiny-sd/vae", "diffusion_pytorch_model.bin"),
        ("tiny-vae-legacy", "diffusion_pytorch_model.safetensors"),
    ] {
        let m = vae(dir, file);
        let _guard = tch::no_grad_guard();
        let post = m.encode(&r["image"]).unwrap();
        assert_close(&format!("{dir}/{file} mean"), &post.mean, &r["mean"], 1e-4);
        assert_close(&format!("{dir}/{file} std"), &post.std, &r["std"], 1e-4);
        assert_close(&format!("{dir}/{file} logvar"), &post.logvar, &r["logvar"], 1e-4);
        assert_close(&format!("{dir}/{file} decode"), &m.decode(&r["latents"]).unwrap(), &r["decoded"], 1e-4);
    }
}

#[test]
fn gradient_reaches_only_the_new_rows_and_matches_pytorch() {
    let r = refs("grad.safetensors");
    let mut te = clip("tiny-sd/text_encoder", "model.safetensors");
    let u = unet("tiny-sd/unet", "diffusion_pytorch_model.safetensors");
    assert_eq!(r["new_ids"].int64_value(&[0]), te.base_vocab(), "new tokens follow the vocabulary");
    te.set_new_rows(r["rows"].copy().set_requires_grad(true)).unwrap();
    let hidden = te.encode(&r["input_ids"], None).unwrap();
    let pred = u.forward(&r["noisy"], &r["timesteps"], &hidden, None).unwrap();
    let loss = pred.to_kind(Kind::Float).mse_loss(&r["target"], tch::Reduction::Mean);
    loss.backward();
    let got = te.new_rows().unwrap().grad();
    let want = &r["grad"];
    let rel = (&got - want).norm().double_value(&[]) / want.norm().double_value(&[]);
    eprintln!("loss {} vs {}; gradient relative error {rel:e}", loss.double_value(&[]), r["loss"].double_value(&[0]));
    assert!((loss.double_value(&[]) - r["loss"].double_value(&[0])).abs() < 1e-6);
    assert!(rel < 1e-4, "gradient relative error {rel:e}");
    assert!(r["old_rows_grad_norm"].double_value(&[0]) > 0.0, "PyTorch's full matrix gets gradient; ours has none to give");
}

/// The gradient with respect to `context` of `0.5 * Σ out²` (any loss would do), by plain
/// backpropagation and by block-wise recomputation (`--gradient_checkpointing`).
fn context_grads(m: &UNet2DConditionModel, sample: &Tensor, t: &Tensor, context: &Tensor) -> (Tensor, Tensor) {
    let c = context.detach().set_requires_grad(true);
    let out = m.forward(sample, t, &c, None).unwrap();
    let plain = Tensor::run_backward(&[(&out * &out).sum(Kind::Float) * 0.5], &[&c], false, false).remove(0);
    let pass = m.forward_recomputable(sample, t, context, None).unwrap();
    assert!(pass.output().equal(&out.detach()), "the recomputable forward gives the same output");
    let grad_out = pass.output().shallow_clone();
    let recomputed = pass.backward(&grad_out).unwrap().context;
    (plain, recomputed)
}

/// Block-wise recomputation gives the gradient plain backpropagation gives: against PyTorch's
/// on the tiny model (the loss of `grad.safetensors`, tolerance 1e-4 relative) and against our
/// own plain backward on the SD2-style UNet and odd 9x7 latents (which take the explicit
/// upsample sizes) — tolerance 1e-5 relative: only the order of the blocks' sums differs.
#[test]
fn recomputed_backward_equals_plain_backward() {
    let r = refs("grad.safetensors");
    let mut te = clip("tiny-sd/text_encoder", "model.safetensors");
    let u = unet("tiny-sd/unet", "diffusion_pytorch_model.safetensors");
    te.set_new_rows(r["rows"].copy().set_requires_grad(true)).unwrap();
    let hidden = te.encode(&r["input_ids"], None).unwrap();
    let pass = u.forward_recomputable(&r["noisy"], &r["timesteps"], &hidden, None).unwrap();
    let pred = pass.output().detach().set_requires_grad(true);
    let loss = pred.to_kind(Kind::Float).mse_loss(&r["target"], tch::Reduction::Mean);
    let g = Tensor::run_backward(&[&loss], &[&pred], false, false).remove(0);
    let gh = pass.backward(&g).unwrap().context;
    (&hidden * gh).sum(Kind::Float).backward();
    let got = te.new_rows().unwrap().grad();
    let rel = (&got - &r["grad"]).norm().double_value(&[]) / r["grad"].norm().double_value(&[]);
    eprintln!("recomputed: gradient relative error vs PyTorch {rel:e}");
    assert!(rel < 1e-4, "gradient relative error {rel:e}");

    let rel = |a: &Tensor, b: &Tensor| (a - b).norm().double_value(&[]) / b.norm().double_value(&[]);
    let r = refs("unet.safetensors");
    let (plain, recomputed) = context_grads(&u, &r["odd_sample"], &r["odd_timestep"], &r["context"].narrow(0, 0, 1));
    eprintln!("tiny UNet 9x7: recomputed vs plain {:e}", rel(&recomputed, &plain));
    assert!(rel(&recomputed, &plain) < 1e-5);
    let r = refs("unet_sd2.safetensors");
    let m = unet("tiny-sd2-unet", "diffusion_pytorch_model.safetensors");
    let (plain, recomputed) = context_grads(&m, &r["sample"], &r["timesteps"], &r["context"]);
    eprintln!("SD2-style UNet: recomputed vs plain {:e}", rel(&recomputed, &plain));
    assert!(rel(&recomputed, &plain) < 1e-5);
}
