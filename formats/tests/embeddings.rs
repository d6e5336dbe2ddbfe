//! Embedding files of every layout, written by real PyTorch/safetensors/PIL (fixtures), and the
//! files people published (../shared/realworld), read to the expected tokens and values; and
//! every writer's output read back.
mod common;
use common::*;
use std::io::Write;
use std::path::Path;
use ti_formats::embeddings::{self, Encoder, FileKind, Layout, OutFormat};
use ti_formats::DType;

fn kind_name(k: &FileKind) -> &'static str {
    match k {
        FileKind::Safetensors => "safetensors",
        FileKind::TorchZip(_) => "torch-zip",
        FileKind::TorchLegacy => "torch-legacy",
        FileKind::PngText => "png-text",
        FileKind::PngPixels => "png-pixels",
    }
}

#[test]
fn every_fixture_layout_reads_to_pytorch_values() {
    let files = expected("embeddings");
    for (name, want) in &files {
        let path = fixture("embeddings", name);
        if let Some(err) = want.get("error") {
            let e = embeddings::read(&path).expect_err(name);
            assert!(e.to_string().contains(err.as_str().unwrap()), "{name}: {e}");
            continue;
        }
        let f = embeddings::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let layout = serde_json::to_value(f.layout).unwrap();
        assert_eq!(layout, want["layout"], "{name}: layout");
        assert_eq!(kind_name(&f.kind), want["kind"].as_str().unwrap(), "{name}: container");
        let tokens: Vec<Option<String>> = f.embeddings.iter().map(|e| e.stored_token.clone()).collect();
        let want_tokens: Vec<Option<String>> = want["tokens"].as_array().unwrap().iter().map(|t| t.as_str().map(String::from)).collect();
        assert_eq!(tokens, want_tokens, "{name}: tokens");
        let parts: Vec<_> = f.embeddings.iter().flat_map(|e| e.parts.iter()).collect();
        let want_tensors = want["tensors"].as_array().unwrap();
        assert_eq!(parts.len(), want_tensors.len(), "{name}: tensors");
        for (p, w) in parts.iter().zip(want_tensors) {
            assert_tensor(name, &p.tensor, w);
        }
        let meta: serde_json::Map<String, serde_json::Value> = f.metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        assert_eq!(&serde_json::Value::Object(meta), &want["metadata"], "{name}: metadata");
    }
}

#[test]
fn sdxl_parts_are_assigned_to_their_encoders() {
    let f = embeddings::read(&fixture("embeddings", "sdxl.safetensors")).unwrap();
    let e = &f.embeddings[0];
    assert_eq!(e.part(Encoder::ClipL).unwrap().width(), 768);
    assert_eq!(e.part(Encoder::ClipG).unwrap().width(), 1280);
    assert_eq!(e.vectors(), 2);
}

/// (file, layout, stored token, trigger word, shape, first 3, sum, L2) from realworld/README.md.
#[allow(clippy::type_complexity)]
const REALWORLD: &[(&str, Layout, Option<&str>, &str, &[usize], [f64; 3], f64, f64)] = &[
    ("birb-style.learned_embeds.bin", Layout::Diffusers, Some("<birb-style>"), "<birb-style>", &[768], [0.170092, 0.008965, 0.076737], 0.511783, 3.013576),
    ("bad-artist.pt", Layout::A1111, Some("bad-artist"), "bad-artist", &[2, 768], [0.099183, -0.022449, 0.173715], 1.749755, 7.678862),
    ("EasyNegative.safetensors", Layout::Kohya, None, "EasyNegative", &[8, 768], [-0.000358, 0.00954, -0.008025], 0.331213, 1.082151),
    (
        "detail-schemas.learned_embeds.safetensors",
        Layout::Diffusers,
        Some("<detail-schemas>"),
        "<detail-schemas>",
        &[1, 768],
        [-0.009283, -0.167343, -0.135836],
        -0.511260,
        2.749104,
    ),
];

