#!/usr/bin/env python3
"""Writes fixtures/train/: step-by-step recordings of diffusers' REAL textual_inversion.py, for the
Rust training tests (replay each micro-step, compare losses, updates and the saved embeddings).

Regenerate (from the repository root; CPU only, a minute or two):

    $(scripts/python-env.sh) scripts/make_fixtures_train.py --script PATH

PATH is diffusers' examples/textual_inversion/textual_inversion.py (default
~/.cache/textual-inversion/diffusers-examples/textual_inversion.py). It is NOT part of this
repository; get it from a diffusers checkout, e.g.

    git clone https://github.com/huggingface/diffusers && cd diffusers && git checkout v0.40.0
    mkdir -p ~/.cache/textual-inversion/diffusers-examples
    cp examples/textual_inversion/textual_inversion.py ~/.cache/textual-inversion/diffusers-examples/

The committed fixtures were made from tag v0.40.0 (commit d035dcd7cc7c88e0a154609b62887d50bba9fdc2,
sha256 117c575f..., byte-identical to main and post-0.40.0 except for the check_min_version line)
with the pinned environment (torch 2.11.0, torchvision 0.26.0, diffusers 0.42.1, transformers
5.23.0, accelerate 1.15.0). `--out DIR` writes somewhere else (to compare two regenerations:
they are byte-identical; nothing time-dependent is stored).

How it runs. Each run is a fresh Python process (accelerate's AcceleratorState/GradientState are
process-wide singletons) that sets sys.argv and executes the unmodified script with
`runpy.run_path(script, run_name="__main__")`, CPU only (CUDA_VISIBLE_DEVICES=""), fp32,
HF_HUB_OFFLINE=1, ACCELERATE_* variables removed, torch.set_num_threads(1) (fixed reduction order
so the bytes do not depend on the core count), no validation, cwd = repository root (so the
recorded arguments are relative paths; temp dirs are written as "<tmp>"). The recording is
transparent: the script run with only the first three patches below (and one thread) writes
byte-identical learned_embeds files. With torch's default thread count the results differ by a
few ULPs (about 3e-8 in the final embedding), which is why the thread count is pinned.

What is patched (all from this file, before the script runs; the script itself is not edited):
  * diffusers.utils.check_min_version -> no-op: scripts from main require a dev version newer than
    the pinned release (the training code is unchanged).
  * Accelerator.init_trackers -> records `config` (the script's vars(args)) and starts nothing;
    Accelerator.log -> records (values, step) and writes nothing. So no tracker (tensorboard) is
    needed or created; --report_to keeps its default.
  * TextualInversionDataset (reached when the script builds its DataLoader: a wrapper around
    torch.utils.data.DataLoader.__init__): its `image_paths` (os.listdir order, which depends on
    the file system) are SORTED by name, so that the recording does not depend on the file system
    (the replay feeds the recorded items whatever their order; --seed against the directory order
    is scripts/make_fixtures_seed.py's); the original order is recorded.
    `__getitem__` and the instance's `flip_transform` are wrapped to record, per loaded item, the
    dataset index, image, template index (random.choice), caption, flip decision (the torchvision
    transform returns the same object when it does not flip) and the pixels. Behaviour and RNG
    use are unchanged.
  * Observers only (call the original, record inputs/outputs): Accelerator.accumulate (micro-step
    boundaries, sync_gradients), Accelerator.backward (the undivided loss), CLIPTextModel.forward
    (input_ids), AutoencoderKL.encode (pixel_values), DiagonalGaussianDistribution.sample (mean,
    std) and the randn_tensor it calls (the standard-normal draw), DDPMScheduler.add_noise (scaled
    latents, noise, timesteps, noisy latents), torch.nn.functional.mse_loss (model_pred, target,
    loss), CLIPTextModel.resize_token_embeddings (rows the mean-resizing drew),
    CLIPTokenizer.convert_tokens_to_ids / encode (placeholder and initializer ids),
    accelerate.utils.set_seed, RandomSampler.__iter__ (epochs), random.choice (index drawn), and
    global torch.optim step pre/post hooks (lr, gradient rows, rows and AdamW moments after each
    update).
  * A TorchFunctionMode logs every random op (randn, randint, rand, randperm, *_like, normal_,
    random_, uniform_, dropout, ...) with its phase, shape, generator (default or explicit) and
    small values. The CPU default generator's state is captured before/after each logged op; the
    recorder checks that the state never changes between logged ops (from set_seed to the end), so
    the event list is the complete sequence of global-RNG draws. Same for Python's `random` around
    each random.choice.

Runs (all: --resolution 64, seed given, fp32, CPU):
  multi   nv=2, B=2, G=2, 10 updates (20 micro-steps, 3 epochs of 16 items, the last cut short),
          constant lr 5e-3, save/checkpoint every 5 updates (learned_embeds-steps-5 and -10;
          the checkpoint-N folders are not copied)
  single  nv=1, B=1, G=1, 8 updates, linear schedule with 3 warmup steps, --center_crop,
          save every 5 updates
  vpred   v_prediction (tiny-sd copied to a temp dir with prediction_type "v_prediction" in its
          scheduler config; weights symlinked), style templates, nv=3, B=2, G=1, repeats 1 (two
          batches per epoch, reshuffled each epoch), 4 updates, --scale_lr (lr 1e-3 -> 2e-3),
          cosine with 1 warmup step, weight decay 0, save every 2 updates, seed 1234

Written per run, under fixtures/train/<run>/:
  record.safetensors  (S micro-steps, B batch, U updates, nv vectors, K distinct images)
      step_input_ids        [S,B,77] i64   text encoder input
      step_pixel_index      [S,B]    i64   row of pixels_u8 fed to the VAE
      pixels_u8             [K,3,64,64] u8 the preprocessed image (after crop/resize/flip) as bytes;
                            the script's pixel_values are exactly (u8 as f64 / 127.5 - 1.0) as f32
                            (checked bit for bit); stored this way to keep the fixtures small
      step_posterior_mean   [S,B,4,8,8] f32  latent_dist.mean
      step_posterior_std    [S,B,4,8,8] f32  latent_dist.std
      step_posterior_eps    [S,B,4,8,8] f32  randn drawn by latent_dist.sample()
                            (sample = mean + std * eps, checked bit for bit)
      step_latents          [S,B,4,8,8] f32  sample * scaling_factor (checked bit for bit)
      step_noise            [S,B,4,8,8] f32
      step_timesteps        [S,B] i64
      step_noisy_latents    [S,B,4,8,8] f32  noise_scheduler.add_noise(latents, noise, timesteps)
      step_model_pred       [S,B,4,8,8] f32  UNet output
      step_target           [S,B,4,8,8] f32  (vpred only; for epsilon the target is step_noise)
      step_loss             [S] f32          F.mse_loss(model_pred, target) (before the /G in backward)
      step_sync             [S] u8           accelerator.sync_gradients in that micro-step
      update_micro_step     [U] i64          micro-step at which the optimizer stepped
      update_lr             [U] f64          param_groups[0]["lr"] used by that AdamW step
      update_grad_rows      [U,nv,32] f32    accumulated gradient of the placeholder rows
      update_rows           [U,nv,32] f32    placeholder rows after the step
      update_exp_avg_rows, update_exp_avg_sq_rows [U,nv,32] f32  AdamW moments of those rows
      placeholder_token_ids [nv] i64;  initializer_token_id [1] i64
      initializer_row       [32] f32         row of the initializer token
      initial_placeholder_rows [nv,32] f32   placeholder rows when training starts
      resize_sampled_rows   [nv,32] f32      rows resize_token_embeddings drew (then overwritten)
      learned_embeds        [nv,32] f32      the final learned_embeds.safetensors tensor
      learned_embeds_steps_<N> [nv,32] f32   each learned_embeds-steps-N.safetensors tensor
  record.json   cli args, vars(args) as the script saw them, versions, script sha256, image order,
                per loaded item (index, image, template, caption, flip, pixel row), per micro-step
                (epoch, items, sync, update), accelerator.log calls, the global RNG event log and
                its completeness check, files written to the output dir
  learned_embeds.safetensors, learned_embeds-steps-<N>.safetensors   copies of the script's files
"""
import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCRIPT = Path.home() / ".cache" / "textual-inversion" / "diffusers-examples" / "textual_inversion.py"
KNOWN_SCRIPTS = {
    "117c575fb59a1150dd0e95faab23d92eb9031b55e2e9f4f63413647fa1f14a99":
        "huggingface/diffusers tag v0.40.0 (d035dcd7cc7c88e0a154609b62887d50bba9fdc2) "
        "examples/textual_inversion/textual_inversion.py",
}

