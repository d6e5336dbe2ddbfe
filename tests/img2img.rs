//! img2img (`generate --init_image`) against diffusers' StableDiffusionImg2ImgPipeline and
//! StableDiffusionXLImg2ImgPipeline on the tiny models (fixtures/img2img, made by
//! scripts/fixtures/make_fixtures_img2img.py): the init image as `VaeImageProcessor.preprocess(
//! load_image(file))` makes it (a PNG resized with LANCZOS, an EXIF-rotated JPEG), then whole
//! seeded runs (posterior sample, noise, ancestral draws from one generator) with seven
//! schedulers at strengths 0.5, 0.6, 1.0 and the pipelines' defaults, one and two images (the
//! two also with `--batch_size 1`: the same images).
//!
//! Tolerances: the prepared image 1e-6 max-abs (f32 rounding of x / 255); final latents 1e-4
//! max-abs relative to max(1, |reference|); images 1/255 per pixel.
mod common;
use common::fixtures;
use std::collections::HashMap;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};
use textual_inversion::device::Precision;
use textual_inversion::image_out::to_pixels;
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::ModelRepo;
use textual_inversion::models::stable_diffusion::{LoadOptions, WeightOptions};
use textual_inversion::pipeline::{img2img, GenerateOptions, Models};
use textual_inversion::schedulers::{self, SchedulerKind};

const TOL: f64 = 1e-4;

/// libtorch's global CPU generator, which every generation draws from: the tests of this binary
/// run on parallel threads, and a draw of one between another's seeding and its draws (an
/// ancestral sampler draws at every step) would change the other's images.
static GLOBAL_GENERATOR: Mutex<()> = Mutex::new(());

fn models(name: &str) -> Models {
    let repo = ModelRepo::resolve(fixtures().join(name).to_str().unwrap(), None, &HubOptions::default()).unwrap();
    let load =
        LoadOptions { weights: WeightOptions::default(), text_encoder_variant: true, tokenizer_dir: None, device: Device::Cpu, precision: Precision::Fp32 };
    Models::load(&repo, &load).unwrap()
}

fn dir() -> std::path::PathBuf {
    fixtures().join("img2img")
}

fn options(c: &serde_json::Value) -> GenerateOptions {
    GenerateOptions {
        prompt: c["prompt"].as_str().unwrap().to_string(),
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance_scale: c["guidance_scale"].as_f64(),
        num_images_per_prompt: c["num_images_per_prompt"].as_u64().unwrap() as usize,
        seed: c["seed"].as_u64().unwrap(),
        init_image: Some(dir().join(c["image"].as_str().unwrap())),
        strength: c["strength"].as_f64(),
        ..GenerateOptions::default()
    }
}

#[test]
fn every_case_matches_diffusers() {
    let _generator = GLOBAL_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    let mut loaded: HashMap<String, Models> = HashMap::new();
    let (mut n, mut batched) = (0, 0);
    for (name, c) in cases["cases"].as_object().unwrap() {
        let model = c["model"].as_str().unwrap();
        let m = loaded.entry(model.to_string()).or_insert_with(|| models(model));
        let r: HashMap<String, Tensor> = Tensor::read_safetensors(dir().join(c["file"].as_str().unwrap())).unwrap().into_iter().collect();
        let o = options(c);
        let init = img2img::load(o.init_image.as_ref().unwrap(), m.vae_scale_factor()).unwrap();
        assert_eq!(init.size(), r["init"].size(), "{name}: prepared image size");
        let err_init = (&init - &r["init"]).abs().max().double_value(&[]);
        assert!(err_init <= 1e-6, "{name}: prepared image differs by {err_init}");
        let mut s = schedulers::load(&m.scheduler_config, Some(c["scheduler"].as_str().unwrap().parse::<SchedulerKind>().unwrap())).unwrap();
        let out = m.generate(s.as_mut(), &o, |_, _| {}).unwrap();
        let err_lat = common::close_within(&format!("{name}: latents"), &out.latents, &r["latents"], TOL);
        let pixels = to_pixels(&out.decoded);
        let err_img = (pixels.to_kind(Kind::Int) - r["image"].to_kind(Kind::Int)).abs().max().int64_value(&[]);
        eprintln!("{name}: init {err_init:e}, latents {err_lat:e}, image {err_img}/255");
        assert!(err_img <= 1, "{name}: image differs by {err_img}/255");
        if o.num_images_per_prompt > 1 {
            // --batch_size 1: one image per UNet call and decode, the same images.
            let mut s = schedulers::load(&m.scheduler_config, Some(c["scheduler"].as_str().unwrap().parse::<SchedulerKind>().unwrap())).unwrap();
            let one = m.generate(s.as_mut(), &GenerateOptions { batch_size: Some(1), ..o.clone() }, |_, _| {}).unwrap();
            let err_lat = common::close_within(&format!("{name} --batch_size 1: latents"), &one.latents, &r["latents"], TOL);
            let err_img = (to_pixels(&one.decoded).to_kind(Kind::Int) - r["image"].to_kind(Kind::Int)).abs().max().int64_value(&[]);
            eprintln!("{name} --batch_size 1: latents {err_lat:e}, image {err_img}/255");
            assert!(err_img <= 1, "{name} --batch_size 1: image differs by {err_img}/255");
            batched += 1;
        }
        n += 1;
    }
    assert!(n >= 12 && batched >= 1, "only {n} cases, {batched} batched");
}

