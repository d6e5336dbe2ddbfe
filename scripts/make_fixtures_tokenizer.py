#!/usr/bin/env python3
"""Writes fixtures/tokenizer/: CLIP tokenizer folders and the ids transformers produces for them.

Run: `$(scripts/python-env.sh) scripts/make_fixtures_tokenizer.py` (pinned transformers 5.23.0).
Deterministic: the prompts are fixed or drawn from random.Random(0); re-running rewrites the same
bytes.

Written:
  sd15/            vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json, laid out
                   like stable-diffusion-v1-5/tokenizer (scripts/clip_vocab.py).
  sd2/             only the two config files of an SD 2.x tokenizer (pad "!", id 0); the tests and
                   this script put them over a copy of sd15/'s vocab.json and merges.txt.
  legacy/          config files in the layout transformers 4.x saved after add_tokens (added_tokens.json,
                   tokenizer_config.json with added_tokens_decoder): overlays for sd15/ as well.
  legacy_old/      added_tokens.json only (transformers < 4.34): overlay for sd15/.
  json.zip         json/ and json_added/: what transformers 5 `save_pretrained` writes (tokenizer.json
                   + tokenizer_config.json) for sd15, and for sd15 after add_tokens. Zipped, because
                   the pretty-printed tokenizer.json is 3.6 MB; the Rust tests unzip it to a tempdir.
  expected.json    for every case: len(tokenizer), special ids, the ids of each placeholder, and
                   for every prompt `tokenizer(p, padding="max_length", truncation=True,
                   max_length=tokenizer.model_max_length).input_ids` (as diffusers'
                   textual_inversion.py calls it), stored as the ids before padding ("ids") plus the
                   count of pad ids after them ("pad"); `tokenizer(p).input_ids` where that is
                   longer than model_max_length ("full"); and `tokenizer.tokenize(p)` ("tokens")
                   for sd15_added, sd2 and json_added.
"""
import json
import random
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from clip_vocab import BOS, EOS, write_sd_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()  # the "longer than 77" warnings are expected here

OUT = HERE.parent / "fixtures" / "tokenizer"
PLACEHOLDERS = ["<cat-toy>", "<cat-toy>_1", "<cat-toy>_2", "my token", "sks", "sks1", "<MyStyle>", "<café>"]

OBJECT_TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}", "a rendering in the style of {}",
    "a cropped painting in the style of {}", "the painting in the style of {}",
    "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}",
    "a cool painting in the style of {}", "a close-up painting in the style of {}",
    "a bright painting in the style of {}", "a cropped painting in the style of {}",
    "a good painting in the style of {}", "a close-up painting in the style of {}",
    "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
]

HANDWRITTEN = [
    "", " ", "   ", "\n", "\t\t", "a", "A", "cat", "a photo of a cat", "A PHOTO OF A CAT",
    "A Photo Of A Cat", "CamelCaseWordsHere", "iPhone eBay McDonald", "x" * 40, "ab" * 30,
    # punctuation
    "hello, world!", "hello!!!", "wow!!", "!", "!!!", "(!)", "a!b!c", "what?!", "...", "…",
    "a.b.c", "end.", "semi;colon:colon", "quote \"double\" and 'single'", "«guillemets»",
    "(masterpiece:1.2), best quality, ((ultra-detailed)), [[low quality]]",
    "a_b-c.d/e\\f|g", "#hashtag @user $100 50% 3*4=12 a&b ~tilde^caret `tick`",
    "https://example.com/path?q=1&r=2", "someone@example.com", "<html><body>x</body></html>",
    "{curly} [square] <angle>", "--no-cap, --ar 16:9", "😀!", "a -- b --- c",
    # numbers
    "1234567890", "3.14159", "1,000,000", "2nd 3rd 4th 21st", "1girl, 2boys", "x2 x10 4k 8k",
    "100%", "0.5x", "1980s", "1920x1080", "v1.5 v2.1", "-42", "+7", "½ ¼ ²³", "١٢٣ ٤٥٦",
    # apostrophes and contractions
    "it's", "don't", "they're", "I've", "I'm", "we'll", "he'd", "IT'S DON'T", "it’s curly",
    "rock 'n' roll", "''s", "'s", "'", "the cat's toy", "o'clock", "l'amour", "y'all'd've",
    # whitespace
    "  leading spaces", "trailing spaces   ", "a\n\nb", "a\tb", "a \t \n b", "a\r\nb",
    "a\u00a0b", "a\u3000b", "a\u2003b", "multiple     spaces     here", "\n\na photo\n\n",
    "a\u200bb", "line1\nline2\nline3",
    # unicode
    "café", "cafe\u0301", "naïve résumé", "Ångström", "Straße STRASSE", "İstanbul", "ΣΑΣ σας",
    "Ελληνικά", "Русский текст", "日本語のテキスト", "中文提示词，一只猫", "한국어 고양이",
    "ไทย", "עברית", "العربية", "हिन्दी", "emoji 🐱🐶", "👩‍👩‍👧‍👦 family", "🇯🇵 flag", "❤️ heart",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "ﬁligature", "Ⅻ roman", "math 𝔸𝔹ℂ", "\u0000nul", "\ufeffbom",
    "tab\u0009and\u000bvt\u000cff", "x\u0301\u0302", "Ǆ ǅ ǆ", "ß", "ﬀ",
    # special tokens in text
    "<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "<|StartOfText|> a", "a<|endoftext|>b",
    "<|endoftext|><|endoftext|>", "a photo <|endoftext|> of", "<|endoftext|",
    # placeholders, glued and mangled
    "<cat-toy>", "<cat-toy>,", "(<cat-toy>:1.2)", "[<cat-toy>]", "<cat-toy><cat-toy>",
    "<cat-toy>_1<cat-toy>_2", "x<cat-toy>y", "<CAT-TOY>", "<Cat-Toy> toy", "<cat-toy>_3",
    "<cat-toy>_10", "<cat-toy>_", "<cat-toy >", "< cat-toy>", "<cat-toy> <cat-toy>_1 <cat-toy>_2",
    "a photo of <cat-toy>'s toy", "<cat-toy>!!!", "my token", "my   token", "MY TOKEN", "my\ttoken",
    "mytoken", "my tokens", "sks", "sks1", "sks12", "asks", "asks1", "Sks1 SKS", "1sks",
    "<MyStyle>", "<mystyle>", "<MYSTYLE>", "<café>", "<cafe\u0301>", "<CAFÉ>",
    "a <cat-toy> in the style of <MyStyle>, by sks1, my token",
]


