//! Image files to upright 8-bit RGB, as the script's `Image.open(p).convert("RGB")` sees them.
//!
//! Differences from Pillow, all on purpose:
//! - EXIF orientation is applied (the script trains on phone photos lying on their side).
//! - 16-bit greyscale keeps its high byte; Pillow's `convert("RGB")` clips such an "I;16" image
//!   to white wherever a value exceeds 255.
//! - Images above [`MAX_PIXELS`] are refused before decoding.
//!
//! Everything else follows Pillow, pixel for pixel:
//! - JPEG through libjpeg-turbo's decoder with Pillow's settings (`jpeg.rs`): baseline and
//!   progressive, every chroma subsampling, greyscale, CMYK and YCCK as Pillow's inverted-Adobe
//!   `convert("RGB")`, restart markers. Arithmetic coding is enabled as in Pillow's build, but no
//!   fixture covers it (neither Pillow nor libjpeg-turbo's TurboJPEG API writes it).
//! - PNG, GIF and WebP (lossy and lossless, with or without alpha) through the `image` crate,
//!   whose decoders give Pillow's pixels (image-webp's lossy decoder included: equal to
//!   Pillow's libwebp 1.6 on every fixture, tests/webp.rs); other modes become 8-bit RGB as
//!   `convert("RGB")` does (alpha dropped without compositing, greyscale and palettes expanded,
//!   16-bit RGB(A) by its high byte as Pillow's PNG reader does).
use anyhow::{anyhow, bail, Result};
use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;
use std::path::Path;

mod jpeg;

/// Largest accepted image in pixels: Pillow's `Image.MAX_IMAGE_PIXELS` (89.5 MP, where Pillow
/// starts warning of a decompression bomb), far above any camera JPEG; keeps one decoded image
/// under about 0.7 GB even at 16-bit RGBA.
pub const MAX_PIXELS: u64 = 89_478_485;

/// Largest file read at all, so a stray video or disk image in the folder is not slurped.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

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
    load_rgb_alpha(path, false).map(|(image, _)| image)
}

/// [`load_rgb`], plus the upright 8-bit alpha channel when `alpha` is asked and the decoded
/// file has one (RGBA, LA, a palette or grey with transparency; 16-bit by the high byte).
pub fn load_rgb_alpha(path: &Path, alpha: bool) -> Result<(LoadedImage, Option<GrayImage>)> {
    let len = std::fs::metadata(path).map_err(|e| anyhow!("cannot read: {e}"))?.len();
    if len == 0 {
        bail!("empty file");
    }
    if len > MAX_FILE_BYTES {
        bail!("file of {} MB is too large to be an image", len >> 20);
    }
    // Only a regular file, and never more than its size said (a FIFO or a device is refused).
    let bytes = crate::formats::regular::read(path, MAX_FILE_BYTES).map_err(|e| anyhow!("cannot read: {e}"))?;
    // By content, like Pillow: a caption named .jpg is not a JPEG.
    let format = image::guess_format(&bytes).map_err(|_| anyhow!("not an image (unrecognised content)"))?;
    if format == ImageFormat::Jpeg {
        let header = jpeg::header_if_complete(&bytes)?;
        let rgb = jpeg::decode(&bytes, check_size)?;
        // A broken EXIF block only loses the rotation, as in Pillow's exif_transpose. JPEG has
        // no alpha channel.
        return Ok((upright(rgb, header.mode(), header.orientation.unwrap_or(Orientation::NoTransforms)), None));
    }
    let header_mode = match format {
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
    check_size(w, h)?;
    // A broken EXIF block only loses the rotation, as in Pillow's exif_transpose.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| anyhow!("corrupt or truncated {format:?} file: {e}"))?;
    let alpha = alpha.then(|| alpha_channel(&image)).flatten().map(|a| {
        let mut a = DynamicImage::ImageLuma8(a);
        a.apply_orientation(orientation);
        a.into_luma8()
    });
    let (rgb, decoded_mode) = to_rgb8(image)?;
    Ok((upright(rgb, header_mode.unwrap_or(decoded_mode), orientation), alpha))
}

/// The alpha band as 8 bits (16-bit samples by their high byte, as Pillow's PNG reader).
fn alpha_channel(image: &DynamicImage) -> Option<GrayImage> {
    let (w, h) = (image.width(), image.height());
    let raw: Vec<u8> = match image {
        DynamicImage::ImageRgba8(b) => b.as_raw().chunks_exact(4).map(|p| p[3]).collect(),
        DynamicImage::ImageLumaA8(b) => b.as_raw().chunks_exact(2).map(|p| p[1]).collect(),
        DynamicImage::ImageRgba16(b) => b.as_raw().chunks_exact(4).map(|p| (p[3] >> 8) as u8).collect(),
        DynamicImage::ImageLumaA16(b) => b.as_raw().chunks_exact(2).map(|p| (p[1] >> 8) as u8).collect(),
        _ => return None,
    };
    GrayImage::from_raw(w, h, raw)
}

fn upright(rgb: RgbImage, source_mode: &'static str, orientation: Orientation) -> LoadedImage {
    let mut oriented = DynamicImage::ImageRgb8(rgb);
    oriented.apply_orientation(orientation);
    LoadedImage { rgb: oriented.into_rgb8(), source_mode, orientation }
}

/// Refuses an empty image or one above [`MAX_PIXELS`], from its header.
fn check_size(w: u32, h: u32) -> Result<()> {
    let pixels = u64::from(w) * u64::from(h);
    if pixels == 0 {
        bail!("empty image ({w}x{h})");
    }
    if pixels > MAX_PIXELS {
        bail!("{w}x{h} is {:.1} megapixels, above the limit of {:.1}; downscale it first", pixels as f64 / 1e6, MAX_PIXELS as f64 / 1e6);
    }
    Ok(())
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
