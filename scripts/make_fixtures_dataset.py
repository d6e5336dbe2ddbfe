#!/usr/bin/env python3
"""Writes fixtures/dataset/: training images and the training script's preprocessing, for tests/dataset.rs.

Run: `$(scripts/python-env.sh) scripts/make_fixtures_dataset.py` (pinned Pillow 12.0.0, numpy,
torch 2.11.0, torchvision 0.26.0). Deterministic: images come from numpy's seeded generator and
re-running rewrites the same bytes.

Written:
  images/          the clean training set (4 synthetic but textured "toy" photos, JPEG and PNG,
                   128-200 px); the README demo trains on these
  mixed/           a messy folder: RGB, EXIF-rotated, greyscale, grey+alpha, bilevel, RGBA, palette,
                   16-bit, CMYK, WebP and GIF images next to truncated/corrupt/empty files, a text
                   file, a float HDR file, a header claiming 400 megapixels, a `.DS_Store`, an
                   `.ipynb_checkpoints/` folder and a sub-folder
  expected.safetensors
      "decoded/<file>"          uint8 HxWx3: PIL's decoding of each clean JPEG (convert("RGB")),
                                so that the resize can be compared on identical input
      "<dir>/<file>/r<S>_c<C>"  uint8 SxSx3: the script's image after crop (C=1) and resize to S,
                                before the flip (PIL BICUBIC, exactly as TextualInversionDataset);
                                clean images at S = 64, 96 and C = 0, 1; mixed ones at r64_c1
                                (and r64_c0 for the EXIF-rotated ones)
      "images/<file>/r<S>_c<C>_f<F>_pixels"
                                float32 [3,S,S]: the script's final pixel_values (flip F, then
                                x / 127.5 - 1.0), for two cases
      "resize/<case>"           uint8: PIL BICUBIC resizes of one PNG to odd, tiny, upscaled and
                                non-square sizes
  expected.json    per mixed entry: what Python's dataset does with it (PIL mode or the error) and
                   what the Rust port must do (used/skipped, source mode); torchvision
                   RandomHorizontalFlip decisions after torch.manual_seed(seed); the templates.

Where the port deliberately differs from the script, the expected arrays follow the port:
EXIF orientation is applied (PIL.ImageOps.exif_transpose) before anything else, and 16-bit
greyscale keeps its high byte (PIL's convert("RGB") clips "I;16" values above 255 to white).
"""
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.numpy import save_file
from torchvision import transforms

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "dataset"
RESOLUTIONS = (64, 96)

# diffusers examples/textual_inversion/textual_inversion.py (spec section 1.7), verbatim.
OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
]


# ---------------------------------------------------------------- synthetic photos

def smooth_noise(rng, h, w, cells):
    """Low-frequency noise in [-1, 1]: a coarse random grid, bicubic-upsampled by PIL."""
    grid = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    up = Image.fromarray(grid).resize((w, h), Image.BICUBIC)
    return np.asarray(up, np.float64) / 127.5 - 1.0