#[test]
fn strengths_and_settings_diffusers_would_refuse_are_refused() {
    let png = dir().join("init.png");
    let with = |strength: Option<f64>| GenerateOptions { init_image: Some(png.clone()), strength, steps: 10, ..GenerateOptions::default() };
    for s in [0.0, -0.5, 1.5, f64::NAN] {
        let e = format!("{:#}", with(Some(s)).check().unwrap_err());
        assert!(e.contains("--strength") && e.contains("(0, 1]"), "{e}");
    }
    with(Some(1.0)).check().unwrap();
    let e = format!("{:#}", GenerateOptions { strength: Some(0.5), ..GenerateOptions::default() }.check().unwrap_err());
    assert!(e.contains("--init_image"), "{e}");
    let e = format!("{:#}", GenerateOptions { height: Some(64), ..with(None) }.check().unwrap_err());
    assert!(e.contains("--height/--width"), "{e}");

    let _generator = GLOBAL_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let m = models("tiny-sd");
    let mut s = schedulers::load(&m.scheduler_config, Some(SchedulerKind::Ddim)).unwrap();
    // int(10 * 0.05) = 0 steps.
    let e = format!("{:#}", m.generate(s.as_mut(), &with(Some(0.05)), |_, _| {}).err().unwrap());
    assert!(e.contains("leaves no step"), "{e}");
    // A scheduler without add_noise says so before any denoising.
    let mut heun = schedulers::load(&m.scheduler_config, Some(SchedulerKind::Heun)).unwrap();
    let e = format!("{:#}", m.generate(heun.as_mut(), &with(None), |_, _| {}).err().unwrap());
    assert!(e.contains("not supported with HeunDiscreteScheduler"), "{e}");
    // Unreadable images name the file and the flag.
    let bad = GenerateOptions { init_image: Some(dir().join("cases.json")), ..with(None) };
    let e = format!("{:#}", m.generate(s.as_mut(), &bad, |_, _| {}).err().unwrap());
    assert!(e.contains("cases.json") && e.contains("--init_image"), "{e}");
}

#[test]
fn generate_command_makes_an_image_of_the_init_images_size() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .args(["generate", "--model"])
        .arg(fixtures().join("tiny-sd"))
        .args(["--prompt", "a cat", "--num_inference_steps", "4", "--seed", "1", "--strength", "0.5", "--init_image"])
        .arg(dir().join("init.jpg"))
        .arg("--output_dir")
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = out_dir.path().join("0000-1.png");
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap())).read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (32, 48), "the upright JPEG's size");
    let text: HashMap<String, String> = reader.info().uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    assert_eq!(text["strength"], "0.5");
    assert!(text["init_image"].ends_with("init.jpg"));
}
