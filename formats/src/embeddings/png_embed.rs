//! A1111 embeddings shared as PNG images.
//!
//! The web UI stores the embedding dict twice: as base64 JSON in a `sd-ti-embedding` text chunk
//! (tensors as `{"TORCHTENSOR": nested lists}`), and zlib-compressed in the pixels of two
//! side panels (low and high nibbles, XOR-ed with a fixed LCG stream), which survives
//! re-encoding that drops text chunks. We read the text chunk, and fall back to the pixels.
use super::{classify, FileKind, Node};
use crate::error::{Error, Result};
use crate::tensor::RawTensor;
use base64::Engine;
use std::collections::BTreeMap;
use std::io::Read;

pub const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const KEYWORD: &str = "sd-ti-embedding";
/// Bounds for what a PNG may make us allocate (pixels, text, inflated data).
const MAX_IMAGE_BYTES: usize = 256 << 20;
const MAX_TEXT_BYTES: usize = 64 << 20;

pub(super) fn read(name: &str, bytes: &[u8]) -> Result<super::EmbeddingFile> {
    let perr = |e: png::DecodingError| Error::format(name, format!("broken PNG: {e}"));
    // zlib expands at most ~1032:1, so a real image is never larger than this.
    let max_image = bytes
        .len()
        .saturating_mul(1100)
        .saturating_add(1 << 20)
        .min(MAX_IMAGE_BYTES);
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits { bytes: max_image },
    );
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(perr)?;
    let max_text = max_image.min(MAX_TEXT_BYTES);
    if let Some(text) = find_text(name, reader.info(), max_text)? {
        return from_text(name, &text);
    }
    // Text chunks may also follow the image data: decode it (we need it for the pixel copy
    // anyway) and look again.
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::too_large(name, "image too large"))?;
    if size > max_image {
        return Err(Error::too_large(
            name,
            format!(
                "image of {size} bytes is larger than the {max_image} a {}-byte PNG can hold",
                bytes.len()
            ),
        ));
    }
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(perr)?;
    reader.finish().map_err(perr)?;
    if let Some(text) = find_text(name, reader.info(), max_text)? {
        return from_text(name, &text);
    }
    let channels = match out.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Indexed => return Err(Error::format(name, "indexed PNG after expansion")),
    };
    let (w, h) = (out.width as usize, out.height as usize);
    let rgb: Vec<u8> = buf[..out.buffer_size()]
        .chunks(out.line_size)
        .flat_map(|row| {
            row[..w * channels]
                .chunks(channels)
                .flat_map(move |px| match channels {
                    3 | 4 => [px[0], px[1], px[2]],
                    _ => [px[0], px[0], px[0]],
                })
        })
        .collect();
    let json = decode_pixels(&rgb, w, h, max_text).ok_or_else(|| {
        Error::format(name, format!("a PNG without an embedding: no `{KEYWORD}` text chunk and no data encoded in its pixels"))
    })?;
    let value: serde_json::Value = serde_json::from_slice(&json).map_err(|e| {
        Error::format(
            name,
            format!("pixel-encoded embedding is not valid JSON: {e}"),
        )
    })?;
    classify(
        name,
        json_node(name, &value)?,
        FileKind::PngPixels,
        BTreeMap::new(),
    )
}

fn find_text(name: &str, info: &png::Info, limit: usize) -> Result<Option<String>> {
    if let Some(c) = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == KEYWORD)
    {
        return Ok(Some(c.text.clone()));
    }
    if let Some(c) = info
        .compressed_latin1_text
        .iter()
        .find(|c| c.keyword == KEYWORD)
    {
        let mut c = c.clone();
        c.decompress_text_with_limit(limit)
            .map_err(|e| Error::format(name, format!("{KEYWORD} chunk: {e}")))?;
        return c
            .get_text()
            .map(Some)
            .map_err(|e| Error::format(name, format!("{KEYWORD} chunk: {e}")));
    }
    if let Some(c) = info.utf8_text.iter().find(|c| c.keyword == KEYWORD) {
        let mut c = c.clone();
        c.decompress_text_with_limit(limit)
            .map_err(|e| Error::format(name, format!("{KEYWORD} chunk: {e}")))?;
        return c
            .get_text()
            .map(Some)
            .map_err(|e| Error::format(name, format!("{KEYWORD} chunk: {e}")));
    }
    Ok(None)
}

