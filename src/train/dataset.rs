//! The training images: discovery and validation of `--train_data_dir`, the preprocessing of
//! diffusers' `TextualInversionDataset` (center crop, Pillow-exact bicubic resize, flip, scaling)
//! and its caption templates.
//!
//! Differences from the Python script, all on purpose:
//! - Discovery is done once, up front (call [`Dataset::load`] before loading any model), and
//!   entries the script would crash on mid-training (folders, `.DS_Store`, captions, corrupt or
//!   truncated files) are skipped with one warning. It is an error only when no usable image is
//!   left.
//!
//! The images are taken in the folder's directory order, as the script's `os.listdir` takes them
//! (what `readdir` yields: on ext4 a hash of the names, so the same files copied elsewhere may
//! come in another order), so that `--seed` draws the same items; [`ImageOrder::Sorted`]
//! (`--sort_images`) gives a fixed order on every machine instead.
//! - EXIF orientation is applied (the script trains on phone photos lying on their side).
//! - 16-bit greyscale keeps its high byte; Pillow's `convert("RGB")` clips such an "I;16" image
//!   to white wherever a value exceeds 255.
//! - Images above [`MAX_PIXELS`] are refused before decoding.
//!
//! Everything else follows the script: other modes become 8-bit RGB as Pillow's `convert("RGB")`
//! does (alpha dropped without compositing, greyscale and palettes expanded, 16-bit RGB(A) by its
//! high byte as Pillow's PNG reader does, CMYK JPEGs as `R = (255 - C)(255 - K) / 255` with
//! Adobe's inverted storage, which is Pillow's formula too); resized pixels equal Pillow's
//! `resize((s, s), BICUBIC)` bit for bit. JPEG decoding itself (zune-jpeg instead of Pillow's
//! libjpeg-turbo) differs by a few levels on some pixels; PNG, WebP lossless and GIF are exact.
use anyhow::{anyhow, bail, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// torchvision `RandomHorizontalFlip`'s default probability, kept by the script.
pub const FLIP_P: f64 = 0.5;

/// Largest accepted image in pixels: Pillow's `Image.MAX_IMAGE_PIXELS` (89.5 MP, where Pillow
/// starts warning of a decompression bomb), far above any camera JPEG; keeps one decoded image
/// under about 0.7 GB even at 16-bit RGBA.
pub const MAX_PIXELS: u64 = 89_478_485;

/// Largest file read at all, so a stray video or disk image in the folder is not slurped.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// `imagenet_templates_small` of the script (`--learnable_property object`), in order.
pub const OBJECT_TEMPLATES: [&str; 27] = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
];

/// `imagenet_style_templates_small` (`--learnable_property style`), in order; entries 3/12 and
/// 10/14 are duplicated in the script, which doubles their probability, so they stay.
pub const STYLE_TEMPLATES: [&str; 19] = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
];

/// `--learnable_property`: which template list captions come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LearnableProperty {
    #[default]
    Object,
    Style,
}

impl LearnableProperty {
    pub fn templates(self) -> &'static [&'static str] {
        match self {
            Self::Object => &OBJECT_TEMPLATES,
            Self::Style => &STYLE_TEMPLATES,
        }
    }
}

/// The string the templates are filled with: all placeholder tokens joined by spaces, as the
/// script passes `" ".join(placeholder_tokens)` to the dataset.
pub fn placeholder_string<S: AsRef<str>>(tokens: &[S]) -> String {
    tokens.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ")
}

/// `template.format(placeholder)`: every template has exactly one `{}` and no other braces.
pub fn caption(template: &str, placeholder: &str) -> String {
    template.replacen("{}", placeholder, 1)
}

/// One decoded file, already 8-bit RGB and upright.
pub struct LoadedImage {
    pub rgb: RgbImage,
    /// What the file held, named like Pillow's modes ("RGB", "RGBA", "L", "LA", "1", "P",
    /// "CMYK", "I;16", "RGB;16", ...), for the log.
    pub source_mode: &'static str,
    pub orientation: Orientation,
}

