//! transformers' `CLIPImageProcessor` on its PIL backend (`CLIPImageProcessorPil` in
//! transformers 5, the only one before it): what turns an RGB image into a `CLIPModel`'s pixel
//! values. Pillow's bicubic resize of the shortest edge to `size.shortest_edge` (the long edge
//! `int(shortest * long / short)`, truncated), a centre crop to `crop_size` (top
//! `(h - crop) // 2`, floored; zero padding where the image is smaller), `* rescale_factor` in
//! f64 stored as f32, then `(x - mean) / std` in f32. Pixel for pixel the processor's output
//! (tests/clip_eval.rs). transformers 5's default torchvision backend resizes differently (about
//! 0.015 apart on the fixture's images, docs/evaluating.md).
use super::config::{ClipVisionConfig, MAX_WIDTH};
use crate::image_in::resize_bicubic;
use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde::Deserialize;
use std::path::Path;
use tch::Tensor;

/// `PILImageResampling.BICUBIC`.
const BICUBIC: i64 = 3;
/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`.
const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// `size` or `crop_size`: a number, or a dictionary of edges.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Size {
    Edge(i64),
    Dict { shortest_edge: Option<i64>, longest_edge: Option<i64>, height: Option<i64>, width: Option<i64> },
}

/// What the resize produces.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Resize {
    ShortestEdge(u32),
    Exact { height: u32, width: u32 },
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
struct Config {
    #[serde(default = "default_true")]
    do_resize: bool,
    size: Option<Size>,
    resample: Option<i64>,
    #[serde(default = "default_true")]
    do_center_crop: bool,
    crop_size: Option<Size>,
    #[serde(default = "default_true")]
    do_rescale: bool,
    rescale_factor: Option<f64>,
    #[serde(default = "default_true")]
    do_normalize: bool,
    image_mean: Option<Vec<f64>>,
    image_std: Option<Vec<f64>>,
}

/// The preprocessing `preprocessor_config.json` describes, checked against the vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipImageProcessor {
    resize: Option<Resize>,
    crop: Option<(u32, u32)>,
    rescale: Option<f64>,
    /// Per channel mean and std, as f32 (numpy's `np.array(mean, dtype=image.dtype)`).
    normalize: Option<([f32; 3], [f32; 3])>,
}

fn edge(file: &Path, key: &str, v: i64) -> Result<u32> {
    if !(1..=MAX_WIDTH).contains(&v) {
        bail!("{}: {key} is {v}; expected 1 to {MAX_WIDTH}", file.display());
    }
    Ok(v as u32)
}

fn channels(file: &Path, key: &str, v: Option<Vec<f64>>, default: [f64; 3], positive: bool) -> Result<[f32; 3]> {
    let v = v.unwrap_or(default.to_vec());
    match v.as_slice() {
        [a, b, c] if v.iter().all(|x| x.is_finite() && (!positive || *x > 0.0)) => Ok([*a as f32, *b as f32, *c as f32]),
        _ => bail!("{}: {key} is {v:?}; expected three finite numbers{}", file.display(), if positive { " above 0" } else { "" }),
    }
}

impl ClipImageProcessor {
    /// Reads `preprocessor_config.json`; fails naming the file and key on anything the PIL
    /// `CLIPImageProcessor` would not do, or on output that is not the tower's image size.
    pub fn load(file: &Path, vision: &ClipVisionConfig) -> Result<Self> {
        let c: Config = crate::models::config::read(file)?;
        let resize = if c.do_resize {
            if let Some(r) = c.resample.filter(|&r| r != BICUBIC) {
                bail!("{}: resample is {r}; only bicubic (3) is supported", file.display());
            }
            Some(match c.size.clone().unwrap_or(Size::Edge(224)) {
                Size::Edge(s) => Resize::ShortestEdge(edge(file, "size", s)?),
                Size::Dict { shortest_edge: Some(s), longest_edge: None, .. } => Resize::ShortestEdge(edge(file, "size.shortest_edge", s)?),
                Size::Dict { shortest_edge: None, longest_edge: None, height: Some(h), width: Some(w) } => {
                    Resize::Exact { height: edge(file, "size.height", h)?, width: edge(file, "size.width", w)? }
                }
                other => bail!("{}: size {other:?} is not supported; expected shortest_edge, or height and width", file.display()),
            })
        } else {
            None
        };
        let crop = if c.do_center_crop {
            Some(match c.crop_size.clone().unwrap_or(Size::Edge(224)) {
                Size::Edge(s) => (edge(file, "crop_size", s)?, edge(file, "crop_size", s)?),
                Size::Dict { height: Some(h), width: Some(w), .. } => (edge(file, "crop_size.height", h)?, edge(file, "crop_size.width", w)?),
                other => bail!("{}: crop_size {other:?} is not supported; expected height and width", file.display()),
            })
        } else {
            None
        };
        let out = match (crop, resize) {
            (Some(c), _) => Some(c),
            (None, Some(Resize::Exact { height, width })) => Some((height, width)),
            _ => None,
        };
        let s = vision.image_size as u32;
        if out != Some((s, s)) {
            bail!(
                "{}: the processor's output ({}) is not the vision tower's {s}x{s} images (vision_config.image_size)",
                file.display(),
                out.map_or("the input's own size".to_string(), |(h, w)| format!("{h}x{w}"))
            );
        }
        let rescale = if c.do_rescale {
            let r = c.rescale_factor.unwrap_or(1.0 / 255.0);
            if !r.is_finite() {
                bail!("{}: rescale_factor is {r}; expected a finite number", file.display());
            }
            Some(r)
        } else {
            None
        };
        let normalize = if c.do_normalize {
            Some((channels(file, "image_mean", c.image_mean, OPENAI_CLIP_MEAN, false)?, channels(file, "image_std", c.image_std, OPENAI_CLIP_STD, true)?))
        } else {
            None
        };
        Ok(ClipImageProcessor { resize, crop, rescale, normalize })
    }

    /// transformers' `get_resize_output_image_size(default_to_square=False)`: (height, width).
    fn resized_size(&self, height: u32, width: u32) -> Option<(u32, u32)> {
        match self.resize? {
            Resize::Exact { height, width } => Some((height, width)),
            Resize::ShortestEdge(s) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                // Python's `int(size * long / short)`: an exact product, a float division, truncated.
                let new_long = ((u64::from(s) * u64::from(long)) as f64 / f64::from(short)) as u32;
                Some(if width <= height { (new_long, s) } else { (s, new_long) })
            }
        }
    }

    /// `[3, H, W]` f32 pixel values of one RGB image, on the CPU.
    pub fn pixel_values(&self, img: &RgbImage) -> Result<Tensor> {
        let resized;
        let img = match self.resized_size(img.height(), img.width()) {
            Some((h, w)) => {
                resized = resize_bicubic(img, w, h).context("resizing for CLIP")?;
                &resized
            }
            None => img,
        };
        let (h, w) = (img.height() as i64, img.width() as i64);
        let (ch, cw) = self.crop.map_or((h, w), |(a, b)| (i64::from(a), i64::from(b)));
        // Floor division, as numpy's `//`: negative when the crop is larger (zero padding).
        let (top, left) = ((h - ch).div_euclid(2), (w - cw).div_euclid(2));
        let plane = (ch * cw) as usize;
        let mut out = vec![0f32; 3 * plane];
        for y in 0..ch {
            for x in 0..cw {
                let (sy, sx) = (y + top, x + left);
                let px = if (0..h).contains(&sy) && (0..w).contains(&sx) { img.get_pixel(sx as u32, sy as u32).0 } else { [0; 3] };
                for (c, &v) in px.iter().enumerate() {
                    let v = match self.rescale {
                        Some(r) => (f64::from(v) * r) as f32,
                        None => f32::from(v),
                    };
                    let v = match &self.normalize {
                        Some((mean, std)) => (v - mean[c]) / std[c],
                        None => v,
                    };
                    out[c * plane + (y * cw + x) as usize] = v;
                }
            }
        }
        Ok(Tensor::from_slice(&out).view([3, ch, cw]))
    }
}
