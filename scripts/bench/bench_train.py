#!/usr/bin/env python3
"""The Python side of scripts/bench/bench-train.sh: runs diffusers' textual_inversion.py unchanged
except for two patches that do not touch the math (check_min_version, for scripts that name a
newer dev version; trackers off, since tensorboard's cost is not the point: the logged losses
are kept instead), and times each optimizer update. usage: bench_train.py SCRIPT --
SCRIPT_ARGS...; prints JSON on the last line (with the peak CUDA memory on a GPU)."""
import json
import resource
import runpy
import statistics
import sys
import time

script = sys.argv[1]
argv = sys.argv[sys.argv.index("--") + 1:]
t0 = time.perf_counter()
import torch  # noqa: E402
import diffusers.utils  # noqa: E402
from accelerate import Accelerator  # noqa: E402

diffusers.utils.check_min_version = lambda *a, **k: None
Accelerator.init_trackers = lambda self, *a, **k: None
losses = []
Accelerator.log = lambda self, values, *a, **k: losses.append(float(values["loss"]))
stamps = []
orig_step = torch.optim.AdamW.step


def step(self, *a, **k):
    out = orig_step(self, *a, **k)
    stamps.append(time.perf_counter())
    return out


torch.optim.AdamW.step = step
sys.argv = [script] + argv
runpy.run_path(script, run_name="__main__")
gaps = [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({
    "startup_s": (stamps[0] - t0) if stamps else None,
    "s_per_step": statistics.median(gaps) if gaps else None,
    "steps": len(stamps),
    "total_s": time.perf_counter() - t0,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "threads": torch.get_num_threads(),
    "losses": losses,
    "cuda_max_memory_allocated": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    "cuda_max_memory_reserved": torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None,
}))
