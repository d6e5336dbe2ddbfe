//! Loss masks (`--alpha_mask`, `--mask_dir`): which pixels of each image the loss counts, as
//! kohya's sd-scripts trains with `--alpha_mask` and `--masked_loss`.
//!
//! A mask is 8-bit grey, `value / 255` being the weight of that pixel. It is preprocessed by the
//! image's own crop+resize ([`super::Geometry::apply`], run on the mask as a grey RGB image: Pillow resizes
//! every band alike, so one band is Pillow's resize of the "L" image) and mirrored with it; the
//! loss brings it to the latent grid (`step.rs`).
//!
//! Where this differs from kohya, on purpose:
//! - `--mask_dir` masks are read as Pillow's `convert("L")` (kohya takes the red band of
//!   `convert("RGB")`): the same for grey masks, the luma for coloured ones.
//! - EXIF orientation is applied to masks as to images (kohya applies it to neither).
//! - Masks in `--mask_dir` that match no image are listed in a warning (kohya refuses them).
use super::decode::{load_rgb, load_rgb_alpha};
use super::{file_name, Dataset, Geometry};
use anyhow::{bail, Context, Result};
use image::{GrayImage, Luma, RgbImage};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Where the loss masks come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskSource {
    /// `--alpha_mask`: each image's alpha channel; images without one weigh 1 everywhere.
    Alpha,
    /// `--mask_dir`: one greyscale file per image, with the image's file stem.
    Dir(PathBuf),
}

/// File extensions a mask in `--mask_dir` may have (any case): kohya's list, plus the other
/// formats the images themselves may be in.
const MASK_EXTENSIONS: [&str; 9] = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "avif"];

/// The preprocessed masks of a dataset's images, in the dataset's order.
pub struct Masks {
    source: MaskSource,
    /// `--mask_dir`: the mask file of each image.
    files: Vec<Option<PathBuf>>,
    /// Resized masks, kept while the resized images are (see [`super::RESIDENT_BYTES`]); else
    /// made again when drawn.
    resized: Vec<Option<GrayImage>>,
}

/// Pillow's `convert("L")` of an RGB pixel: ITU-R 601 luma in 16-bit fixed point, rounded.
fn luma(p: &[u8]) -> u8 {
    ((u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16) as u8
}

/// A grey image as Pillow's `convert("L")` of `rgb`.
pub fn to_grey(rgb: &RgbImage) -> GrayImage {
    let raw: Vec<u8> = rgb.as_raw().chunks_exact(3).map(luma).collect();
    GrayImage::from_raw(rgb.width(), rgb.height(), raw).expect("one byte per pixel by construction")
}

/// The image's crop+resize applied to a mask: the mask runs as a grey RGB image through
/// [`super::preprocess`] and one band comes back, so a mask always follows its image's geometry.
pub fn preprocess_mask(mask: &GrayImage, size: u32, center_crop: bool) -> Result<GrayImage> {
    geometry_mask(mask, &Geometry::Square { size, center_crop })
}

/// [`preprocess_mask`] for any [`Geometry`] (an aspect-ratio bucket too).
pub fn geometry_mask(mask: &GrayImage, geometry: &Geometry) -> Result<GrayImage> {
    let rgb: Vec<u8> = mask.as_raw().iter().flat_map(|&v| [v; 3]).collect();
    let rgb = RgbImage::from_raw(mask.width(), mask.height(), rgb).expect("three bytes per pixel by construction");
    let out = geometry.apply(&rgb)?;
    let raw: Vec<u8> = out.as_raw().chunks_exact(3).map(|p| p[0]).collect();
    Ok(GrayImage::from_raw(out.width(), out.height(), raw).expect("one byte per pixel by construction"))
}

/// A mask as the loss weighs it: `[1, H, W]` f32 `value / 255` (kohya's
/// `alpha.astype(np.float32) / 255.0`), mirrored with its image when `flip`.
pub fn mask_tensor(mask: &GrayImage, flip: bool) -> Tensor {
    let lut: Vec<f32> = (0..=255u8).map(|v| f32::from(v) / 255.0).collect();
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let raw = mask.as_raw();
    let mut data = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            data[y * w + x] = lut[usize::from(raw[y * w + sx])];
        }
    }
    Tensor::from_slice(&data).view([1, h as i64, w as i64])
}

/// The upright alpha channel of an image file, `None` when it has none (kohya's
/// `convert("RGBA")` then gives an all-opaque alpha).
pub fn load_alpha(path: &Path) -> Result<Option<GrayImage>> {
    Ok(load_rgb_alpha(path, true)?.1)
}

/// A `--mask_dir` file as Pillow's `convert("L")`, upright.
pub fn load_grey(path: &Path) -> Result<GrayImage> {
    Ok(to_grey(&load_rgb(path)?.rgb))
}

