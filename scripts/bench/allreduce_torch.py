"""The reference for examples/bench_allreduce.rs: the same reduces in PyTorch (torch.distributed,
Gloo, as DDP's default hook does them: divide by the world size, SUM all_reduce). Run under
`python -m torch.distributed.run --standalone --nproc_per_node N`."""
import json
import sys
import time

import torch
import torch.distributed as dist

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 20
dist.init_process_group("gloo")
n = dist.get_world_size()
for what, rows in [("placeholder rows [1, 768]", 1), ("placeholder rows [8, 768]", 8), ("whole embedding [49408, 768]", 49408)]:
    t = torch.ones(rows, 768)
    t.div_(n)
    dist.all_reduce(t)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        t.div_(n)
        dist.all_reduce(t)
    per = (time.perf_counter() - start) / repeats
    if dist.get_rank() == 0:
        print(json.dumps(dict(ranks=n, tensor=what, bytes=rows * 768 * 4, ms_per_reduce=round(per * 1e3, 4), reference="torch")))
dist.barrier()
dist.destroy_process_group()