def long_prompts():
    words = "a highly detailed photo of a cute cat toy sitting on a wooden table next to a window".split()
    out = [" ".join(words * k) for k in (5, 8)]
    # content lengths around the 75-token boundary (75 + BOS + EOS = 77)
    for n in (74, 75, 76, 77, 78, 120):
        out.append(" ".join(["cat"] * n))
    out.append(", ".join(["masterpiece", "best quality", "(<cat-toy>:1.3)"] * 20))
    out.append("<cat-toy> " * 80)
    out.append("my token " * 40)
    out.append("😀" * 100)
    return out


def random_prompts(rng, n):
    vocab = ("a the photo painting of in style cat dog toy red blue green big small cute "
             "<cat-toy> <cat-toy>_1 <cat-toy>_2 sks1 <MyStyle> my token 4k hdr , . ! ? ( ) : 1.2 "
             "it's don't café 日本 🐱 \n \t").split(" ")
    out = []
    for _ in range(n):
        k = rng.randint(1, 30)
        sep = rng.choice([" ", " ", " ", "", ", ", "  "])
        out.append(sep.join(rng.choice(vocab) for _ in range(k)))
    return out


def all_prompts():
    prompts = list(HANDWRITTEN)
    prompts += [t.format("<cat-toy>") for t in OBJECT_TEMPLATES]
    prompts += [t.format("<MyStyle>") for t in STYLE_TEMPLATES]
    multi = "<cat-toy> <cat-toy>_1 <cat-toy>_2"  # textual_inversion.py with --num_vectors 3
    prompts += [t.format(multi) for t in OBJECT_TEMPLATES[:10] + STYLE_TEMPLATES[:5]]
    prompts += [t.format("sks1") for t in OBJECT_TEMPLATES[:5]]
    prompts += long_prompts()
    prompts += random_prompts(random.Random(0), 40)
    seen, unique = set(), []
    for p in prompts:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def assemble(dst, overlay=None):
    """sd15's vocab.json and merges.txt plus an overlay folder's config files (or sd15's)."""
    dst = Path(dst)
    dst.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(OUT / "sd15" / name, dst / name)
    src = OUT / (overlay or "sd15")
    for f in sorted(src.iterdir()):
        if f.name not in ("vocab.json", "merges.txt"):
            shutil.copy(f, dst / f.name)
    return dst


def record(tok, prompts, with_tokens):
    """What the Rust tests compare against, for one loaded tokenizer."""
    m = tok.model_max_length
    case = {
        "len": len(tok),
        "model_max_length": m,
        "pad_id": tok.pad_token_id,
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "added": {t: tok.convert_tokens_to_ids(t) for t in PLACEHOLDERS if t in tok.get_added_vocab()},
        "ids": [],
        "pad": [],
        "full": {},
    }
    for i, p in enumerate(prompts):
        enc = tok(p, padding="max_length", truncation=True, max_length=m)
        ids, mask = enc.input_ids, enc.attention_mask
        n = sum(mask)
        assert len(ids) == m and mask == [1] * n + [0] * (m - n), p
        assert ids[n:] == [tok.pad_token_id] * (m - n), p
        case["ids"].append(ids[:n])
        case["pad"].append(m - n)
        full = tok(p).input_ids
        if len(full) > m:
            assert full[: m - 1] + [tok.eos_token_id] == ids, p
            case["full"][str(i)] = full
        else:
            assert full == ids[:n], p
    if with_tokens:
        case["tokens"] = [tok.tokenize(p) for p in prompts]
    return case


