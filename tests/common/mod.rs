//! What the integration tests share: where the repository and its fixtures are, the tiny
//! model (and variants of it), the published embedding files, and the reference Python.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `fixtures/`: small models and reference values made by PyTorch (see each folder's
/// `generated_with`).
pub fn fixtures() -> PathBuf {
    repo().join("fixtures")
}

/// The tiny random SD model (`fixtures/tiny-sd`).
pub fn tiny_sd() -> PathBuf {
    fixtures().join("tiny-sd")
}

/// The tiny model, or (for another prediction type) a copy in `tmp` whose scheduler predicts
/// that, with the other components linked.
pub fn tiny_sd_predicting(prediction: &str, tmp: &Path) -> PathBuf {
    let src = repo().join("fixtures/tiny-sd");
    if prediction == "epsilon" {
        return src;
    }
    let dst = tmp.join("tiny-sd-vpred");
    std::fs::create_dir_all(dst.join("scheduler")).unwrap();
    for part in ["model_index.json", "tokenizer", "text_encoder", "unet", "vae"] {
        std::os::unix::fs::symlink(src.join(part), dst.join(part)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("scheduler/scheduler_config.json")).unwrap()).unwrap();
    cfg["prediction_type"] = prediction.into();
    std::fs::write(dst.join("scheduler/scheduler_config.json"), cfg.to_string()).unwrap();
    dst
}

#[path = "../../formats/tests/support/skip.rs"]
mod skip;
#[allow(unused_imports)]
pub use skip::skip;

#[path = "../../formats/tests/support/realworld.rs"]
mod realworld;

/// See `formats/tests/support/realworld.rs`.
pub fn realworld_dir(test: &str) -> Option<PathBuf> {
    realworld::realworld_dir(&repo(), test)
}

#[path = "../../formats/tests/support/python.rs"]
mod python;
#[allow(unused_imports)]
pub use python::reference_python;

/// The names `read_dir` yields, in the directory's own order (what Python's `os.listdir` gives).
pub fn listing(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
}

/// A folder in `parent` holding `images` (file names under fixtures/train/seed/images) so that
/// its directory order lists them in the given order, and that order is not the sorted one.
pub fn folder_listing(parent: &Path, images: &[String]) -> PathBuf {
    folder_listing_from(parent, images, "images")
}

/// [`folder_listing`] from fixtures/train/seed/`set` (e.g. "images-jpeg"); each copy keeps its
/// source's extension.
pub fn folder_listing_from(parent: &Path, images: &[String], set: &str) -> PathBuf {
    let src = fixtures().join("train/seed").join(set);
    let ext = |image: &String| Path::new(image).extension().map_or_else(|| "png".to_string(), |e| e.to_string_lossy().into_owned());
    for attempt in 0..200 {
        let dir = parent.join(format!("data{attempt}"));
        std::fs::create_dir(&dir).unwrap();
        for (k, image) in images.iter().enumerate() {
            std::fs::File::create(dir.join(format!("img{attempt}_{k}.{}", ext(image)))).unwrap();
        }
        let order = listing(&dir);
        let mut sorted = order.clone();
        sorted.sort();
        if order == sorted {
            continue;
        }
        for (name, image) in order.iter().zip(images) {
            // Truncate and fill the existing entry: no new directory entry, so no reordering.
            std::fs::write(dir.join(name), std::fs::read(src.join(image)).unwrap()).unwrap();
        }
        assert_eq!(listing(&dir), order, "writing the files reordered the directory");
        return dir;
    }
    panic!("this file system lists every folder tried in sorted order");
}

/// The first embedding's vectors in an embedding file, flattened.
pub fn embedding_rows(path: &Path) -> Vec<f32> {
    let f = textual_inversion::formats::embeddings::read(path).unwrap();
    f.embeddings[0].parts[0].tensor.to_f32_vec()
}

/// max |a - b| / max(1, max |b|), asserted within `tol`; returns it.
pub fn close_within(what: &str, a: &tch::Tensor, b: &tch::Tensor, tol: f64) -> f64 {
    use tch::Kind;
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let err = (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1.0);
    assert!(err <= tol, "{what}: differs by {err:e} (relative)");
    err
}

