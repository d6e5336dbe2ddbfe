//! SDXL against diffusers 0.42.1 / transformers 5.23.0 on fixtures/tiny-sdxl (two text encoders
//! of different widths, both with the legacy eos id 2; made by scripts/fixtures/make_fixtures_sdxl.py,
//! references in fixtures/sdxl-refs): both encoders' hidden states and pooled outputs (placeholder
//! ids included: the argmax pooling quirk), the UNet with added conditioning, the VAE, every
//! `encode_prompt` case (zeroed negatives, explicit and empty negatives, prompt_2, clip_skip, no
//! guidance, batches), whole pipeline runs (Euler, the model's scheduler, from fixed and seeded
//! latents; DPM-Solver++; no guidance; size/crop conditioning; a non-square image; an SDXL
//! {clip_l, clip_g} embedding in the prompt) and the embedding routes.
//!
//! Tolerances: tensors 1e-4 max-abs relative to their magnitude (at least 1); final latents the
//! same; images 1/255 per pixel; token ids and pooled positions exact.
mod common;
use common::fixtures;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};
use textual_inversion::device::Precision;
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::ModelRepo;
use textual_inversion::models::stable_diffusion::{LoadOptions, WeightOptions};
use textual_inversion::models::unet::AddedConditioning;
use textual_inversion::pipeline::{GenerateOptions, Models};
use textual_inversion::schedulers::{self, SchedulerKind};
use textual_inversion::text::learned_tokens::EmbeddingSpec;

const TOL: f64 = 1e-4;

fn refs(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("sdxl-refs").join(name)).unwrap().into_iter().collect()
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("sdxl-refs/expected.json")).unwrap()).unwrap()
}

