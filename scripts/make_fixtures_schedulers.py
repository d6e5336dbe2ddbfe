#!/usr/bin/env python3
"""Writes fixtures/schedulers/: full denoising loops of diffusers' schedulers, for tests/schedulers.rs.

Run: `$(scripts/python-env.sh) scripts/make_fixtures_schedulers.py` (pinned torch 2.11.0,
diffusers 0.42.1). Deterministic: inputs come from torch.Generator().manual_seed(...), and
re-running rewrites the same bytes.

Each case builds a scheduler the way a pipeline does (`Class.from_config(source.config)`, where
`source` was loaded from a scheduler_config.json like `from_pretrained(..., subfolder="scheduler")`
does, so that an override behaves like the training script's validation), then runs:

    scheduler.set_timesteps(n)
    latents = init * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)
        model_output = 0.3 * x + (0.1 * float(t) / 1000) * fixed      # the fake model
        latents = scheduler.step(model_output, t, latents, [generator]).prev_sample

with `generator = torch.Generator().manual_seed(SEED)` (created before the loop) for schedulers
that draw noise. The Rust test reproduces the fake model exactly (same f32 operations).

Written:
  inputs.safetensors   init [1,4,8,8], fixed [1,4,8,8]; DDPM: original [6,4,8,8], noise, timesteps
  loops.safetensors    "<case>/steps" [steps, 1,4,8,8]: latents after every step (the last is the
                       final latents); "<case>/timesteps" (f64, exact)
  ddpm.safetensors     "<config>/noisy", "<config>/velocity", "<config>/alphas_cumprod", "<config>/betas"
  expected.json        configs (the scheduler_config.json texts), cases: class, config, steps,
                       init_noise_sigma, timesteps dtype, seed
"""
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "schedulers"
SEED = 1234
CLASSES = {
    "PNDMScheduler": PNDMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
}
ALL = list(CLASSES)

