#!/usr/bin/env python3
"""The GPU check (scripts/gpu-check.sh runs it; see that file for what it answers). Standard
library only: the PyTorch side runs in subprocesses (scripts/gpu/py_side.py,
scripts/bench/bench_train.py) with --python, and is recorded as skipped where that python lacks
torch/diffusers/accelerate (as in CI's --cpu-smoke)."""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TI_LIBTORCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "textual-inversion")
PROMPT = "a photo of a cat"


class Check:
    def __init__(self, a):
        self.a = a
        self.out = Path(a.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.out / "gpu-check.log", "w")
        self.deadline = time.monotonic() + a.time_limit
        self.work = Path(tempfile.mkdtemp(prefix="ti-gpu-check-"))
        self.env = dict(os.environ)
        self.result = {"mode": "cpu-smoke" if a.cpu_smoke else "gpu", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "time_limit_s": a.time_limit, "skipped": []}

    def log(self, msg):
        print(msg, flush=True)
        self.log_file.write(msg + "\n")
        self.log_file.flush()

    def left(self):
        return self.deadline - time.monotonic()

    def run(self, name, cmd, env=None, timeout=None):
        """Runs cmd (logged, output into the log); returns its stdout, or None on failure."""
        limit = min(timeout or 1e9, max(self.left(), 0))
        if limit < 5:
            self.skip(name, "time limit reached")
            return None
        self.log(f"$ {' '.join(str(c) for c in cmd)}")
        t = time.monotonic()
        try:
            p = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env or self.env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            self.skip(name, f"timed out after {limit:.0f} s")
            return None
        self.log_file.write(p.stderr[-20000:])
        self.log(f"  -> exit {p.returncode} in {time.monotonic() - t:.1f} s")
        if p.returncode != 0:
            self.skip(name, f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")
            return None
        return p.stdout

    def skip(self, name, why):
        self.log(f"  [skipped] {name}: {why}")
        self.result["skipped"].append({"what": name, "why": why})

    def json_of(self, name, text):
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
        for line in reversed(text.strip().splitlines()):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
        self.skip(name, "printed no JSON")
        return None


def python_ok(c, py):
    if py == "none":
        return "--python none"
    try:
        p = subprocess.run([py, "-c", "import torch, diffusers, transformers, accelerate; print(torch.__version__, torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or ["import failed"])[-1]
    c.result["python"] = {"path": py, "torch_and_cuda": p.stdout.strip()}
    return None


def torch_lib(py):
    p = subprocess.run([py, "-c", "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def rel_diff(a, b):
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu-check-out")
    ap.add_argument("--cpu-smoke", action="store_true", help="the tiny model on the CPU (what CI runs)")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "textual-inversion"))
    ap.add_argument("--python", default=os.environ.get("TI_PYTHON", "python3"), help="the torch python, or none")
    ap.add_argument("--script", default=None, help="diffusers' textual_inversion.py (default: .gpu-carry/ or the cache)")
    ap.add_argument("--time-limit", type=float, default=450.0, help="seconds for everything; later parts are skipped past it")
    a = ap.parse_args()
    c = Check(a)
    smoke = a.cpu_smoke
    device = "cpu" if smoke else "cuda"
    res, gen_steps, train_steps, replay_steps = (64, 4, 4, 3) if smoke else (512, 20, 20, 3)
    c.result.update(device=device, resolution=res, generate_steps=gen_steps, train_steps=train_steps)

    why = python_ok(c, a.python)
    if why:
        c.skip("the PyTorch side (diffusers pipeline, textual_inversion.py)", why)
    py = None if why else a.python
    script = Path(a.script) if a.script else next((p for p in [ROOT / ".gpu-carry" / "textual_inversion.py",
                                                                CACHE / "diffusers-examples" / "textual_inversion.py"] if p.is_file()), None)

    # Our binary, with the torch python's libtorch if it cannot find its own.
    info = c.json_of("info", c.run("info", [a.bin, "info", "--json"]))
    if info is None and py and (lib := torch_lib(py)):
        c.env["LD_LIBRARY_PATH"] = lib + (":" + c.env["LD_LIBRARY_PATH"] if c.env.get("LD_LIBRARY_PATH") else "")
        c.log(f"using the libtorch of {py}: LD_LIBRARY_PATH={lib}")
        info = c.json_of("info", c.run("info", [a.bin, "info", "--json"]))
    c.result["info"] = info
    if info is None:
        c.log("the binary does not run: nothing else to check")
        return finish(c)
    if not smoke and not info.get("cuda_available"):
        c.log(f"CUDA is not available to the binary: {json.dumps(info.get('cuda'))}")

    # The model.
    if smoke:
        model = ROOT / "fixtures" / "tiny-sd"
    else:
        model = Path(os.environ.get("TI_GPU_CHECK_MODEL", "/tmp/ti-gpu-check-sd15"))
        if not (model / "unet" / "config.json").is_file():
            if not py:
                c.log("no SD 1.5-shaped model and no python to make one")
                return finish(c)
            c.run("make the SD 1.5-shaped model", [py, ROOT / "scripts/gpu/py_side.py", "make", model], timeout=300)
    c.result["model"] = str(model)
    data = ROOT / "fixtures" / "dataset" / "images"
    train_args = ["--pretrained_model_name_or_path", model, "--train_data_dir", data, "--placeholder_token", "<cat-toy>",
                  "--initializer_token", "toy", "--resolution", res, "--train_batch_size", 1, "--repeats", 10,
                  "--learning_rate", "5e-3", "--lr_warmup_steps", 0, "--seed", 0, "--save_steps", 100000,
                  "--checkpointing_steps", 100000]

    results = c.result["precisions"] = {}
    for prec in ["fp16", "bf16"]:
        r = results[prec] = {}
        # Ours: generate twice, the second measured (the first warms cuDNN up).
        for k in range(2):
            stats = c.work / f"gen-{prec}-{k}.json"
            c.run(f"generate {prec}", [a.bin, "generate", "--model", model, "--prompt", PROMPT, "--num_inference_steps", gen_steps,
                                      "--seed", 0, "--device", device, "--dtype", prec, "--height", res, "--width", res,
                                      "--output_dir", c.work / "images", "--stats_json", stats])
        if stats.is_file():
            r["ours_generate"] = json.loads(stats.read_text())
        if py:
            r["diffusers_generate"] = c.json_of(f"diffusers generate {prec}", c.run(f"diffusers generate {prec}", [
                py, ROOT / "scripts/gpu/py_side.py", "pipeline", "--model", model, "--dtype", prec, "--device", device,
                "--steps", gen_steps, "--size", res, "--prompt", PROMPT]))
        # Ours: train.
        out = c.work / f"train-{prec}"
        stats = c.work / f"train-{prec}.json"
        c.run(f"train {prec}", [a.bin, "train", *train_args, "--max_train_steps", train_steps, "--mixed_precision", prec,
                                "--device", device, "--report_to", "none", "--output_dir", out, "--stats_json", stats])
        if stats.is_file():
            r["ours_train"] = json.loads(stats.read_text())
        if py and script:
            # accelerate refuses fp16 on a CPU: the smoke test runs the script in fp32 there.
            mp = "no" if smoke and prec == "fp16" else prec
            r["script_train"] = c.json_of(f"textual_inversion.py {prec}", c.run(f"textual_inversion.py {prec}", [
                py, ROOT / "scripts/bench/bench_train.py", script, "--", *train_args, "--max_train_steps", train_steps,
                "--mixed_precision", mp, "--output_dir", c.work / f"script-{prec}"]))
        elif py:
            c.skip(f"textual_inversion.py {prec}", "no script: pass --script or put it in .gpu-carry/")

    # The same seed on the CPU: the loss curve a device run should follow. The draws are made
    # on the CPU in the run's precision, so a CPU run of the same precision sees the same ones:
    # fp32 on both (a device fp32 run is made for it), then bf16 and fp16 (slow on CPUs without
    # native half arithmetic: skipped when the time limit comes first).
    replays = c.result["cpu_replay"] = {}
    for prec, steps in [("fp32", 3), ("bf16", 2), ("fp16", 2)]:
        rep = replays[prec] = {}
        if prec == "fp32":
            stats = c.work / "device-fp32.json"
            c.run("train fp32", [a.bin, "train", *train_args, "--max_train_steps", steps, "--device", device, "--report_to", "none",
                                 "--output_dir", c.work / "device-fp32", "--stats_json", stats])
            device_losses = json.loads(stats.read_text())["losses"] if stats.is_file() else None
        else:
            device_losses = ((results.get(prec) or {}).get("ours_train") or {}).get("losses")
        stats = c.work / f"replay-{prec}.json"
        c.run(f"CPU replay {prec}", [a.bin, "train", *train_args, "--max_train_steps", steps, "--mixed_precision", prec, "--device", "cpu",
                                     "--report_to", "none", "--output_dir", c.work / f"replay-{prec}", "--stats_json", stats], timeout=240)
        if stats.is_file() and device_losses:
            cpu = json.loads(stats.read_text())["losses"]
            rep.update(cpu_losses=cpu, device_losses=device_losses[:len(cpu)], max_rel=rel_diff(device_losses[:len(cpu)], cpu))
    # Data-parallel: 2 ranks on this device (sharing it when it is the only GPU) against 2 ranks
    # on the CPU with the same seed: the c10d path with device tensors (reduced through host
    # copies), rank 0's losses.
    dist = c.result["distributed"] = {}
    for where in dict.fromkeys([device, "cpu"]):
        stats = c.work / f"dist-{where.replace(':', '_')}.json"
        c.run(f"train 2 ranks on {where}", [a.bin, "train", *train_args, "--max_train_steps", 3, "--device", where, "--num_processes", 2,
                                            "--report_to", "none", "--output_dir", c.work / f"dist-{where.replace(':', '_')}",
                                            "--stats_json", stats], timeout=300)
        if stats.is_file():
            dist[where] = json.loads(stats.read_text()).get("losses")
    if dist.get(device) and dist.get("cpu"):
        dist["max_rel"] = rel_diff(dist[device], dist["cpu"])
    return finish(c)


def mb(v):
    return f"{v / 2**20:.0f}" if isinstance(v, (int, float)) and v is not None else "-"


def finish(c):
    r = c.result
    r["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    checks = r["checks"] = {}
    for prec, p in (r.get("precisions") or {}).items():
        t = p.get("ours_train") or {}
        checks[f"{prec}: losses finite"] = bool(t.get("losses")) and all(isinstance(x, float) and math.isfinite(x) for x in t["losses"])
        checks[f"{prec}: rows moved from the initializer"] = (t.get("rows_moved_l2") or 0) > 0
    d = r.get("distributed") or {}
    checks["2 ranks: losses finite"] = bool(d.get("cpu")) and all(isinstance(x, float) and math.isfinite(x) for x in d["cpu"])
    (c.out / "gpu-check.json").write_text(json.dumps(r, indent=1) + "\n")
    c.log("\n| precision | ours s/image | diffusers s/image | ours s/step | script s/step | ours peak GPU MB (gen/train) | Python peak GPU MB (gen/train) | loss vs CPU |")
    c.log("|---|---|---|---|---|---|---|---|")
    f = lambda v, n=3: f"{v:.{n}f}" if isinstance(v, (int, float)) else "-"
    for prec, p in (r.get("precisions") or {}).items():
        og, dg, ot, st = (p.get(k) or {} for k in ["ours_generate", "diffusers_generate", "ours_train", "script_train"])
        peak = lambda s: (s.get("cuda_memory") or {}).get("peak_allocated")
        c.log(f"| {prec} | {f(og.get('s_per_image'))} | {f(dg.get('s_per_image'))} | {f(ot.get('s_per_micro_step'))} | "
              f"{f(st.get('s_per_step'))} | {mb(peak(og))}/{mb(peak(ot))} | {mb(dg.get('cuda_max_memory_allocated'))}/"
              f"{mb(st.get('cuda_max_memory_allocated'))} | {f((r['cpu_replay'].get(prec) or {}).get('max_rel'), 4)} |")
    for prec, rep in (r.get("cpu_replay") or {}).items():
        if rep.get("max_rel") is not None:
            c.log(f"{prec}: device vs CPU losses, max relative difference {rep['max_rel']:.2e}")
    if d.get("max_rel") is not None:
        c.log(f"2 ranks: device vs CPU losses, max relative difference {d['max_rel']:.2e}")
    c.log(f"checks: {json.dumps(checks)}")
    c.log(f"skipped: {len(r['skipped'])}; results in {c.out / 'gpu-check.json'}")
    shutil.rmtree(c.work, ignore_errors=True)
    return 0 if all(checks.values()) and checks else 1


if __name__ == "__main__":
    sys.exit(main())