fn models() -> Models {
    let repo = ModelRepo::resolve(fixtures().join("tiny-sdxl").to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let load =
        LoadOptions { weights: WeightOptions::default(), text_encoder_variant: true, tokenizer_dir: None, device: Device::Cpu, precision: Precision::Fp32 };
    Models::load(&repo, &load).unwrap()
}

/// max |a - b| / max(1, max |b|), asserted within TOL.
fn close(what: &str, a: &Tensor, b: &Tensor) -> f64 {
    common::close_within(what, a, b, TOL)
}

#[test]
fn text_encoders_hidden_states_and_pooled_outputs_match_transformers() {
    let r = refs("text_encoders.safetensors");
    let e = expected();
    let mut m = models();
    assert!(m.family.is_xl());
    let tokens: Vec<String> = e["text_encoders"]["placeholder_tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let prompts: Vec<String> = e["text_encoders"]["prompts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let mut worst = 0f64;
    for (k, text) in m.stacks_mut().into_iter().enumerate() {
        let k = k + 1;
        let refs_: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let ids = text.tokenizer.add_tokens(&refs_).unwrap();
        assert_eq!(Vec::<i64>::try_from(&r[&format!("te{k}_placeholder_ids")]).unwrap(), ids);
        text.encoder.set_new_rows(r[&format!("te{k}_added_rows")].shallow_clone()).unwrap();
        let want_ids = &r[&format!("te{k}_input_ids")];
        for (i, p) in prompts.iter().enumerate() {
            let ours = text.tokenizer.encode(p).unwrap();
            assert_eq!(ours, Vec::<i64>::try_from(&want_ids.get(i as i64)).unwrap(), "te{k}: ids of {p:?}");
        }
        let out = tch::no_grad(|| text.encoder.forward(want_ids));
        for (i, h) in out.hidden_states.iter().enumerate() {
            worst = worst.max(close(&format!("te{k} hidden_states.{i}"), h, &r[&format!("te{k}_hidden_states.{i}")]));
        }
        worst = worst.max(close(&format!("te{k} last_hidden_state"), &out.last_hidden_state, &r[&format!("te{k}_last_hidden_state")]));
        let pooled = tch::no_grad(|| text.encoder.pooled(&out.last_hidden_state, want_ids));
        let want = if k == 2 { &r["te2_text_embeds"] } else { &r["te1_pooler_output"] };
        worst = worst.max(close(&format!("te{k} pooled"), &pooled, want));
    }
    eprintln!("text encoders: worst relative difference {worst:e}");
}

#[test]
fn unet_with_added_conditioning_matches_diffusers() {
    let r = refs("unet.safetensors");
    let m = models();
    let added = AddedConditioning { text_embeds: r["text_embeds"].shallow_clone(), time_ids: r["time_ids"].shallow_clone() };
    let out = tch::no_grad(|| m.unet.forward(&r["sample"], &r["timesteps"], &r["encoder_hidden_states"], Some(&added))).unwrap();
    let err = close("unet", &out, &r["out"]);
    let odd_added = AddedConditioning { text_embeds: r["text_embeds"].narrow(0, 1, 1), time_ids: r["time_ids"].narrow(0, 1, 1) };
    let odd = tch::no_grad(|| m.unet.forward(&r["odd_sample"], &r["odd_timestep"], &r["encoder_hidden_states"].narrow(0, 1, 1), Some(&odd_added))).unwrap();
    let err_odd = close("unet 9x7", &odd, &r["odd_out"]);
    eprintln!("unet {err:e}, odd {err_odd:e}");
    // Without its added conditioning an SDXL UNet refuses, naming what is missing.
    let e = m.unet.forward(&r["sample"], &r["timesteps"], &r["encoder_hidden_states"], None).unwrap_err().to_string();
    assert!(e.contains("text_time") && e.contains("time ids"), "{e}");
}

#[test]
fn vae_matches_diffusers() {
    let r = refs("vae.safetensors");
    let m = models();
    let post = tch::no_grad(|| m.vae.encode(&r["image"])).unwrap();
    close("vae mean", &post.mean, &r["mean"]);
    close("vae std", &post.std, &r["std"]);
    close("vae decode", &tch::no_grad(|| m.vae.decode(&r["latents"])).unwrap(), &r["decoded"]);
}

fn as_strings(v: &serde_json::Value) -> Vec<Option<String>> {
    match v {
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().map(String::from)).collect(),
        serde_json::Value::Null => vec![None],
        other => vec![other.as_str().map(String::from)],
    }
}

#[test]
fn encode_prompt_cases_match_diffusers() {
    let r = refs("encode_prompt.safetensors");
    let e = expected();
    let m = models();
    let mut worst = 0f64;
    for (name, c) in e["encode_prompt"]["cases"].as_object().unwrap() {
        let n = c["num_images_per_prompt"].as_u64().unwrap() as i64;
        let cfg = c["do_classifier_free_guidance"].as_bool().unwrap();
        let prompts = as_strings(&c["prompt"]);
        let negatives = as_strings(&c["negative_prompt"]);
        for (i, prompt) in prompts.iter().enumerate() {
            let o = GenerateOptions {
                prompt: prompt.clone().unwrap(),
                prompt_2: c["prompt_2"].as_str().map(String::from),
                negative_prompt: negatives.get(i).cloned().flatten(),
                negative_prompt_2: c["negative_prompt_2"].as_str().map(String::from),
                num_images_per_prompt: n as usize,
                clip_skip: c["clip_skip"].as_u64().map(|s| s as usize),
                ..GenerateOptions::default()
            };
            let cond = tch::no_grad(|| m.conditioning(&o, (64, 64), cfg)).unwrap();
            let rows = |key: &str| r[&format!("{name}.{key}")].narrow(0, i as i64 * n, n);
            let (want_ctx, want_pooled) = if cfg {
                (
                    Tensor::cat(&[rows("negative_prompt_embeds"), rows("prompt_embeds")], 0),
                    Tensor::cat(&[rows("negative_pooled_prompt_embeds"), rows("pooled_prompt_embeds")], 0),
                )
            } else {
                (rows("prompt_embeds"), rows("pooled_prompt_embeds"))
            };
            worst = worst.max(close(&format!("{name}[{i}] prompt embeds"), &cond.context, &want_ctx));
            let added = cond.added.unwrap();
            worst = worst.max(close(&format!("{name}[{i}] pooled"), &added.text_embeds, &want_pooled));
            if c["zero_negatives"] == true {
                assert_eq!(cond.context.narrow(0, 0, n).abs().max().double_value(&[]), 0.0, "{name}: zeroed negatives");
            }
        }
    }
    eprintln!("encode_prompt: worst relative difference {worst:e}");
}

#[test]
fn pipeline_runs_match_diffusers() {
    let e = expected();
    let mut plain = models();
    let mut with_embedding = None;
    for (name, run) in e["runs"].as_object().unwrap() {
        let r = refs(run["file"].as_str().unwrap());
        let m = match run.get("embedding").and_then(|f| f.as_str()) {
            Some(file) => with_embedding.get_or_insert_with(|| {
                let mut m = models();
                let spec: EmbeddingSpec = format!("{}:<sdxl-emb>", fixtures().join("sdxl-refs").join(file).display()).parse().unwrap();
                m.load_embeddings(&[spec]).unwrap();
                m
            }),
            None => &mut plain,
        };
        let pair = |k: &str| run.get(k).and_then(|v| v.as_array()).map(|a| (a[0].as_i64().unwrap(), a[1].as_i64().unwrap()));
        let o = GenerateOptions {
            prompt: run["prompt"].as_str().unwrap().to_string(),
            prompt_2: run["prompt_2"].as_str().map(String::from),
            negative_prompt: run["negative_prompt"].as_str().map(String::from),
            negative_prompt_2: run["negative_prompt_2"].as_str().map(String::from),
            steps: run["steps"].as_u64().unwrap() as usize,
            guidance_scale: run["guidance_scale"].as_f64().filter(|&g| g != 5.0),
            seed: run["seed"].as_u64().unwrap(),
            height: run["height"].as_i64(),
            width: run["width"].as_i64(),
            original_size: pair("original_size"),
            crops_coords_top_left: pair("crops_coords_top_left").unwrap_or((0, 0)),
            target_size: pair("target_size"),
            ..GenerateOptions::default()
        };
        let kind = match run["scheduler"].as_str().unwrap() {
            "euler" => None,
            other => Some(other.parse::<SchedulerKind>().unwrap()),
        };
        let mut s = schedulers::load(&m.scheduler_config, kind).unwrap();
        let fixed = r.get("initial_latents").map(Tensor::shallow_clone);
        let out = m.generate_from(s.as_mut(), &o, fixed, &mut |_, _| {}).unwrap();
        let err = close(&format!("{name}: latents"), &out.latents, &r["latents"]);
        let pixels = textual_inversion::image_out::to_pixels(&out.decoded);
        let diff = (pixels.to_kind(Kind::Int) - r["image_u8"].to_kind(Kind::Int)).abs().max().int64_value(&[]);
        eprintln!("{name}: latents {err:e}, image {diff}/255");
        assert!(diff <= 1, "{name}: image differs by {diff}/255");
    }
}

/// A single-encoder file of `width` wide vectors for `token`.
fn single_file(dir: &std::path::Path, name: &str, token: &str, width: usize) -> std::path::PathBuf {
    use textual_inversion::formats::embeddings::{self as emb, Embedding, Encoder, OutFormat, Part};
    let values: Vec<f32> = (0..2 * width).map(|i| (i as f32 * 0.37).sin()).collect();
    let tensor = textual_inversion::formats::RawTensor::from_f32(vec![2, width], &values).unwrap();
    let e = Embedding { stored_token: Some(token.into()), parts: vec![Part { encoder: Encoder::TextEncoder, tensor }] };
    let path = dir.join(name);
    emb::write(&path, OutFormat::Diffusers, token, &e, None, None).unwrap();
    path
}

#[test]
fn embeddings_route_to_their_encoders() {
    let dir = tempfile::tempdir().unwrap();
    let sdxl = fixtures().join("sdxl-refs/sdxl-embedding.safetensors");
    let widths: Vec<usize> = {
        let m = models();
        m.stacks().iter().map(|s| s.encoder.hidden_size() as usize).collect()
    };
    // {clip_l, clip_g}: one token in each encoder, named after the file.
    let mut m = models();
    m.load_embeddings(&[sdxl.to_str().unwrap().parse().unwrap()]).unwrap();
    for s in m.stacks() {
        assert_eq!(s.tokens.len(), 1);
        assert_eq!((s.tokens[0].token.as_str(), s.tokens[0].vectors), ("sdxl-embedding", 2));
    }
    // The diffusers pair in a folder, as textual_inversion_sdxl.py writes it: the same rows.
    let parts = textual_inversion::formats::embeddings::read(&sdxl).unwrap();
    use textual_inversion::formats::embeddings::{self as emb, Embedding, Encoder, OutFormat, Part};
    for (file, which) in [("learned_embeds.safetensors", Encoder::ClipL), ("learned_embeds_2.safetensors", Encoder::ClipG)] {
        let p = parts.embeddings[0].part(which).unwrap();
        let e = Embedding { stored_token: Some("<pair>".into()), parts: vec![Part { encoder: Encoder::TextEncoder, tensor: p.tensor.clone() }] };
        emb::write(&dir.path().join(file), OutFormat::Diffusers, "<pair>", &e, None, None).unwrap();
    }
    let mut pair = models();
    pair.load_embeddings(&[dir.path().to_str().unwrap().parse().unwrap()]).unwrap();
    let mut named = models();
    named.load_embeddings(&[format!("{}:<pair>", sdxl.display()).parse().unwrap()]).unwrap();
    let o = GenerateOptions { prompt: "a photo of <pair>".into(), ..GenerateOptions::default() };
    let (a, b) = tch::no_grad(|| (pair.conditioning(&o, (64, 64), false).unwrap(), named.conditioning(&o, (64, 64), false).unwrap()));
    assert!(
        a.context.equal(&b.context) && a.added.unwrap().text_embeds.equal(&b.added.unwrap().text_embeds),
        "the folder pair loads like the {{clip_l, clip_g}} file"
    );

    // A single-encoder file needs to be told which encoder; then it goes there only.
    let one = single_file(dir.path(), "one.safetensors", "<one>", widths[0]);
    let mut m = models();
    let e = m.load_embeddings(&[one.to_str().unwrap().parse().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("single-encoder embedding") && e.contains(":clip_l"), "{e}");
    let mut m = models();
    m.load_embeddings(&[format!("{}:<one>:clip_l", one.display()).parse().unwrap()]).unwrap();
    assert_eq!((m.text.tokens.len(), m.text_2.as_ref().unwrap().tokens.len()), (1, 0));
    // Width mismatches name the file, the encoder and both widths.
    let mut m = models();
    let e = m.load_embeddings(&[format!("{}:<one>:clip_g", one.display()).parse().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("one.safetensors") && e.contains(&format!("{}-wide", widths[0])) && e.contains(&format!("{} wide", widths[1])), "{e}");
    // And on an SD 1.x model the clip_l part of an SDXL file can be taken by name (widths
    // permitting), else the SDXL file is refused.
    let repo = ModelRepo::resolve(fixtures().join("tiny-sd").to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let load =
        LoadOptions { weights: WeightOptions::default(), text_encoder_variant: true, tokenizer_dir: None, device: Device::Cpu, precision: Precision::Fp32 };
    let mut sd = Models::load(&repo, &load).unwrap();
    let e = sd.load_embeddings(&[sdxl.to_str().unwrap().parse().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("SDXL embedding") && e.contains(":clip_l"), "{e}");
}

#[test]
fn generate_command_writes_an_sdxl_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .args(["generate", "--model"])
        .arg(fixtures().join("tiny-sdxl"))
        .args(["--prompt", "a photo of <sdxl-embedding>", "--prompt_2", "an oil painting", "--num_inference_steps", "2", "--seed", "1"])
        .args(["--original_size", "128,96", "--crops_coords_top_left", "8,4", "--embedding"])
        .arg(fixtures().join("sdxl-refs/sdxl-embedding.safetensors"))
        .arg("--output_dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = dir.path().join("0000-1.png");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (64, 64), "the UNet's sample_size x the VAE's scale");
    let text: HashMap<String, String> = reader.info().uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    assert_eq!(text["guidance_scale"], "5", "SDXL's default guidance");
    assert_eq!(text["prompt_2"], "an oil painting");
    assert_eq!(text["scheduler"], "euler");
    // SD-only models refuse the SDXL flags.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .args(["generate", "--model"])
        .arg(fixtures().join("tiny-sd"))
        .args(["--prompt", "x", "--num_inference_steps", "1", "--prompt_2", "y", "--output_dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("are for SDXL models"));
}

/// Block-wise recomputation (`--gradient_checkpointing`) with SDXL's added conditioning: the
/// gradients reaching the context and the pooled embedding equal plain backpropagation's
/// (tolerance 1e-5 relative: only the order of the blocks' sums differs).
#[test]
fn recomputed_backward_with_added_conditioning_equals_plain_backward() {
    let r = refs("unet.safetensors");
    let m = models();
    let rel = |a: &Tensor, b: &Tensor| (a - b).norm().double_value(&[]) / b.norm().double_value(&[]);
    let c = r["encoder_hidden_states"].detach().set_requires_grad(true);
    let te = r["text_embeds"].detach().set_requires_grad(true);
    let added = AddedConditioning { text_embeds: te.shallow_clone(), time_ids: r["time_ids"].shallow_clone() };
    let out = m.unet.forward(&r["sample"], &r["timesteps"], &c, Some(&added)).unwrap();
    let plain = Tensor::run_backward(&[(&out * &out).sum(Kind::Float) * 0.5], &[&c, &te], false, false);
    let added = AddedConditioning { text_embeds: r["text_embeds"].shallow_clone(), time_ids: r["time_ids"].shallow_clone() };
    let pass = m.unet.forward_recomputable(&r["sample"], &r["timesteps"], &r["encoder_hidden_states"], Some(&added)).unwrap();
    assert!(pass.output().equal(&out.detach()));
    let g = pass.output().shallow_clone();
    let grads = pass.backward(&g).unwrap();
    let (ec, et) = (rel(&grads.context, &plain[0]), rel(&grads.text_embeds.unwrap(), &plain[1]));
    eprintln!("recomputed vs plain: context {ec:e}, text_embeds {et:e}");
    assert!(ec < 1e-5 && et < 1e-5);
}