#[test]
fn realworld_files_read_to_published_values() {
    let Some(rw) = common::realworld_dir("realworld_files_read_to_published_values") else {
        return;
    };
    let realworld = |name: &str| rw.join(name);
    for &(name, layout, stored, trigger, shape, first, sum, l2) in REALWORLD {
        let path = realworld(name);
        let f = embeddings::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(f.layout, layout, "{name}");
        assert_eq!(f.embeddings.len(), 1, "{name}");
        let e = &f.embeddings[0];
        assert_eq!(e.stored_token.as_deref(), stored, "{name}");
        let stem = name.split('.').next().unwrap();
        assert_eq!(f.trigger(0, stem), trigger, "{name}");
        let t = &e.parts[0].tensor;
        assert_eq!(t.dtype, DType::F32, "{name}");
        assert_eq!(t.shape, shape, "{name}");
        let v = t.to_f64_vec();
        // The README rounds to 6 decimals.
        let tol = 1e-5;
        for i in 0..3 {
            assert!((v[i] - first[i]).abs() < tol, "{name}: value {i} = {}", v[i]);
        }
        assert!((v.iter().sum::<f64>() - sum).abs() < tol, "{name}: sum");
        assert!((v.iter().map(|x| x * x).sum::<f64>().sqrt() - l2).abs() < tol, "{name}: L2");
    }
    let a1111 = embeddings::read(&realworld("bad-artist.pt")).unwrap();
    assert_eq!(a1111.metadata.get("step").map(String::as_str), Some("1875"));
    assert_eq!(a1111.metadata.get("sd_checkpoint_name").map(String::as_str), Some("blossom-extract"));
}

#[test]
fn empty_realworld_file_is_refused_clearly() {
    let Some(rw) = common::realworld_dir("empty_realworld_file_is_refused_clearly") else {
        return;
    };
    let realworld = |name: &str| rw.join(name);
    let e = embeddings::read(&realworld("empty.pt")).unwrap_err().to_string();
    assert!(e.contains("empty.pt") && e.contains("no embedding"), "{e}");
}

fn roundtrip(src: &Path, format: OutFormat, ext: &str, token: &str) -> embeddings::EmbeddingFile {
    let f = embeddings::read(src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("out.{ext}"));
    embeddings::write(&out, format, token, &f.embeddings[0], Some(&f), None).unwrap();
    let back = embeddings::read(&out).unwrap();
    // Values survive exactly, as [n, D] rows.
    for (a, b) in f.embeddings[0].parts.iter().zip(&back.embeddings[0].parts) {
        assert_eq!(a.tensor.data, b.tensor.data);
        assert_eq!(b.tensor.shape.len(), 2);
        assert_eq!(a.encoder, b.encoder);
    }
    back
}

#[test]
fn every_writer_roundtrips() {
    let src = fixture("embeddings", "a1111.pt");
    let back = roundtrip(&src, OutFormat::Diffusers, "safetensors", "<tok>");
    assert_eq!((back.layout, back.embeddings[0].stored_token.as_deref()), (Layout::Diffusers, Some("<tok>")));
    assert_eq!(back.metadata.get("format").map(String::as_str), Some("pt"));
    let back = roundtrip(&src, OutFormat::DiffusersBin, "bin", "<tok>");
    assert_eq!((back.layout, &back.kind), (Layout::Diffusers, &FileKind::TorchZip("out".into())));
    let back = roundtrip(&src, OutFormat::A1111, "pt", "renamed");
    assert_eq!((back.layout, back.embeddings[0].stored_token.as_deref()), (Layout::A1111, Some("renamed")));
    // A1111 fields carry over from an A1111 source.
    assert_eq!(back.metadata.get("step").map(String::as_str), Some("1500"));
    assert_eq!(back.metadata.get("sd_checkpoint").map(String::as_str), Some("7ab762a7"));
    let back = roundtrip(&fixture("embeddings", "sdxl.safetensors"), OutFormat::Sdxl, "safetensors", "x");
    assert_eq!(back.layout, Layout::Sdxl);
    // 1-D sd-concepts vectors become [1, D].
    let back = roundtrip(&fixture("embeddings", "sd_concepts_1d.bin"), OutFormat::Diffusers, "safetensors", "<c>");
    assert_eq!(back.embeddings[0].parts[0].tensor.shape, vec![1, 32]);
}

