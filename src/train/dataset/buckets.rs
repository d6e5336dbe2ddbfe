//! Aspect-ratio buckets as kohya-ss/sd-scripts makes them (`--enable_bucket`): its bucket
//! resolutions (`make_bucket_resolutions`), each image's bucket and resized size
//! (`BucketManager.select_bucket`, with `--bucket_no_upscale` too), its crop (`trim_and_resize_if_required`:
//! centred, or random with `--random_crop`) and SDXL's crop coordinates (`get_crop_ltrb`). Every
//! number equals what kohya's own code computes (tests/buckets.rs over fixtures/buckets). The
//! resize kernel is this project's Pillow-exact bicubic, not kohya's OpenCV `INTER_AREA`/Lanczos.
use super::decode::MAX_PIXELS;
use crate::train::script_rng::Mt19937;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// `--enable_bucket` and its flags, kohya's names and defaults; the largest bucket area is
/// `resolution²`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// `--resolution`: buckets hold at most `resolution²` pixels.
    pub resolution: u32,
    pub min_bucket_reso: u32,
    pub max_bucket_reso: u32,
    pub bucket_reso_steps: u32,
    /// `--bucket_no_upscale`: each image gets a bucket of its own size (rounded down to the
    /// steps; shrunk to `resolution²` when larger), never enlarged.
    pub no_upscale: bool,
    /// `--random_crop`: the part of the resized image kept is drawn (once per image, from the
    /// seed) instead of centred.
    pub random_crop: bool,
}

/// kohya's defaults for `--min_bucket_reso`, `--max_bucket_reso`, `--bucket_reso_steps`.
pub const DEFAULT_MIN_BUCKET_RESO: u32 = 256;
pub const DEFAULT_MAX_BUCKET_RESO: u32 = 1024;
pub const DEFAULT_BUCKET_RESO_STEPS: u32 = 64;

/// The VAE halves the image three times: bucket sides must be multiples of this.
const VAE_MULTIPLE: u32 = 8;

impl BucketConfig {
    /// What kohya asserts, and what the VAE needs (sides multiples of 8), with the flags named.
    pub fn check(&self) -> Result<()> {
        let s = self.bucket_reso_steps;
        if s == 0 || s % VAE_MULTIPLE != 0 {
            bail!(
                "--bucket_reso_steps must be a positive multiple of {VAE_MULTIPLE} (bucket sides are multiples of it and the VAE divides them by 8), got {s}"
            );
        }
        for (flag, v) in [("--min_bucket_reso", self.min_bucket_reso), ("--max_bucket_reso", self.max_bucket_reso)] {
            if v == 0 || v % VAE_MULTIPLE != 0 {
                bail!("{flag} must be a positive multiple of {VAE_MULTIPLE}, got {v}");
            }
        }
        if self.min_bucket_reso > self.max_bucket_reso {
            bail!("--min_bucket_reso ({}) must not be larger than --max_bucket_reso ({})", self.min_bucket_reso, self.max_bucket_reso);
        }
        if self.max_bucket_reso < self.resolution {
            bail!(
                "--max_bucket_reso ({}) must be at least --resolution ({}): kohya's rule, the square bucket is resolution x resolution",
                self.max_bucket_reso,
                self.resolution
            );
        }
        if self.resolution < s {
            bail!("--resolution ({}) must be at least --bucket_reso_steps ({s})", self.resolution);
        }
        Ok(())
    }

    /// The settings in words, as a checkpoint records them.
    pub fn describe(&self) -> String {
        format!(
            "--resolution {} --min_bucket_reso {} --max_bucket_reso {} --bucket_reso_steps {}{}{}",
            self.resolution,
            self.min_bucket_reso,
            self.max_bucket_reso,
            self.bucket_reso_steps,
            if self.no_upscale { " --bucket_no_upscale" } else { "" },
            if self.random_crop { " --random_crop" } else { "" }
        )
    }

    fn max_area(&self) -> u64 {
        u64::from(self.resolution) * u64::from(self.resolution)
    }
}

/// kohya's `make_bucket_resolutions((r, r), min, max, steps)` for `max_area = r²`: the square
/// `floor(sqrt(area) / steps) * steps`, then for each width from `min` by `steps` up to `max` the
/// tallest height (a multiple of `steps`, at most `max`) within the area, both ways round;
/// sorted, without repeats.
pub fn make_bucket_resolutions(max_area: u64, min_size: u32, max_size: u32, divisible: u32) -> Vec<(u32, u32)> {
    let div = u64::from(divisible.max(1));
    let mut resos = std::collections::BTreeSet::new();
    // Python: `int(math.sqrt(max_area) // divisible) * divisible`, in floats then truncated.
    let side = ((max_area as f64).sqrt() / div as f64).floor() as u64 * div;
    resos.insert((side as u32, side as u32));
    let mut width = u64::from(min_size);
    while width <= u64::from(max_size) && width > 0 {
        let height = u64::from(max_size).min((max_area / width) / div * div);
        if height >= u64::from(min_size) {
            resos.insert((width as u32, height as u32));
            resos.insert((height as u32, width as u32));
        }
        width += div;
    }
    resos.into_iter().collect()
}