COMMON = [
    "--pretrained_model_name_or_path", "{model}",
    "--train_data_dir", "fixtures/dataset/images",
    "--resolution", "64",
    "--output_dir", "{out}",
    "--mixed_precision", "no",
    "--dataloader_num_workers", "0",
]
RUNS = {
    "multi": dict(
        vpred=False,
        args=[
            "--placeholder_token", "<cat-toy>", "--initializer_token", "toy",
            "--learnable_property", "object", "--num_vectors", "2", "--repeats", "4",
            "--train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_train_steps", "10",
            "--learning_rate", "5e-3", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
            "--seed", "0", "--save_steps", "5", "--checkpointing_steps", "5",
        ],
    ),
    "single": dict(
        vpred=False,
        args=[
            "--placeholder_token", "<cat-toy>", "--initializer_token", "toy",
            "--learnable_property", "object", "--num_vectors", "1", "--repeats", "4",
            "--train_batch_size", "1", "--gradient_accumulation_steps", "1", "--max_train_steps", "8",
            "--learning_rate", "5e-3", "--lr_scheduler", "linear", "--lr_warmup_steps", "3",
            "--seed", "0", "--save_steps", "5", "--center_crop",
        ],
    ),
    "vpred": dict(
        vpred=True,
        args=[
            "--placeholder_token", "<my-style>", "--initializer_token", "painting",
            "--learnable_property", "style", "--num_vectors", "3", "--repeats", "1",
            "--train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_train_steps", "4",
            "--learning_rate", "1e-3", "--scale_lr", "--lr_scheduler", "cosine", "--lr_warmup_steps", "1",
            "--adam_weight_decay", "0", "--seed", "1234", "--save_steps", "2",
        ],
    ),
}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Parent: one child process per run, then assemble fixtures/train/<run>/.
# ----------------------------------------------------------------------------------------------


