//! Decoded images to PNG files, with the generation settings in PNG text chunks; [`encode_png`]
//! is the one PNG encoder (`loss.png` and TensorBoard images use it too).
use crate::formats::atomic;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// VAE output `[n, 3, H, W]` (about [-1, 1]) → `[n, H, W, 3]` u8, exactly as diffusers'
/// `VaeImageProcessor.postprocess(output_type="pil")`: `(x / 2 + 0.5).clamp(0, 1)`, times 255,
/// rounded half to even.
pub fn to_pixels(decoded: &Tensor) -> Tensor {
    let x = (decoded.to_kind(Kind::Float) / 2.0 + 0.5).clamp(0.0, 1.0);
    (x.permute([0, 2, 3, 1]) * 255.0).round().to_kind(Kind::Uint8).to_device(tch::Device::Cpu).contiguous()
}

/// PNG bytes of an 8-bit RGB image (`rgb` row-major, `width * height * 3` bytes), with `text`
/// as tEXt/iTXt chunks: the one encoder for generated images, `loss.png` and TensorBoard's.
pub fn encode_png(width: u32, height: u32, rgb: &[u8], text: &[(String, String)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            // Latin-1 text goes in tEXt (what most viewers show); anything else in UTF-8 iTXt.
            if v.chars().all(|c| (c as u32) < 256 && c != '\0') {
                enc.add_text_chunk(k.clone(), v.clone())?;
            } else {
                enc.add_itxt_chunk(k.clone(), v.clone())?;
            }
        }
        let mut writer = enc.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(bytes)
}

/// Writes one `[H, W, 3]` u8 image as PNG (atomically), with `text` as tEXt/iTXt chunks.
pub fn save_png(path: &Path, pixels: &Tensor, text: &[(String, String)]) -> Result<()> {
    let size = pixels.size();
    let [h, w, 3] = size.as_slice() else { bail!("expected an [H, W, 3] image, got {size:?}") };
    let len = (h * w * 3) as usize;
    let mut data = vec![0u8; len];
    pixels.f_copy_data_u8(&mut data, len)?;
    let bytes = encode_png(*w as u32, *h as u32, &data, text)?;
    atomic::write(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

/// `DIR/NNNN-SEED.png` with NNNN the next number not yet used in `dir` (as the A1111 web UI
/// numbers its outputs), so runs never overwrite each other.
pub fn next_paths(dir: &Path, seed: u64, count: usize) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut next = 0u64;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.split('-').next().filter(|n| n.len() == 4).and_then(|n| n.parse::<u64>().ok()) {
            if name.ends_with(".png") {
                next = next.max(n + 1);
            }
        }
    }
    Ok((0..count as u64).map(|i| dir.join(format!("{:04}-{seed}.png", next + i))).collect())
}