/// The script's AdamW over `rows` and its LR schedule, from a recording's `args` (the script's
/// flags, `learning_rate` already scaled by `--scale_lr`), the optimizer at the first step's LR.
pub fn script_optimizer(
    args: &serde_json::Value,
    rows: Vec<tch::Tensor>,
) -> (textual_inversion::train::optim::AdamW, textual_inversion::train::lr_schedule::LrScheduler) {
    use textual_inversion::train::lr_schedule::{LrSchedule, LrScheduler, ScheduleArgs};
    use textual_inversion::train::optim::{AdamW, AdamWConfig};
    let f = |k: &str| args[k].as_f64().unwrap();
    let lr = f("learning_rate");
    let cfg = AdamWConfig { lr, beta1: f("adam_beta1"), beta2: f("adam_beta2"), eps: f("adam_epsilon"), weight_decay: f("adam_weight_decay") };
    let mut opt = AdamW::new(rows, cfg).unwrap();
    let schedule = LrSchedule::from_name(
        args["lr_scheduler"].as_str().unwrap(),
        &ScheduleArgs {
            num_warmup_steps: args["lr_warmup_steps"].as_i64().unwrap(),
            num_training_steps: args["max_train_steps"].as_i64().unwrap(),
            num_cycles: args["lr_num_cycles"].as_i64().unwrap(),
            learning_rate: lr,
        },
    )
    .unwrap();
    let sched = LrScheduler::new(schedule, lr);
    opt.set_lr(sched.lr());
    (opt, sched)
}

/// Every file (not folder) under `dir`, at any depth, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Whether this build has c10d (data-parallel ranks); records a skip for `test` when not.
pub fn c10d_available(test: String) -> bool {
    if textual_inversion::distributed::AVAILABLE {
        return true;
    }
    assert!(
        std::env::var_os("TI_REQUIRE_C10D").is_none(),
        "{test}: TI_REQUIRE_C10D is set (scripts/setup-gloo.sh found gloo's headers) but this build has no c10d"
    );
    skip(&test, "this build has no c10d: gloo's headers were not found when it was built (docs/distributed.md)");
    false
}

/// One micro-step the Python script logged (`accelerator.log`): its global step, loss and LR.
#[derive(serde::Deserialize)]
pub struct Logged {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
}

/// A fixture's recorded command line with its placeholders filled in: `<tmp>/tiny-sd-vpred`
/// (the v-prediction copy of the tiny model) by `model`, `<tmp>` by `tmp`, `<data>` by `data`.
pub fn script_args(cli_args: &[String], model: &Path, tmp: &Path, data: &Path) -> Vec<String> {
    cli_args
        .iter()
        .map(|a| a.replace("<tmp>/tiny-sd-vpred", model.to_str().unwrap()).replace("<tmp>", tmp.to_str().unwrap()).replace("<data>", data.to_str().unwrap()))
        .collect()
}

/// Our run in `out` against the script's: every line of `metrics.jsonl` against `logged` (loss
/// within 1e-5 relative, global step equal, LR within 1e-12 relative), and each file of `saved`
/// against the fixture's copy (1e-4 max-abs); `saved` must include the final file. Returns a
/// line of what was observed.
pub fn compare_with_script(name: &str, out: &Path, logged: &[Logged], fixture: &Path, saved: &[String]) -> String {
    let ours: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(ours.len(), logged.len(), "{name}: micro-steps");
    let mut worst = 0f64;
    for (k, (o, t)) in ours.iter().zip(logged).enumerate() {
        let loss = o["loss"].as_f64().unwrap();
        let rel = (loss - t.loss).abs() / t.loss.abs().max(1e-12);
        worst = worst.max(rel);
        assert!(rel <= 1e-5, "{name}: micro-step {k}: loss {loss} vs the script's {} (relative {rel:e})", t.loss);
        assert_eq!(o["step"].as_u64().unwrap(), t.step, "{name}: micro-step {k}: global step");
        let lr = o["lr"].as_f64().unwrap();
        assert!((lr - t.lr).abs() <= 1e-12 * t.lr.abs().max(1e-30), "{name}: micro-step {k}: lr {lr} vs {}", t.lr);
    }
    let mut files = Vec::new();
    for file in saved {
        let (a, b) = (embedding_rows(&out.join(file)), embedding_rows(&fixture.join(file)));
        assert_eq!(a.len(), b.len(), "{name}: {file}");
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(err <= 1e-4, "{name}: {file}: max abs difference {err:e}");
        files.push(format!("{file} {err:.1e}"));
    }
    assert!(saved.iter().any(|f| f == "learned_embeds.safetensors"), "{name}: no final file in the fixture");
    format!("{} micro-steps, worst loss difference {worst:.1e} relative; {}", ours.len(), files.join(", "))
}