/// Reads one image as the script's `Image.open(p).convert("RGB")` would see it, plus EXIF
/// orientation. The error text says why the file is unusable (it becomes the skip reason).
pub fn load_rgb(path: &Path) -> Result<LoadedImage> {
    let len = std::fs::metadata(path).map_err(|e| anyhow!("cannot read: {e}"))?.len();
    if len == 0 {
        bail!("empty file");
    }
    if len > MAX_FILE_BYTES {
        bail!("file of {} MB is too large to be an image", len >> 20);
    }
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read: {e}"))?;
    // By content, like Pillow: a caption named .jpg is not a JPEG.
    let format = image::guess_format(&bytes).map_err(|_| anyhow!("not an image (unrecognised content)"))?;
    let header_mode = match format {
        ImageFormat::Jpeg => {
            let components = jpeg_components_if_complete(&bytes)?;
            Some(match components {
                1 => "L",
                4 => "CMYK",
                _ => "RGB",
            })
        }
        ImageFormat::Png => png_mode(&bytes),
        ImageFormat::Gif => Some("P"),
        _ => None,
    };
    let mut reader = ImageReader::with_format(Cursor::new(&bytes), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 16 + (64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| anyhow!("corrupt or unsupported {format:?} file: {e}"))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels == 0 {
        bail!("empty image ({w}x{h})");
    }
    if pixels > MAX_PIXELS {
        bail!(
            "{w}x{h} is {:.1} megapixels, above the limit of {:.1}; downscale it first",
            pixels as f64 / 1e6,
            MAX_PIXELS as f64 / 1e6
        );
    }
    // A broken EXIF block only loses the rotation, as in Pillow's exif_transpose.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image =
        DynamicImage::from_decoder(decoder).map_err(|e| anyhow!("corrupt or truncated {format:?} file: {e}"))?;
    let (rgb, decoded_mode) = to_rgb8(image)?;
    let mut oriented = DynamicImage::ImageRgb8(rgb);
    oriented.apply_orientation(orientation);
    Ok(LoadedImage { rgb: oriented.into_rgb8(), source_mode: header_mode.unwrap_or(decoded_mode), orientation })
}

/// 8-bit RGB as Pillow's `convert("RGB")`: alpha dropped without compositing, grey replicated,
/// 16-bit samples by their high byte (Pillow's PNG reader; for "I;16" see the module docs).
fn to_rgb8(image: DynamicImage) -> Result<(RgbImage, &'static str)> {
    fn expand<T: Copy>(raw: &[T], channels: usize, w: u32, h: u32, to8: impl Fn(T) -> u8) -> RgbImage {
        let mut out = Vec::with_capacity(raw.len() / channels * 3);
        for px in raw.chunks_exact(channels) {
            if channels < 3 {
                out.extend([to8(px[0]); 3]);
            } else {
                out.extend([to8(px[0]), to8(px[1]), to8(px[2])]);
            }
        }
        RgbImage::from_raw(w, h, out).expect("buffer length is w*h*3 by construction")
    }
    let (w, h) = (image.width(), image.height());
    let id = |v: u8| v;
    let hi = |v: u16| (v >> 8) as u8;
    Ok(match image {
        DynamicImage::ImageRgb8(b) => (b, "RGB"),
        DynamicImage::ImageRgba8(b) => (expand(b.as_raw(), 4, w, h, id), "RGBA"),
        DynamicImage::ImageLuma8(b) => (expand(b.as_raw(), 1, w, h, id), "L"),
        DynamicImage::ImageLumaA8(b) => (expand(b.as_raw(), 2, w, h, id), "LA"),
        DynamicImage::ImageLuma16(b) => (expand(b.as_raw(), 1, w, h, hi), "I;16"),
        DynamicImage::ImageLumaA16(b) => (expand(b.as_raw(), 2, w, h, hi), "LA;16"),
        DynamicImage::ImageRgb16(b) => (expand(b.as_raw(), 3, w, h, hi), "RGB;16"),
        DynamicImage::ImageRgba16(b) => (expand(b.as_raw(), 4, w, h, hi), "RGBA;16"),
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
            bail!("floating-point (HDR) pixels are not supported; save it as an 8- or 16-bit image")
        }
        other => bail!("unsupported pixel layout {:?}", other.color()),
    })
}

/// PNG colour type and depth from IHDR (always the first chunk): the decoder expands palettes
/// and bilevel images, which would hide them from the log.
fn png_mode(bytes: &[u8]) -> Option<&'static str> {
    let (depth, color) = (*bytes.get(24)?, *bytes.get(25)?);
    let deep = depth == 16;
    Some(match color {
        0 if depth == 1 => "1",
        0 if deep => "I;16",
        0 => "L",
        2 if deep => "RGB;16",
        2 => "RGB",
        3 => "P",
        4 if deep => "LA;16",
        4 => "LA",
        6 if deep => "RGBA;16",
        6 => "RGBA",
        _ => return None,
    })
}

