#!/usr/bin/env python3
"""Where diffusers' generation time goes, per part: the Python side of examples/profile_generate.rs.
Times encode_prompt (cond + uncond), one guided UNet forward (batch 2) and the VAE decode, REPS
times each, fp32 on the CPU. usage: profile_generate.py MODEL_DIR SIZE [REPS]; prints JSON."""
import json
import resource
import sys
import time

import torch

model, size = sys.argv[1], int(sys.argv[2])
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
torch.set_grad_enabled(False)
from diffusers import DiffusionPipeline  # noqa: E402

t = time.perf_counter()
extra = {} if "text_encoder_2" in open(model + "/model_index.json").read() else dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, **extra)
load_s = time.perf_counter() - t
xl = hasattr(pipe, "text_encoder_2")


def usage():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime, u.ru_minflt


def timed(f):
    """Medians of wall seconds, CPU seconds and minor page faults per call."""
    wall, cpu, faults = [], [], []
    for _ in range(reps):
        c0, f0 = usage()
        t = time.perf_counter()
        f()
        wall.append(time.perf_counter() - t)
        c1, f1 = usage()
        cpu.append(c1 - c0)
        faults.append(f1 - f0)
    return [sorted(v)[len(v) // 2] for v in (wall, cpu, faults)]


def encode():
    return pipe.encode_prompt("a photo of a cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)


cond_s = timed(encode)
embeds = encode()
latent = size // pipe.vae_scale_factor
torch.manual_seed(0)
x = torch.randn(2, pipe.unet.config.in_channels, latent, latent)
kwargs = {}
if xl:
    pe, ne, pp, npool = embeds
    context = torch.cat([ne, pe])
    ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)
    kwargs["added_cond_kwargs"] = {"text_embeds": torch.cat([npool, pp]), "time_ids": ids}
else:
    context = torch.cat([embeds[1], embeds[0]])
t500 = torch.tensor(500.0)
unet_s = timed(lambda: pipe.unet(x, t500, encoder_hidden_states=context, return_dict=False, **kwargs))
vae_s = timed(lambda: pipe.vae.decode(x[:1], return_dict=False))
print(json.dumps({"side": "diffusers", "threads": torch.get_num_threads(), "load_s": load_s, "cond_s": cond_s,
                  "unet_s": unet_s, "vae_decode_s": vae_s}))
