//! A1111 embeddings shared as PNG images.
//!
//! The web UI stores the embedding dict twice: as base64 JSON in a `sd-ti-embedding` text chunk
//! (tensors as `{"TORCHTENSOR": nested lists}`), and zlib-compressed in the pixels of two
//! side panels (low and high nibbles, XOR-ed with a fixed LCG stream), which survives
//! re-encoding that drops text chunks. We read the text chunk, and fall back to the pixels.
//!
//! The pixels are decoded a row at a time, three times over (the web UI's crop box, the columns
//! that separate the panels, the panels' nibbles), keeping only the panels' bytes: memory
//! follows the embedding, not the image, which may be any size its file can hold.
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
    let max_image = bytes.len().saturating_mul(1100).saturating_add(1 << 20).min(MAX_IMAGE_BYTES);
    let max_text = max_image.min(MAX_TEXT_BYTES);
    let mut reader = open(bytes, max_image).map_err(perr)?;
    if let Some(text) = find_text(name, reader.info(), max_text)? {
        return from_text(name, &text);
    }
    // The pixels are only ever decoded a row at a time, but an image the file cannot hold
    // would take long to find out about.
    let size = reader.output_buffer_size().ok_or_else(|| Error::too_large(name, "image too large"))?;
    if size > max_image {
        return Err(Error::too_large(name, format!("image of {size} bytes is larger than the {max_image} a {}-byte PNG can hold", bytes.len())));
    }
    // Text chunks may also follow the image data: the first pass over the pixels reaches them.
    let mut lit = Lit::default();
    visit(&mut reader, |x, y, px| lit.add(x, y, px)).map_err(perr)?;
    reader.finish().map_err(perr)?;
    if let Some(text) = find_text(name, reader.info(), max_text)? {
        return from_text(name, &text);
    }
    let no_embedding = || Error::format(name, format!("a PNG without an embedding: no `{KEYWORD}` text chunk and no data encoded in its pixels"));
    let crop = lit.crop().ok_or_else(no_embedding)?;
    let panels = Panels::find(&crop, |f| visit(&mut open(bytes, max_image)?, f)).map_err(perr)?.ok_or_else(no_embedding)?;
    // The panels hold the zlib stream padded to whole rows: a stream for `max_text` of JSON
    // (which compresses) plus one row's padding is all a real embedding needs.
    let limit = max_text.saturating_add(6 * crop.height());
    if panels.bytes() > limit {
        return Err(Error::too_large(name, format!("its pixel panels would hold {} bytes, more than the {limit} an embedding needs", panels.bytes())));
    }
    let mut data = vec![0u8; panels.bytes()];
    visit(&mut open(bytes, max_image).map_err(perr)?, |x, y, px| panels.put(&mut data, x, y, px)).map_err(perr)?;
    let json = decode_panels(data, max_text).ok_or_else(no_embedding)?;
    let value: serde_json::Value = serde_json::from_slice(&json).map_err(|e| Error::format(name, format!("pixel-encoded embedding is not valid JSON: {e}")))?;
    classify(name, json_node(name, &value)?, FileKind::PngPixels, BTreeMap::new())
}

type Reader<'a> = png::Reader<std::io::Cursor<&'a [u8]>>;

fn open(bytes: &[u8], max_image: usize) -> Result<Reader<'_>, png::DecodingError> {
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), png::Limits { bytes: max_image });
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    decoder.read_info()
}

/// The (x offset, x step, y offset, y step) of the seven Adam7 passes.
const ADAM7: [(usize, usize, usize, usize); 7] = [(0, 8, 0, 8), (4, 8, 0, 8), (0, 4, 4, 8), (2, 4, 0, 4), (0, 2, 2, 4), (1, 2, 0, 2), (0, 1, 1, 2)];

/// Decodes the image one row at a time (never holding more than a row), calling `f(x, y, rgb)`
/// for every pixel in the order the file stores them: top to bottom, or pass by pass when
/// interlaced. Grey pixels are given as three equal channels; alpha is ignored.
fn visit(reader: &mut Reader<'_>, mut f: impl FnMut(usize, usize, [u8; 3])) -> Result<(), png::DecodingError> {
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    let channels = match reader.output_color_type().0 {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        // EXPAND turns palettes into RGB; nothing else is left.
        png::ColorType::Indexed => return Ok(()),
    };
    let passes: &[(usize, usize, usize, usize)] = match reader.info().interlaced {
        true => &ADAM7,
        false => &[(0, 1, 0, 1)],
    };
    // The rows in file order, as (y, first x, x step); empty passes have no rows.
    let mut rows = passes.iter().filter(|&&(x0, _, y0, _)| x0 < w && y0 < h).flat_map(|&(x0, dx, y0, dy)| (y0..h).step_by(dy).map(move |y| (y, x0, dx)));
    while let Some(row) = reader.next_row()? {
        let Some((y, x0, dx)) = rows.next() else {
            break;
        };
        for (i, px) in row.data().chunks_exact(channels).enumerate() {
            let x = x0 + i * dx;
            if x >= w {
                break;
            }
            f(x, y, if channels >= 3 { [px[0], px[1], px[2]] } else { [px[0]; 3] });
        }
    }
    Ok(())
}

/// The bounding box of the pixels whose three channels are all above zero: the web UI crops
/// the black border around its picture to it.
#[derive(Default)]
struct Lit {
    /// (x0, x1, y0, y1), inclusive.
    bounds: Option<(usize, usize, usize, usize)>,
}