/// One image's place: kohya's bucket, the size it is resized to, and where the bucket is cut
/// from the resized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// `(width, height)` of the bucket: the size trained at.
    pub bucket: (u32, u32),
    /// `(width, height)` the image is resized to before the crop.
    pub resized: (u32, u32),
    /// `(left, top)` of the bucket in the resized image.
    pub crop: (u32, u32),
}

impl Fit {
    /// kohya's centre trim: `(resized - bucket) // 2` on each axis that is larger.
    fn centred(bucket: (u32, u32), resized: (u32, u32)) -> Self {
        Fit { bucket, resized, crop: (resized.0.saturating_sub(bucket.0) / 2, resized.1.saturating_sub(bucket.1) / 2) }
    }

    /// kohya's random trim: `random.randint(0, trim)` for the width, then for the height, each
    /// only where the resized image is larger than the bucket.
    /// `rng` is a Python `random.Random` ([`Mt19937::python`]).
    pub fn with_random_crop(self, rng: &mut Mt19937) -> Self {
        let draw = |rng: &mut Mt19937, trim: u32| if trim > 0 { rng.below(trim as usize + 1) as u32 } else { 0 };
        let left = draw(rng, self.resized.0.saturating_sub(self.bucket.0));
        let top = draw(rng, self.resized.1.saturating_sub(self.bucket.1));
        Fit { crop: (left, top), ..self }
    }
}

/// kohya's `BucketManager` for one setting: the predefined resolutions (none with
/// `--bucket_no_upscale`) and its choice per image size.
pub struct BucketManager {
    config: BucketConfig,
    predefined: Vec<(u32, u32)>,
    /// `w / h` of each predefined resolution (numpy's float64 division).
    aspect_ratios: Vec<f64>,
}

impl BucketManager {
    pub fn new(config: &BucketConfig) -> Self {
        let predefined = if config.no_upscale {
            Vec::new()
        } else {
            make_bucket_resolutions(config.max_area(), config.min_bucket_reso, config.max_bucket_reso, config.bucket_reso_steps)
        };
        let aspect_ratios = predefined.iter().map(|&(w, h)| f64::from(w) / f64::from(h)).collect();
        BucketManager { config: config.clone(), predefined, aspect_ratios }
    }

    /// The predefined resolutions, sorted (empty with `--bucket_no_upscale`).
    pub fn predefined(&self) -> &[(u32, u32)] {
        &self.predefined
    }

    /// kohya's `round_to_steps`: `int(x + 0.5)` rounded down to the steps.
    fn round_to_steps(&self, x: f64) -> u64 {
        let x = (x + 0.5) as u64;
        x - x % u64::from(self.config.bucket_reso_steps)
    }

