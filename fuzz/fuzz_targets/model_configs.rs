//! The main crate's config readers: JSON → `UNetConfig` / `VaeConfig` / `ClipTextConfig` →
//! `validate` → the model loaders' checks against real (tiny) weights, and JSON →
//! `SchedulerConfig` → every scheduler built and given timesteps. Nothing a config says may
//! panic, abort or allocate beyond what the weights hold (`-malloc_limit_mb` catches that).
//! The first input byte picks the number of inference steps, the rest is the JSON.
//!
//! Links libtorch through the main crate (the loaders build tensors), so unlike the ti-formats
//! targets it needs LIBTORCH at build time and its library folder at run time:
//!
//! ```sh
//! eval "$(scripts/setup-libtorch.sh)"
//! mkdir -p fuzz/corpus/model_configs
//! for f in fixtures/tiny-sd*/*/*config.json assets/single-file/*/*/*config.json; do
//!   { printf '\x05'; cat "$f"; } > "fuzz/corpus/model_configs/$(echo "$f" | tr / _)"; done
//! cd fuzz && LD_LIBRARY_PATH="$LIBTORCH/lib" cargo +nightly fuzz run -O model_configs corpus/model_configs -- \
//!   -max_total_time=600 -max_len=16384 -rss_limit_mb=4096 -malloc_limit_mb=1024 -timeout=20
//! ```
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use textual_inversion::models::clip::ClipTextModel;
use textual_inversion::models::config::{ClipTextConfig, UNetConfig, VaeConfig, Validate};
use textual_inversion::models::unet::UNet2DConditionModel;
use textual_inversion::models::vae::AutoencoderKL;
use textual_inversion::models::weights::{Placement, Weights};
use textual_inversion::schedulers::{self, SchedulerConfig, SchedulerKind};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(rel)
}

thread_local! {
    static WEIGHTS: [Weights; 3] = ["tiny-sd/unet/diffusion_pytorch_model.safetensors", "tiny-sd/vae/diffusion_pytorch_model.safetensors", "tiny-sd/text_encoder/model.safetensors"]
        .map(|f| Weights::open(&[fixture(f)], Placement::cpu_f32()).expect("the tiny-sd fixture"));
}

/// Parses `text` as `T` and validates it; then `load` builds the model from the fixture weights
/// (failing cleanly is fine, panicking is not).
fn config<T: serde::de::DeserializeOwned + Validate>(text: &str, load: impl FnOnce(&T)) {
    if let Ok(c) = serde_json::from_str::<T>(text) {
        if c.validate(Path::new("fuzz.json")).is_ok() {
            load(&c);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&steps, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    WEIGHTS.with(|[unet, vae, text_encoder]| {
        config::<UNetConfig>(text, |c| drop(UNet2DConditionModel::load(unet, c)));
        config::<VaeConfig>(text, |c| drop(AutoencoderKL::load(vae, c)));
        config::<ClipTextConfig>(text, |c| drop(ClipTextModel::load(text_encoder, c)));
    });
    if let Ok(c) = SchedulerConfig::from_json(text) {
        for kind in SchedulerKind::ALL {
            if let Ok(mut s) = schedulers::build(kind, &c) {
                let _ = s.set_timesteps(usize::from(steps % 64) + 1);
            }
        }
        let _ = schedulers::ddpm::DdpmScheduler::new(&c);
    }
});