#[test]
fn sdxl_and_single_encoder_formats_do_not_mix() {
    let dir = tempfile::tempdir().unwrap();
    let sdxl = embeddings::read(&fixture("embeddings", "sdxl.safetensors")).unwrap();
    let e = embeddings::write(&dir.path().join("x.pt"), OutFormat::A1111, "x", &sdxl.embeddings[0], None, None).unwrap_err();
    assert!(e.to_string().contains("--format sdxl"), "{e}");
    let sd = embeddings::read(&fixture("embeddings", "kohya.safetensors")).unwrap();
    let e = embeddings::write(&dir.path().join("x.safetensors"), OutFormat::Sdxl, "x", &sd.embeddings[0], None, None).unwrap_err();
    assert!(e.to_string().contains("clip_l (768 wide)") && e.to_string().contains("32 wide"), "{e}");
    assert!(!dir.path().join("x.pt").exists() && !dir.path().join("x.safetensors").exists());
}

#[test]
fn widening_to_f32_on_request() {
    let f = embeddings::read(&fixture("embeddings", "fp16.safetensors")).unwrap();
    assert_eq!(f.embeddings[0].parts[0].tensor.dtype, DType::F16);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wide.safetensors");
    embeddings::write(&out, OutFormat::Diffusers, "<half>", &f.embeddings[0], None, Some(DType::F32)).unwrap();
    let back = embeddings::read(&out).unwrap();
    let t = &back.embeddings[0].parts[0].tensor;
    assert_eq!(t.dtype, DType::F32);
    assert_eq!(t.to_f64_vec(), f.embeddings[0].parts[0].tensor.to_f64_vec(), "f16 widens exactly");
}

/// A PNG chunk: length, type, data, CRC of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// An 8-bit RGB (3 channels) or RGBA (4) PNG of `pixels`, Adam7-interlaced or not (the png
/// crate writes no interlaced files).
fn encode_png(pixels: &[u8], w: usize, h: usize, channels: usize, interlaced: bool) -> Vec<u8> {
    const ADAM7: [(usize, usize, usize, usize); 7] = [(0, 8, 0, 8), (4, 8, 0, 8), (0, 4, 4, 8), (2, 4, 0, 4), (0, 2, 2, 4), (1, 2, 0, 2), (0, 1, 1, 2)];
    let passes: &[(usize, usize, usize, usize)] = if interlaced { &ADAM7 } else { &[(0, 1, 0, 1)] };
    let mut raw = Vec::new();
    for &(x0, dx, y0, dy) in passes.iter().filter(|p| p.0 < w && p.2 < h) {
        for y in (y0..h).step_by(dy) {
            raw.push(0); // filter: none
            for x in (x0..w).step_by(dx) {
                raw.extend_from_slice(&pixels[(y * w + x) * channels..][..channels]);
            }
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw).unwrap();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, if channels == 4 { 6 } else { 2 }, 0, 0, interlaced as u8]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn pixel_embeddings_read_interlaced_with_alpha_and_wider_borders() {
    let path = fixture("embeddings", "a1111_pixels.png");
    let want = embeddings::read(&path).unwrap();
    assert_eq!(want.kind, FileKind::PngPixels);
    let mut decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgb).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let (w, h) = (info.width as usize, info.height as usize);
    // The same pixels inside a black border 5 pixels wide, with an opaque alpha channel.
    let (bw, bh) = (w + 10, h + 10);
    let mut rgba = vec![0u8; bw * bh * 4];
    for y in 0..h {
        for x in 0..w {
            let at = ((y + 5) * bw + x + 5) * 4;
            rgba[at..at + 3].copy_from_slice(&rgb[(y * w + x) * 3..][..3]);
            rgba[at + 3] = 255;
        }
    }
    for (what, png) in [
        ("interlaced", encode_png(&rgb, w, h, 3, true)),
        ("rgba with a border", encode_png(&rgba, bw, bh, 4, false)),
        ("interlaced rgba with a border", encode_png(&rgba, bw, bh, 4, true)),
    ] {
        let got = embeddings::read_bytes("variant.png", &png).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, want, "{what}");
    }
}
