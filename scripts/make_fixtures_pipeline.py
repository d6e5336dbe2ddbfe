#!/usr/bin/env python3
"""Reference runs of diffusers' StableDiffusionPipeline on fixtures/tiny-sd, for `generate`.

Run with the pinned environment: `$(scripts/python-env.sh) scripts/make_fixtures_pipeline.py`.
Writes fixtures/pipeline/cases.json (settings of each case) and one safetensors file per case
with the initial latents (when fixed), the prompt embeddings, the final latents and the decoded
image (uint8, as `output_type="pil"` produces it).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline)

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
OUT = ROOT / "pipeline"
SCHEDULERS = {"pndm": PNDMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
              "euler-ancestral": EulerAncestralDiscreteScheduler, "dpm++2m": DPMSolverMultistepScheduler}
LONG = " ".join(["a very long prompt about a red cat sitting on a blue mat"] * 12)


def run(pipe, name, case):
    pipe.scheduler = SCHEDULERS[case["scheduler"]].from_config(pipe.scheduler.config)
    gen = torch.Generator("cpu").manual_seed(case["seed"])
    tensors = {}
    kw = dict(prompt=case["prompt"], negative_prompt=case.get("negative_prompt"), num_inference_steps=case["steps"],
              guidance_scale=case["guidance_scale"], num_images_per_prompt=case.get("num_images_per_prompt", 1),
              clip_skip=case.get("clip_skip"))
    if case.get("fixed_latents"):
        g = torch.Generator().manual_seed(1000)
        n = case.get("num_images_per_prompt", 1)
        tensors["initial_latents"] = torch.randn(n, 4, 8, 8, generator=g)
        kw["latents"] = tensors["initial_latents"].clone()
    pos, neg = pipe.encode_prompt(case["prompt"], "cpu", kw["num_images_per_prompt"], case["guidance_scale"] > 1,
                                  case.get("negative_prompt"), clip_skip=case.get("clip_skip"))
    tensors["prompt_embeds"] = pos
    if neg is not None:
        tensors["negative_prompt_embeds"] = neg
    latents = pipe(**kw, generator=gen, output_type="latent").images
    tensors["latents"] = latents
    gen = torch.Generator("cpu").manual_seed(case["seed"])
    image = pipe(**kw, generator=gen, output_type="pil").images
    tensors["image"] = torch.from_numpy(np.stack([np.asarray(im) for im in image])).contiguous()
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{name}.safetensors")
    case["file"] = f"{name}.safetensors"
    return case


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    torch.set_grad_enabled(False)
    pipe = StableDiffusionPipeline.from_pretrained(ROOT / "tiny-sd", safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    base = {"prompt": "a photo of a cat", "negative_prompt": None, "steps": 10, "guidance_scale": 7.5, "seed": 42}
    cases = {}
    for s in SCHEDULERS:
        cases[f"{s}-fixed"] = run(pipe, f"{s}-fixed", {**base, "scheduler": s, "fixed_latents": True})
    cases["pndm-seed"] = run(pipe, "pndm-seed", {**base, "scheduler": "pndm", "negative_prompt": "blurry, ugly"})
    cases["euler-ancestral-seed"] = run(pipe, "euler-ancestral-seed", {**base, "scheduler": "euler-ancestral", "seed": 7})
    cases["batch2"] = run(pipe, "batch2", {**base, "scheduler": "ddim", "num_images_per_prompt": 2, "steps": 5})
    # (clip_skip is not exercised here: diffusers 0.42.1's clip_skip path reads
    # `text_encoder.text_model`, which transformers 5's CLIPTextModel no longer has.)
    cases["no-cfg"] = run(pipe, "no-cfg", {**base, "scheduler": "euler", "guidance_scale": 1.0, "steps": 5})
    cases["long-prompt"] = run(pipe, "long-prompt", {**base, "scheduler": "ddim", "prompt": LONG, "steps": 3})
    # Embeddings: a 2-vector A1111 file (diffusers names it by its stored name, my-style) in the
    # prompt and a 4-vector kohya file in the negative prompt.
    pipe.load_textual_inversion(ROOT / "embeddings" / "a1111.pt")
    pipe.load_textual_inversion(ROOT / "embeddings" / "kohya.safetensors", token="kohya-tok")
    cases["embeddings"] = run(pipe, "embeddings", {**base, "scheduler": "dpm++2m", "prompt": "a photo of my-style, my-style",
                                                   "negative_prompt": "kohya-tok", "steps": 6,
                                                   "embeddings": ["embeddings/a1111.pt:my-style", "embeddings/kohya.safetensors:kohya-tok"]})
    meta = {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__}
    (OUT / "cases.json").write_text(json.dumps({"generated_with": meta, "cases": cases}, indent=1) + "\n")
    print(f"wrote {len(cases)} pipeline cases")


if __name__ == "__main__":
    main()
