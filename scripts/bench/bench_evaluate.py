#!/usr/bin/env python3
"""The PyTorch side of the scoring benchmark (scripts/bench/bench-evaluate.sh).

  bench_evaluate.py make DIR IMAGES   writes a CLIPModel shaped as openai/clip-vit-large-patch14
                                      (ViT-L/14 at 224 px, 12-layer text tower, projection 768)
                                      with random weights (fp32 safetensors, about 1.7 GB), the
                                      PIL CLIPImageProcessor and the CLIP tokenizer; and 8 random
                                      512x512 PNGs in IMAGES/reference and IMAGES/images
  bench_evaluate.py run DIR IMAGES    transformers: load time, then the same scores as
                                      `textual-inversion evaluate` (PIL processor); prints JSON
"""
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

TEXT = "a photo of a cat"


def make(d, images):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel
    from PIL import Image
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
    from sections import FIXTURES
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="quick_gelu"),
        projection_dim=768,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(d)
    CLIPImageProcessorPil().save_pretrained(d)
    for f in (FIXTURES / "tiny-sd" / "tokenizer").iterdir():
        shutil.copy(f, Path(d) / f.name)
    rng = np.random.default_rng(0)
    for sub in ["reference", "images"]:
        (Path(images) / sub).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            px = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
            Image.fromarray(px).save(Path(images) / sub / f"{i}.png")


def run(d, images):
    t0 = time.perf_counter()
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer
    t1 = time.perf_counter()
    model = CLIPModel.from_pretrained(d).eval()
    processor = CLIPImageProcessorPil.from_pretrained(d)
    tokenizer = CLIPTokenizer.from_pretrained(d)
    t2 = time.perf_counter()

    def embed(folder):
        paths = sorted(Path(images, folder).iterdir())
        pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
        e = torch.cat([model.get_image_features(pixel_values=b).pooler_output for b in pixels.split(8)])
        return e / e.norm(dim=-1, keepdim=True)

    with torch.no_grad():
        refs, imgs = embed("reference"), embed("images")
        ids = tokenizer([TEXT], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
        t = model.get_text_features(input_ids=ids).pooler_output
        t = t / t.norm(dim=-1, keepdim=True)
    t3 = time.perf_counter()
    print(json.dumps(dict(threads=torch.get_num_threads(), import_s=t1 - t0, load_s=t2 - t1, score_s=t3 - t2,
                          image_similarity=(imgs @ refs.T).mean().item(), text_similarity=(imgs @ t.T).mean().item(),
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


if __name__ == "__main__":
    {"make": make, "run": run}[sys.argv[1]](sys.argv[2], sys.argv[3])