    /// kohya's `select_bucket(width, height)` and centre crop: the bucket and resized size,
    /// exactly as its float arithmetic gives them. An error where kohya's raises (with
    /// `--bucket_no_upscale`, an image so elongated that a side rounds to 0).
    pub fn select(&self, width: u32, height: u32) -> Result<Fit> {
        if width == 0 || height == 0 {
            bail!("an image of {width}x{height} pixels has no aspect ratio");
        }
        let aspect = f64::from(width) / f64::from(height);
        if !self.config.no_upscale {
            let reso = if self.predefined.contains(&(width, height)) {
                (width, height)
            } else {
                // numpy's argmin: the first of the smallest errors.
                let mut best = 0;
                for (i, ar) in self.aspect_ratios.iter().enumerate() {
                    if (ar - aspect).abs() < (self.aspect_ratios[best] - aspect).abs() {
                        best = i;
                    }
                }
                *self.predefined.get(best).ok_or_else(|| anyhow::anyhow!("no bucket resolution between --min_bucket_reso and --max_bucket_reso"))?
            };
            let ar_reso = f64::from(reso.0) / f64::from(reso.1);
            let scale = if aspect > ar_reso { f64::from(reso.1) / f64::from(height) } else { f64::from(reso.0) / f64::from(width) };
            let resized = ((f64::from(width) * scale + 0.5) as u64, (f64::from(height) * scale + 0.5) as u64);
            return Ok(Fit::centred(reso, clamp_size(resized)));
        }
        let max_area = self.config.max_area();
        let resized = if u64::from(width) * u64::from(height) > max_area {
            let rw = (max_area as f64 * aspect).sqrt();
            let rh = max_area as f64 / rw;
            if (rw / rh - aspect).abs() >= 1e-2 {
                bail!("aspect ratio {aspect} cannot be kept within {max_area} pixels");
            }
            let too_long = || anyhow::anyhow!("{width}x{height} is too elongated for --bucket_no_upscale: a side of its bucket rounds to 0");
            let bw = self.round_to_steps(rw);
            let bh_in_w = self.round_to_steps(bw as f64 / aspect);
            if bh_in_w == 0 {
                return Err(too_long());
            }
            let ar_w = bw as f64 / bh_in_w as f64;
            let bh = self.round_to_steps(rh);
            let bw_in_h = self.round_to_steps(bh as f64 * aspect);
            if bh == 0 {
                return Err(too_long());
            }
            let ar_h = bw_in_h as f64 / bh as f64;
            if (ar_w - aspect).abs() < (ar_h - aspect).abs() {
                (bw, (bw as f64 / aspect + 0.5) as u64)
            } else {
                ((bh as f64 * aspect + 0.5) as u64, bh)
            }
        } else {
            (u64::from(width), u64::from(height))
        };
        let resized = clamp_size(resized);
        let steps = self.config.bucket_reso_steps;
        let bucket = (resized.0 - resized.0 % steps, resized.1 - resized.1 % steps);
        if bucket.1 == 0 {
            // kohya's `ar_error = reso[0] / reso[1] - aspect` divides by 0 here.
            bail!("{width}x{height} is shorter than --bucket_reso_steps {steps}: its --bucket_no_upscale bucket would be {}x0", bucket.0);
        }
        Ok(Fit::centred(bucket, resized))
    }

    /// [`BucketManager::select`], refusing what cannot train: a bucket side of 0 (an image
    /// smaller than the steps with `--bucket_no_upscale`), or a resize above [`MAX_PIXELS`]
    /// (an image so elongated that fitting its short side makes the long one huge).
    pub fn fit(&self, width: u32, height: u32) -> Result<Fit> {
        let fit = self.select(width, height)?;
        if fit.bucket.0 == 0 || fit.bucket.1 == 0 {
            bail!(
                "{width}x{height} is smaller than --bucket_reso_steps {} on a side: its --bucket_no_upscale bucket would be {}x{}",
                self.config.bucket_reso_steps,
                fit.bucket.0,
                fit.bucket.1
            );
        }
        if u64::from(fit.resized.0) * u64::from(fit.resized.1) > MAX_PIXELS {
            bail!(
                "{width}x{height} would be resized to {}x{} to fill its {}x{} bucket: more than {MAX_PIXELS} pixels (aspect ratio too extreme)",
                fit.resized.0,
                fit.resized.1,
                fit.bucket.0,
                fit.bucket.1
            );
        }
        Ok(fit)
    }
}

/// Sizes past u32 cannot be resized anyway; [`BucketManager::fit`] refuses them.
fn clamp_size((w, h): (u64, u64)) -> (u32, u32) {
    (w.min(u64::from(u32::MAX)) as u32, h.min(u64::from(u32::MAX)) as u32)
}

/// SDXL's `crops_coords_top_left` as kohya's `__getitem__` gives it: from `get_crop_ltrb(bucket,
/// original)` (Stability AI's convention: where the image would sit, letterboxed, in the
/// bucket), `(top, left)`; flipped, the left is `bucket_width - crop_right`. Truncated to
/// integers as kohya's `int()`.
pub fn sdxl_crop_top_left(bucket: (u32, u32), original: (u32, u32), flipped: bool) -> (i64, i64) {
    let (bw, bh) = (f64::from(bucket.0), f64::from(bucket.1));
    let image_ar = f64::from(original.0) / f64::from(original.1.max(1));
    let (rw, rh) = if bw / bh > image_ar { (bh * image_ar, bh) } else { (bw, bw / image_ar) };
    let left = ((bw - rw) / 2.0).floor();
    let top = ((bh - rh) / 2.0).floor();
    let right = left + rw;
    let left = if flipped { bw - right } else { left };
    (top as i64, left as i64)
}

/// The bucket table: each bucket used, sorted by resolution, with its number of dataset
/// items (images x repeats, as kohya counts).
pub fn bucket_counts(fits: &[Fit], repeats: usize) -> BTreeMap<(u32, u32), usize> {
    let mut table = BTreeMap::new();
    for f in fits {
        *table.entry(f.bucket).or_insert(0) += repeats;
    }
    table
}
