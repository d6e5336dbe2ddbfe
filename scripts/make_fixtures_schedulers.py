#!/usr/bin/env python3
"""Writes fixtures/schedulers/: full denoising loops of diffusers' schedulers, for tests/schedulers.rs.

Run: `$(scripts/python-env.sh) scripts/make_fixtures_schedulers.py` (pinned torch 2.11.0,
diffusers 0.42.1). Deterministic: inputs come from torch.Generator().manual_seed(...), and
re-running rewrites the same bytes (on the same CPU: libtorch's CPU kernels differ in the last
bits between CPUs). `--only cross` writes only cross.json and cross.safetensors (see below),
reading inputs.safetensors.

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

Config handling across classes (cross.*): scheduler_config.json files as diffusers writes them
(`DDPMScheduler(...).save_config(dir)`, the "variance_type": "fixed_small" file of many fine-tuned
models; DPM-Solver's and Euler's), and values diffusers accepts and ignores (solver_order 4,
use_lu_lambdas with Karras sigmas, a learned variance_type with v-prediction,
use_dynamic_shifting, JSON nulls, trained_betas with an unknown beta_schedule), each loaded with
`SourceClass.from_pretrained` and built as every class with `Class.from_config(source.config)`:
  cross.json           configs: the scheduler_config.json *texts*; cases: class, config, steps,
                       seed; ddpm: configs DDPM is built from
  cross.safetensors    "<case>/timesteps" f64, "<case>/sigmas" f32 (Euler, Euler a, DPM-Solver),
                       "<case>/init_noise_sigma" f64 [1], "<case>/final" the final latents of the
                       loop above; "ddpm/<config>/{betas,alphas_cumprod,noisy,velocity}"
"""
import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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
    """`cls.from_pretrained(model, subfolder="scheduler")` for a scheduler_config.json holding `config`
    (a dict, or the file's text)."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "scheduler").mkdir()
        text = config if isinstance(config, str) else json.dumps(config)
        (Path(d) / "scheduler" / "scheduler_config.json").write_text(text)
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["all", "cross"], default="all")
    if parser.parse_args().only == "cross":
        main_cross()
        return
    main_loops_and_ddpm()
    main_cross()


def main_loops_and_ddpm():
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


def saved_config(cls, **kwargs):
    """The scheduler_config.json text `cls(**kwargs).save_config(dir)` writes."""
    with tempfile.TemporaryDirectory() as d:
        cls(**kwargs).save_config(d)
        return (Path(d) / "scheduler_config.json").read_text()


SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
# SD 1.5's betas as float32 values, for trained_betas.
SD_TRAINED_BETAS = (torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2).tolist()
CROSS_CONFIGS = {
    # DDPMScheduler's defaults (clip_sample true, steps_offset 0, leading) with SD 1.5's betas.
    "ddpm-sd": saved_config(DDPMScheduler, **SD_BETAS),
    # As fine-tuned SD 1.5 models ship it.
    "ddpm-sd-noclip": saved_config(DDPMScheduler, **SD_BETAS, clip_sample=False, steps_offset=1),
    "ddpm-sd-v-trailing": saved_config(
        DDPMScheduler, **SD_BETAS, clip_sample=False, prediction_type="v_prediction", timestep_spacing="trailing"
    ),
    "ddpm-laplace": saved_config(DDPMScheduler, beta_schedule="laplace"),
    "ddpm-sigmoid": saved_config(DDPMScheduler, **{**SD_BETAS, "beta_schedule": "sigmoid"}),
    "dpm-written": saved_config(DPMSolverMultistepScheduler, **SD_BETAS, steps_offset=1),
    "euler-written-karras-range": saved_config(
        EulerDiscreteScheduler, **SD_BETAS, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0, steps_offset=1
    ),
    "dpm-order4": json.dumps({**SD15, "_class_name": "DPMSolverMultistepScheduler", "solver_order": 4}),
    "dpm-karras-lu": json.dumps({**SD15, "_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True, "use_lu_lambdas": True}),
    "dpm-learned-v": json.dumps({**SD2, "_class_name": "DPMSolverMultistepScheduler", "variance_type": "learned_range"}),
    "dpm-dynamic-shifting": json.dumps({**SD15, "_class_name": "DPMSolverMultistepScheduler", "use_dynamic_shifting": True}),
    "euler-continuous-eps": json.dumps({**SD15, "_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}),
    # null booleans are False in diffusers, not the class default (DDIM: no clipping,
    # final alpha = alphas_cumprod[0]; DPM-Solver++: no lower-order final steps).
    "nulls": json.dumps(
        {**SD_BETAS, "_class_name": "DDIMScheduler", "clip_sample": None, "set_alpha_to_one": None, "lower_order_final": None}
    ),
    # trained_betas replaces beta_schedule, whatever it names.
    "trained-betas": json.dumps(
        {**SD15, "beta_schedule": "exponential", "trained_betas": SD_TRAINED_BETAS}
    ),
}
SOURCES = {**CLASSES, "DDPMScheduler": DDPMScheduler}
CROSS_PLAN = [
    ("ddpm-sd", ALL),
    ("ddpm-sd-noclip", ALL),
    ("ddpm-sd-v-trailing", ALL),
    ("dpm-written", ALL),
    ("euler-written-karras-range", ALL),
    ("dpm-order4", ["DPMSolverMultistepScheduler"]),
    ("dpm-karras-lu", ["DPMSolverMultistepScheduler"]),
    ("dpm-learned-v", ["DPMSolverMultistepScheduler"]),
    ("dpm-dynamic-shifting", ["DPMSolverMultistepScheduler"]),
    ("euler-continuous-eps", ["EulerDiscreteScheduler"]),
    ("nulls", ["DDIMScheduler", "DPMSolverMultistepScheduler"]),
    ("trained-betas", ALL),
]
CROSS_DDPM = ["ddpm-sd", "ddpm-sd-noclip", "ddpm-sd-v-trailing", "ddpm-laplace", "ddpm-sigmoid", "dpm-written", "euler-written-karras-range", "trained-betas"]
CROSS_STEPS = [20, 7]


def main_cross():
    inputs = load_file(OUT / "inputs.safetensors")
    init, fixed = inputs["init"], inputs["fixed"]
    out, cases = {}, {}
    for config_name, classes in CROSS_PLAN:
        text = CROSS_CONFIGS[config_name]
        source = from_json(SOURCES[json.loads(text)["_class_name"]], text)
        for class_name in classes:
            cls = CLASSES[class_name]
            sched = cls.from_config(source.config)
            for n in CROSS_STEPS:
                name = f"{SHORT[class_name]}/{config_name}/{n}"
                timesteps, sigma, steps = run_loop(sched, cls, n, init, fixed)
                assert torch.isfinite(steps).all(), name
                out[f"{name}/timesteps"] = timesteps.to(torch.float64)
                out[f"{name}/init_noise_sigma"] = torch.tensor([sigma], dtype=torch.float64)
                out[f"{name}/final"] = steps[-1].contiguous()
                if class_name in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"):
                    out[f"{name}/sigmas"] = sched.sigmas.to(torch.float32).contiguous()
                cases[name] = {
                    "class": class_name,
                    "config": config_name,
                    "steps": n,
                    "seed": SEED if draws_noise(cls, sched) else None,
                }
    original, noise, ddpm_t = inputs["original"], inputs["noise"], inputs["timesteps"]
    for config_name in CROSS_DDPM:
        sched = from_json(DDPMScheduler, CROSS_CONFIGS[config_name])
        out[f"ddpm/{config_name}/noisy"] = sched.add_noise(original, noise, ddpm_t)
        out[f"ddpm/{config_name}/velocity"] = sched.get_velocity(original, noise, ddpm_t)
        out[f"ddpm/{config_name}/alphas_cumprod"] = sched.alphas_cumprod.clone()
        out[f"ddpm/{config_name}/betas"] = sched.betas.clone()
    save_file(out, OUT / "cross.safetensors")
    expected = {
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "configs": CROSS_CONFIGS,
        "cases": cases,
        "ddpm": CROSS_DDPM,
    }
    (OUT / "cross.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(cases)} cross-class loops, {len(CROSS_DDPM)} DDPM configs to {OUT}")


if __name__ == "__main__":
    main()