/// The regular, non-hidden files of `dir` with an image extension, sorted by name.
fn list_masks(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).with_context(|| format!("cannot read --mask_dir {}", dir.display()))?;
    let mut out = Vec::new();
    for entry in read {
        let path = entry.with_context(|| format!("listing --mask_dir {}", dir.display()))?.path();
        let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden && ext.is_some_and(|e| MASK_EXTENSIONS.contains(&e.as_str())) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

impl Masks {
    /// The mask of image `i` at full size, upright; `None` for an image without alpha under
    /// `--alpha_mask`.
    fn source_mask(&self, dataset: &Dataset, i: usize) -> Result<Option<GrayImage>> {
        let image = &dataset.images()[i];
        let mask = match (&self.source, &self.files[i]) {
            (MaskSource::Alpha, _) => return load_alpha(&image.path).with_context(|| format!("reading the alpha channel of {}", image.path.display())),
            (MaskSource::Dir(_), Some(file)) => load_grey(file).with_context(|| format!("reading mask {} of {}", file.display(), image.path.display()))?,
            (MaskSource::Dir(dir), None) => bail!("no mask for {} in --mask_dir {}", image.path.display(), dir.display()),
        };
        let (h, w) = image.original_size;
        if (mask.height(), mask.width()) != (h, w) {
            let file = self.files[i].as_deref().unwrap_or(Path::new("?"));
            bail!(
                "mask {} is {}x{} but its image {} is {w}x{h} (both after EXIF orientation): a mask must have its image's size",
                file.display(),
                mask.width(),
                mask.height(),
                image.path.display()
            );
        }
        Ok(Some(mask))
    }

    /// The preprocessed mask of image `i`: an image without alpha gets all 255 (crop and resize
    /// keep a constant).
    fn make(&self, dataset: &Dataset, i: usize) -> Result<GrayImage> {
        let geometry = dataset.images.get(i).map(|im| im.geometry).with_context(|| format!("image {i}"))?;
        let (w, h) = geometry.size();
        match self.source_mask(dataset, i)? {
            Some(m) => geometry_mask(&m, &geometry),
            None => Ok(GrayImage::from_pixel(w, h, Luma([255]))),
        }
    }
}

impl Dataset {
    /// Reads and checks every image's mask before any model loads: with `--mask_dir` an image
    /// without a mask, or a mask of another size, is an error naming both (kohya refuses a
    /// missing mask too). `nonzero`: refuse masks that are 0 everywhere after the resize (their
    /// loss would be divided by a zero mean under `--normalize_masked_area_loss`).
    pub fn with_masks(mut self, source: Option<&MaskSource>, nonzero: bool) -> Result<Self> {
        let Some(source) = source else { return Ok(self) };
        let n = self.images.len();
        let mut files = vec![None; n];
        if let MaskSource::Dir(dir) = source {
            let listing = list_masks(dir)?;
            // By file stem; of several (`a.png`, `a.jpg`) the first by name, as kohya's
            // `glob_images(dir, stem)[0]`.
            let mut by_stem = std::collections::HashMap::new();
            for m in &listing {
                if let Some(stem) = m.file_stem() {
                    by_stem.entry(stem.to_os_string()).or_insert_with(|| m.clone());
                }
            }
            let mut missing = Vec::new();
            for (i, image) in self.images.iter().enumerate() {
                files[i] = image.path.file_stem().and_then(|s| by_stem.get(s)).cloned();
                if files[i].is_none() {
                    missing.push(file_name(&image.path));
                }
            }
            if !missing.is_empty() {
                bail!(
                    "--mask_dir {} has no mask for {} of {n} images (a mask is named like its image, e.g. {}.png): {}",
                    dir.display(),
                    missing.len(),
                    Path::new(&missing[0]).file_stem().unwrap_or_default().to_string_lossy(),
                    missing.join(", ")
                );
            }
            let used: std::collections::HashSet<&PathBuf> = files.iter().flatten().collect();
            let extra: Vec<String> = listing.iter().filter(|m| !used.contains(m)).map(|m| file_name(m)).collect();
            if !extra.is_empty() {
                tracing::warn!("--mask_dir {}: {} masks match no training image and are not used: {}", dir.display(), extra.len(), extra.join(", "));
            }
        }
        // Kept exactly when the resized images are (a third of their bytes), so memory stays
        // under the same bound.
        let resident = self.images.iter().all(|i| i.resized.is_some());
        let mut masks = Masks { source: source.clone(), files, resized: Vec::with_capacity(n) };
        let mut opaque = Vec::new();
        for i in 0..n {
            // Reading each mask once checks it even when it is not kept.
            let full = masks.source_mask(&self, i)?;
            if full.is_none() {
                opaque.push(file_name(&self.images[i].path));
            }
            let geometry = self.images[i].geometry;
            let (w, h) = geometry.size();
            let resized = match full {
                Some(m) if resident || nonzero => Some(geometry_mask(&m, &geometry)?),
                Some(_) => None,
                None => Some(GrayImage::from_pixel(w, h, Luma([255]))),
            };
            if nonzero && resized.as_ref().is_some_and(|m| m.as_raw().iter().all(|&v| v == 0)) {
                bail!(
                    "the mask of {} is 0 everywhere after resizing: with --normalize_masked_area_loss (and --unmasked_weight 0) its loss would be 0/0",
                    self.images[i].path.display()
                );
            }
            masks.resized.push(if resident { resized } else { None });
        }
        if !opaque.is_empty() {
            tracing::warn!("--alpha_mask: {} of {n} images have no alpha channel and are trained on everywhere: {}", opaque.len(), opaque.join(", "));
        }
        self.masks = Some(masks);
        Ok(self)
    }

    /// The loss mask of one image, `[1, size, size]` f32 in [0, 1], mirrored with the image when
    /// `flip`; `None` when the run has no masks.
    pub fn mask(&self, image_index: usize, flip: bool) -> Result<Option<Tensor>> {
        let Some(masks) = &self.masks else { return Ok(None) };
        let kept = masks.resized.get(image_index).with_context(|| format!("mask {image_index} of {}", masks.resized.len()))?;
        Ok(Some(match kept {
            Some(m) => mask_tensor(m, flip),
            None => mask_tensor(&masks.make(self, image_index)?, flip),
        }))
    }

    /// Whether the images are center-cropped before the resize.
    pub fn center_crop(&self) -> bool {
        self.center_crop
    }
}