/// Walks a JPEG's marker segments to its end-of-image marker and returns the frame's component
/// count. zune-jpeg (non-strict) fills a truncated scan with grey without an error, where Pillow
/// raises "image file is truncated"; this restores the error.
fn jpeg_components_if_complete(b: &[u8]) -> Result<u8> {
    const TRUNCATED: &str = "truncated JPEG (no end-of-image marker)";
    let mut components = None;
    let mut i = 2; // after SOI
    loop {
        // Skip to the next marker (fill bytes and stray data as libjpeg does).
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { bail!(TRUNCATED) };
        i += 1;
        match marker {
            0xD9 => return components.ok_or_else(|| anyhow!("corrupt JPEG (no frame header)")),
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
            bail!(TRUNCATED)
        };
        let end = i + len;
        if len < 2 || end > b.len() {
            bail!(TRUNCATED);
        }
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            components = b.get(i + 7).copied().or(components);
        }
        i = end;
        if marker == 0xDA {
            // Entropy-coded data: 0xFF is followed by 0x00 (stuffing) or a restart marker.
            while i + 1 < b.len() && !(b[i] == 0xFF && b[i + 1] != 0 && !(0xD0..=0xD7).contains(&b[i + 1])) {
                i += 1;
            }
        }
    }
}

/// The script's center crop: the largest centred square, rows `[(h-c)//2, (h+c)//2)` and
/// columns likewise with `c = min(h, w)`.
pub fn center_crop(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let c = w.min(h);
    image::imageops::crop_imm(img, (w - c) / 2, (h - c) / 2, c, c).to_image()
}

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

/// Per output pixel: first input index, tap count, and `ksize` fixed-point weights.
struct Taps {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: when downscaling the kernel is
/// stretched by the scale factor (antialiasing); weights are normalised in f64 then rounded
/// half away from zero to 22-bit integers.
fn taps(in_size: usize, out_size: usize) -> Taps {
    // Pillow computes `(in1 - in0)` in f32 from the float box, then divides in f64.
    let scale = f64::from(in_size as f32) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
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
            *kx = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
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

/// `PIL.Image.resize((width, height), BICUBIC)` of an RGB image, bit-identical: separable
/// convolution, horizontal pass first (over only the rows the vertical pass reads), rounding to
/// u8 between the passes; a pass is skipped when its size does not change.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 {
        bail!("cannot resize {in_w}x{in_h} to {out_w}x{out_h}");
    }
    let src = img.as_raw();
    let horiz = taps(in_w, out_w);
    let mut vert = taps(in_h, out_h);
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

/// The deterministic part of the script's item: optional center crop, then bicubic resize to
/// `size x size` (the aspect ratio is not kept without the crop).
pub fn preprocess(rgb: &RgbImage, size: u32, center_crop_first: bool) -> Result<RgbImage> {
    if center_crop_first {
        resize_bicubic(&center_crop(rgb), size, size)
    } else {
        resize_bicubic(rgb, size, size)
    }
}

/// `pixel_values`: optionally mirrored, `x / 127.5 - 1.0` computed in f64 then rounded to f32
/// (numpy's order), CHW `[3, H, W]` on the CPU.
pub fn to_pixels(img: &RgbImage, flip: bool) -> Tensor {
    let lut: Vec<f32> = (0..=255u8).map(|v| (f64::from(v) / 127.5 - 1.0) as f32).collect();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut data = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            for c in 0..3 {
                data[(c * h + y) * w + x] = lut[usize::from(raw[(y * w + sx) * 3 + c])];
            }
        }
    }
    Tensor::from_slice(&data).view([3, h as i64, w as i64])
}

/// torchvision's `RandomHorizontalFlip(0.5)` decision: `torch.rand(1) < p` on libtorch's global
/// CPU generator, so a run seeded with `tch::manual_seed` draws what PyTorch would.
pub fn flip_from_torch_rand() -> bool {
    Tensor::rand([1], (Kind::Float, Device::Cpu)).double_value(&[0]) < FLIP_P
}

/// In which order the folder's images become dataset items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageOrder {
    /// As `readdir` lists them: the script's `os.listdir` order.
    #[default]
    Directory,
    /// By file name: the same on every file system.
    Sorted,
}

/// A folder entry that was left out, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// One usable image: where it came from, and its crop+resize (deterministic, so done once).
pub struct DatasetImage {
    pub path: PathBuf,
    pub source_mode: &'static str,
    pub orientation: Orientation,
    /// `(height, width)` after orientation, before any crop or resize (SDXL's `original_size`).
    pub original_size: (u32, u32),
    pub resized: RgbImage,
}

/// The training set: `len() = images * repeats`, item `i` is image `i % images`.
pub struct Dataset {
    images: Vec<DatasetImage>,
    skipped: Vec<Skipped>,
    repeats: usize,
    size: u32,
}

