#!/usr/bin/env python3
"""Writes fixtures/train/seed/: what diffusers' UNPATCHED textual_inversion.py computes with
`--seed S` on CPU, over a matrix of configurations, for tests/train_seed_parity.rs (`train --seed
S` must take the same images, captions, flips, posterior draws, noise and timesteps, so the same
loss at every micro-step and the same embedding).

Regenerate (from the repository root; CPU only, a few minutes):

    $(scripts/python-env.sh) scripts/make_fixtures_seed.py --script PATH

PATH is diffusers' examples/textual_inversion/textual_inversion.py, tag v0.40.0 (default
~/.cache/textual-inversion/diffusers-examples/textual_inversion.py; see make_fixtures_train.py
for how to get it; it is not part of this repository).

The images: fixtures/train/seed/images/toy-{1..4}.png, PNG copies of fixtures/dataset/images made
by Pillow (the two JPEGs decoded by Pillow's libjpeg-turbo), so that decoding is exact on both
sides and the comparison can be tight. They are written only when missing (`--images` rewrites
them).

Each configuration trains on a fresh folder of these images (named PREFIX + K + .png) whose DIRECTORY
order (os.listdir, the order the script takes) differs from the sorted order; the run records
which image sits at each position of that listing, so the Rust test can build a folder with the
same directory order whatever its file system (see the test).

What runs: a fresh Python process per configuration (accelerate's state is process-wide) executes
the script with runpy, CPU only, fp32, one thread (torch.set_num_threads(1): fixed reduction
order), HF_HUB_OFFLINE=1. Patched, without touching any random stream or computation:
diffusers.utils.check_min_version (a no-op: the script asks for a newer dev version than the
pinned release) and Accelerator.init_trackers/log (records the per-micro-step `{"loss", "lr"}`
the script logs, writes no tracker files).

Written per configuration, fixtures/train/seed/<name>/:
  run.json    cli args ("<tmp>" for temporary paths, "<data>" for the image folder), the listing
              (images in directory order), the logged loss and lr of every micro-step with its
              global step, versions, the script's sha256
  learned_embeds.safetensors, learned_embeds-steps-N.safetensors   the script's own files
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from make_fixtures_train import make_vpred_model  # scripts/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "train" / "seed"
IMAGES = OUT / "images"
SOURCES = ["toy-1.jpg", "toy-2.png", "toy-3.jpg", "toy-4.png"]
DEFAULT_SCRIPT = Path.home() / ".cache" / "textual-inversion" / "diffusers-examples" / "textual_inversion.py"
KNOWN_SCRIPT = "117c575fb59a1150dd0e95faab23d92eb9031b55e2e9f4f63413647fa1f14a99"

COMMON = [
    "--train_data_dir", "<data>",
    "--resolution", "64",
    "--output_dir", "<tmp>/out",
    "--mixed_precision", "no",
    "--dataloader_num_workers", "0",
    "--checkpointing_steps", "1000",
]


def cfg(*, vpred=False, args):
    return dict(vpred=vpred, args=args)


# What each configuration covers is in its name and comment; together: 1 and 3+ vectors,
# object/style, batch 1/2/3 (short last batches), accumulation 1/2, several epochs, --repeats,
# --center_crop, --scale_lr, every LR schedule (with warmup), epsilon and v_prediction, LR 5e-3.
RUNS = {
    # 1 vector, batch 1, 2.5 epochs, constant LR, high LR.
    "obj-1v-b1-constant": cfg(args=[
        "--placeholder_token", "<toy>", "--initializer_token", "toy", "--learnable_property", "object",
        "--num_vectors", "1", "--repeats", "1", "--train_batch_size", "1", "--gradient_accumulation_steps", "1",
        "--max_train_steps", "10", "--learning_rate", "5e-3", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
        "--seed", "21", "--save_steps", "5"]),
    # 3 vectors, style, batch 2, accumulation 2, repeats 2, center crop, scale_lr, linear warmup.
    "style-3v-b2-g2-linear": cfg(args=[
        "--placeholder_token", "<my-style>", "--initializer_token", "painting", "--learnable_property", "style",
        "--num_vectors", "3", "--repeats", "2", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--max_train_steps", "5", "--learning_rate", "1e-3", "--scale_lr", "--lr_scheduler", "linear",
        "--lr_warmup_steps", "2", "--center_crop", "--seed", "5", "--save_steps", "2"]),
    # batch 3 over 4 images: a short last batch of 1 each epoch; cosine with warmup.
    "obj-2v-b3-short-cosine": cfg(args=[
        "--placeholder_token", "<cat-toy>", "--initializer_token", "cat", "--learnable_property", "object",
        "--num_vectors", "2", "--repeats", "1", "--train_batch_size", "3", "--gradient_accumulation_steps", "1",
        "--max_train_steps", "6", "--learning_rate", "5e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "1",
        "--seed", "1234", "--save_steps", "3"]),
    # v_prediction, 4 vectors, style, batch 3 with accumulation 2 over 8 items (batches 3, 3, 2:
    # the epoch's last batch syncs early), cosine with 2 restarts.
    "vpred-style-4v-b3-g2-restarts": cfg(vpred=True, args=[
        "--placeholder_token", "<wc>", "--initializer_token", "watercolor", "--learnable_property", "style",
        "--num_vectors", "4", "--repeats", "2", "--train_batch_size", "3", "--gradient_accumulation_steps", "2",
        "--max_train_steps", "6", "--learning_rate", "5e-3", "--lr_scheduler", "cosine_with_restarts",
        "--lr_num_cycles", "2", "--lr_warmup_steps", "1", "--seed", "77", "--save_steps", "4"]),
    # 1 vector, style, accumulation 2 with batch 1, polynomial with warmup, center crop, no decay.
    "style-1v-b1-g2-polynomial": cfg(args=[
        "--placeholder_token", "<s1>", "--initializer_token", "art", "--learnable_property", "style",
        "--num_vectors", "1", "--repeats", "1", "--train_batch_size", "1", "--gradient_accumulation_steps", "2",
        "--max_train_steps", "6", "--learning_rate", "5e-3", "--lr_scheduler", "polynomial", "--lr_warmup_steps", "2",
        "--center_crop", "--adam_weight_decay", "0", "--seed", "3", "--save_steps", "3"]),
    # batch 2, repeats 3 (12 items), constant with warmup.
    "obj-2v-b2-repeats-cwarmup": cfg(args=[
        "--placeholder_token", "<toy2>", "--initializer_token", "toy", "--learnable_property", "object",
        "--num_vectors", "2", "--repeats", "3", "--train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--max_train_steps", "8", "--learning_rate", "5e-3", "--lr_scheduler", "constant_with_warmup",
        "--lr_warmup_steps", "3", "--seed", "7", "--save_steps", "4"]),
    # v_prediction, 1 vector, object, center crop, scale_lr, linear without warmup.
    "vpred-obj-1v-b1-linear": cfg(vpred=True, args=[
        "--placeholder_token", "<v1>", "--initializer_token", "toy", "--learnable_property", "object",
        "--num_vectors", "1", "--repeats", "1", "--train_batch_size", "1", "--gradient_accumulation_steps", "1",
        "--max_train_steps", "7", "--learning_rate", "2.5e-3", "--scale_lr", "--lr_scheduler", "linear",
        "--lr_warmup_steps", "0", "--center_crop", "--seed", "2024", "--save_steps", "7"]),
    # 3 vectors, batch 2, accumulation 2 over 4 items: one update per epoch, four epochs.
    "obj-3v-b2-g2-epochs": cfg(args=[
        "--placeholder_token", "<thing>", "--initializer_token", "object", "--learnable_property", "object",
        "--num_vectors", "3", "--repeats", "1", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--max_train_steps", "4", "--learning_rate", "5e-3", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
        "--seed", "99", "--save_steps", "2"]),
    # batch 3 with accumulation 2 over 4 items (3 + a short 1, which syncs), v_prediction, style,
    # polynomial without warmup; every epoch one update.
    "vpred-style-2v-b3-g2-poly": cfg(vpred=True, args=[
        "--placeholder_token", "<p2>", "--initializer_token", "painting", "--learnable_property", "style",
        "--num_vectors", "2", "--repeats", "1", "--train_batch_size", "3", "--gradient_accumulation_steps", "2",
        "--max_train_steps", "4", "--learning_rate", "5e-3", "--lr_scheduler", "polynomial", "--lr_warmup_steps", "0",
        "--seed", "11", "--save_steps", "2"]),
}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_images(force):
    from PIL import Image

    IMAGES.mkdir(parents=True, exist_ok=True)
    for src in SOURCES:
        dst = IMAGES / (Path(src).stem + ".png")
        if dst.exists() and not force:
            continue
        Image.open(ROOT / "fixtures" / "dataset" / "images" / src).convert("RGB").save(dst, optimize=True)
        print(f"[seed fixtures] {dst.relative_to(ROOT)} {dst.stat().st_size} bytes")


PREFIXES = ["img_", "IMG_", "photo-", "p", "shot_", "x-", "toy_", "a", "DSC"]


def unsorted_folder(parent, run):
    """A folder of the images named PREFIX + K + .png (the prefix and which image gets which name
    vary with the run, so the runs see different orders) whose os.listdir order is not the
    sorted order."""
    images = sorted(IMAGES.glob("*.png"))
    images = images[run % len(images):] + images[:run % len(images)]
    prefix = PREFIXES[run % len(PREFIXES)]
    for attempt in range(100):
        d = Path(parent) / f"data{attempt}"
        d.mkdir()
        names = {}
        for k, img in enumerate(images):
            name = f"{prefix}{k}{'' if attempt == 0 else '_' + str(attempt)}.png"
            shutil.copyfile(img, d / name)
            names[name] = img.name
        listing = os.listdir(d)
        if listing != sorted(listing):
            return d, listing, [names[n] for n in listing]
    raise SystemExit("could not make a folder whose directory order differs from the sorted order")


def run_one(name, spec, script):
    with tempfile.TemporaryDirectory(prefix=f"ti-seed-{name}-") as tmp:
        data, names, listing = unsorted_folder(tmp, list(RUNS).index(name))
        model = str(make_vpred_model(tmp)) if spec["vpred"] else "fixtures/tiny-sd"
        args = ["--pretrained_model_name_or_path", model] + COMMON + spec["args"]
        real = [a.replace("<tmp>", tmp).replace("<data>", str(data)) for a in args]
        rec = Path(tmp) / "rec.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
        env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
        cmd = [sys.executable, __file__, "--_child", json.dumps(dict(script=str(script), args=real, rec=str(rec)))]
        log = Path(tmp) / "child.log"
        with open(log, "w") as f:
            r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            sys.stderr.write(log.read_text()[-20000:])
            raise SystemExit(f"run {name} failed ({r.returncode})")
        child = json.loads(rec.read_text())
        dst = OUT / name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        out = Path(tmp) / "out"
        saved = []
        for f in sorted(out.glob("learned_embeds*.safetensors")):
            shutil.copyfile(f, dst / f.name)
            saved.append(f.name)
        cli = ["<tmp>/tiny-sd-vpred" if a == model and spec["vpred"] else a for a in args]
        meta = dict(
            run=name,
            script=dict(sha256=sha256(script), known=sha256(script) == KNOWN_SCRIPT,
                        source="huggingface/diffusers tag v0.40.0 examples/textual_inversion/textual_inversion.py"),
            cli_args=cli,
            vpred=spec["vpred"],
            listing=listing,
            listing_names=names,
            sorted_names=sorted(names),
            micro_steps=child["logs"],
            saved=saved,
            versions=child["versions"],
            env=dict(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", torch_num_threads=1, device="cpu"),
        )
        (dst / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"[seed fixtures] {name}: {len(child['logs'])} micro-steps, listing {listing}, files {saved}")


def child(c):
    import runpy

    import torch

    torch.set_num_threads(1)
    import accelerate
    import diffusers
    import diffusers.utils
    import PIL
    import transformers
    from accelerate import Accelerator

    diffusers.utils.check_min_version = lambda *a, **k: None
    logs = []
    Accelerator.init_trackers = lambda self, *a, **k: None
    Accelerator.log = lambda self, values, step=None, log_kwargs=None: logs.append(
        dict(step=step, loss=float(values["loss"]), lr=float(values["lr"])))
    sys.argv = [c["script"]] + c["args"]
    runpy.run_path(c["script"], run_name="__main__")
    import torchvision

    versions = dict(python=sys.version.split()[0], torch=torch.__version__, torchvision=torchvision.__version__,
                    diffusers=diffusers.__version__, transformers=transformers.__version__,
                    accelerate=accelerate.__version__, pillow=PIL.__version__)
    Path(c["rec"]).write_text(json.dumps(dict(logs=logs, versions=versions)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--script", default=str(DEFAULT_SCRIPT), help="path to diffusers' textual_inversion.py")
    ap.add_argument("--runs", nargs="*", choices=list(RUNS), help="only these runs")
    ap.add_argument("--images", action="store_true", help="rewrite the PNG images")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    o = ap.parse_args()
    if o._child:
        return child(json.loads(o._child))
    script = Path(o.script).expanduser().resolve()
    if not script.is_file():
        raise SystemExit(f"{script}: not found; see make_fixtures_train.py's docstring for how to get it")
    make_images(o.images)
    for name in o.runs or list(RUNS):
        run_one(name, RUNS[name], script)


if __name__ == "__main__":
    main()
