#!/usr/bin/env python3
"""Makes the tiny random Stable Diffusion models and the reference outputs PyTorch computes.

Run with the pinned environment: `$(scripts/python-env.sh) scripts/make_fixtures_models.py`.

fixtures/tiny-sd/            a diffusers StableDiffusionPipeline folder (SD 1.x layout): the real
                             49,408-token CLIP tokenizer, a 32-wide CLIP text encoder, a 3-block
                             UNet (cross-attention in two blocks) and a 4-block VAE (8x
                             downsampling). Each model's weights are saved as .safetensors AND
                             .bin (diffusers/transformers `safe_serialization=False`).
fixtures/tiny-sd2-unet/      an SD 2.x-style UNet: linear projections, per-block heads,
                             upcast_attention, two transformer layers in a block.
fixtures/tiny-clip-gelu/     a CLIP text encoder with gelu and `text_model.`-prefixed keys, as
                             real checkpoints and transformers 4 store them.
fixtures/tiny-vae-legacy/    the tiny VAE with the legacy attention key names
                             (query/key/value/proj_attn) stored as 1x1 convolutions.
fixtures/model-refs/*.safetensors   inputs and outputs computed by diffusers/transformers in fp32.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_vocab import write_sd_tokenizer  # noqa: E402

from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
torch.set_grad_enabled(False)

# SD 1.5's scheduler_config.json (PNDM, as the pipeline ships it).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def tiny_unet(**kw):
    cfg = dict(
        sample_size=8,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    cfg.update(kw)
    return UNet2DConditionModel(**cfg)


def tiny_vae():
    return AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_clip(vocab_size=49408, act="quick_gelu"):
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=5,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act=act,
            bos_token_id=49406 if vocab_size == 49408 else 0,
            eos_token_id=49407 if vocab_size == 49408 else 2,
            pad_token_id=1,
        )
    )


def randomize(model, seed):
    """Default inits leave norms at 1/0 and some biases at 0; give every tensor values so a
    wrongly wired parameter cannot hide."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def save_bin_too(model, folder, name):
    """Adds .bin weights next to the .safetensors ones, as many Hub repos have both: the
    `state_dict()` OrderedDict that diffusers/transformers 4 wrote with torch.save (for the
    text encoder that keeps the `text_model.` prefix transformers 5 drops from safetensors)."""
    torch.save(model.state_dict(), folder / name)