impl Lit {
    fn add(&mut self, x: usize, y: usize, px: [u8; 3]) {
        if px.iter().all(|&c| c > 0) {
            let b = self.bounds.get_or_insert((x, x, y, y));
            *b = (b.0.min(x), b.1.max(x), b.2.min(y), b.3.max(y));
        }
    }
    fn crop(&self) -> Option<Crop> {
        self.bounds.map(|(x0, x1, y0, y1)| Crop { x0, x1, y0, y1 })
    }
}

struct Crop {
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
}

impl Crop {
    fn width(&self) -> usize {
        self.x1 - self.x0 + 1
    }
    fn height(&self) -> usize {
        self.y1 - self.y0 + 1
    }
    /// Cropped coordinates of a pixel inside.
    fn at(&self, x: usize, y: usize) -> Option<(usize, usize)> {
        ((self.x0..=self.x1).contains(&x) && (self.y0..=self.y1).contains(&y)).then(|| (x - self.x0, y - self.y0))
    }
}

/// Where the two data panels lie in the cropped image: `width` columns at its left edge (low
/// nibbles) and as many at its right edge (high nibbles), set apart from the picture by
/// columns whose low nibbles are all zero.
struct Panels<'a> {
    crop: &'a Crop,
    width: usize,
    /// First column of the high-nibble panel, in cropped coordinates.
    hi_x: usize,
}

impl<'a> Panels<'a> {
    /// Finds the separating columns with one more pass over the pixels (`visit`).
    fn find(
        crop: &'a Crop,
        visit: impl FnOnce(&mut dyn FnMut(usize, usize, [u8; 3])) -> Result<(), png::DecodingError>,
    ) -> Result<Option<Self>, png::DecodingError> {
        let mut data = vec![false; crop.width()];
        visit(&mut |x, y, px| {
            if let Some((cx, _)) = crop.at(x, y) {
                data[cx] |= px.iter().any(|&c| c & 0x0f != 0);
            }
        })?;
        let first = data.iter().position(|&d| !d);
        let last = data.iter().rposition(|&d| !d);
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(None);
        };
        let (width, hi_x) = (first, last + 1);
        if first == last || width == 0 || crop.width() - hi_x != width {
            return Ok(None);
        }
        Ok(Some(Panels { crop, width, hi_x }))
    }

    /// Bytes of zlib data the panels hold (each pixel channel holds a nibble in each panel).
    fn bytes(&self) -> usize {
        self.crop.height() * self.width * 3
    }

    /// Stores a pixel's low nibbles where they belong in `data`: the low-nibble panel's as the
    /// low half of each byte, the high-nibble panel's as the high half.
    fn put(&self, data: &mut [u8], x: usize, y: usize, px: [u8; 3]) {
        let Some((cx, cy)) = self.crop.at(x, y) else {
            return;
        };
        let (col, shift) = match cx {
            _ if cx < self.width => (cx, 0),
            _ if cx >= self.hi_x => (cx - self.hi_x, 4),
            _ => return,
        };
        let at = (cy * self.width + col) * 3;
        for (b, c) in data[at..at + 3].iter_mut().zip(px) {
            *b |= (c & 0x0f) << shift;
        }
    }
}

fn find_text(name: &str, info: &png::Info, limit: usize) -> Result<Option<String>> {
    if let Some(c) = info.uncompressed_latin1_text.iter().find(|c| c.keyword == KEYWORD) {
        return Ok(Some(c.text.clone()));
    }
    if let Some(c) = info.compressed_latin1_text.iter().find(|c| c.keyword == KEYWORD) {
        let mut c = c.clone();
        c.decompress_text_with_limit(limit).map_err(|e| Error::format(name, format!("{KEYWORD} chunk: {e}")))?;
        return c.get_text().map(Some).map_err(|e| Error::format(name, format!("{KEYWORD} chunk: {e}")));
    }
    if let Some(c) = info.utf8_text.iter().find(|c| c.keyword == KEYWORD) {
        let mut c = c.clone();
        c.decompress_text_with_limit(limit).map_err(|e| Error::format(name, format!("{KEYWORD} chunk: {e}")))?;
        return c.get_text().map(Some).map_err(|e| Error::format(name, format!("{KEYWORD} chunk: {e}")));
    }
    Ok(None)
}

fn from_text(name: &str, text: &str) -> Result<super::EmbeddingFile> {
    let raw = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|e| Error::format(name, format!("{KEYWORD} chunk is not base64: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| Error::format(name, format!("{KEYWORD} chunk is not valid JSON: {e}")))?;
    classify(name, json_node(name, &value)?, FileKind::PngText, BTreeMap::new())
}

/// JSON → Node; `{"TORCHTENSOR": [[...], ...]}` objects become float32 tensors.
fn json_node(name: &str, v: &serde_json::Value) -> Result<Node> {
    use serde_json::Value as J;
    Ok(match v {
        J::Object(map) => match map.get("TORCHTENSOR") {
            Some(t) => Node::Tensor(json_tensor(name, t)?),
            None => Node::Map(map.iter().map(|(k, x)| Ok((k.clone(), json_node(name, x)?))).collect::<Result<_>>()?),
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
    let bad = || Error::format(name, "TORCHTENSOR is not a 1-D or 2-D list of numbers with equal rows");
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

/// Undoes the web UI's XOR (each panel with the same stream, so both nibbles of a byte with the
/// same value) and inflates the JSON, up to `limit` bytes.
fn decode_panels(mut data: Vec<u8>, limit: usize) -> Option<Vec<u8>> {
    for (b, g) in data.iter_mut().zip(Lcg(0)) {
        let g = g & 0x0f;
        *b ^= (g << 4) | g;
    }
    let mut out = Vec::new();
    // Trailing padding after the zlib stream is ignored by the decoder, as by Python's zlib.
    flate2::read::ZlibDecoder::new(&data[..]).take(limit as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() <= limit).then_some(out)
}
