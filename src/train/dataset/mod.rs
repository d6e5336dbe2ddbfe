//! The training images: discovery and validation of `--train_data_dir`, the preprocessing of
//! diffusers' `TextualInversionDataset` (center crop, Pillow-exact bicubic resize, flip, scaling)
//! and its caption templates.
//!
//! Differences from the Python script, all on purpose:
//! - Discovery is done once, up front (call [`Dataset::load`] before loading any model), and
//!   entries the script would crash on mid-training (folders, `.DS_Store`, captions, corrupt or
//!   truncated files) are skipped with one warning. It is an error only when no usable image is
//!   left.
//! - Decoding applies EXIF orientation, keeps 16-bit greyscale's high byte and refuses images
//!   above [`MAX_PIXELS`] (`crate::image_in::decode` says how it otherwise matches Pillow's `convert("RGB")`).
//!
//! The images are taken in the folder's directory order, as the script's `os.listdir` takes them
//! (what `readdir` yields: on ext4 a hash of the names, so the same files copied elsewhere may
//! come in another order), so that `--seed` draws the same items; [`ImageOrder::Sorted`]
//! (`--sort_images`) gives a fixed order on every machine instead. Resized pixels equal Pillow's
//! `resize((s, s), BICUBIC)` bit for bit.
pub mod buckets;
pub mod captions;
pub mod masks;
mod resize;
mod templates;

pub use buckets::{BucketConfig, BucketManager, Fit};
pub use captions::Captions;
// Decoding and resampling live in `crate::image_in` (generation reads images too).
use crate::image_in::decode;
pub use crate::image_in::{load_rgb, load_rgb_alpha, resize_bicubic, LoadedImage, MAX_FILE_BYTES, MAX_PIXELS};
pub use resize::{center_crop, preprocess, Geometry};
pub use templates::{caption, placeholder_string, LearnableProperty, OBJECT_TEMPLATES, STYLE_TEMPLATES};

use anyhow::{bail, Context, Result};
use image::metadata::Orientation;
use image::RgbImage;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// torchvision `RandomHorizontalFlip`'s default probability, kept by the script.
pub const FLIP_P: f64 = 0.5;

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
    /// How it becomes a training image (square, or its bucket).
    geometry: Geometry,
    /// The crop+resize, kept while the whole folder's fit in [`RESIDENT_BYTES`]; else `None`
    /// and made again from the file each time the image is drawn (as the script does).
    resized: Option<RgbImage>,
}

/// How many bytes of resized images stay in memory. A usual folder (3 to a few hundred
/// images) stays resident; past this, memory does not grow with the folder: images are decoded
/// again when drawn.
pub const RESIDENT_BYTES: usize = 256 << 20;

