#!/usr/bin/env python3
"""The PyTorch side of scripts/gpu/gpu_check.py (run with a python that has torch, diffusers,
transformers and accelerate).

  py_side.py make DIR          an SD 1.5-shaped model with random weights (diffusers/transformers
                               from SD 1.5's configs, as scripts/bench/bench_models.py makes it,
                               the tokenizer copied from fixtures/tiny-sd: the real vocabulary)
  py_side.py pipeline ARGS     StableDiffusionPipeline timed on one prompt: a warm-up image, then
                               the measured one; prints JSON (seconds per image, peak CUDA memory)
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make(d):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    from bench_models import CLIP, UNET, VAE

    d = Path(d)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    UNet2DConditionModel(**UNET).save_pretrained(tmp / "unet")
    AutoencoderKL(**VAE).save_pretrained(tmp / "vae")
    CLIPTextModel(CLIPTextConfig(**CLIP)).save_pretrained(tmp / "text_encoder")
    shutil.copytree(ROOT / "fixtures" / "tiny-sd" / "tokenizer", tmp / "tokenizer")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1, set_alpha_to_one=False).save_pretrained(tmp / "scheduler")
    shutil.copyfile(ROOT / "fixtures" / "tiny-sd" / "model_index.json", tmp / "model_index.json")
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)


def pipeline(a):
    import torch
    from diffusers import StableDiffusionPipeline

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    t = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=dtype, safety_checker=None).to(a.device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t
    cuda = a.device.startswith("cuda")

    def one():
        g = torch.Generator("cpu").manual_seed(0)
        t = time.perf_counter()
        pipe(a.prompt, num_inference_steps=a.steps, height=a.size, width=a.size, generator=g, output_type="np")
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    warm = one()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    measured = one()
    print(json.dumps({
        "load_s": load_s, "first_image_s": warm, "s_per_image": measured, "steps": a.steps,
        "cuda_max_memory_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "cuda_max_memory_reserved": torch.cuda.max_memory_reserved() if cuda else None,
        "torch": torch.__version__,
    }))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "make":
        return make(sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["pipeline"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--prompt", default="a photo of a cat")
    pipeline(ap.parse_args())


if __name__ == "__main__":
    main()
