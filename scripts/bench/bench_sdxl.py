#!/usr/bin/env python3
"""The PyTorch side of scripts/bench/bench-sdxl.sh.

  bench_sdxl.py make DIR        an SDXL-shaped pipeline with random weights: SDXL base's configs
                                (UNet 2.6 B parameters, CLIP ViT-L and OpenCLIP ViT-bigG with its
                                projection, the SDXL VAE, Euler), stored as fp16 safetensors
                                (about 7 GB); the tokenizers are fixtures/tiny-sdxl's (the real
                                CLIP vocabulary)
  bench_sdxl.py generate DIR SIZE STEPS   StableDiffusionXLPipeline in fp32 on the CPU, one image
                                of SIZE px; prints JSON (load and generation seconds, peak RSS)
"""
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}
VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
              pad_token_id=1)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, bos_token_id=0, eos_token_id=2,
              pad_token_id=1)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(d):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    d = Path(d)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    for name, build in [("unet", lambda: UNet2DConditionModel(**UNET)), ("vae", lambda: AutoencoderKL(**VAE)),
                        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L))),
                        ("text_encoder_2", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)))]:
        m = build().to(torch.float16)
        m.save_pretrained(tmp / name)
        del m
        if name.startswith("text_encoder"):
            # Saved from float16 models the config says "dtype": "float16", and transformers 5's
            # from_pretrained (the training script passes no dtype) would then compute the text
            # encoders in float16 on the CPU (NaN losses from the second step here); the tiny
            # fixtures declare float32 for the same reason.
            cfg = json.loads((tmp / name / "config.json").read_text())
            cfg["dtype"] = "float32"
            (tmp / name / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for tok in ["tokenizer", "tokenizer_2"]:
        shutil.copytree(ROOT / "fixtures" / "tiny-sdxl" / tok, tmp / tok, symlinks=False)
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
                           steps_offset=1).save_pretrained(tmp / "scheduler")
    shutil.copyfile(ROOT / "fixtures" / "tiny-sdxl" / "model_index.json", tmp / "model_index.json")
    (tmp / ".complete").write_text("ok")
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)


def generate(d, size, steps):
    t0 = time.perf_counter()
    from diffusers import StableDiffusionXLPipeline
    import_s = time.perf_counter() - t0
    torch.set_grad_enabled(False)
    t = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_pretrained(d, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    pipe("a photo of a cat", num_inference_steps=int(steps), height=int(size), width=int(size),
         generator=torch.Generator("cpu").manual_seed(0), output_type="np")
    print(json.dumps({"import_s": import_s, "load_s": load_s, "generate_s": time.perf_counter() - t,
                      "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    {"make": lambda: make(sys.argv[2]), "generate": lambda: generate(*sys.argv[2:5])}[sys.argv[1]]()
