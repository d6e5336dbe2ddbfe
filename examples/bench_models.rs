//! The Rust side of scripts/bench/bench-models.sh: load time and peak RSS per component, and one
//! UNet forward at 512 px, on the same SD 1.5-shaped folder diffusers loads. Prints JSON.
use std::time::Instant;
use tch::{Kind, Tensor};
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::repo::ModelRepo;
use textual_inversion::models::stable_diffusion::{load_text_encoder, load_unet, load_vae, WeightOptions};
use textual_inversion::models::weights::Placement;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::args().nth(1) else { anyhow::bail!("usage: bench_models MODEL_DIR") };
    let _guard = tch::no_grad_guard();
    let repo = ModelRepo::resolve(&dir, None, &HubOptions::default())?;
    let opts = WeightOptions::default();
    let p = Placement::cpu_f32();
    let t = Instant::now();
    let unet = load_unet(&repo, &opts, p)?;
    let load_unet = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let vae = load_vae(&repo, &opts, p)?;
    let load_vae = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let te = load_text_encoder(&repo, &opts, p)?;
    let load_te = t.elapsed().as_secs_f64();
    let rss_load = peak_rss_mb();
    // The inputs diffusers used and its output, to check that we compute the same thing.
    let reference: std::collections::HashMap<String, Tensor> = match std::env::args().nth(2) {
        Some(p) => Tensor::read_safetensors(p)?.into_iter().collect(),
        None => Default::default(),
    };
    let (sample, context) = match (reference.get("sample"), reference.get("context")) {
        (Some(s), Some(c)) => (s.shallow_clone(), c.shallow_clone()),
        _ => (Tensor::randn([1, 4, 64, 64], (Kind::Float, tch::Device::Cpu)), Tensor::randn([1, 77, 768], (Kind::Float, tch::Device::Cpu))),
    };
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..2 {
        let t = Instant::now();
        let o = unet.forward(&sample, &Tensor::from_slice(&[500i64]), &context, None).expect("UNet forward");
        let _ = o.sum(Kind::Float).double_value(&[]);
        times.push(t.elapsed().as_secs_f64());
        out = Some(o);
    }
    let max_abs_vs_diffusers = match (out, reference.get("out")) {
        (Some(o), Some(r)) => (o - r).abs().max().double_value(&[]),
        _ => f64::NAN,
    };
    drop((vae, te));
    println!(
        "{}",
        serde_json::json!({
            "side": "textual-inversion", "threads": tch::get_num_threads(),
            "load_unet_s": load_unet, "load_vae_s": load_vae, "load_text_encoder_s": load_te,
            "load_total_s": load_unet + load_vae + load_te, "peak_rss_after_load_mb": rss_load,
            "unet_forward_s": times.iter().cloned().fold(f64::MAX, f64::min), "unet_forward_first_s": times[0],
            "peak_rss_mb": peak_rss_mb(), "unet_max_abs_vs_diffusers": max_abs_vs_diffusers,
        })
    );
    Ok(())
}
