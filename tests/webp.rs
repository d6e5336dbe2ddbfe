//! WebP decoding (the `image` crate's image-webp) against Pillow 12.0.0's
//! `Image.open(p).convert("RGB")` through libwebp 1.6 (fixtures/webp, from
//! scripts/fixtures/make_fixtures_webp.py): lossy at several qualities and methods, lossy and
//! lossless with alpha, lossless, odd sizes down to 1x1, an animation's first frame.
//!
//! Tolerance: none. Every pixel of every file equals Pillow's (max difference 0, asserted);
//! what Pillow refuses is an error here too.
mod common;

use std::path::PathBuf;
use textual_inversion::train::dataset::load_rgb;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/webp")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

#[test]
fn webp_decodes_to_pillows_exact_pixels() {
    let checked = common::assert_decodes_as_pillow(&dir());
    assert!(checked >= 13, "{checked} files");
}

#[test]
fn webp_files_pillow_refuses_are_errors() {
    let e = expected();
    let mut refused = 0;
    for (name, want) in e["files"].as_object().unwrap() {
        if want["pillow"] == "ok" {
            continue;
        }
        let err = format!("{:#}", load_rgb(&dir().join(name)).err().unwrap_or_else(|| panic!("{name}: decoded, Pillow says {}", want["pillow"])));
        println!("{name}: {err} (Pillow: {})", want["pillow"].as_str().unwrap());
        assert!(err.contains("WebP"), "{name}: {err}");
        refused += 1;
    }
    assert_eq!(refused, 2);
}

/// Cut or byte-flipped copies give pixels or an error, never a crash.
#[test]
fn damaged_webp_never_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("x.webp");
    let (mut ok, mut errors) = (0, 0);
    for source in ["lossy-alpha.webp", "lossless.webp"] {
        let good = std::fs::read(dir().join(source)).unwrap();
        let mut variants: Vec<Vec<u8>> = (1..good.len()).step_by(11).map(|n| good[..n].to_vec()).collect();
        for at in (0..good.len()).step_by(5) {
            let mut v = good.clone();
            v[at] ^= 0x5A;
            variants.push(v);
        }
        for v in variants {
            std::fs::write(&path, &v).unwrap();
            if load_rgb(&path).is_ok() {
                ok += 1;
            } else {
                errors += 1;
            }
        }
    }
    println!("{ok} damaged variants decoded, {errors} refused");
    assert!(ok > 0 && errors > 0);
}
