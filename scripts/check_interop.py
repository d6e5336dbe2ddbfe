#!/usr/bin/env python3
"""Loads files the Rust writers produced with PyTorch and diffusers, as users will.

usage: check_interop.py MANIFEST.json

The manifest (written by formats/tests/python_interop.rs) lists files with the values they
must hold. Checks, for every file: `torch.load(weights_only=True)` (or safetensors) returns
exactly those values; for embeddings: diffusers' `load_textual_inversion` adds the expected
tokens to a tiny CLIP tokenizer/text encoder with the expected rows. Exits non-zero on any
mismatch.
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def describe(v):
    if isinstance(v, torch.Tensor):
        return {"tensor": str(v.dtype).replace("torch.", ""), "shape": list(v.shape),
                "values": v.detach().double().flatten().tolist()}
    if isinstance(v, dict):
        return {"dict": [[k, describe(x)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return {"list" if isinstance(v, list) else "tuple": [describe(x) for x in v]}
    if isinstance(v, bytes):
        return {"bytes": list(v)}
    return {"value": v}


def tiny_text_model(width):
    """A CLIP tokenizer over the 512 byte-level symbols and a random text encoder `width` wide."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    # Byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the others are
    # shifted past 255 (the GPT-2/CLIP convention).
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [b for b in range(256) if b not in keep]
    symbols = [chr(b) for b in keep] + [chr(256 + i) for i in range(len(shifted))]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                         num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
    return tok, CLIPTextModel(cfg)


def main():
    manifest = json.loads(Path(sys.argv[1]).read_text())
    failures = []
    for entry in manifest["files"]:
        path = entry["path"]
        obj = load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
        if describe(obj) != entry["expect"]:
            failures.append(f"{path}: torch.load gave {describe(obj)}")
        else:
            print(f"ok  torch {'safetensors' if path.endswith('.safetensors') else 'torch.load(weights_only=True)'}: {path}")

    from diffusers.loaders import TextualInversionLoaderMixin

    class Holder(TextualInversionLoaderMixin):
        hf_device_map = None
        components = {}

    for entry in manifest["embeddings"]:
        tok, enc = tiny_text_model(entry["width"])
        h = Holder()
        before = len(tok)
        kw = {"token": entry["token_arg"]} if entry.get("token_arg") else {}
        h.load_textual_inversion(entry["path"], tokenizer=tok, text_encoder=enc, **kw)
        rows = enc.get_input_embeddings().weight[before:].detach()
        added = [tok.convert_ids_to_tokens(i) for i in range(before, len(tok))]
        want = torch.tensor(entry["rows"], dtype=torch.float32)
        if added != entry["tokens"] or rows.shape != want.shape or not torch.equal(rows, want):
            failures.append(f"{entry['path']}: diffusers added {added} with rows {rows.tolist()}")
        else:
            print(f"ok  diffusers load_textual_inversion: {entry['path']} -> {added}")
    for f in failures:
        print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