/// The training set: `len() = images * repeats`, item `i` is image `i % images`.
pub struct Dataset {
    images: Vec<DatasetImage>,
    skipped: Vec<Skipped>,
    repeats: usize,
    size: u32,
    center_crop: bool,
    /// `--alpha_mask`/`--mask_dir`: see [`Dataset::with_masks`].
    masks: Option<masks::Masks>,
    /// `--enable_bucket`: the settings (each image's bucket is in its [`Geometry`]).
    buckets: Option<BucketConfig>,
    /// Whether the preprocessed images are kept in memory.
    resident: bool,
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
        Self::load_with(dir, size, center_crop, repeats, order, None)
    }

    /// [`Dataset::load_ordered`], files ending in `caption_extension` being captions (not
    /// images, not skipped entries).
    pub fn load_with(dir: &Path, size: u32, center_crop: bool, repeats: usize, order: ImageOrder, caption_extension: Option<&str>) -> Result<Self> {
        Self::load_bounded(dir, size, center_crop, repeats, order, caption_extension, RESIDENT_BYTES)
    }

    /// [`Dataset::load_with`] keeping at most `resident_bytes` of resized images in memory.
    pub fn load_bounded(
        dir: &Path,
        size: u32,
        center_crop: bool,
        repeats: usize,
        order: ImageOrder,
        caption_extension: Option<&str>,
        resident_bytes: usize,
    ) -> Result<Self> {
        Self::load_impl(dir, size, center_crop, repeats, order, caption_extension, resident_bytes, None)
    }

    /// [`Dataset::load_with`] with aspect-ratio buckets: each image in kohya's bucket, resized
    /// and cropped to it ([`buckets`]); an image that cannot have a bucket is skipped with the
    /// others. With `--random_crop` the crops are centred until [`Dataset::choose_random_crops`].
    pub fn load_bucketed(dir: &Path, buckets: &BucketConfig, repeats: usize, order: ImageOrder, caption_extension: Option<&str>) -> Result<Self> {
        buckets.check()?;
        Self::load_impl(dir, buckets.resolution, false, repeats, order, caption_extension, RESIDENT_BYTES, Some(buckets))
    }

    #[allow(clippy::too_many_arguments)]
    fn load_impl(
        dir: &Path,
        size: u32,
        center_crop: bool,
        repeats: usize,
        order: ImageOrder,
        caption_extension: Option<&str>,
        resident_bytes: usize,
        buckets: Option<&BucketConfig>,
    ) -> Result<Self> {
        let manager = buckets.map(BucketManager::new);
        // Random crops are drawn once the seed is known: nothing is kept until then.
        let deferred = buckets.is_some_and(|b| b.random_crop);
        let is_caption = |p: &Path| {
            let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase());
            match (caption_extension, ext) {
                (Some(c), Some(e)) => c.trim_start_matches('.').eq_ignore_ascii_case(&e),
                _ => false,
            }
        };
        if size == 0 {
            bail!("--resolution must be at least 1");
        }
        if repeats == 0 {
            bail!("--repeats must be at least 1");
        }
        let read = std::fs::read_dir(dir).with_context(|| format!("cannot read --train_data_dir {}", dir.display()))?;
        let mut entries = read.collect::<std::io::Result<Vec<_>>>().with_context(|| format!("listing {}", dir.display()))?;
        if order == ImageOrder::Sorted {
            entries.sort_by_key(|e| e.file_name());
        }
        let (mut images, mut skipped) = (Vec::new(), Vec::new());
        let mut captions = 0;
        let per_image = (size as usize).saturating_mul(size as usize).saturating_mul(3);
        let mut resident = true;
        for entry in &entries {
            let path = entry.path();
            if is_caption(&path) && path.is_file() {
                captions += 1;
                continue;
            }
            let looks_text = path.extension().is_some_and(|e| ["txt", "caption"].iter().any(|t| e.eq_ignore_ascii_case(t)));
            let reason = if looks_text && caption_extension.is_none() {
                "not an image (a text file: captions beside the images are read with --caption_extension)".to_string()
            } else if entry.file_name().to_string_lossy().starts_with('.') {
                "hidden entry (name starts with '.')".to_string()
            } else if path.is_dir() {
                "a folder (sub-folders are not searched)".to_string()
            } else {
                if resident && per_image.saturating_mul(images.len() + 1) > resident_bytes {
                    resident = false;
                    images.iter_mut().for_each(|i: &mut DatasetImage| i.resized = None);
                }
                let loaded = load_rgb(&path).and_then(|l| {
                    let geometry = match &manager {
                        Some(m) => Geometry::Bucket(m.fit(l.rgb.width(), l.rgb.height())?),
                        None => Geometry::Square { size, center_crop },
                    };
                    let resized = if resident && !deferred { Some(geometry.apply(&l.rgb)?) } else { None };
                    Ok((geometry, resized, l))
                });
                match loaded {
                    Ok((geometry, resized, l)) => {
                        images.push(DatasetImage {
                            original_size: (l.rgb.height(), l.rgb.width()),
                            path,
                            source_mode: l.source_mode,
                            orientation: l.orientation,
                            geometry,
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
            tracing::warn!("{}: skipped {} of {} entries:{}", dir.display(), skipped.len(), entries.len() - captions, skipped_summary(&skipped));
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
        if !resident {
            tracing::info!(
                "{} images at {size} px would take {} MiB resized: each is decoded again when drawn (memory stays under {} MiB)",
                images.len(),
                per_image.saturating_mul(images.len()) >> 20,
                resident_bytes >> 20
            );
        }
        Ok(Self { images, skipped, repeats, size, center_crop, masks: None, buckets: buckets.cloned(), resident })
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

    /// The crop+resize of one image: kept, or made again from its file.
    pub fn resized(&self, image_index: usize) -> Result<std::borrow::Cow<'_, RgbImage>> {
        let image = self.images.get(image_index).with_context(|| format!("image {image_index} of {}", self.images.len()))?;
        match &image.resized {
            Some(r) => Ok(std::borrow::Cow::Borrowed(r)),
            None => {
                let l = load_rgb(&image.path).with_context(|| format!("reading {} again (it changed since the run started?)", image.path.display()))?;
                if (l.rgb.height(), l.rgb.width()) != image.original_size {
                    bail!("{} changed since the run started: it is now {}x{}", image.path.display(), l.rgb.width(), l.rgb.height());
                }
                Ok(std::borrow::Cow::Owned(image.geometry.apply(&l.rgb)?))
            }
        }
    }

    /// `pixel_values` of one image: `[3, H, W]` (the resolution square, or its bucket) f32 in [-1, 1] on the CPU; the caller
    /// draws `flip` (see [`flip_from_torch_rand`]).
    pub fn pixels(&self, image_index: usize, flip: bool) -> Result<Tensor> {
        Ok(to_pixels(&*self.resized(image_index)?, flip))
    }

    /// A collated batch `[B, 3, size, size]` of dataset items `(item, flip)` (items, not image
    /// indices: `item % num_images` is taken here).
    pub fn batch(&self, items: &[(usize, bool)]) -> Result<Tensor> {
        if items.is_empty() {
            bail!("empty batch");
        }
        let each: Vec<Tensor> = items.iter().map(|&(i, f)| self.pixels(self.image_index(i), f)).collect::<Result<_>>()?;
        Ok(Tensor::f_stack(&each, 0)?)
    }
}

impl Dataset {
    /// The bucket settings, with `--enable_bucket`.
    pub fn bucket_config(&self) -> Option<&BucketConfig> {
        self.buckets.as_ref()
    }

    /// How image `image_index` becomes a training image: what a mask of it goes through too.
    pub fn geometry(&self, image_index: usize) -> Option<Geometry> {
        self.images.get(image_index).map(|i| i.geometry)
    }

    /// `--random_crop`: each image's crop drawn, in dataset order, from Python's
    /// `random.Random(seed + 2**32)` as kohya's `random.randint(0, trim)` (width, then height):
    /// a stream of its own, not the script's. Drawn once per image, so the latents stay
    /// cacheable (kohya draws again each time an image is loaded and then refuses to cache).
    pub fn choose_random_crops(&mut self, seed: u64) -> Result<()> {
        if !self.buckets.as_ref().is_some_and(|b| b.random_crop) {
            return Ok(());
        }
        let mut rng = crate::train::script_rng::Mt19937::python(random_crop_seed(seed));
        for image in &mut self.images {
            if let Geometry::Bucket(fit) = image.geometry {
                image.geometry = Geometry::Bucket(fit.with_random_crop(&mut rng));
            }
            if self.resident {
                let l = load_rgb(&image.path).with_context(|| format!("reading {} again (it changed since the run started?)", image.path.display()))?;
                image.resized = Some(image.geometry.apply(&l.rgb)?);
            }
        }
        Ok(())
    }

    /// SDXL's time ids of image `image_index`: `[original h, w, crop top, left, target h, w]`.
    /// Square: the script's `(0, 0)` crop and the resolution; bucket: kohya's crop coordinates
    /// (mirrored when `flip`) and the bucket.
    pub fn time_ids(&self, image_index: usize, flip: bool) -> [i64; 6] {
        let Some(image) = self.images.get(image_index) else { return [0; 6] };
        let (oh, ow) = image.original_size;
        let (oh, ow) = (i64::from(oh), i64::from(ow));
        match image.geometry {
            Geometry::Bucket(fit) => {
                let (top, left) = buckets::sdxl_crop_top_left(fit.bucket, (image.original_size.1, image.original_size.0), flip);
                [oh, ow, top, left, i64::from(fit.bucket.1), i64::from(fit.bucket.0)]
            }
            Geometry::Square { size, .. } => [oh, ow, 0, 0, i64::from(size), i64::from(size)],
        }
    }

    /// With buckets: each bucket used and its items (images x repeats, kohya's count), by
    /// resolution.
    pub fn bucket_table(&self) -> Option<Vec<((u32, u32), usize)>> {
        self.buckets.as_ref()?;
        let fits: Vec<Fit> = self.images.iter().filter_map(|i| if let Geometry::Bucket(f) = i.geometry { Some(f) } else { None }).collect();
        Some(buckets::bucket_counts(&fits, self.repeats).into_iter().collect())
    }

    /// With buckets: each image's bucket index into [`Dataset::bucket_table`].
    pub fn image_buckets(&self) -> Option<Vec<usize>> {
        let table = self.bucket_table()?;
        Some(self.images.iter().map(|i| table.iter().position(|(r, _)| *r == i.geometry.size()).unwrap_or(0)).collect())
    }

    /// `buckets.json`: `{"images": {file name: {"bucket": [w, h], "resized": [w, h]}},
    /// "buckets": [{"resolution": [w, h], "count": n}]}`.
    pub fn buckets_json(&self) -> Option<serde_json::Value> {
        let table = self.bucket_table()?;
        let mut images = serde_json::Map::new();
        for i in &self.images {
            if let Geometry::Bucket(f) = i.geometry {
                images.insert(file_name(&i.path), serde_json::json!({"bucket": [f.bucket.0, f.bucket.1], "resized": [f.resized.0, f.resized.1]}));
            }
        }
        let buckets: Vec<serde_json::Value> = table.iter().map(|((w, h), n)| serde_json::json!({"resolution": [w, h], "count": n})).collect();
        Some(serde_json::json!({"images": images, "buckets": buckets}))
    }
}

/// The seed of `--random_crop`'s own generator.
pub fn random_crop_seed(seed: u64) -> u64 {
    seed.wrapping_add(1 << 32)
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The skipped entries, one per line: `\n  name: reason`.
pub fn skipped_summary(skipped: &[Skipped]) -> String {
    skipped.iter().map(|s| format!("\n  {}: {}", file_name(&s.path), s.reason)).collect()
}