def toy_photo(seed, h, w, body_rgb, cx, cy, scale, light):
    """A plush toy on a wooden table: grain, soft light, a shaded body and head, ears, eyes, a
    shadow and sensor noise, so that resizing has real texture and edges to work on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    warp = smooth_noise(rng, h, w, 6) * 6.0
    grain = np.sin((y * 0.9 + warp * 3.0 + smooth_noise(rng, h, w, 12) * 2.0) * 0.6)
    wood = np.array([150.0, 105.0, 70.0]) + (grain[..., None] * np.array([22.0, 16.0, 10.0]))
    lx, ly = light
    illum = 0.75 + 0.35 * (1.0 - np.hypot(x / w - lx, y / h - ly))
    img = wood * illum[..., None]

    s = scale * min(h, w)
    # shadow
    d = ((x - cx * w - 0.12 * s) / (0.42 * s)) ** 2 + ((y - cy * h - 0.33 * s) / (0.16 * s)) ** 2
    img *= (1.0 - 0.45 * np.exp(-np.maximum(d - 0.6, 0) * 3.0) * (d < 1.6))[..., None]

    body = np.array(body_rgb, np.float64)
    fur = smooth_noise(rng, h, w, 40) * 0.08

    def blob(px, py, rx, ry):
        nx, ny = (x - px) / rx, (y - py) / ry
        r2 = nx**2 + ny**2
        inside = r2 < 1.0
        nz = np.sqrt(np.clip(1.0 - r2, 0, 1))
        shade = np.clip(0.35 + 0.75 * (-(nx * (lx - 0.5)) - ny * (ly - 0.5) * 0.8 + nz * 0.7), 0.15, 1.25)
        return inside, shade

    parts = [
        (cx * w, cy * h + 0.12 * s, 0.36 * s, 0.30 * s),  # body
        (cx * w, cy * h - 0.22 * s, 0.26 * s, 0.22 * s),  # head
    ]
    for px, py, rx, ry in parts:
        inside, shade = blob(px, py, rx, ry)
        col = body * (shade + fur)[..., None]
        img = np.where(inside[..., None], col, img)
    # ears: triangles above the head
    for side in (-1, 1):
        ex, ey = cx * w + side * 0.16 * s, cy * h - 0.38 * s
        t = (ey + 0.14 * s - y) / (0.24 * s)
        inside = (t > 0) & (t < 1) & (np.abs(x - ex) < (1 - t) * 0.09 * s)
        img = np.where(inside[..., None], body * 0.8, img)
    # eyes with a highlight
    for side in (-1, 1):
        ex, ey = cx * w + side * 0.1 * s, cy * h - 0.24 * s
        r = np.hypot(x - ex, y - ey)
        img = np.where((r < 0.045 * s)[..., None], np.array([25.0, 22.0, 20.0]), img)
        img = np.where((np.hypot(x - ex + 0.012 * s, y - ey + 0.012 * s) < 0.013 * s)[..., None], 235.0, img)
    img += rng.normal(0, 4.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the script's preprocessing

def script_resized(rgb, size, center_crop):
    """TextualInversionDataset.__getitem__ up to the flip, on an RGB uint8 array (verbatim logic)."""
    img = np.array(rgb).astype(np.uint8)
    if center_crop:
        crop = min(img.shape[0], img.shape[1])
        h, w = img.shape[0], img.shape[1]
        img = img[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
    image = Image.fromarray(img)
    return image.resize((size, size), resample=Image.BICUBIC)


def script_pixels(resized_pil, flip):
    """The rest: RandomHorizontalFlip (decided by the caller), then x / 127.5 - 1.0, HWC -> CHW."""
    image = resized_pil.transpose(Image.FLIP_LEFT_RIGHT) if flip else resized_pil
    image = np.array(image).astype(np.uint8)
    image = (image / 127.5 - 1.0).astype(np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def script_rgb(path):
    """What the script gets from a file: PIL.Image.open, then convert("RGB") if needed."""
    image = Image.open(path)
    if not image.mode == "RGB":
        image = image.convert("RGB")
    return np.array(image)


def port_rgb(path):
    """What the port must get: the script's RGB after EXIF orientation; 16-bit greyscale by its
    high byte instead of PIL's clipping."""
    image = Image.open(path)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.array(image).astype(np.uint32) >> 8
        return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
    if not image.mode == "RGB":
        image = image.convert("RGB")
    return np.array(image)


# ---------------------------------------------------------------- raw file writers

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(arr, color_type):
    """A 16-bit PNG (PIL cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )


def huge_png_header(w, h):
    """A PNG whose header claims w x h pixels, with almost no data: must be refused before decoding."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def radiance_hdr(h, w, rng):
    """A tiny float Radiance .hdr (flat RGBE scanlines, allowed for widths under 8)."""
    head = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {h} +X {w}\n".encode()
    px = rng.integers(0, 256, (h, w, 4)).astype(np.uint8)
    px[..., 3] = 128
    return head + px.tobytes()


