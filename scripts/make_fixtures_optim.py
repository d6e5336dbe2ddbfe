#!/usr/bin/env python3
"""Writes fixtures/optim/: torch.optim.AdamW runs and diffusers LR schedules, for tests/optim.rs.

Run: `$(scripts/python-env.sh) scripts/make_fixtures_optim.py` (pinned torch 2.11.0, diffusers
0.42.1). Deterministic: every input comes from torch.Generator().manual_seed(...), and re-running
rewrites the same bytes.

AdamW (what the training script builds: `torch.optim.AdamW(params, lr, betas, weight_decay, eps)`,
everything else default, which on CPU is the single-tensor path): a [3, 32] parameter, 25 steps,
one seeded gradient per step (magnitudes from 1e-6 to 10, a few exact zeros), for

    default     the script's defaults: lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2
    scale_lr    README recipe with --scale_lr: 5e-4 * G=4 * B=1 * 1 process = 2e-3
    large       lr 0.3, betas (0.8, 0.95), eps 1e-3, weight decay 0.5
    no_decay    lr 1e-3, betas (0.5, 0.9), eps 1e-8, weight decay 0 (torch skips the decay multiply)
    skip        defaults, but no gradient (grad None) at steps 1, 5 and 13: torch skips the parameter
    scheduled   lr 1e-3 driven by get_scheduler("cosine", num_warmup_steps=5, num_training_steps=25)
                stepped after every optimizer step, as in the training loop (first update uses lr 0)

Each run is checked against torch's explicit single-tensor path (foreach=False). A resume run
(state_dict after 10 steps -> fresh AdamW + fresh scheduler -> load_state_dict -> 15 more steps) is
asserted equal to the straight 25 steps for every case.

Written:
  adamw.safetensors      init [3,32] f32; grads [25,3,32] f32 (shared by all cases);
                         "<case>/params" [25,3,32] (after every step); "<case>/lrs" [25] f64 (the
                         group lr each step used); "<case>/has_grad" [25] u8;
                         "<case>/hparams" [5] f64 = lr, beta1, beta2, eps, weight_decay;
                         "<case>/state10/{exp_avg,exp_avg_sq,step}" and state25 (step is f32 [],
                         like torch's state_dict)
  bias.safetensors       for t = 1..=5000: "step_size" [5000] f64 = 1e-4 / (1 - 0.9**t), "bc2_sqrt" =
                         (1 - 0.999**t)**0.5, computed exactly as torch's single-tensor AdamW does
                         (Python float pow, which is not always math.sqrt)
  schedules.safetensors  "<name>/<case>" [T+4] f64: get_last_lr()[0] at construction and after
                         each of T+3 scheduler steps
  schedules.json         cases (W, T, C, base lr), per-name errors, error messages for bad names
"""
import copy
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

import diffusers
from diffusers.optimization import get_scheduler

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "optim"
STEPS = 25
SHAPE = (3, 32)
SAVE_AT = (10, 25)

CASES = {
    "default": dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, wd=1e-2),
    "scale_lr": dict(lr=5e-4 * 4 * 1 * 1, betas=(0.9, 0.999), eps=1e-8, wd=1e-2),
    "large": dict(lr=0.3, betas=(0.8, 0.95), eps=1e-3, wd=0.5),
    "no_decay": dict(lr=1e-3, betas=(0.5, 0.9), eps=1e-8, wd=0.0),
    "skip": dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, wd=1e-2, no_grad=(0, 4, 12)),
    "scheduled": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, wd=1e-2, schedule=("cosine", 5, 25, 1)),
}

SCHEDULES = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
# (W, T, C, base lr)
SCHEDULE_CASES = [
    (0, 20, 1, 1e-4),
    (5, 20, 1, 1e-4),
    (3, 10, 3, 2e-3),
    (4, 17, 2, 5e-4),
    (10, 10, 1, 1e-4),  # W == T: polynomial divides by zero at step W
    (8, 5, 2, 1e-4),  # W > T
    (-2, 10, 2, 1e-4),  # negative warmup (the CLI accepts it)
    (100, 1000, 3, 5e-3),
]


def inputs():
    g = torch.Generator().manual_seed(20240607)
    init = torch.randn(SHAPE, generator=g) * 0.02
    grads = torch.randn((STEPS,) + SHAPE, generator=g)
    exps = torch.randint(-6, 2, (STEPS, SHAPE[0], 1), generator=g).to(torch.float32)
    grads = grads * torch.pow(10.0, exps)
    zero = torch.rand((STEPS,) + SHAPE, generator=g) < 0.03
    grads[zero] = 0.0
    grads[7, 1] = 0.0  # a whole row without gradient in one step
    return init, grads


