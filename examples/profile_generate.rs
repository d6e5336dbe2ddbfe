//! Where generation's time goes, per part: the Rust side of scripts/bench/profile_generate.py.
//! Times the prompt conditioning (cond + uncond), one guided UNet forward (batch 2) and the VAE
//! decode, REPS times each, on a model folder or single file. Prints JSON (medians, seconds).
//! usage: profile_generate MODEL SIZE [REPS]
use std::time::Instant;
use tch::{Kind, Tensor};
use textual_inversion::models::repo::ModelSource;
use textual_inversion::models::stable_diffusion::{LoadOptions, WeightOptions};
use textual_inversion::pipeline::{GenerateOptions, Models};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// This process's CPU seconds (user + system) and minor page faults so far.
fn usage() -> (f64, f64) {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (s(u.ru_utime) + s(u.ru_stime), u.ru_minflt as f64)
}

/// Medians of wall seconds, CPU seconds and minor page faults per call.
fn time(reps: usize, mut f: impl FnMut() -> Tensor) -> [f64; 3] {
    let (mut wall, mut cpu, mut faults) = (vec![], vec![], vec![]);
    for _ in 0..reps {
        let (c0, f0) = usage();
        let t = Instant::now();
        let o = f();
        let _ = o.sum(Kind::Float).double_value(&[]);
        wall.push(t.elapsed().as_secs_f64());
        let (c1, f1) = usage();
        cpu.push(c1 - c0);
        faults.push(f1 - f0);
    }
    [median(wall), median(cpu), median(faults)]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 3, "usage: profile_generate MODEL SIZE [REPS]");
    let size: i64 = args[2].parse()?;
    let reps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    if std::env::var_os("TI_DEFAULT_MALLOC").is_none() {
        textual_inversion::malloc::keep_freed_memory();
    }
    let _guard = tch::no_grad_guard();
    let repo = ModelSource::new(args[1].clone()).resolve()?;
    let load = LoadOptions {
        weights: WeightOptions::default(),
        text_encoder_variant: true,
        tokenizer_dir: None,
        device: tch::Device::Cpu,
        precision: Default::default(),
    };
    let t = Instant::now();
    let models = Models::load(&repo, &load)?;
    let load_s = t.elapsed().as_secs_f64();
    let options = GenerateOptions { prompt: "a photo of a cat".into(), ..Default::default() };
    let cond_s = time(reps, || models.conditioning(&options, (size, size), true).expect("conditioning").context);
    let cond = models.conditioning(&options, (size, size), true)?;
    tch::manual_seed(0);
    let latent = size / models.vae_scale_factor();
    let x = Tensor::randn([2, models.unet.config.in_channels, latent, latent], (Kind::Float, tch::Device::Cpu));
    let t_tensor = Tensor::full([], 500.0, (Kind::Float, tch::Device::Cpu));
    let unet_s = time(reps, || models.unet.forward(&x, &t_tensor, &cond.context, cond.added.as_ref()).expect("unet"));
    let z = x.narrow(0, 0, 1);
    let vae_s = time(reps, || models.vae.decode(&z).expect("decode"));
    println!(
        "{}",
        serde_json::json!({"side": "rust", "threads": tch::get_num_threads(), "load_s": load_s, "cond_s": cond_s, "unet_s": unet_s, "vae_decode_s": vae_s})
    );
    Ok(())
}