def save(image, path, **kw):
    buf = io.BytesIO()
    image.save(buf, **kw)
    path.write_bytes(buf.getvalue())


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    images, mixed = OUT / "images", OUT / "mixed"
    images.mkdir(parents=True)
    mixed.mkdir()
    tensors = {}

    # ---- the clean training set
    clean = {
        "toy-1.jpg": (toy_photo(11, 144, 192, (200, 70, 60), 0.45, 0.55, 0.85, (0.2, 0.1)), dict(format="JPEG", quality=90)),
        "toy-2.png": (toy_photo(12, 192, 144, (205, 78, 58), 0.5, 0.52, 0.8, (0.8, 0.2)), dict(format="PNG", optimize=True)),
        "toy-3.jpg": (toy_photo(13, 160, 160, (192, 66, 66), 0.55, 0.5, 0.75, (0.3, 0.0)), dict(format="JPEG", quality=92)),
        "toy-4.png": (toy_photo(14, 128, 200, (212, 74, 52), 0.4, 0.5, 0.9, (0.9, 0.8)), dict(format="PNG", optimize=True)),
    }
    for name, (arr, kw) in clean.items():
        save(Image.fromarray(arr), images / name, **kw)
        rgb = script_rgb(images / name)
        if name.endswith(".jpg"):
            tensors[f"decoded/{name}"] = rgb
        for size in RESOLUTIONS:
            for crop in (0, 1):
                tensors[f"images/{name}/r{size}_c{crop}"] = np.array(script_resized(rgb, size, crop))
    # full pixel_values for a few cases (float32 CHW, both flips)
    for name, size, crop, flip in (("toy-2.png", 64, 1, 1), ("toy-4.png", 64, 0, 0)):
        resized = script_resized(script_rgb(images / name), size, crop)
        tensors[f"images/{name}/r{size}_c{crop}_f{flip}_pixels"] = script_pixels(resized, flip)

    # ---- resize edge cases on a PNG (lossless, so the Rust decoding is identical)
    src = script_rgb(images / "toy-4.png")  # 200 x 128
    resize_cases = {}
    for w, h in ((1, 1), (7, 5), (33, 33), (64, 41), (99, 63), (200, 64), (100, 128), (300, 20), (16, 260)):
        key = f"resize/{w}x{h}"
        tensors[key] = np.array(Image.fromarray(src).resize((w, h), resample=Image.BICUBIC))
        resize_cases[key] = [w, h]
    small = src[40:70, 60:100]  # 40 x 30: upscaling
    tensors["resize/small_source"] = np.ascontiguousarray(small)
    for w, h in ((64, 64), (97, 45), (40, 90)):
        key = f"resize/small_{w}x{h}"
        tensors[key] = np.array(Image.fromarray(small).resize((w, h), resample=Image.BICUBIC))
        resize_cases[key] = [w, h]

    # ---- the messy folder
    rng = np.random.default_rng(7)
    base = toy_photo(21, 72, 96, (180, 90, 160), 0.5, 0.55, 0.85, (0.3, 0.2))  # 96 x 72
    base_img = Image.fromarray(base)
    save(base_img, mixed / "rgb.jpg", format="JPEG", quality=90)
    rgba = np.dstack([base, rng.integers(0, 256, base.shape[:2]).astype(np.uint8)])
    save(Image.fromarray(rgba, "RGBA"), mixed / "rgba.png", format="PNG")
    save(base_img.convert("L"), mixed / "grey.png", format="PNG")
    save(base_img.convert("LA"), mixed / "grey-alpha.png", format="PNG")
    save(base_img.convert("1"), mixed / "bilevel.png", format="PNG")
    pal = base_img.convert("P", palette=Image.ADAPTIVE, colors=32)
    save(pal, mixed / "palette.png", format="PNG", transparency=3)
    save(base_img.convert("CMYK"), mixed / "cmyk.jpg", format="JPEG", quality=90)
    save(base_img, mixed / "lossless.webp", format="WEBP", lossless=True)
    frames = [base_img.convert("P", palette=Image.ADAPTIVE, colors=64), base_img.rotate(180).convert("P", palette=Image.ADAPTIVE, colors=64)]
    save(frames[0], mixed / "animated.gif", format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    # EXIF orientation: stored landscape 96 x 72, displayed portrait (6 = rotate 90 clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    save(base_img, mixed / "exif-rotate90.jpg", format="JPEG", quality=90, exif=exif.tobytes())
    exif = Image.Exif()
    exif[0x0112] = 8
    save(Image.fromarray(base[:, :80]), mixed / "exif-rotate270.png", format="PNG", exif=exif.tobytes())
    # 16-bit
    grey16 = (np.asarray(base_img.convert("L"), np.uint16) * 257 + rng.integers(0, 200, base.shape[:2])).astype(np.uint16)
    (mixed / "grey16.png").write_bytes(png16(grey16, 0))
    rgb16 = (base.astype(np.uint16) * 257 + rng.integers(0, 200, base.shape)).astype(np.uint16)
    (mixed / "rgb16.png").write_bytes(png16(rgb16, 2))
    # unusable entries
    jpeg = (mixed / "rgb.jpg").read_bytes()
    (mixed / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    png = (mixed / "grey.png").read_bytes()
    (mixed / "truncated.png").write_bytes(png[: len(png) // 2])
    (mixed / "empty.png").write_bytes(b"")
    (mixed / "fake.jpg").write_bytes(b"this is not a JPEG\n")
    (mixed / "notes.txt").write_text("a photo of my cat toy, taken on the kitchen table\n")
    (mixed / "huge.png").write_bytes(huge_png_header(20000, 20000))
    (mixed / "float.hdr").write_bytes(radiance_hdr(4, 5, rng))
    (mixed / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (mixed / ".ipynb_checkpoints").mkdir()
    save(base_img, mixed / ".ipynb_checkpoints" / "rgb-checkpoint.jpg", format="JPEG", quality=90)
    (mixed / "more").mkdir()
    save(base_img, mixed / "more" / "nested.jpg", format="JPEG", quality=90)

    port_used = {
        "animated.gif": "P",
        "bilevel.png": "1",
        "cmyk.jpg": "CMYK",
        "exif-rotate270.png": "RGB",
        "exif-rotate90.jpg": "RGB",
        "grey-alpha.png": "LA",
        "grey.png": "L",
        "grey16.png": "I;16",
        "lossless.webp": "RGB",
        "palette.png": "P",
        "rgb.jpg": "RGB",
        "rgb16.png": "RGB;16",
        "rgba.png": "RGBA",
    }
    port_skipped = {
        ".DS_Store": "hidden",
        ".ipynb_checkpoints": "hidden",
        "empty.png": "empty file",
        "fake.jpg": "not an image",
        "float.hdr": "floating-point",
        "huge.png": "megapixels",
        "more": "folder",
        "notes.txt": "not an image",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
    }
    entries = {}
    for path in sorted(mixed.iterdir()):
        name = path.name
        py = {}
        try:
            im = Image.open(path)
            py["mode"] = im.mode
            im.convert("RGB") if im.mode != "RGB" else im.load()
            py["python"] = "ok"
        except Exception as e:  # noqa: BLE001 - recording what the script would hit
            py["python"] = f"{type(e).__name__}: {e}".replace(f"{OUT}/", "")
        if name in port_used:
            rgb = port_rgb(path)
            py.update(port="used", source_mode=port_used[name], height=int(rgb.shape[0]), width=int(rgb.shape[1]))
            tensors[f"mixed/{name}/r64_c1"] = np.array(script_resized(rgb, 64, True))
            if name.startswith("exif"):
                tensors[f"mixed/{name}/r64_c0"] = np.array(script_resized(rgb, 64, False))
        else:
            py.update(port="skipped", reason=port_skipped[name])
        entries[name] = py
    assert set(entries) == set(port_used) | set(port_skipped), sorted(entries)

    # ---- torchvision's RandomHorizontalFlip decisions on the global torch RNG
    probe = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))
    flip = transforms.RandomHorizontalFlip(p=0.5)
    flips = {}
    for seed in (0, 42, 1234):
        torch.manual_seed(seed)
        flips[str(seed)] = [bool(np.array(flip(probe))[0, 0, 0] == 255) for _ in range(24)]

    save_file({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}, OUT / "expected.safetensors")
    expected = {
        "pillow": Image.__version__,
        "torch": torch.__version__,
        "resolutions": list(RESOLUTIONS),
        "clean": sorted(clean),
        "resize_cases": resize_cases,
        "mixed": entries,
        "flips": flips,
        "object_templates": OBJECT_TEMPLATES,
        "style_templates": STYLE_TEMPLATES,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
