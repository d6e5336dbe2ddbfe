//! `--prompt_syntax a1111` against the AUTOMATIC1111 web UI's own code (fixtures/a1111, made by
//! scripts/fixtures/make_fixtures_a1111.py, which runs the web UI's `prompt_parser.py` and
//! `sd_hijack_clip.py` on fixtures/tiny-sd): the parsed (text, weight) pieces of many prompts,
//! each chunk's ids and multipliers, the conditioning of prompt and negative prompt, and the
//! image diffusers makes from that conditioning (with separate UNet passes when the two have
//! different chunk counts). Cases: weights, BREAK, a long prompt with comma backtracking,
//! clip skip, and multi-vector embeddings at a chunk boundary (moved whole to the next chunk).
//!
//! Tolerances: weights 1e-12 (the same f64 products), ids exact, conditioning 1e-5 max-abs,
//! images 1/255 per pixel.
mod common;
use common::fixtures;
use std::collections::HashMap;
use tch::{Kind, Tensor};
use textual_inversion::image_out::to_pixels;
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::ModelRepo;
use textual_inversion::models::stable_diffusion::{self as sd, WeightOptions};
use textual_inversion::models::weights::Placement;
use textual_inversion::pipeline::{GenerateOptions, Models};
use textual_inversion::schedulers::{self, SchedulerConfig, SchedulerKind};
use textual_inversion::text::a1111::{parser, PromptSyntax};
use textual_inversion::text::learned_tokens::{self as ti, EmbeddingSpec};
use textual_inversion::text::TextStack;

fn cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("a1111/cases.json")).unwrap()).unwrap()
}

fn models(embeddings: &[String]) -> Models {
    let repo = ModelRepo::resolve(fixtures().join("tiny-sd").to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let w = WeightOptions::default();
    let p = Placement::cpu_f32();
    let mut tokenizer = sd::load_tokenizer(&repo).unwrap();
    let mut text_encoder = sd::load_text_encoder(&repo, &w, p).unwrap();
    let specs: Vec<EmbeddingSpec> = embeddings.iter().map(|e| format!("{}/{e}", fixtures().display()).parse().unwrap()).collect();
    let tokens = ti::load(&specs, &mut tokenizer, &mut text_encoder).unwrap();
    Models {
        family: sd::Family::StableDiffusion,
        text: TextStack { tokenizer, encoder: text_encoder, tokens },
        text_2: None,
        vae_kind: Kind::Float,
        unet: sd::load_unet(&repo, &w, p).unwrap(),
        vae: sd::load_vae(&repo, &w, p).unwrap(),
        scheduler_config: sd::load_scheduler_config(&repo).unwrap(),
        device: tch::Device::Cpu,
        kind: Kind::Float,
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

#[test]
fn parser_matches_the_web_ui() {
    let doc = cases();
    let parse = doc["parse"].as_array().unwrap();
    assert!(parse.len() >= 20);
    for case in parse {
        let prompt = case[0].as_str().unwrap();
        let expected = case[1].as_array().unwrap();
        let got = parser::parse(prompt).unwrap();
        let texts: Vec<&str> = got.iter().map(|p| p.text.as_str()).collect();
        let want: Vec<&str> = expected.iter().map(|p| p[0].as_str().unwrap()).collect();
        assert_eq!(texts, want, "{prompt:?}");
        for (g, e) in got.iter().zip(expected) {
            let w = e[1].as_f64().unwrap();
            assert!((g.weight - w).abs() <= 1e-12, "{prompt:?}: {:?} has weight {}, the web UI {w}", g.text, g.weight);
        }
    }
}

#[test]
fn a_weight_that_is_no_number_is_a_clear_error() {
    let e = parser::parse("a (cat:1.2.3)").unwrap_err().to_string();
    assert!(e.contains("1.2.3") && e.contains("not a number"), "{e}");
}

fn assert_chunks(name: &str, stack: &TextStack, prompt: &str, expected: &serde_json::Value) {
    let got = stack.a1111_chunks(prompt).unwrap();
    let expected = expected.as_array().unwrap();
    assert_eq!(got.len(), expected.len(), "{name}: chunk count of {prompt:?}");
    for (k, (g, e)) in got.iter().zip(expected).enumerate() {
        let ids: Vec<i64> = e["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(g.ids, ids, "{name}: ids of chunk {k}");
        let mults: Vec<f64> = e["multipliers"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(g.multipliers.len(), mults.len(), "{name}: chunk {k}");
        for (a, b) in g.multipliers.iter().zip(&mults) {
            assert!((a - b).abs() <= 1e-12, "{name}: multipliers of chunk {k}: {:?} vs {mults:?}", g.multipliers);
        }
    }
}

#[test]
fn chunks_conditioning_and_images_match_the_web_ui() {
    let doc = cases();
    let mut with_embeddings = None;
    let mut separate_passes = 0;
    for (name, c) in doc["cases"].as_object().unwrap() {
        let specs: Vec<String> = c["embeddings"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        let m = with_embeddings.get_or_insert_with(|| models(&specs));
        let r: HashMap<String, Tensor> = Tensor::read_safetensors(fixtures().join("a1111").join(c["file"].as_str().unwrap())).unwrap().into_iter().collect();
        let (prompt, negative) = (c["prompt"].as_str().unwrap(), c["negative_prompt"].as_str().unwrap());
        assert_chunks(name, &m.text, prompt, &c["chunks"]);
        assert_chunks(name, &m.text, negative, &c["negative_chunks"]);
        let clip_skip = c.get("clip_skip").and_then(|v| v.as_u64()).map(|v| v as usize);
        let cond = tch::no_grad(|| m.prompt_embeds_as(PromptSyntax::A1111, prompt, None, clip_skip).unwrap().hidden);
        let uncond = tch::no_grad(|| m.prompt_embeds_as(PromptSyntax::A1111, negative, None, clip_skip).unwrap().hidden);
        let (err_c, err_u) = (max_abs(&cond, &r["cond"]), max_abs(&uncond, &r["uncond"]));
        separate_passes += usize::from(cond.size() != uncond.size());
        let o = GenerateOptions {
            prompt: prompt.into(),
            negative_prompt: Some(negative.into()),
            steps: c["steps"].as_u64().unwrap() as usize,
            guidance_scale: c["guidance_scale"].as_f64(),
            clip_skip,
            prompt_syntax: PromptSyntax::A1111,
            ..GenerateOptions::default()
        };
        let cfg = SchedulerConfig::read(&fixtures().join("tiny-sd/scheduler/scheduler_config.json")).unwrap();
        let mut s = schedulers::load(&cfg, Some(c["scheduler"].as_str().unwrap().parse::<SchedulerKind>().unwrap())).unwrap();
        let out = m.generate_from(s.as_mut(), &o, Some(r["initial_latents"].shallow_clone()), &mut |_, _| {}).unwrap();
        let err_img = max_abs(&to_pixels(&out.decoded), &r["image"]);
        eprintln!("{name}: cond {:?} {err_c:e}, uncond {:?} {err_u:e}, image {err_img} / 255", cond.size(), uncond.size());
        assert!(err_c < 1e-5 && err_u < 1e-5, "{name}: conditioning differs by {err_c} / {err_u}");
        assert!(err_img <= 1.0, "{name}: image differs by {err_img}/255");
    }
    assert!(separate_passes >= 2, "the fixture has cases with different chunk counts");
}
