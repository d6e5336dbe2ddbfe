//! Pillow's `Image.resize` of 8-bit RGB, bit for bit (its fixed-point weights and rounding):
//! BICUBIC (the training script's) and LANCZOS (diffusers' `VaeImageProcessor` default).
use anyhow::{bail, Context, Result};
use image::RgbImage;

/// Pillow's fixed-point precision for 8-bit resampling: `32 - 8 - 2` bits.
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (Keys, a = -0.5), same operation order.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's truncated-sinc Lanczos kernel (support 3), same operation order.
fn lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            return 1.0;
        }
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// A Pillow resampling filter: its kernel and support (in input pixels at scale 1).
#[derive(Debug, Clone, Copy)]
pub enum Filter {
    Bicubic,
    Lanczos,
}

impl Filter {
    fn kernel(self) -> (fn(f64) -> f64, f64) {
        match self {
            Filter::Bicubic => (bicubic, 2.0),
            Filter::Lanczos => (lanczos, 3.0),
        }
    }
}

/// Per output pixel: first input index, tap count, and `ksize` fixed-point weights.
struct Taps {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: when downscaling the kernel is
/// stretched by the scale factor (antialiasing); weights are normalised in f64 then rounded
/// half away from zero to 22-bit integers.
fn taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let (kernel, filter_support) = filter.kernel();
    // Pillow computes `(in1 - in0)` in f32 from the float box, then divides in f64.
    let scale = f64::from(in_size as f32) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter_support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` casts: truncation toward zero, then clamped.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize;
        let n = (xmax - xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            *kx = kernel(((x + xmin) as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for (x, &kx) in k.iter().enumerate().take(n) {
            let v = if ww != 0.0 { kx / ww } else { kx };
            let f = v * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if v < 0.0 { (f - 0.5) as i32 } else { (f + 0.5) as i32 };
        }
        bounds.push((xmin, n));
    }
    Taps { bounds, weights, ksize }
}

/// One 8-bit fixed-point tap sum, rounded and clipped as Pillow's `clip8`.
#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `PIL.Image.resize((width, height), BICUBIC)` of an RGB image, bit-identical (see [`resize`]).
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    resize(img, width, height, Filter::Bicubic)
}

/// `PIL.Image.resize((width, height), filter)` of an RGB image, bit-identical: separable
/// convolution, horizontal pass first (over only the rows the vertical pass reads), rounding to
/// u8 between the passes; a pass is skipped when its size does not change.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 {
        bail!("cannot resize {in_w}x{in_h} to {out_w}x{out_h}");
    }
    let src = img.as_raw();
    let horiz = taps(in_w, out_w, filter);
    let mut vert = taps(in_h, out_h, filter);
    let first = vert.bounds[0].0;
    let last = vert.bounds.iter().map(|&(s, n)| s + n).max().unwrap_or(in_h);
    let half = 1i64 << (PRECISION_BITS - 1);

    let (tmp, tmp_w) = if out_w != in_w {
        vert.bounds.iter_mut().for_each(|b| b.0 -= first);
        let rows = last - first;
        let mut out = vec![0u8; rows * out_w * 3];
        for (y, row) in out.chunks_exact_mut(out_w * 3).enumerate() {
            let line = &src[(y + first) * in_w * 3..(y + first + 1) * in_w * 3];
            for (xx, px) in row.chunks_exact_mut(3).enumerate() {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let mut acc = [half; 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &line[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += i64::from(p[c]) * i64::from(kx);
                    }
                }
                for c in 0..3 {
                    px[c] = clip8(acc[c]);
                }
            }
        }
        (out, out_w)
    } else {
        (src.to_vec(), in_w)
    };
    let out = if out_h != in_h {
        let mut out = vec![0u8; out_h * tmp_w * 3];
        for (yy, row) in out.chunks_exact_mut(tmp_w * 3).enumerate() {
            let (ymin, n) = vert.bounds[yy];
            let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
            for (i, v) in row.iter_mut().enumerate() {
                let mut acc = half;
                for (y, &ky) in k.iter().enumerate() {
                    acc += i64::from(tmp[(ymin + y) * tmp_w * 3 + i]) * i64::from(ky);
                }
                *v = clip8(acc);
            }
        }
        out
    } else {
        tmp
    };
    RgbImage::from_raw(width, height, out).context("resize produced a buffer of the wrong length")
}