impl Dataset {
    /// Lists `dir` (not recursively, in directory order), decodes and preprocesses every usable image,
    /// logs one warning naming the skipped entries and why, and fails only if none is usable.
    /// Cheap next to model loading, so call it first: a bad folder fails in seconds.
    pub fn load(dir: &Path, size: u32, center_crop: bool, repeats: usize) -> Result<Self> {
        Self::load_ordered(dir, size, center_crop, repeats, ImageOrder::Directory)
    }

    /// [`Dataset::load`] with the images in `order`.
    pub fn load_ordered(dir: &Path, size: u32, center_crop: bool, repeats: usize, order: ImageOrder) -> Result<Self> {
        if size == 0 {
            bail!("--resolution must be at least 1");
        }
        if repeats == 0 {
            bail!("--repeats must be at least 1");
        }
        let read = std::fs::read_dir(dir).with_context(|| format!("cannot read --train_data_dir {}", dir.display()))?;
        let mut entries =
            read.collect::<std::io::Result<Vec<_>>>().with_context(|| format!("listing {}", dir.display()))?;
        if order == ImageOrder::Sorted {
            entries.sort_by_key(|e| e.file_name());
        }
        let (mut images, mut skipped) = (Vec::new(), Vec::new());
        for entry in &entries {
            let path = entry.path();
            let reason = if entry.file_name().to_string_lossy().starts_with('.') {
                "hidden entry (name starts with '.')".to_string()
            } else if path.is_dir() {
                "a folder (sub-folders are not searched)".to_string()
            } else {
                match load_rgb(&path).and_then(|l| Ok((preprocess(&l.rgb, size, center_crop)?, l))) {
                    Ok((resized, l)) => {
                        images.push(DatasetImage {
                            original_size: (l.rgb.height(), l.rgb.width()),
                            path,
                            source_mode: l.source_mode,
                            orientation: l.orientation,
                            resized,
                        });
                        continue;
                    }
                    Err(e) => format!("{e:#}"),
                }
            };
            skipped.push(Skipped { path, reason });
        }
        if images.is_empty() {
            let why = if entries.is_empty() { "the folder is empty".to_string() } else { skipped_summary(&skipped) };
            bail!("no usable image in --train_data_dir {}: {why}", dir.display());
        }
        if !skipped.is_empty() {
            tracing::warn!(
                "{}: skipped {} of {} entries:{}",
                dir.display(),
                skipped.len(),
                entries.len(),
                skipped_summary(&skipped)
            );
        }
        let converted: Vec<String> = images
            .iter()
            .filter(|i| i.source_mode != "RGB" || i.orientation != Orientation::NoTransforms)
            .map(|i| {
                let mut how = Vec::new();
                if i.source_mode != "RGB" {
                    how.push(i.source_mode.to_string());
                }
                if i.orientation != Orientation::NoTransforms {
                    how.push(format!("EXIF {:?}", i.orientation));
                }
                format!("{} ({})", file_name(&i.path), how.join(", "))
            })
            .collect();
        if !converted.is_empty() {
            tracing::info!("converted to upright 8-bit RGB: {}", converted.join(", "));
        }
        Ok(Self { images, skipped, repeats, size })
    }

    /// Images times repeats, as the script's `__len__`.
    pub fn len(&self) -> usize {
        self.images.len() * self.repeats
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn num_images(&self) -> usize {
        self.images.len()
    }

    pub fn repeats(&self) -> usize {
        self.repeats
    }

    pub fn resolution(&self) -> u32 {
        self.size
    }

    /// Which image item `item` shows: `item % num_images`.
    pub fn image_index(&self, item: usize) -> usize {
        item % self.images.len()
    }

    pub fn images(&self) -> &[DatasetImage] {
        &self.images
    }

    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// `pixel_values` of one image: `[3, size, size]` f32 in [-1, 1] on the CPU; the caller
    /// draws `flip` (see [`flip_from_torch_rand`]). Panics if `image_index >= num_images()`.
    pub fn pixels(&self, image_index: usize, flip: bool) -> Tensor {
        to_pixels(&self.images[image_index].resized, flip)
    }

    /// A collated batch `[B, 3, size, size]` of dataset items `(item, flip)` (items, not image
    /// indices: `item % num_images` is taken here).
    pub fn batch(&self, items: &[(usize, bool)]) -> Result<Tensor> {
        if items.is_empty() {
            bail!("empty batch");
        }
        let each: Vec<Tensor> = items.iter().map(|&(i, f)| self.pixels(self.image_index(i), f)).collect();
        Ok(Tensor::f_stack(&each, 0)?)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The skipped entries, one per line: `\n  name: reason`.
pub fn skipped_summary(skipped: &[Skipped]) -> String {
    skipped.iter().map(|s| format!("\n  {}: {}", file_name(&s.path), s.reason)).collect()
}
