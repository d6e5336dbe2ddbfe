//! The generation pipeline against diffusers' StableDiffusionPipeline on the tiny model
//! (fixtures/pipeline, made by scripts/fixtures/make_fixtures_pipeline.py): every scheduler from fixed
//! initial latents, seeded runs (the same seed draws the same latents and ancestral noise as
//! `torch.Generator("cpu").manual_seed(seed)`), batches, no guidance, truncated long prompts, and
//! multi-vector embeddings in the prompt and the negative prompt. The batch is run again with
//! `--batch_size 1` (one image per UNet call): the same images.
//!
//! Tolerances: final latents and prompt embeddings 1e-4 max-abs, images 1/255 per pixel.
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
use textual_inversion::text::learned_tokens::{self as ti, EmbeddingSpec};
use textual_inversion::text::TextStack;

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

fn scheduler(kind: &str) -> Box<dyn schedulers::Scheduler> {
    let cfg = SchedulerConfig::read(&fixtures().join("tiny-sd/scheduler/scheduler_config.json")).unwrap();
    schedulers::load(&cfg, Some(kind.parse::<SchedulerKind>().unwrap())).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

#[test]
fn every_case_matches_diffusers() {
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipeline/cases.json")).unwrap()).unwrap();
    let plain = models(&[]);
    let mut with_embeddings = None;
    for (name, c) in cases["cases"].as_object().unwrap() {
        let r: HashMap<String, Tensor> = Tensor::read_safetensors(fixtures().join("pipeline").join(c["file"].as_str().unwrap())).unwrap().into_iter().collect();
        let m = match c.get("embeddings") {
            Some(e) => with_embeddings.get_or_insert_with(|| {
                let specs: Vec<String> = e.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
                models(&specs)
            }),
            None => &plain,
        };
        let o = GenerateOptions {
            prompt: c["prompt"].as_str().unwrap().to_string(),
            negative_prompt: c["negative_prompt"].as_str().map(String::from),
            steps: c["steps"].as_u64().unwrap() as usize,
            guidance_scale: c["guidance_scale"].as_f64(),
            num_images_per_prompt: c.get("num_images_per_prompt").and_then(|n| n.as_u64()).unwrap_or(1) as usize,
            seed: c["seed"].as_u64().unwrap(),
            ..GenerateOptions::default()
        };
        let pe = tch::no_grad(|| m.encode_prompt(&o.prompt, None).unwrap());
        let err_pe = max_abs(&pe, &r["prompt_embeds"].narrow(0, 0, 1));
        let mut s = scheduler(c["scheduler"].as_str().unwrap());
        let fixed = r.get("initial_latents").map(|t| t.shallow_clone());
        // diffusers seeds its generator even when latents are given (ancestral noise).
        tch::manual_seed(o.seed as i64);
        let out = m.generate_from(s.as_mut(), &o, fixed, &mut |_, _| {}).unwrap();
        let err_lat = max_abs(&out.latents, &r["latents"]);
        let pixels = to_pixels(&out.decoded);
        let err_img = max_abs(&pixels, &r["image"]);
        eprintln!("{name}: prompt embeds {err_pe:e}, latents {err_lat:e}, image {err_img} / 255");
        assert!(err_pe < 1e-4, "{name}: prompt embeddings differ by {err_pe}");
        assert!(err_lat < 1e-4, "{name}: latents differ by {err_lat}");
        assert!(err_img <= 1.0, "{name}: image differs by {err_img}/255");
        if o.num_images_per_prompt > 1 {
            // --batch_size 1: the UNet and the VAE one image at a time, the same images.
            let mut s = scheduler(c["scheduler"].as_str().unwrap());
            let fixed = r.get("initial_latents").map(|t| t.shallow_clone());
            tch::manual_seed(o.seed as i64);
            let one = m.generate_from(s.as_mut(), &GenerateOptions { batch_size: Some(1), ..o.clone() }, fixed, &mut |_, _| {}).unwrap();
            let err_lat = max_abs(&one.latents, &r["latents"]);
            let err_img = max_abs(&to_pixels(&one.decoded), &r["image"]);
            eprintln!("{name} --batch_size 1: latents {err_lat:e}, image {err_img} / 255");
            assert!(err_lat < 1e-4 && err_img <= 1.0, "{name} --batch_size 1: latents {err_lat}, image {err_img}/255");
        }
    }
}
