#!/usr/bin/env python3
"""The diffusers side of scripts/bench/bench-generate.sh: load a pipeline and time one text-to-image
call (fp32, CPU). usage: bench_generate.py MODEL STEPS SIZE PROMPT SEED; prints JSON."""
import json
import resource
import sys
import time

t0 = time.perf_counter()
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

model, steps, size, prompt, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
t1 = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
t2 = time.perf_counter()
image = pipe(prompt, num_inference_steps=steps, height=size, width=size,
             generator=torch.Generator("cpu").manual_seed(seed)).images[0]
t3 = time.perf_counter()
image.save("/tmp/bench-generate-diffusers.png")
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "generate_s": t3 - t2, "total_s": t3 - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "threads": torch.get_num_threads()}))
