#!/usr/bin/env python3
"""The PyTorch side of the model benchmark (scripts/bench/bench-models.sh).

  bench_models.py make DIR       writes an SD 1.5-shaped pipeline with random weights (fp32
                                 safetensors, SD 1.5's own configs; about 4.3 GB)
  bench_models.py run DIR        diffusers/transformers: load time and peak RSS per component,
                                 one UNet forward at 512 px (64x64 latents); prints JSON
"""
import json
import resource
import sys
import time
from pathlib import Path

import torch

UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(d):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
    from clip_vocab import write_sd_tokenizer

    torch.manual_seed(0)
    d = Path(d)
    UNet2DConditionModel(**UNET).save_pretrained(d / "unet")
    AutoencoderKL(**VAE).save_pretrained(d / "vae")
    CLIPTextModel(CLIPTextConfig(**CLIP)).save_pretrained(d / "text_encoder")
    write_sd_tokenizer(d / "tokenizer")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1, set_alpha_to_one=False).save_pretrained(d / "scheduler")
    # The same component list as the tiny fixture pipeline (no safety checker).
    index = Path(__file__).resolve().parents[2] / "fixtures" / "tiny-sd" / "model_index.json"
    (d / "model_index.json").write_text(index.read_text())
    (d / ".complete").write_text("ok")


def run(d):
    t0 = time.perf_counter()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    out = {"side": "diffusers", "threads": torch.get_num_threads(), "import_s": time.perf_counter() - t0}
    torch.set_grad_enabled(False)
    t = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet")
    out["load_unet_s"] = time.perf_counter() - t
    t = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(d, subfolder="vae")
    out["load_vae_s"] = time.perf_counter() - t
    t = time.perf_counter()
    te = CLIPTextModel.from_pretrained(d, subfolder="text_encoder")
    out["load_text_encoder_s"] = time.perf_counter() - t
    out["load_total_s"] = out["load_unet_s"] + out["load_vae_s"] + out["load_text_encoder_s"]
    out["peak_rss_after_load_mb"] = peak_rss_mb()
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 64, 64, generator=g)
    context = torch.randn(1, 77, 768, generator=g)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        result = unet(sample, torch.tensor([500]), context).sample
        times.append(time.perf_counter() - t)
    if len(sys.argv) > 3:  # inputs and output, for the Rust side to check it computes the same
        from safetensors.torch import save_file
        save_file({"sample": sample, "context": context, "out": result.contiguous()}, sys.argv[3])
    out["unet_forward_s"] = min(times)
    out["unet_forward_first_s"] = times[0]
    out["peak_rss_mb"] = peak_rss_mb()
    del vae, te
    print(json.dumps(out))


if __name__ == "__main__":
    {"make": make, "run": run}[sys.argv[1]](sys.argv[2])
