//! The deterministic part of an item, done once per image: the script's center crop and
//! Pillow's `resize((s, s), BICUBIC)` ([`crate::image_in::resample`]), or an aspect-ratio bucket.
use crate::image_in::resample::resize_bicubic;
use anyhow::{bail, Result};
use image::RgbImage;

/// The script's center crop: the largest centred square, rows `[(h-c)//2, (h+c)//2)` and
/// columns likewise with `c = min(h, w)`.
pub fn center_crop(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let c = w.min(h);
    image::imageops::crop_imm(img, (w - c) / 2, (h - c) / 2, c, c).to_image()
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

/// How one image becomes a training image: the one place its geometry is applied, so anything
/// that must line up with the pixels (a loss mask) goes through the same [`Geometry::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    /// The script's: the centred square crop (when asked), then bicubic to `size x size`.
    Square { size: u32, center_crop: bool },
    /// An aspect-ratio bucket: bicubic to `fit.resized`, then the bucket cut at `fit.crop`.
    Bucket(super::buckets::Fit),
}

impl Geometry {
    /// The image in this geometry (before any flip).
    pub fn apply(&self, img: &RgbImage) -> Result<RgbImage> {
        match *self {
            Geometry::Square { size, center_crop } => preprocess(img, size, center_crop),
            Geometry::Bucket(fit) => {
                let ((rw, rh), (bw, bh), (left, top)) = (fit.resized, fit.bucket, fit.crop);
                if left.saturating_add(bw) > rw || top.saturating_add(bh) > rh {
                    bail!("bucket {bw}x{bh} at ({left}, {top}) does not fit in the resized {rw}x{rh}");
                }
                let resized = if img.dimensions() == (rw, rh) { img.clone() } else { resize_bicubic(img, rw, rh)? };
                Ok(if (left, top, bw, bh) == (0, 0, rw, rh) { resized } else { image::imageops::crop_imm(&resized, left, top, bw, bh).to_image() })
            }
        }
    }

    /// `(width, height)` of what [`Geometry::apply`] makes.
    pub fn size(&self) -> (u32, u32) {
        match *self {
            Geometry::Square { size, .. } => (size, size),
            Geometry::Bucket(fit) => fit.bucket,
        }
    }
}