def main():
    torch.manual_seed(0)
    for d in ["tiny-sd", "tiny-sd2-unet", "tiny-clip-gelu", "tiny-vae-legacy", "model-refs"]:
        shutil.rmtree(ROOT / d, ignore_errors=True)

    # --- the pipeline -------------------------------------------------------------------
    sd = ROOT / "tiny-sd"
    write_sd_tokenizer(sd / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(sd / "tokenizer")
    text_encoder = randomize(tiny_clip(), 1).eval()
    unet = randomize(tiny_unet(), 2).eval()
    vae = randomize(tiny_vae(), 3).eval()
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(sd)
    # save_pretrained rewrote the tokenizer folder (transformers 5 writes tokenizer.json only):
    # put back the SD 1.5 layout (vocab.json + merges.txt), which real models ship.
    shutil.rmtree(sd / "tokenizer")
    write_sd_tokenizer(sd / "tokenizer")
    save_bin_too(text_encoder, sd / "text_encoder", "pytorch_model.bin")
    save_bin_too(unet, sd / "unet", "diffusion_pytorch_model.bin")
    save_bin_too(vae, sd / "vae", "diffusion_pytorch_model.bin")

    refs = ROOT / "model-refs"
    refs.mkdir(parents=True)

    # --- text encoder ---------------------------------------------------------------------
    prompts = ["a photo of a cat", "A painting in the style of Monet, highly detailed!", ""]
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    out = text_encoder(ids, output_hidden_states=True)
    t = {"input_ids": ids, "last_hidden_state": out.last_hidden_state}
    for i, h in enumerate(out.hidden_states):
        t[f"hidden_states.{i}"] = h
    save_file({k: v.contiguous() for k, v in t.items()}, refs / "text_encoder.safetensors")

    # --- unet -------------------------------------------------------------------------------
    g = torch.Generator().manual_seed(10)
    t = {
        "sample": torch.randn(2, 4, 8, 8, generator=g),
        "timesteps": torch.tensor([10, 981]),
        "context": torch.randn(2, 77, 32, generator=g),
        # Odd latent sizes take the explicit upsample-size path.
        "odd_sample": torch.randn(1, 4, 9, 7, generator=g),
        "odd_timestep": torch.tensor(500),
    }
    t["out"] = unet(t["sample"], t["timesteps"], t["context"]).sample
    t["odd_out"] = unet(t["odd_sample"], t["odd_timestep"], t["context"][:1]).sample
    save_file({k: v.contiguous() for k, v in t.items()}, refs / "unet.safetensors")

    # --- vae --------------------------------------------------------------------------------
    g = torch.Generator().manual_seed(11)
    t = {"image": torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, "latents": torch.randn(1, 4, 8, 8, generator=g)}
    post = vae.encode(t["image"]).latent_dist
    t["mean"], t["std"], t["logvar"] = post.mean, post.std, post.logvar
    t["decoded"] = vae.decode(t["latents"]).sample
    save_file({k: v.contiguous() for k, v in t.items()}, refs / "vae.safetensors")

    # --- gradient of an MSE loss w.r.t. new embedding rows ------------------------------------
    tok2 = CLIPTokenizer.from_pretrained(sd / "tokenizer")
    te2 = CLIPTextModel.from_pretrained(sd / "text_encoder")
    new = ["<cat-toy>", "<cat-toy>_1"]
    tok2.add_tokens(new)
    new_ids = tok2.convert_tokens_to_ids(new)
    te2.resize_token_embeddings(len(tok2))
    g = torch.Generator().manual_seed(12)
    rows = torch.randn(2, 32, generator=g)
    emb = te2.get_input_embeddings().weight
    emb.data[new_ids] = rows
    ids = tok2(["a photo of <cat-toy> <cat-toy>_1", "<cat-toy>_1 in the style of <cat-toy>"], padding="max_length",
               max_length=77, truncation=True, return_tensors="pt").input_ids
    noisy = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([3, 700])
    with torch.enable_grad():
        emb.requires_grad_(True)
        hidden = te2(ids)[0]
        pred = unet(noisy, timesteps, hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="mean")
        loss.backward()
    t = {"new_ids": torch.tensor(new_ids), "rows": rows, "input_ids": ids, "noisy": noisy, "target": target,
         "timesteps": timesteps, "loss": loss.detach().reshape(1), "grad": emb.grad[new_ids].clone(),
         "old_rows_grad_norm": emb.grad[: new_ids[0]].norm().reshape(1)}
    save_file({k: v.contiguous() for k, v in t.items()}, refs / "grad.safetensors")

    # --- SD 2.x-style UNet ----------------------------------------------------------------------
    unet2 = randomize(tiny_unet(use_linear_projection=True, attention_head_dim=(2, 4, 4), upcast_attention=True,
                                transformer_layers_per_block=(2, 1, 1), cross_attention_dim=48), 4).eval()
    unet2.save_pretrained(ROOT / "tiny-sd2-unet")
    g = torch.Generator().manual_seed(13)
    t = {"sample": torch.randn(1, 4, 8, 8, generator=g), "timesteps": torch.tensor([250]),
         "context": torch.randn(1, 77, 48, generator=g)}
    t["out"] = unet2(t["sample"], t["timesteps"], t["context"]).sample
    save_file({k: v.contiguous() for k, v in t.items()}, refs / "unet_sd2.safetensors")

    # --- CLIP with gelu and text_model.-prefixed keys ----------------------------------------------
    clip2 = randomize(tiny_clip(vocab_size=1000, act="gelu"), 5).eval()
    d = ROOT / "tiny-clip-gelu"
    clip2.save_pretrained(d)
    sd_ = load_file(d / "model.safetensors")
    prefixed = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd_.items()}
    prefixed["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    save_file(prefixed, d / "model.safetensors", metadata={"format": "pt"})
    ids = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(14))
    out = clip2(ids, output_hidden_states=True)
    save_file({"input_ids": ids, "last_hidden_state": out.last_hidden_state.contiguous(),
               "penultimate": out.hidden_states[-2].contiguous()}, refs / "clip_gelu.safetensors")

    # --- VAE with legacy attention names as 1x1 convs ------------------------------------------------
    d = ROOT / "tiny-vae-legacy"
    d.mkdir()
    shutil.copy(sd / "vae" / "config.json", d / "config.json")
    legacy = {}
    rename = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for k, v in load_file(sd / "vae" / "diffusion_pytorch_model.safetensors").items():
        for new_name, old in rename.items():
            if f"attentions.0.{new_name}." in k:
                k = k.replace(f"attentions.0.{new_name}.", f"attentions.0.{old}.")
                if k.endswith("weight"):
                    v = v[:, :, None, None]
        legacy[k] = v.contiguous()
    save_file(legacy, d / "diffusion_pytorch_model.safetensors")

    meta = {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
            "transformers": __import__("transformers").__version__}
    (refs / "versions.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(f.stat().st_size for d in ["tiny-sd", "tiny-sd2-unet", "tiny-clip-gelu", "tiny-vae-legacy", "model-refs"]
                for f in (ROOT / d).rglob("*") if f.is_file())
    print(f"wrote model fixtures: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
