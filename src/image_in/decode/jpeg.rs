//! JPEG through libjpeg-turbo's decoder (the `mozjpeg` crate compiles mozjpeg's copy of it from
//! source with `cc`, plain C without nasm), set up as Pillow 12 sets up its bundled libjpeg-turbo
//! for `Image.open(p).convert("RGB")`: the library's defaults (`JDCT_ISLOW`, fancy upsampling,
//! block smoothing) and the output colour space Pillow picks from the component count alone
//! (1: grey, 3: RGB, 4: CMYK, with libjpeg converting YCCK to CMYK). The pixels are then
//! Pillow's, bit for bit (tests/jpeg.rs).
//!
//! libjpeg reports fatal errors through `error_exit`; the crate's handler unwinds instead of
//! calling `exit()`, and [`decode`] catches that unwind, so a corrupt file is an `Err`, never
//! an abort. Warnings (corrupt entropy data, which libjpeg and Pillow both decode through) are
//! silent, as in Pillow.
use anyhow::{anyhow, bail, Result};
use image::metadata::Orientation;
use image::RgbImage;
use mozjpeg::{ColorSpace, Decompress};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What the marker walk found before any pixel is decoded.
pub struct Header {
    /// Component count of the frame: Pillow's mode is "L", "RGB" or "CMYK" from it alone.
    pub components: u8,
    /// Orientation from the Exif APP1 segments (Pillow joins them), if any is readable.
    pub orientation: Option<Orientation>,
}

impl Header {
    pub fn mode(&self) -> &'static str {
        match self.components {
            1 => "L",
            4 => "CMYK",
            _ => "RGB",
        }
    }
}

/// Walks a JPEG's marker segments to its end-of-image marker: frame component count and Exif
/// orientation. libjpeg (like Pillow's reader with `LOAD_TRUNCATED_IMAGES` off, the script's
/// case) must not see a file that ends early: libjpeg would fill the rest with grey and only
/// warn, where Pillow raises "image file is truncated"; this restores the error.
pub fn header_if_complete(b: &[u8]) -> Result<Header> {
    const TRUNCATED: &str = "truncated JPEG (no end-of-image marker)";
    let mut components = None;
    let mut exif: Vec<u8> = Vec::new();
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
            0xD9 => {
                let components = components.ok_or_else(|| anyhow!("corrupt JPEG (no frame header)"))?;
                let orientation = if exif.is_empty() { None } else { Orientation::from_exif_chunk(&exif) };
                return Ok(Header { components, orientation });
            }
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else { bail!(TRUNCATED) };
        let end = i + len;
        if len < 2 || end > b.len() {
            bail!(TRUNCATED);
        }
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            components = b.get(i + 7).copied().or(components);
        }
        // Pillow keeps the first Exif APP1 whole and appends later ones without their header.
        if marker == 0xE1 {
            if let Some(data) = b[i + 2..end].strip_prefix(b"Exif\0\0") {
                exif.extend_from_slice(data);
            }
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

/// Decodes a complete JPEG (checked by [`header_if_complete`]) to 8-bit RGB as Pillow's
/// `convert("RGB")` would. `check_size` sees the frame size from the header before any pixel
/// is decoded, and refuses what is too large.
pub fn decode(bytes: &[u8], check_size: impl FnOnce(u32, u32) -> Result<()>) -> Result<RgbImage> {
    let run = catch_unwind(AssertUnwindSafe(|| -> Result<RgbImage> {
        let d = Decompress::new_mem(bytes).map_err(|e| anyhow!("corrupt JPEG: {e}"))?;
        let (w, h) = d.size();
        let (w, h) = (u32::try_from(w)?, u32::try_from(h)?);
        check_size(w, h)?;
        // Pillow: "cannot handle N-layer images" for anything but 1, 3 or 4 components.
        let (space, channels) = match d.components().len() {
            1 => (ColorSpace::JCS_GRAYSCALE, 1),
            3 => (ColorSpace::JCS_RGB, 3),
            4 => (ColorSpace::JCS_CMYK, 4),
            n => bail!("JPEG with {n} components (Pillow reads 1, 3 or 4)"),
        };
        let mut started = d.to_colorspace(space).map_err(|e| anyhow!("corrupt JPEG: {e}"))?;
        let raw: Vec<u8> = started.read_scanlines().map_err(|e| anyhow!("corrupt or truncated JPEG: {e}"))?;
        if raw.len() != w as usize * h as usize * channels {
            bail!("corrupt JPEG: {} of {h} rows decoded", raw.len() / (w as usize * channels).max(1));
        }
        // As Pillow: once every row is out, a suspended finish is not an error.
        let _ = started.finish();
        let rgb = match channels {
            1 => raw.iter().flat_map(|&v| [v; 3]).collect(),
            3 => raw,
            _ => raw.chunks_exact(4).flat_map(|p| cmyk_to_rgb(p[0], p[1], p[2], p[3])).collect(),
        };
        Ok(RgbImage::from_raw(w, h, rgb).expect("buffer length is w*h*3 by construction"))
    }));
    match run {
        Ok(result) => result,
        // The crate's error_exit unwinds with libjpeg's message as a String.
        Err(payload) => {
            let msg = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("libjpeg error");
            Err(anyhow!("corrupt or unsupported JPEG ({})", msg.trim_start_matches("libjpeg fatal error: ")))
        }
    }
}

/// Pillow's CMYK JPEG path: its reader assumes Adobe's inverted storage ("CMYK;I", every sample
/// `255 - v`), and its `cmyk2rgb` then gives `R = nk - round(C * nk / 255)` with `nk = 255 - K`,
/// all in Pillow's integer arithmetic (`MULDIV255`). Here on the stored samples.
fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = i32::from(k); // 255 - (255 - k)
    let channel = |v: u8| {
        let t = (255 - i32::from(v)) * nk + 128;
        let scaled = ((t >> 8) + t) >> 8;
        (nk - scaled).clamp(0, 255) as u8
    };
    [channel(c), channel(m), channel(y)]
}