def deterministic_zip(path, root, folders):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for folder in folders:
            for f in sorted((root / folder).iterdir()):
                info = zipfile.ZipInfo(f"{folder}/{f.name}", date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                z.writestr(info, f.read_bytes(), compresslevel=9)


def write_overlays():
    """The small config folders that go over sd15/'s vocab and merges."""
    sd15_map = json.loads((OUT / "sd15" / "special_tokens_map.json").read_text())
    sd15_cfg = json.loads((OUT / "sd15" / "tokenizer_config.json").read_text())

    def dump(folder, name, obj):
        (OUT / folder).mkdir(exist_ok=True)
        (OUT / folder / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # SD 2.x: identical except the pad token.
    dump("sd2", "special_tokens_map.json", {**sd15_map, "pad_token": "!"})
    dump("sd2", "tokenizer_config.json", {**sd15_cfg, "pad_token": "!"})

    base = len(json.loads((OUT / "sd15" / "vocab.json").read_text(encoding="utf-8")))
    added = {t: base + i for i, t in enumerate(PLACEHOLDERS)}

    def tok(content, normalized, special):
        return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
                "single_word": False, "special": special}

    # transformers 4.3x-4.5x after add_tokens + save_pretrained (a saved textual-inversion pipeline).
    decoder = {"49406": tok(BOS, True, True), "49407": tok(EOS, False, True)}
    decoder.update({str(i): tok(t, True, False) for t, i in added.items()})
    dump("legacy", "added_tokens.json", added)
    dump("legacy", "special_tokens_map.json", {
        "bos_token": {k: v for k, v in tok(BOS, True, True).items() if k != "special"},
        "eos_token": {k: v for k, v in tok(EOS, True, True).items() if k != "special"},
        "pad_token": EOS,
        "unk_token": {k: v for k, v in tok(EOS, True, True).items() if k != "special"},
    })
    dump("legacy", "tokenizer_config.json", {
        "add_prefix_space": False, "added_tokens_decoder": decoder, "bos_token": BOS,
        "clean_up_tokenization_spaces": True, "do_lower_case": True, "eos_token": EOS,
        "errors": "replace", "model_max_length": 77, "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer", "unk_token": EOS,
    })
    # transformers < 4.34: added_tokens.json is the only record of the placeholders.
    dump("legacy_old", "added_tokens.json", added)
    shutil.copy(OUT / "sd15" / "special_tokens_map.json", OUT / "legacy_old" / "special_tokens_map.json")
    shutil.copy(OUT / "sd15" / "tokenizer_config.json", OUT / "legacy_old" / "tokenizer_config.json")


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    write_sd_tokenizer(OUT / "sd15")
    write_overlays()
    prompts = all_prompts()
    assert len(prompts) >= 250, len(prompts)

    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def load(folder):
            return CLIPTokenizer.from_pretrained(str(folder))

        def with_placeholders(t):
            n = t.add_tokens(PLACEHOLDERS)
            assert n == len(PLACEHOLDERS), "a placeholder is already in the vocabulary"
            return t

        # vocab.json + merges.txt route
        cases["sd15"] = {"folder": "sd15", **record(load(OUT / "sd15"), prompts, False)}
        cases["sd15_added"] = {"folder": "sd15", "add_tokens": PLACEHOLDERS,
                               **record(with_placeholders(load(OUT / "sd15")), prompts, True)}
        sd2 = assemble(tmp / "sd2", "sd2")
        cases["sd2"] = {"folder": "sd15", "overlay": "sd2", **record(load(sd2), prompts, True)}
        cases["sd2_added"] = {"folder": "sd15", "overlay": "sd2", "add_tokens": PLACEHOLDERS,
                              **record(with_placeholders(load(sd2)), prompts, False)}
        for overlay in ("legacy", "legacy_old"):
            folder = assemble(tmp / overlay, overlay)
            cases[overlay] = {"folder": "sd15", "overlay": overlay, **record(load(folder), prompts, False)}

        # tokenizer.json route: what transformers 5 saves, loaded back as a pipeline would.
        saved = tmp / "saved"
        load(OUT / "sd15").save_pretrained(str(saved / "json"))
        with_placeholders(load(OUT / "sd15")).save_pretrained(str(saved / "json_added"))
        for name in ("json", "json_added"):
            assert sorted(f.name for f in (saved / name).iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
        deterministic_zip(OUT / "json.zip", saved, ["json", "json_added"])
        cases["json"] = {"folder": "json", "zip": "json.zip", **record(load(saved / "json"), prompts, False)}
        cases["json_added"] = {"folder": "json_added", "zip": "json.zip",
                               **record(load(saved / "json_added"), prompts, True)}

    expected = {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "call": 'tokenizer(p, padding="max_length", truncation=True, max_length=tokenizer.model_max_length).input_ids',
        "placeholders": PLACEHOLDERS,
        "prompts": prompts,
        "cases": cases,
    }
    with open(OUT / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(prompts)} prompts, {len(cases)} cases, {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
