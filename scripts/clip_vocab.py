"""The real CLIP (SD 1.x/2.x text encoder) BPE vocabulary, rebuilt offline.

The Hugging Face Hub is not needed: the merges ship in the PyPI wheel of open_clip_torch
(`open_clip/bpe_simple_vocab_16e6.txt.gz`), and the vocabulary order is the one OpenAI's
`SimpleTokenizer` (and so every `openai/clip-vit-*` / SD `tokenizer/` folder) uses:

  * the 256 byte-level characters, in GPT-2 `bytes_to_unicode` order,
  * the same 256 with `</w>` appended,
  * the first 48894 merges, each joined into one token,
  * `<|startoftext|>` (49406) and `<|endoftext|>` (49407).

Importing this module has no side effects. `write_sd_tokenizer(dir)` writes a folder laid out
like `stable-diffusion-v1-5/tokenizer` (vocab.json, merges.txt, special_tokens_map.json,
tokenizer_config.json); pass `pad_token="!"` for the SD 2.x variant.

    import sys; sys.path.insert(0, "scripts")
    from clip_vocab import write_sd_tokenizer
    write_sd_tokenizer("/tmp/tiny-sd/tokenizer")
"""
import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

OPEN_CLIP_VERSION = "3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48894: what fits in CLIP's 49408-token vocabulary
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table, as an ordered list of 256 chars.

    Bytes that are printable Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves, in byte
    order; the other 68 bytes map to chr(256 + n), n counting them in byte order, after them.
    """
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "textual-inversion" / "open_clip"


def _wheel_path():
    """The open_clip_torch wheel: $TI_OPEN_CLIP_WHEEL, else the cache (pip-downloaded once)."""
    env = os.environ.get("TI_OPEN_CLIP_WHEEL")
    if env:
        return Path(env)
    cache = _cache_dir()
    name = f"open_clip_torch-{OPEN_CLIP_VERSION}-py3-none-any.whl"
    wheel = cache / name
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache),
             f"open_clip_torch=={OPEN_CLIP_VERSION}"],
            check=True,
        )
    if not wheel.is_file():
        raise FileNotFoundError(f"pip did not leave {wheel}")
    return wheel


def clip_merges():
    """The 48894 merges CLIP uses, as (left, right) pairs, in rank order."""
    with zipfile.ZipFile(_wheel_path()) as z:
        text = gzip.decompress(z.read(BPE_MEMBER)).decode("utf-8")
    lines = text.split("\n")[1 : NUM_MERGES + 1]  # line 0 is the (gzip-mangled) version header
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"unexpected contents of {BPE_MEMBER}")
    return merges


def clip_vocab(merges=None):
    """token -> id for the 49408-token CLIP vocabulary."""
    merges = clip_merges() if merges is None else merges
    chars = bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(vocab) != 49408:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} distinct tokens, expected 49408")
    return vocab


def _added(content):
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_sd_tokenizer(dir, pad_token=EOS):
    """Writes an SD-style CLIP tokenizer folder (as in stable-diffusion-v1-5/tokenizer) to `dir`.

    pad_token: "<|endoftext|>" for SD 1.x (the default), "!" (id 0) for SD 2.x.
    Returns the folder as a Path. Deterministic: same bytes every time.
    """
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    vocab = clip_vocab(merges)
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the CLIP vocabulary")
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))
    with open(out / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    special = {
        "bos_token": _added(BOS),
        "eos_token": _added(EOS),
        "pad_token": pad_token,
        "unk_token": _added(EOS),
    }
    with open(out / "special_tokens_map.json", "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
        f.write("\n")
    config = {
        "add_prefix_space": False,
        "bos_token": {"__type": "AddedToken", **_added(BOS)},
        "do_lower_case": True,
        "eos_token": {"__type": "AddedToken", **_added(EOS)},
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": pad_token,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": {"__type": "AddedToken", **_added(EOS)},
    }
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return out


if __name__ == "__main__":
    print(write_sd_tokenizer(sys.argv[1] if len(sys.argv) > 1 else "tokenizer"))