# The scheduler_config.json texts. "sd15" is stable-diffusion-v1-5's file as published (diffusers
# 0.6.0: no timestep_spacing or prediction_type, so an override uses the new class's defaults).
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
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
SD2 = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
CONFIGS = {
    "sd15": SD15,
    "sd15-karras": {**SD15, "use_karras_sigmas": True},
    "sd2-v-leading": {**SD2, "timestep_spacing": "leading"},
    "sd2-v-trailing": {**SD2, "timestep_spacing": "trailing"},
    "sd2-v-linspace": {**SD2, "timestep_spacing": "linspace"},
    # Class defaults otherwise (DDIM: clip_sample and set_alpha_to_one true).
    "cosine": {"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2"},
    "linear": {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "zsnr": {**SD2, "timestep_spacing": "trailing", "rescale_betas_zero_snr": True},
    "pndm-prk": {**SD15, "skip_prk_steps": False},
    "dpm-heun": {**SD15, "_class_name": "DPMSolverMultistepScheduler", "solver_type": "heun"},
    "dpm-order3": {**SD15, "_class_name": "DPMSolverMultistepScheduler", "solver_order": 3},
    "dpm-sde": {**SD15, "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"},
    "dpm-sde-karras-v": {**SD2, "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    "dpm-sigma-min": {**SD15, "_class_name": "DPMSolverMultistepScheduler", "final_sigmas_type": "sigma_min", "lower_order_final": False},
    "dpm-euler-final": {**SD2, "_class_name": "DPMSolverMultistepScheduler", "euler_at_final": True, "timestep_spacing": "trailing"},
    "dpm-clipped": {**SD15, "_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -5.1, "timestep_spacing": "linspace"},
    "euler-sigma-min": {**SD15, "_class_name": "EulerDiscreteScheduler", "final_sigmas_type": "sigma_min"},
    "euler-log-linear": {**SD15, "_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"},
    "euler-continuous-v": {**SD2, "_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"},
    "euler-karras-range": {**SD15, "_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
}
# (config, classes) pairs that run; every pair runs 20, 7 and 1 steps (PNDM's Runge-Kutta start,
# its default without skip_prk_steps, needs at least 4: 20, 7 and 4).
PLAN = [
    ("sd15", ALL),
    ("sd15-karras", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"]),
    ("sd2-v-leading", ALL),
    ("sd2-v-trailing", ALL),
    ("sd2-v-linspace", ALL),
    ("cosine", ALL),
    ("linear", ALL),
    ("zsnr", ["DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"]),
    ("pndm-prk", ["PNDMScheduler"]),
    ("dpm-heun", ["DPMSolverMultistepScheduler"]),
    ("dpm-order3", ["DPMSolverMultistepScheduler"]),
    ("dpm-sde", ["DPMSolverMultistepScheduler"]),
    ("dpm-sde-karras-v", ["DPMSolverMultistepScheduler"]),
    ("dpm-sigma-min", ["DPMSolverMultistepScheduler"]),
    ("dpm-euler-final", ["DPMSolverMultistepScheduler"]),
    ("dpm-clipped", ["DPMSolverMultistepScheduler"]),
    ("euler-sigma-min", ["EulerDiscreteScheduler"]),
    ("euler-log-linear", ["EulerDiscreteScheduler"]),
    ("euler-continuous-v", ["EulerDiscreteScheduler"]),
    ("euler-karras-range", ["EulerDiscreteScheduler"]),
]
STEPS = [20, 7, 1]
SHORT = {
    "PNDMScheduler": "pndm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "DPMSolverMultistepScheduler": "dpm",
}


def from_json(cls, config):
    """`cls.from_pretrained(model, subfolder="scheduler")` for a scheduler_config.json holding `config`."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "scheduler").mkdir()
        (Path(d) / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
        return cls.from_pretrained(d, subfolder="scheduler")


def draws_noise(cls, sched):
    if cls is EulerAncestralDiscreteScheduler:
        return True
    return cls is DPMSolverMultistepScheduler and sched.config.algorithm_type.startswith("sde")


def run_loop(sched, cls, n, init, fixed):
    sched.set_timesteps(n)
    timesteps = sched.timesteps.clone()
    sigma = sched.init_noise_sigma
    sigma = float(sigma)
    latents = init * sched.init_noise_sigma
    kwargs = {"generator": torch.Generator().manual_seed(SEED)} if draws_noise(cls, sched) else {}
    steps = []
    for t in sched.timesteps:
        x = sched.scale_model_input(latents, t)
        model_output = 0.3 * x + (0.1 * float(t) / 1000) * fixed
        latents = sched.step(model_output, t, latents, **kwargs).prev_sample
        steps.append(latents)
    return timesteps, sigma, torch.stack(steps)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    init = torch.randn((1, 4, 8, 8), generator=g)
    fixed = torch.randn((1, 4, 8, 8), generator=g)
    original = torch.randn((6, 4, 8, 8), generator=g)
    noise = torch.randn((6, 4, 8, 8), generator=g)
    ddpm_t = torch.tensor([0, 1, 250, 500, 998, 999], dtype=torch.int64)
    save_file(
        {"init": init, "fixed": fixed, "original": original, "noise": noise, "timesteps": ddpm_t},
        OUT / "inputs.safetensors",
    )

    loops, cases = {}, {}
    for config_name, classes in PLAN:
        config = CONFIGS[config_name]
        source = from_json(CLASSES[config["_class_name"]], config)
        for class_name in classes:
            cls = CLASSES[class_name]
            sched = cls.from_config(source.config)
            prk = cls is PNDMScheduler and not sched.config.skip_prk_steps
            for n in STEPS if not prk else [20, 7, 4]:
                name = f"{SHORT[class_name]}/{config_name}/{n}"
                timesteps, sigma, steps = run_loop(sched, cls, n, init, fixed)
                assert torch.isfinite(steps).all(), name
                loops[f"{name}/steps"] = steps.contiguous()
                loops[f"{name}/timesteps"] = timesteps.to(torch.float64)
                cases[name] = {
                    "class": class_name,
                    "config": config_name,
                    "steps": n,
                    "init_noise_sigma": sigma,
                    "timesteps_dtype": str(timesteps.dtype).removeprefix("torch."),
                    "seed": SEED if draws_noise(cls, sched) else None,
                }
    save_file(loops, OUT / "loops.safetensors")

    ddpm = {}
    ddpm_configs = ["sd15", "sd2-v-leading", "cosine", "linear", "zsnr"]
    for config_name in ddpm_configs:
        # The training script: DDPMScheduler.from_pretrained(model, subfolder="scheduler"), which
        # reads SD 1.5's PNDM json like this.
        sched = from_json(DDPMScheduler, CONFIGS[config_name])
        ddpm[f"{config_name}/noisy"] = sched.add_noise(original, noise, ddpm_t)
        ddpm[f"{config_name}/velocity"] = sched.get_velocity(original, noise, ddpm_t)
        ddpm[f"{config_name}/alphas_cumprod"] = sched.alphas_cumprod.clone()
        ddpm[f"{config_name}/betas"] = sched.betas.clone()
    save_file(ddpm, OUT / "ddpm.safetensors")

    expected = {
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "seed": SEED,
        "configs": CONFIGS,
        "cases": cases,
        "ddpm_configs": ddpm_configs,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(cases)} loops, {len(ddpm_configs)} DDPM configs to {OUT} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