def run(case, init, grads, stop=STEPS, resume_from=None, foreach=None):
    """AdamW (+ scheduler) over `init` for steps [start, stop); `resume_from` = (param, opt_state,
    sched_state, start) restores a checkpoint the way accelerate does (optimizer then scheduler)."""
    b1, b2 = case["betas"]
    start = 0
    p = torch.nn.Parameter(init.clone())
    kwargs = {} if foreach is None else {"foreach": foreach}
    opt = torch.optim.AdamW([p], lr=case["lr"], betas=(b1, b2), eps=case["eps"], weight_decay=case["wd"], **kwargs)
    sched = None
    if "schedule" in case:
        name, w, t, c = case["schedule"]
        sched = get_scheduler(name, opt, num_warmup_steps=w, num_training_steps=t, num_cycles=c)
    if resume_from is not None:
        param, opt_state, sched_state, start = resume_from
        with torch.no_grad():
            p.copy_(param)
        opt.load_state_dict(opt_state)
        if sched is not None:
            sched.load_state_dict(sched_state)
    params, lrs, states, checkpoints = [], [], {}, {}
    for i in range(start, stop):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = None if i in case.get("no_grad", ()) else grads[i].clone()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()
        params.append(p.detach().clone())
        if i + 1 in SAVE_AT:
            st = opt.state[p]
            states[i + 1] = {k: v.clone() for k, v in st.items()}
            checkpoints[i + 1] = (
                p.detach().clone(),
                copy.deepcopy(opt.state_dict()),
                copy.deepcopy(sched.state_dict()) if sched is not None else None,
                i + 1,
            )
    return params, lrs, states, checkpoints


def adamw_fixtures():
    init, grads = inputs()
    out = {"init": init, "grads": grads.contiguous()}
    for name, case in CASES.items():
        params, lrs, states, ckpts = run(case, init, grads)
        # The default really is the single-tensor path on CPU.
        explicit, _, _, _ = run(case, init, grads, foreach=False)
        assert all(torch.equal(a, b) for a, b in zip(params, explicit)), name
        foreach, _, _, _ = run(case, init, grads, foreach=True)
        diff = max((a - b).abs().max().item() for a, b in zip(params, foreach))
        # Resume after 10 steps equals the straight run, bit for bit.
        resumed, rlrs, _, _ = run(case, init, grads, resume_from=ckpts[10])
        assert all(torch.equal(a, b) for a, b in zip(params[10:], resumed)), name
        assert lrs[10:] == rlrs, name
        print(f"{name}: foreach path differs by {diff:.3g} max-abs; resume exact")
        b1, b2 = case["betas"]
        out[f"{name}/params"] = torch.stack(params)
        out[f"{name}/lrs"] = torch.tensor(lrs, dtype=torch.float64)
        out[f"{name}/has_grad"] = torch.tensor([i not in case.get("no_grad", ()) for i in range(STEPS)], dtype=torch.uint8)
        out[f"{name}/hparams"] = torch.tensor([case["lr"], b1, b2, case["eps"], case["wd"]], dtype=torch.float64)
        for at, st in states.items():
            assert st["step"].dtype == torch.float32 and st["step"].dim() == 0
            for k in ("exp_avg", "exp_avg_sq", "step"):
                out[f"{name}/state{at}/{k}"] = st[k]
    save_file(out, OUT / "adamw.safetensors")


def bias_fixtures(n=5000, lr=1e-4, beta1=0.9, beta2=0.999):
    ts = [float(t) for t in range(1, n + 1)]
    step_size = [lr / (1 - beta1**t) for t in ts]
    bc2_sqrt = [(1 - beta2**t) ** 0.5 for t in ts]
    differ = [int(t) for t in ts if (1 - beta2**t) ** 0.5 != math.sqrt(1 - beta2**t)]
    print(f"bias: (1 - 0.999**t)**0.5 != sqrt(...) at {len(differ)} of {n} steps, first {differ[:5]}")
    save_file(
        {
            "step_size": torch.tensor(step_size, dtype=torch.float64),
            "bc2_sqrt": torch.tensor(bc2_sqrt, dtype=torch.float64),
        },
        OUT / "bias.safetensors",
    )


def schedule_fixtures():
    tensors, cases, errors = {}, [], {}
    for w, t, c, lr in SCHEDULE_CASES:
        key = f"W{w}_T{t}_C{c}"
        cases.append({"key": key, "warmup": w, "total": t, "cycles": c, "lr": repr(lr)})
        for name in SCHEDULES:
            opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
            seq = []
            try:
                sched = get_scheduler(name, opt, num_warmup_steps=w, num_training_steps=t, num_cycles=c)
                seq.append(sched.get_last_lr()[0])
                for _ in range(t + 3):
                    opt.step()
                    sched.step()
                    seq.append(sched.get_last_lr()[0])
            except ZeroDivisionError as e:
                errors[f"{name}/{key}"] = f"ZeroDivisionError at step {len(seq)}: {e}"
                continue
            tensors[f"{name}/{key}"] = torch.tensor([float(x) for x in seq], dtype=torch.float64)
    save_file(tensors, OUT / "schedules.safetensors")

    messages = {}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-7)
    for label, name, lr in [("unknown", "cosine_annealing", 1e-4), ("piecewise", "piecewise_constant", 1e-4), ("polynomial_lr", "polynomial", 1e-7), ("polynomial_lr_small", "polynomial", 5e-8)]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        try:
            get_scheduler(name, opt, num_warmup_steps=0, num_training_steps=10, num_cycles=1)
        except Exception as e:  # noqa: BLE001 - the message is the fixture
            messages[label] = f"{type(e).__name__}: {e}"
    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cases": cases,
        "errors": errors,
        "messages": messages,
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    adamw_fixtures()
    bias_fixtures()
    meta = schedule_fixtures()
    (OUT / "schedules.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