fn from_text(name: &str, text: &str) -> Result<super::EmbeddingFile> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| Error::format(name, format!("{KEYWORD} chunk is not base64: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| Error::format(name, format!("{KEYWORD} chunk is not valid JSON: {e}")))?;
    classify(
        name,
        json_node(name, &value)?,
        FileKind::PngText,
        BTreeMap::new(),
    )
}

/// JSON → Node; `{"TORCHTENSOR": [[...], ...]}` objects become float32 tensors.
fn json_node(name: &str, v: &serde_json::Value) -> Result<Node> {
    use serde_json::Value as J;
    Ok(match v {
        J::Object(map) => match map.get("TORCHTENSOR") {
            Some(t) => Node::Tensor(json_tensor(name, t)?),
            None => Node::Map(
                map.iter()
                    .map(|(k, x)| Ok((k.clone(), json_node(name, x)?)))
                    .collect::<Result<_>>()?,
            ),
        },
        J::String(s) => Node::Scalar(s.clone()),
        J::Number(n) => Node::Scalar(n.to_string()),
        J::Bool(b) => Node::Scalar(b.to_string()),
        J::Null => Node::None,
        J::Array(_) => Node::Other("list"),
    })
}

fn json_tensor(name: &str, v: &serde_json::Value) -> Result<RawTensor> {
    use serde_json::Value as J;
    let bad = || {
        Error::format(
            name,
            "TORCHTENSOR is not a 1-D or 2-D list of numbers with equal rows",
        )
    };
    let num = |x: &J| x.as_f64().map(|f| f as f32).ok_or_else(bad);
    match v {
        J::Array(rows) if rows.first().is_some_and(|r| r.is_array()) => {
            let width = rows[0].as_array().map(|r| r.len()).unwrap_or(0);
            let mut values = Vec::with_capacity(rows.len() * width);
            for r in rows {
                let r = r.as_array().filter(|r| r.len() == width).ok_or_else(bad)?;
                for x in r {
                    values.push(num(x)?);
                }
            }
            RawTensor::from_f32(vec![rows.len(), width], &values)
        }
        J::Array(items) => {
            let values = items.iter().map(num).collect::<Result<Vec<_>>>()?;
            RawTensor::from_f32(vec![values.len()], &values)
        }
        _ => Err(bad()),
    }
}

/// The web UI's fixed pseudo-random stream (an LCG, reduced mod 255).
struct Lcg(u64);

impl Iterator for Lcg {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        self.0 = (1664525 * self.0 + 1013904223) % (1 << 32);
        Some((self.0 % 255) as u8)
    }
}

/// Recovers the zlib-compressed JSON hidden in the two side panels of an RGB image.
fn decode_pixels(rgb: &[u8], w: usize, h: usize, limit: usize) -> Option<Vec<u8>> {
    let px = |x: usize, y: usize| &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
    // Crop the black border: keep the bounding box of pixels whose three channels are all > 0.
    let lit = |x: usize, y: usize| px(x, y).iter().all(|&c| c > 0);
    let cols: Vec<usize> = (0..w).filter(|&x| (0..h).any(|y| lit(x, y))).collect();
    let rows: Vec<usize> = (0..h).filter(|&y| (0..w).any(|x| lit(x, y))).collect();
    let (&x0, &x1, &y0, &y1) = (cols.first()?, cols.last()?, rows.first()?, rows.last()?);
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let nib = |x: usize, y: usize| -> [u8; 3] {
        let p = px(x0 + x, y0 + y);
        [p[0] & 0x0f, p[1] & 0x0f, p[2] & 0x0f]
    };
    // Columns whose low nibbles are all zero separate the panels from the picture.
    let black: Vec<usize> = (0..cw)
        .filter(|&x| (0..ch).all(|y| nib(x, y) == [0, 0, 0]))
        .collect();
    if black.len() < 2 {
        return None;
    }
    let (lo_w, hi_x) = (black[0], black[black.len() - 1] + 1);
    let hi_w = cw - hi_x;
    if lo_w != hi_w || lo_w == 0 {
        return None;
    }
    let panel = |x_start: usize| -> Vec<u8> {
        let mut g = Lcg(0);
        let mut out = Vec::with_capacity(ch * lo_w * 3);
        for y in 0..ch {
            for x in 0..lo_w {
                for c in nib(x_start + x, y) {
                    out.push(c ^ (g.next().unwrap_or(0) & 0x0f));
                }
            }
        }
        out
    };
    let (lo, hi) = (panel(0), panel(hi_x));
    let data: Vec<u8> = lo.iter().zip(&hi).map(|(l, h)| (h << 4) | l).collect();
    let mut out = Vec::new();
    // Trailing padding after the zlib stream is ignored by the decoder, as by Python's zlib.
    flate2::read::ZlibDecoder::new(&data[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() <= limit).then_some(out)
}
