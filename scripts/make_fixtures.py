#!/usr/bin/env python3
"""Writes the committed test fixtures with real PyTorch, and the values the Rust tests expect.

Run through `scripts/make-fixtures.sh` (pinned environment from requirements-fixtures.txt).
Everything is seeded: re-running produces the same tensors (zip files differ only in torch's
random serialization id).

Sections (each writes under fixtures/<section>/ and an expected.json beside the files):
  torch       torch.save containers: dicts, state_dict() OrderedDicts, dtypes, views, shared
              storages, legacy format, pickle protocols 4/5, deflated and renamed zips.
  embeddings  embedding files in every layout: diffusers (.safetensors/.bin, 1-D and 2-D),
              A1111 .pt, original-TI ParameterDict .pt, kohya emb_params, SDXL clip_l/clip_g,
              fp16/bf16, A1111 PNG (text chunk, and pixels only), a pickle that calls os.system.
"""
import argparse
import base64
import io
import json
import os
import pickle
import shutil
import sys
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent / "fixtures"


def describe(v):
    """A JSON description of a loaded object that the Rust tests compare against."""
    if isinstance(v, torch.Tensor):
        t = v.detach()
        return {
            "tensor": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "values": t.double().flatten().tolist() if t.dtype != torch.bool else t.flatten().int().tolist(),
        }
    if isinstance(v, dict):
        return {"dict": [[k, describe(x)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return {"list" if isinstance(v, list) else "tuple": [describe(x) for x in v]}
    if v is None or isinstance(v, (bool, int, float, str)):
        return {"value": v}
    raise TypeError(type(v))


def rezip(src, dst, prefix=None, compress=zipfile.ZIP_STORED, drop=()):
    """Copies a torch zip, optionally renaming its folder, deflating, or dropping records."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compress) as zout:
        for info in zin.infolist():
            head, rest = info.filename.split("/", 1)
            if rest in drop:
                continue
            zout.writestr(f"{prefix or head}/{rest}", zin.read(info))


def torch_section(out):
    torch.manual_seed(0)
    expected = {}

    def save(name, obj, check=None, **kw):
        path = out / name
        torch.save(obj, path, **kw)
        # torch's own weights_only reader lacks protocol 4's FRAME; these files are ours.
        loaded = torch.load(path, weights_only="pickle_protocol" not in kw)
        expected[name] = describe(loaded if check is None else check)

    save("plain_dict.pt", {"a": torch.randn(3, 4), "b": torch.arange(6)})
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    save("state_dict.bin", model.state_dict())
    save(
        "dtypes.pt",
        {
            "f32": torch.randn(5),
            "f16": torch.randn(5).half(),
            "bf16": torch.randn(5).bfloat16(),
            "f64": torch.randn(5).double(),
            "i64": torch.tensor([-(2**40), -1, 0, 1, 2**40]),
            "i32": torch.tensor([-(2**31), -1, 0, 1, 2**31 - 1], dtype=torch.int32),
            "i16": torch.tensor([-32768, -1, 0, 1, 32767], dtype=torch.int16),
            "i8": torch.tensor([-128, -1, 0, 1, 127], dtype=torch.int8),
            "u8": torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
        },
    )
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {
        "transposed": base.t(),
        "slice": base[1:3, 2:5],
        "shared_a": base,
        "shared_row": base[2],
        "expanded": torch.tensor([[1.0], [2.0], [3.0]]).expand(3, 4),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }
    save("views.pt", views)
    save("legacy.pt", views, _use_new_zipfile_serialization=False)
    save("protocol4.pt", {"x": torch.randn(2, 3), "name": "p4"}, pickle_protocol=4)
    save("protocol5.pt", {"x": torch.randn(2, 3), "name": "p5"}, pickle_protocol=5)
    save(
        "nested.pt",
        {
            "state_dict": {"layer.weight": torch.randn(2, 2)},
            "epoch": 3,
            "big": 2**40,
            "negative": -7,
            "lr": 0.5,
            "name": "nested",
            "flags": [True, None],
            "pair": (1, "two"),
        },
    )
    save("parameter.pt", {"p": torch.nn.Parameter(torch.randn(2, 2))})
    save("bare_tensor.pt", torch.randn(2, 3))
    # Container variations torch itself reads: deflated records, another folder name, no
    # byteorder/.format_version records.
    rezip(out / "plain_dict.pt", out / "deflated.pt", prefix="some_other_name", compress=zipfile.ZIP_DEFLATED)
    expected["deflated.pt"] = describe(torch.load(out / "deflated.pt", weights_only=True))
    rezip(out / "plain_dict.pt", out / "no_byteorder.pt", drop=("byteorder", ".format_version", ".storage_alignment"))
    expected["no_byteorder.pt"] = describe(torch.load(out / "no_byteorder.pt", weights_only=True))
    return expected


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def a1111_png_text(data):
    """base64 JSON with tensors as {"TORCHTENSOR": nested lists}, as the web UI writes it."""
    def enc(o):
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.detach().cpu().numpy().tolist()}
        raise TypeError(type(o))
    return base64.b64encode(json.dumps(data, default=enc).encode())


def a1111_pixel_panels(data, height):
    """The web UI's pixel copy: zlib JSON split into low/high nibbles, laid out as two RGB
    panels of `height` rows, each XOR-ed with a fixed LCG stream (written from its description;
    the decorative dot pattern the web UI also draws only touches the high nibbles, so plain
    panels decode the same)."""
    def enc(o):
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.detach().cpu().numpy().tolist()}
        raise TypeError(type(o))
    raw = np.frombuffer(zlib.compress(json.dumps(data, default=enc).encode(), 9), np.uint8)
    per_col = height * 3
    n = -(-len(raw) // per_col) * per_col
    padded = np.resize(raw, n)

    def stream(count):
        seed, out = 0, np.empty(count, np.uint8)
        for i in range(count):
            seed = (1664525 * seed + 1013904223) % 2**32
            out[i] = seed % 255
        return out

    mask = stream(n) & 0x0F
    low = ((padded & 0x0F) ^ mask).reshape(height, -1, 3)
    high = ((padded >> 4) ^ mask).reshape(height, -1, 3)
    # Panels must not be black (the reader crops black borders): set the high nibbles.
    return (low | 0xA0).astype(np.uint8), (high | 0x50).astype(np.uint8)


def a1111_png(path, data, text=True):
    h = 64
    low, high = a1111_pixel_panels(data, h)
    picture = np.full((h, 48, 3), 200, np.uint8)
    gap = np.zeros((h, 1, 3), np.uint8)
    img = Image.fromarray(np.concatenate([low, gap, picture, gap, high], axis=1), "RGB")
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("sd-ti-embedding", a1111_png_text(data))
    img.save(path, pnginfo=info)


def embeddings_section(out):
    torch.manual_seed(1)
    expected = {}

    def record(name, layout, kind, tokens, tensors, metadata=None):
        expected[name] = {
            "layout": layout,
            "kind": kind,
            "tokens": tokens,
            "tensors": [describe(t) for t in tensors],
            "metadata": metadata or {},
        }

    e1 = torch.randn(1, 32)
    save_file({"<cat-toy>": e1}, out / "diffusers.safetensors", metadata={"format": "pt"})
    record("diffusers.safetensors", "diffusers", "safetensors", ["<cat-toy>"], [e1], {"format": "pt"})

    e3 = torch.randn(3, 32)
    torch.save({"<multi>": e3}, out / "diffusers_multi.bin")
    record("diffusers_multi.bin", "diffusers", "torch-zip", ["<multi>"], [e3])

    e1d = torch.randn(32)
    torch.save({"<concept>": e1d}, out / "sd_concepts_1d.bin")
    record("sd_concepts_1d.bin", "diffusers", "torch-zip", ["<concept>"], [e1d])

    ea = torch.randn(2, 32).requires_grad_(True)
    a1111 = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": ea},
        "name": "my-style",
        "step": 1500,
        "sd_checkpoint": "7ab762a7",
        "sd_checkpoint_name": "v1-5-pruned",
    }
    torch.save(a1111, out / "a1111.pt")
    record("a1111.pt", "a1111", "torch-zip", ["my-style"], [ea],
           {"name": "my-style", "step": "1500", "sd_checkpoint": "7ab762a7", "sd_checkpoint_name": "v1-5-pruned"})

    # The original Textual Inversion code kept string_to_param in an nn.ParameterDict.
    eo = torch.randn(1, 32)
    pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(eo.clone())})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": pd}, out / "original_ti.pt")
    record("original_ti.pt", "a1111", "torch-zip", [None], [eo])

    ek = torch.randn(4, 32)
    save_file({"emb_params": ek}, out / "kohya.safetensors")
    record("kohya.safetensors", "kohya", "safetensors", [None], [ek])

    el, eg = torch.randn(2, 768), torch.randn(2, 1280)
    save_file({"clip_g": eg, "clip_l": el}, out / "sdxl.safetensors")
    record("sdxl.safetensors", "sdxl", "safetensors", [None], [el, eg])

    eh = torch.randn(2, 32).half()
    save_file({"<half>": eh}, out / "fp16.safetensors", metadata={"format": "pt"})
    record("fp16.safetensors", "diffusers", "safetensors", ["<half>"], [eh], {"format": "pt"})

    eb = torch.randn(2, 32).bfloat16()
    torch.save({"<bf>": eb}, out / "bf16.bin")
    record("bf16.bin", "diffusers", "torch-zip", ["<bf>"], [eb])

    el2 = torch.randn(2, 32)
    torch.save({"<old>": el2}, out / "legacy_format.bin", _use_new_zipfile_serialization=False)
    record("legacy_format.bin", "diffusers", "torch-legacy", ["<old>"], [el2])

    ep = torch.randn(2, 32)
    png_data = {"string_to_token": {"*": 265}, "string_to_param": {"*": ep}, "name": "png-style", "step": 42,
                "sd_checkpoint": None, "sd_checkpoint_name": None}
    a1111_png(out / "a1111_text.png", png_data, text=True)
    # JSON stores float32 values exactly (as decimal of the float64 widening).
    record("a1111_text.png", "a1111", "png-text", ["png-style"], [ep],
           {"name": "png-style", "step": "42", "sd_checkpoint": "None", "sd_checkpoint_name": "None"})
    a1111_png(out / "a1111_pixels.png", png_data, text=False)
    record("a1111_pixels.png", "a1111", "png-pixels", ["png-style"], [ep],
           {"name": "png-style", "step": "42", "sd_checkpoint": "None", "sd_checkpoint_name": "None"})

    # Hostile: a pickle that would run a shell command, in a real torch.save zip.
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(out / "evil.pt", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"x": _Evil()}, protocol=2)
            zout.writestr(info.filename, data)
    expected["evil.pt"] = {"error": "refused to load global `posix.system`"}
    return expected


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sections", nargs="*", default=["torch", "embeddings"])
    args = ap.parse_args()
    makers = {"torch": torch_section, "embeddings": embeddings_section}
    for section in args.sections:
        out = ROOT / section
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        expected = makers[section](out)
        meta = {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
        (out / "expected.json").write_text(json.dumps({"generated_with": meta, "files": expected}, indent=1) + "\n")
        print(f"wrote {len(expected)} fixtures to {out}")


if __name__ == "__main__":
    main()