def make_vpred_model(tmp):
    dst = Path(tmp) / "tiny-sd-vpred"
    dst.mkdir()
    src = ROOT / "fixtures" / "tiny-sd"
    for entry in sorted(src.iterdir()):
        if entry.name == "scheduler":
            (dst / "scheduler").mkdir()
            cfg = json.loads((entry / "scheduler_config.json").read_text())
            cfg["prediction_type"] = "v_prediction"
            (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg, indent=2))
        else:
            os.symlink(entry.resolve(), dst / entry.name)
    return dst


def run_one(name, spec, script, out_root):
    with tempfile.TemporaryDirectory(prefix=f"ti-fixture-{name}-") as tmp:
        model = make_vpred_model(tmp) if spec["vpred"] else "fixtures/tiny-sd"
        out = Path(tmp) / "out"
        rec = Path(tmp) / "rec"
        rec.mkdir()
        args = [a.format(model=model, out=out) for a in COMMON] + spec["args"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
        env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
        cmd = [sys.executable, __file__, "--_child", json.dumps(
            dict(name=name, script=str(script), args=args, rec=str(rec), tmp=tmp))]
        log = Path(tmp) / "child.log"
        with open(log, "w") as f:
            r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            sys.stderr.write(log.read_text()[-20000:])
            raise SystemExit(f"run {name} failed ({r.returncode})")
        dst = out_root / name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        shutil.copyfile(rec / "record.safetensors", dst / "record.safetensors")
        shutil.copyfile(rec / "record.json", dst / "record.json")
        for f in sorted(out.glob("learned_embeds*.safetensors")):
            shutil.copyfile(f, dst / f.name)
        print(f"[train fixtures] {name}: " + ", ".join(
            f"{p.name} {p.stat().st_size}" for p in sorted(dst.iterdir())))


def parent(opts):
    script = Path(opts.script).expanduser().resolve()
    if not script.is_file():
        raise SystemExit(f"{script}: not found; see the docstring for how to get textual_inversion.py")
    out_root = Path(opts.out).resolve() if opts.out else ROOT / "fixtures" / "train"
    out_root.mkdir(parents=True, exist_ok=True)
    for name in opts.runs or list(RUNS):
        run_one(name, RUNS[name], script, out_root)
    total = sum(p.stat().st_size for p in out_root.rglob("*") if p.is_file())
    print(f"[train fixtures] total {total} bytes in {out_root}")


# ----------------------------------------------------------------------------------------------
# Child: patch, run the script, record.
# ----------------------------------------------------------------------------------------------


def child(cfg):
    import random
    import runpy

    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file
    from torch.overrides import TorchFunctionMode

    torch.set_num_threads(1)

    import accelerate
    import accelerate.utils
    import diffusers
    import diffusers.models.autoencoders.vae as vae_mod
    import diffusers.utils
    import transformers
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    tmp = cfg["tmp"]

    def rel(v):
        if isinstance(v, str):
            v = v.replace(tmp, "<tmp>")
            if v.startswith(str(ROOT) + "/"):
                v = v[len(str(ROOT)) + 1:]
        return v

    def small(t):
        t = t.detach()
        if t.dtype in (torch.int64, torch.int32) and t.numel() <= 64:
            return t.flatten().tolist()
        if t.is_floating_point() and t.numel() <= 8:
            return t.flatten().double().tolist()
        return None

    class Rec:
        pass

    R = Rec()
    R.phase = "import"
    R.events = []          # global RNG / python random log
    R.quiet = {}           # random ops that did not touch the default generator
    R.gaps = []            # default-generator state changes between logged ops
    R.py_gaps = []
    R.last_state = None
    R.last_py_state = None
    R.items = []           # dataset loads, in order
    R.queue = []           # loaded, not yet consumed by a micro-step
    R.steps = []
    R.cur = None
    R.updates = []
    R.logs = []
    R.config = None
    R.epoch = -1
    R.text_encoder = None
    R.placeholder_ids = None
    R.initializer_ids = None
    R.resize = None
    R.image_order = None
    R.pixel_keys = {}      # (image, flip) -> row
    R.pixels = []
    R.seed_calls = []

    def check_state(where):
        s = torch.get_rng_state()
        if R.last_state is not None and not torch.equal(s, R.last_state):
            R.gaps.append(dict(phase=R.phase, before=where))
        return s

    RNG_NAMES = {
        "randn", "rand", "randint", "randperm", "randn_like", "rand_like", "randint_like", "normal",
        "bernoulli", "multinomial", "poisson", "normal_", "uniform_", "random_", "exponential_",
        "bernoulli_", "cauchy_", "log_normal_", "geometric_", "dropout", "dropout1d", "dropout2d",
        "dropout3d", "alpha_dropout", "feature_alpha_dropout", "rrelu", "rrelu_", "native_dropout",
        "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
        "orthogonal_", "sparse_",
    }

    here = os.path.abspath(__file__)

    def caller():
        f = sys._getframe(2)
        while f is not None and (os.path.abspath(f.f_code.co_filename) == here
                                 or f.f_code.co_filename.endswith(("torch/overrides.py", "torch/nn/init.py"))):
            f = f.f_back
        if f is None:
            return None
        fn = f.f_code.co_filename
        fn = fn.split("site-packages/", 1)[-1] if "site-packages/" in fn else os.path.basename(fn)
        return f"{fn}:{f.f_code.co_name}"

    class RngLog(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", None)
            if name not in RNG_NAMES:
                return func(*args, **kwargs)
            gen = kwargs.get("generator")
            tracking = R.last_state is not None
            if tracking:
                check_state(name)
            out = func(*args, **kwargs)
            after = torch.get_rng_state()
            consumed = bool(tracking and not torch.equal(after, R.last_state))
            if tracking:
                R.last_state = after
            if not consumed and gen is None:
                # e.g. dropout with p=0 / eval, or init functions that loading turns into no-ops
                k = f"{name} ({R.phase.split(':')[0]})"
                R.quiet[k] = R.quiet.get(k, 0) + 1
                return out
            ev = dict(phase=R.phase, op=name, gen="default" if gen is None else "explicit",
                      caller=caller())
            if isinstance(out, torch.Tensor):
                ev["shape"] = list(out.shape)
                ev["dtype"] = str(out.dtype).replace("torch.", "")
                v = small(out)
                if v is not None:
                    ev["values"] = v
            if name == "randint":
                ev["args"] = [a for a in args if isinstance(a, int)]
            if name.startswith("dropout"):
                ev.update(p=float(kwargs.get("p", args[1] if len(args) > 1 else 0.5)))
            ev["consumed_default"] = consumed
            R.events.append(ev)
            return out

    # --- check_min_version ---------------------------------------------------------------------
    diffusers.utils.check_min_version = lambda *a, **k: None

    # --- set_seed: start of RNG tracking -----------------------------------------------------
    orig_set_seed = accelerate.utils.set_seed

    def set_seed(seed, *a, **k):
        r = orig_set_seed(seed, *a, **k)
        R.seed_calls.append(int(seed))
        R.events.append(dict(phase=R.phase, op="set_seed", seed=int(seed)))
        R.last_state = torch.get_rng_state()
        R.last_py_state = random.getstate()
        R.phase = "setup"
        return r

    accelerate.utils.set_seed = set_seed

    # --- python random.choice ----------------------------------------------------------------
    orig_choice = random.choice

    class Probe:
        def __init__(self, seq):
            self.seq, self.idx = seq, None

        def __len__(self):
            return len(self.seq)

        def __getitem__(self, i):
            self.idx = i
            return self.seq[i]

    def choice(seq):
        if R.last_py_state is not None and random.getstate() != R.last_py_state:
            R.py_gaps.append(dict(phase=R.phase))
        p = Probe(seq)
        out = orig_choice(p)
        R.events.append(dict(phase=R.phase, op="random.choice", n=len(seq), index=p.idx))
        R.last_choice = p.idx
        if R.last_py_state is not None:
            R.last_py_state = random.getstate()
        return out

    random.choice = choice

    # --- trackers ------------------------------------------------------------------------------
    def init_trackers(self, project_name, config=None, init_kwargs=None):
        R.config = {k: rel(v) for k, v in (config or {}).items()}

    def log(self, values, step=None, log_kwargs=None):
        R.logs.append(dict(step=step, micro_step=len(R.steps) - 1,
                           values={k: (float(v) if not isinstance(v, str) else v) for k, v in values.items()}))

    Accelerator.init_trackers = init_trackers
    Accelerator.log = log

    # --- dataset instrumentation -----------------------------------------------------------------
    def instrument_dataset(ds):
        cls = type(ds)
        if getattr(ds, "_fixture_instrumented", False):
            return
        ds._fixture_instrumented = True
        R.image_order = dict(os_listdir=[os.path.basename(p) for p in ds.image_paths])
        ds.image_paths = sorted(ds.image_paths)
        R.image_order["used"] = [os.path.basename(p) for p in ds.image_paths]
        inner_flip = ds.flip_transform

        class FlipProbe:
            def __init__(self):
                self.flipped = None

            def __call__(self, img):
                out = inner_flip(img)
                self.flipped = out is not img
                return out

        probe = FlipProbe()
        ds.flip_transform = probe
        if getattr(cls, "_fixture_getitem", None) is None:
            orig_getitem = cls.__getitem__

            def getitem(self, i):
                prev = R.phase
                R.phase = f"load:{len(R.items)}"
                R.last_choice = None
                probe.flipped = None
                ex = orig_getitem(self, i)
                R.phase = prev
                image = os.path.basename(self.image_paths[i % self.num_images])
                pv = ex["pixel_values"]
                u8 = torch.round((pv.double() + 1.0) * 127.5).to(torch.uint8)
                back = (u8.permute(1, 2, 0).numpy().astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
                assert torch.equal(torch.from_numpy(back).permute(2, 0, 1), pv), "pixel u8 roundtrip"
                key = (image, bool(probe.flipped))
                if key not in R.pixel_keys:
                    R.pixel_keys[key] = len(R.pixels)
                    R.pixels.append(u8.clone())
                else:
                    assert torch.equal(R.pixels[R.pixel_keys[key]], u8)
                templ = self.templates[R.last_choice]
                caption = templ.format(self.placeholder_token)
                ids = self.tokenizer(caption, padding="max_length", truncation=True,
                                     max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids[0]
                assert torch.equal(ids, ex["input_ids"])
                item = dict(load=len(R.items), epoch=R.epoch, index=int(i), image=image,
                            template=R.last_choice, caption=caption, flip=bool(probe.flipped),
                            pixel_row=R.pixel_keys[key], used_in_step=None)
                R.items.append(item)
                R.queue.append((item, ex))
                return ex

            cls.__getitem__ = getitem
            cls._fixture_getitem = True

    orig_dl_init = torch.utils.data.DataLoader.__init__

    def dl_init(self, dataset, *a, **k):
        if type(dataset).__name__ == "TextualInversionDataset":
            instrument_dataset(dataset)
        return orig_dl_init(self, dataset, *a, **k)

    torch.utils.data.DataLoader.__init__ = dl_init

    orig_sampler_iter = torch.utils.data.RandomSampler.__iter__

    def sampler_iter(self):
        R.epoch += 1
        yield from orig_sampler_iter(self)

    torch.utils.data.RandomSampler.__iter__ = sampler_iter

    # --- tokenizer ids ---------------------------------------------------------------------------
    orig_ctti = CLIPTokenizer.convert_tokens_to_ids

    def ctti(self, tokens):
        out = orig_ctti(self, tokens)
        if isinstance(tokens, list) and R.placeholder_ids is None:
            R.placeholder_ids = list(out)
            R.placeholder_tokens = list(tokens)
        return out

    CLIPTokenizer.convert_tokens_to_ids = ctti
    orig_encode = CLIPTokenizer.encode

    def encode(self, text, *a, **k):
        out = orig_encode(self, text, *a, **k)
        if k.get("add_special_tokens") is False and R.initializer_ids is None:
            R.initializer_ids = list(out)
        return out

    CLIPTokenizer.encode = encode

    # --- resize_token_embeddings ---------------------------------------------------------------
    orig_resize = CLIPTextModel.resize_token_embeddings

    def resize(self, new_num_tokens=None, *a, **k):
        old = self.get_input_embeddings().weight.shape[0]
        prev = R.phase
        R.phase = "resize_token_embeddings"
        out = orig_resize(self, new_num_tokens, *a, **k)
        R.phase = prev
        R.text_encoder = self
        R.resize = dict(old=int(old), new=int(new_num_tokens),
                        rows=self.get_input_embeddings().weight.detach()[old:].clone())
        return out

    CLIPTextModel.resize_token_embeddings = resize

    # --- micro-step boundaries -------------------------------------------------------------------
    orig_accumulate = Accelerator.accumulate

    @contextlib.contextmanager
    def accumulate(self, *models):
        with orig_accumulate(self, *models):
            s = len(R.steps)
            if s == 0:
                w = R.text_encoder.get_input_embeddings().weight.detach()
                R.initial_rows = w[R.placeholder_ids].clone()
                R.initializer_row = w[R.initializer_ids[0]].clone()
            R.cur = dict(step=s, epoch=R.epoch, sync=bool(self.sync_gradients), update=None, t={})
            R.steps.append(R.cur)
            R.phase = f"step:{s}"
            try:
                yield
            finally:
                R.phase = f"after_step:{s}"

    Accelerator.accumulate = accumulate

    orig_backward = Accelerator.backward

    def backward(self, loss, **kwargs):
        R.cur["t"]["loss_backward"] = loss.detach().clone()
        R.cur["sync_at_backward"] = bool(self.sync_gradients)
        return orig_backward(self, loss, **kwargs)

    Accelerator.backward = backward

    orig_te_forward = CLIPTextModel.forward

    def te_forward(self, input_ids=None, *a, **k):
        if R.cur is not None and "input_ids" not in R.cur["t"]:
            R.cur["t"]["input_ids"] = input_ids.detach().clone()
        return orig_te_forward(self, input_ids, *a, **k)

    CLIPTextModel.forward = te_forward

    orig_vae_encode = AutoencoderKL.encode

    def vae_encode(self, x, *a, **k):
        if R.cur is not None:
            R.cur["t"]["pixel_values"] = x.detach().clone()
        return orig_vae_encode(self, x, *a, **k)

    AutoencoderKL.encode = vae_encode

    orig_sample = vae_mod.DiagonalGaussianDistribution.sample

    def dg_sample(self, generator=None):
        out = orig_sample(self, generator)
        if R.cur is not None:
            t = R.cur["t"]
            t["posterior_mean"] = self.mean.detach().clone()
            t["posterior_std"] = self.std.detach().clone()
            t["posterior_sample"] = out.detach().clone()
        return out

    vae_mod.DiagonalGaussianDistribution.sample = dg_sample

    orig_randn_tensor = vae_mod.randn_tensor

    def randn_tensor(*a, **k):
        out = orig_randn_tensor(*a, **k)
        if R.cur is not None:
            R.cur["t"]["posterior_eps"] = out.detach().clone()
        return out

    vae_mod.randn_tensor = randn_tensor

    orig_add_noise = DDPMScheduler.add_noise

    def add_noise(self, original_samples, noise, timesteps):
        out = orig_add_noise(self, original_samples, noise, timesteps)
        if R.cur is not None:
            t = R.cur["t"]
            t["latents"] = original_samples.detach().clone()
            t["noise"] = noise.detach().clone()
            t["timesteps"] = timesteps.detach().clone()
            t["noisy_latents"] = out.detach().clone()
            R.prediction_type = self.config.prediction_type
            R.scaling_note = None
        return out

    DDPMScheduler.add_noise = add_noise

    F = torch.nn.functional
    orig_mse = F.mse_loss

    def mse_loss(input, target, *a, **k):
        out = orig_mse(input, target, *a, **k)
        if R.cur is not None and "loss" not in R.cur["t"]:
            t = R.cur["t"]
            t["model_pred"] = input.detach().clone()
            t["target"] = target.detach().clone()
            t["loss"] = out.detach().clone()
        return out

    F.mse_loss = mse_loss

    # --- optimizer hooks -------------------------------------------------------------------------
    def pre_hook(opt, args, kwargs):
        p = opt.param_groups[0]["params"][0]
        ids = R.placeholder_ids
        R.updates.append(dict(micro_step=len(R.steps) - 1, lr=float(opt.param_groups[0]["lr"]),
                              grad=p.grad.detach()[ids].clone()))
        R.cur["update"] = len(R.updates) - 1

    def post_hook(opt, args, kwargs):
        p = opt.param_groups[0]["params"][0]
        ids = R.placeholder_ids
        st = opt.state[p]
        u = R.updates[-1]
        u["rows"] = p.detach()[ids].clone()
        u["exp_avg"] = st["exp_avg"][ids].clone()
        u["exp_avg_sq"] = st["exp_avg_sq"][ids].clone()
        u["state_step"] = float(st["step"])

    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(pre_hook)
    register_optimizer_step_post_hook(post_hook)

    # --- run ---------------------------------------------------------------------------------
    script = cfg["script"]
    sys.argv = [script] + cfg["args"]
    with RngLog():
        runpy.run_path(script, run_name="__main__")
    R.phase = "end"
    check_state("end of run")
    if random.getstate() != R.last_py_state:
        R.py_gaps.append(dict(phase="end of run"))

    # --- assemble ------------------------------------------------------------------------------
    T = {}
    S = len(R.steps)
    stacked = {}
    for key in ["input_ids", "posterior_mean", "posterior_std", "posterior_eps", "latents", "noise",
                "timesteps", "noisy_latents", "model_pred", "target"]:
        stacked[key] = torch.stack([s["t"][key] for s in R.steps])
    loss = torch.stack([s["t"]["loss"] for s in R.steps])
    loss_bw = torch.stack([s["t"]["loss_backward"] for s in R.steps])
    assert torch.equal(loss, loss_bw), "backward got the mse_loss output"

    # consistency checks
    out_dir = Path(cfg["args"][cfg["args"].index("--output_dir") + 1])
    model_dir = cfg["args"][cfg["args"].index("--pretrained_model_name_or_path") + 1]
    vae_cfg = json.loads((Path(model_dir) / "vae" / "config.json").read_text())
    sf = vae_cfg["scaling_factor"]
    for s in R.steps:
        t = s["t"]
        x = t["posterior_mean"] + t["posterior_std"] * t["posterior_eps"]
        assert torch.equal(x, t["posterior_sample"]), "sample = mean + std * eps"
        assert torch.equal(t["posterior_sample"] * sf, t["latents"]), "latents = sample * scaling_factor"
        assert torch.equal(orig_mse(t["model_pred"].float(), t["target"].float()), t["loss"])
        if R.prediction_type == "epsilon":
            assert torch.equal(t["target"], t["noise"])

    # micro-step -> loaded items (the loader fetches whole batches in order, one batch ahead)
    queue = list(R.queue)
    pixel_index = []
    for s in R.steps:
        t = s["t"]
        b = t["input_ids"].shape[0]
        batch, queue = queue[:b], queue[b:]
        rows = []
        for j, (item, ex) in enumerate(batch):
            assert torch.equal(ex["input_ids"], t["input_ids"][j])
            assert torch.equal(ex["pixel_values"], t["pixel_values"][j])
            item["used_in_step"] = s["step"]
            rows.append(item["pixel_row"])
        s["items"] = [item["load"] for item, _ in batch]
        pixel_index.append(rows)
    unused = [item["load"] for item, _ in queue]

    for k in ["input_ids", "posterior_mean", "posterior_std", "posterior_eps", "latents", "noise",
              "timesteps", "noisy_latents", "model_pred"]:
        T[f"step_{k}"] = stacked[k].contiguous()
    if R.prediction_type != "epsilon":
        T["step_target"] = stacked["target"].contiguous()
    T["step_pixel_index"] = torch.tensor(pixel_index, dtype=torch.int64)
    T["pixels_u8"] = torch.stack(R.pixels).contiguous()
    T["step_loss"] = loss.to(torch.float32).contiguous()
    T["step_sync"] = torch.tensor([s["sync"] for s in R.steps], dtype=torch.uint8)
    U = len(R.updates)
    T["update_micro_step"] = torch.tensor([u["micro_step"] for u in R.updates], dtype=torch.int64)
    T["update_lr"] = torch.tensor([u["lr"] for u in R.updates], dtype=torch.float64)
    T["update_grad_rows"] = torch.stack([u["grad"] for u in R.updates]).contiguous()
    T["update_rows"] = torch.stack([u["rows"] for u in R.updates]).contiguous()
    T["update_exp_avg_rows"] = torch.stack([u["exp_avg"] for u in R.updates]).contiguous()
    T["update_exp_avg_sq_rows"] = torch.stack([u["exp_avg_sq"] for u in R.updates]).contiguous()
    T["placeholder_token_ids"] = torch.tensor(R.placeholder_ids, dtype=torch.int64)
    T["initializer_token_id"] = torch.tensor(R.initializer_ids[:1], dtype=torch.int64)
    T["initializer_row"] = R.initializer_row.contiguous()
    T["initial_placeholder_rows"] = R.initial_rows.contiguous()
    assert all(torch.equal(r, R.initializer_row) for r in R.initial_rows)
    T["resize_sampled_rows"] = R.resize["rows"].contiguous()
    for s_ in R.steps:
        assert s_["sync"] == s_["sync_at_backward"]
    assert [s_["step"] for s_ in R.steps if s_["sync"]] == [u["micro_step"] for u in R.updates]

    files_written = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    placeholder = cfg["args"][cfg["args"].index("--placeholder_token") + 1]
    saved = {}
    for f in sorted(out_dir.glob("learned_embeds*.safetensors"), key=lambda p: p.name):
        d = load_file(f)
        assert list(d) == [placeholder]
        name = f.name[: -len(".safetensors")].replace("-", "_")
        T[name] = d[placeholder].contiguous()
        saved[f.name] = dict(sha256=sha256(f), shape=list(d[placeholder].shape))
    assert torch.equal(T["learned_embeds"], T["update_rows"][-1])
    for name in T:
        if name.startswith("learned_embeds_steps_"):
            n = int(name.rsplit("_", 1)[1])
            assert torch.equal(T[name], R.updates[n - 1]["rows"])

    save_file(T, os.path.join(cfg["rec"], "record.safetensors"))

    import PIL
    import safetensors as st_mod
    import tokenizers
    import torchvision

    script_sha = sha256(script)
    meta = dict(
        run=cfg["name"],
        script=dict(sha256=script_sha, source=KNOWN_SCRIPTS.get(script_sha, "unknown")),
        cli_args=[rel(a) for a in cfg["args"]],
        argv0="textual_inversion.py",
        env=dict(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", torch_num_threads=1, device="cpu"),
        patched_model=("fixtures/tiny-sd copied to <tmp>/tiny-sd-vpred with scheduler prediction_type "
                       "v_prediction" if "<tmp>" in rel(model_dir) else None),
        script_args=R.config,
        versions=dict(python=sys.version.split()[0], torch=torch.__version__, torchvision=torchvision.__version__,
                      diffusers=diffusers.__version__, transformers=transformers.__version__,
                      accelerate=accelerate.__version__, numpy=np.__version__, pillow=PIL.__version__,
                      safetensors=st_mod.__version__, tokenizers=tokenizers.__version__),
        prediction_type=R.prediction_type,
        scaling_factor=sf,
        placeholder_tokens=R.placeholder_tokens,
        placeholder_token_ids=R.placeholder_ids,
        initializer_token_ids=R.initializer_ids,
        resize_token_embeddings=dict(old=R.resize["old"], new=R.resize["new"]),
        image_order=R.image_order,
        num_micro_steps=S,
        num_updates=U,
        items=R.items,
        unused_loaded_items=unused,
        steps=[dict(step=s["step"], epoch=s["epoch"], sync=s["sync"], update=s["update"], items=s["items"],
                    loss=float(s["t"]["loss"]), captions=[R.items[i]["caption"] for i in s["items"]],
                    flips=[R.items[i]["flip"] for i in s["items"]]) for s in R.steps],
        updates=[dict(update=i, micro_step=u["micro_step"], lr=u["lr"], adam_step=u["state_step"])
                 for i, u in enumerate(R.updates)],
        accelerator_log=R.logs,
        rng=dict(
            note=("every random op seen by a TorchFunctionMode from set_seed on, in order; gen 'default' = the "
                  "global CPU generator; consumed_default = whether the global generator state changed; "
                  "random.choice = Python's random module (index drawn of n)"),
            complete_default_generator=not R.gaps,
            gaps=R.gaps,
            ops_without_default_draw=dict(sorted(R.quiet.items())),
            complete_python_random=not R.py_gaps,
            python_gaps=R.py_gaps,
            events=R.events,
        ),
        output_dir_files=files_written,
        saved_embeddings=saved,
    )
    with open(os.path.join(cfg["rec"], "record.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--script", default=str(DEFAULT_SCRIPT), help="path to diffusers' textual_inversion.py")
    ap.add_argument("--out", default=None, help="output folder (default fixtures/train)")
    ap.add_argument("--runs", nargs="*", choices=list(RUNS), help="only these runs")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts._child:
        child(json.loads(opts._child))
    else:
        parent(opts)


if __name__ == "__main__":
    main()