/// Every fixture folder (one holding a `run.json`) under `fixtures` has its `parity("NAME")`
/// call in the test file `test_file` (so a regenerated matrix cannot grow a configuration
/// nobody runs), and there are at least `min` of them.
pub fn assert_every_run_tested(test_file: &str, fixtures: &str, min: usize) {
    let source = std::fs::read_to_string(repo().join(test_file)).unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join(fixtures)).unwrap() {
        let path = entry.unwrap().path();
        if path.join("run.json").is_file() {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            assert!(source.contains(&format!("parity(\"{name}\")")), "{name} has no test in {test_file}");
            n += 1;
        }
    }
    assert!(n >= min, "{fixtures}: {n} configurations");
}

/// `train ARGS --num_processes WORLD` (one thread a rank), then [`compare_with_script`] of rank
/// 0's log and files (the script logs rank 0's loss, and rank 0 writes the files) against the
/// script's; returns the observed line.
pub fn train_ranks_like_the_script(name: &str, args: &[String], world: usize, out: &Path, logged: &[Logged], fixture: &Path, saved: &[String]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_textual-inversion"))
        .current_dir(repo())
        .arg("train")
        .args(args)
        .args(["--report_to", "none", "--num_processes", &world.to_string()])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    format!("{world} ranks, {}", compare_with_script(name, out, logged, fixture, saved))
}

/// A command's output, asserting it succeeded (its stderr is the failure message).
pub fn ok(o: std::process::Output) -> std::process::Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Decodes every file of a Pillow fixture folder (`expected.json` and `expected.safetensors`, as
/// the jpeg and webp sections write them) that Pillow opened, asserting the size, the mode and
/// every sample equal to Pillow's `convert("RGB")`; returns how many files were checked.
pub fn assert_decodes_as_pillow(dir: &Path) -> usize {
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let pillow: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    let mut checked = 0;
    for (name, want) in expected["files"].as_object().unwrap() {
        if want["pillow"] != "ok" {
            continue;
        }
        let got = textual_inversion::train::dataset::load_rgb(&dir.join(name)).unwrap_or_else(|err| panic!("{name}: {err:#}"));
        let (w, h) = (want["width"].as_u64().unwrap() as u32, want["height"].as_u64().unwrap() as u32);
        assert_eq!(got.rgb.dimensions(), (w, h), "{name}");
        assert_eq!(got.source_mode, want["mode"].as_str().unwrap(), "{name}");
        let t = &pillow[name.as_str()];
        let mut reference = vec![0u8; t.numel()];
        t.copy_data_u8(&mut reference, t.numel());
        let got = got.rgb.as_raw();
        assert_eq!(got.len(), reference.len(), "{name}: {} samples, Pillow's {}", got.len(), reference.len());
        let diff = got.iter().zip(&reference).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        let differing = got.iter().zip(&reference).filter(|(a, b)| a != b).count();
        println!("{name} ({}, {w}x{h}): max difference {diff}, {differing} samples differ", want["form"].as_str().unwrap());
        assert_eq!(diff, 0, "{name}: {differing} samples differ from Pillow's");
        checked += 1;
    }
    checked
}

/// max |a - b| / max |b| (shapes asserted equal).
pub fn rel_err(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    use tch::Kind;
    assert_eq!(a.size(), b.size());
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(f64::MIN_POSITIVE)
}
