#!/usr/bin/env python3
"""The Python side of bench-single-file.sh: real-shaped single-file checkpoints and diffusers'
`from_single_file` on them.

  make TYPE OUT     random weights (torch.manual_seed(0), float16) for the bundled configs of TYPE
                    (assets/single-file/TYPE: v1, v2, xl_base) saved as the diffusers folder OUT/
                    and as OUT.safetensors in the original layout (make_fixtures_single_file.py's
                    mappings, which the fixture script proves diffusers reads back exactly)
  run TYPE FILE CONFIG SIZE STEPS OUT.safetensors
                    StableDiffusion(XL)Pipeline.from_single_file(FILE, config=CONFIG) in float32,
                    one image ("a photo of a cat", seed 0): prints {load_s, generate_s,
                    peak_rss_mb, threads} as JSON and saves the uint8 image
"""
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "fixtures"))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(kind, out):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    import make_fixtures_single_file as m

    assets = ROOT / "assets" / "single-file" / kind
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(assets, tmp)
    vocab = ROOT / "fixtures" / "tiny-sd" / "tokenizer"
    for tok in ["tokenizer", "tokenizer_2"]:
        if (tmp / tok).is_dir():
            for f in ["vocab.json", "merges.txt"]:
                shutil.copyfile(vocab / f, tmp / tok / f)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float16)  # SDXL's UNet in float32 alone is 10 GB
    ldm = {}
    for name in ["unet", "vae", "text_encoder", "text_encoder_2"]:
        cfg_dir = tmp / name
        if not cfg_dir.is_dir():
            continue
        cfg = json.loads((cfg_dir / "config.json").read_text())
        if name == "unet":
            model = UNet2DConditionModel.from_config(cfg)
            ldm.update(m.map_unet(model.state_dict(), model.config))
        elif name == "vae":
            model = AutoencoderKL.from_config(cfg)
            ldm.update(m.map_vae(model.state_dict(), model.config))
        else:
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            model = cls(CLIPTextConfig.from_pretrained(cfg_dir))
            sd = model.state_dict()
            if kind == "v2":
                ldm.update(m.map_open_clip(sd, "cond_stage_model.model.", torch.zeros(cfg["hidden_size"], cfg["hidden_size"])))
            elif name == "text_encoder_2":
                inner = {k[len("text_model."):]: v for k, v in sd.items() if k.startswith("text_model.")}
                ldm.update(m.map_open_clip(inner, "conditioner.embedders.1.model.", sd["text_projection.weight"].T))
            else:
                prefix = "cond_stage_model.transformer." if kind == "v1" else "conditioner.embedders.0.transformer."
                ldm.update(m.map_clip(model, prefix))
        model.save_pretrained(cfg_dir)
        del model
    ldm = {k: v.contiguous() for k, v in ldm.items()}
    save_file(ldm, str(out) + ".safetensors.tmp")
    Path(str(out) + ".safetensors.tmp").rename(str(out) + ".safetensors")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"{out}.safetensors: {len(ldm)} tensors")


def run(kind, file, config, size, steps, out):
    import numpy as np
    from safetensors.torch import save_file

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    torch.set_grad_enabled(False)
    cls = StableDiffusionXLPipeline if kind == "xl_base" else StableDiffusionPipeline
    extra = {} if kind == "xl_base" else dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    t = time.perf_counter()
    pipe = cls.from_single_file(file, config=config, torch_dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    image = pipe("a photo of a cat", height=int(size), width=int(size), num_inference_steps=int(steps),
                 generator=torch.Generator("cpu").manual_seed(0), output_type="pil").images
    generate_s = time.perf_counter() - t
    save_file({"image": torch.from_numpy(np.stack([np.asarray(i) for i in image])).contiguous()}, out)
    print(json.dumps({"load_s": load_s, "generate_s": generate_s, "peak_rss_mb": peak_rss_mb(),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    {"make": make, "run": run}[sys.argv[1]](*sys.argv[2:])
