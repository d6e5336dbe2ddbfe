//! The guide's Hub ids and `--push_to_hub`: `--embedding owner/name` as diffusers'
//! `load_textual_inversion(id)` (learned_embeds.safetensors, else .bin; --weight_name,
//! --embedding_revision), `--train_data_dir owner/dataset` trained exactly as the snapshot
//! folder, offline from a cache laid out as huggingface_hub writes it (blobs, snapshot links,
//! refs) and online against a local server answering what hf-hub asks; links out of the cache
//! refused; `--push_to_hub` through a stand-in `hf` that records its command lines, with the
//! model card compared to the one the script's `save_model_card` writes (fixtures/hub).
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use textual_inversion::models::files::HubOptions;
use textual_inversion::models::hub::{embedding_file, train_data_dir};

mod common;
use common::{fixtures, listing, repo};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER_COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_textual-inversion"));
    for k in ["HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"] {
        c.env_remove(k);
    }
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn offline(cache: &Path) -> HubOptions {
    HubOptions { cache_dir: Some(cache.to_path_buf()), offline: true, token: None, endpoint: None }
}

/// A blob name as the Hub's ETag would give it (any stable digest of the content will do).
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

/// Writes a repo into `cache` as huggingface_hub lays it out: `blobs/<etag>`,
/// `snapshots/<commit>/<file>` linking `../../blobs/<etag>`, `refs/<revision>` holding the commit.
fn cache_repo(cache: &Path, folder: &str, revision: Option<&str>, commit: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let root = cache.join(folder);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    let snapshot = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for (name, bytes) in files {
        let tag = etag(bytes);
        std::fs::write(root.join("blobs").join(&tag), bytes).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{tag}"), snapshot.join(name)).unwrap();
    }
    if let Some(r) = revision {
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs").join(r), commit).unwrap();
    }
    snapshot
}

/// A diffusers embedding file `{token: [1, 32]}` (tiny-sd's width) filled with `value`.
fn embedding_bytes(dir: &Path, token: &str, value: f64, bin_format: bool) -> Vec<u8> {
    let st = dir.join(format!("{token}-{value}.safetensors"));
    let t = tch::Tensor::full([1, 32], value, (tch::Kind::Float, tch::Device::Cpu));
    tch::Tensor::write_safetensors(&[(token, &t)], &st).unwrap();
    if !bin_format {
        return std::fs::read(&st).unwrap();
    }
    let b = st.with_extension("bin");
    let out = bin().arg("convert").arg(&st).arg(&b).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read(&b).unwrap()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn embedding_ids_resolve_in_the_cache_as_load_textual_inversion() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let st = embedding_bytes(dir.path(), "<cat-toy>", 0.5, false);
    let bin_file = embedding_bytes(dir.path(), "<cat-toy>", 0.25, true);
    // Both files: safetensors first; --weight_name picks the other.
    cache_repo(
        &cache,
        "models--sd-concepts-library--cat-toy",
        Some("main"),
        COMMIT,
        &[("learned_embeds.safetensors", st.clone()), ("learned_embeds.bin", bin_file.clone())],
    );
    let hub = offline(&cache);
    let got = embedding_file("sd-concepts-library/cat-toy", None, None, &hub).unwrap();
    assert_eq!(file_name(&got), "learned_embeds.safetensors");
    assert_eq!(std::fs::read(&got).unwrap(), st);
    let got = embedding_file("sd-concepts-library/cat-toy", Some("learned_embeds.bin"), None, &hub).unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), bin_file);
    // Only a .bin (older sd-concepts-library repos): that one.
    cache_repo(&cache, "models--owner--bin-only", Some("main"), COMMIT, &[("learned_embeds.bin", bin_file.clone())]);
    assert_eq!(file_name(&embedding_file("owner/bin-only", None, None, &hub).unwrap()), "learned_embeds.bin");
    // A revision: its ref, or a commit's snapshot folder.
    cache_repo(&cache, "models--owner--revs", Some("main"), COMMIT, &[("learned_embeds.safetensors", st.clone())]);
    cache_repo(&cache, "models--owner--revs", Some("v2"), OTHER_COMMIT, &[("learned_embeds.bin", bin_file.clone())]);
    assert_eq!(file_name(&embedding_file("owner/revs", None, Some("v2"), &hub).unwrap()), "learned_embeds.bin");
    assert_eq!(file_name(&embedding_file("owner/revs", None, Some(OTHER_COMMIT), &hub).unwrap()), "learned_embeds.bin");
    assert_eq!(file_name(&embedding_file("owner/revs", None, None, &hub).unwrap()), "learned_embeds.safetensors");
    // Missing: the id, the files tried, the offline hint.
    let e = format!("{:#}", embedding_file("owner/absent", None, None, &hub).unwrap_err());
    for want in ["owner/absent@main", "learned_embeds.safetensors", "learned_embeds.bin", "HF_HUB_OFFLINE"] {
        assert!(e.contains(want), "{want:?} not in: {e}");
    }
    let e = format!("{:#}", embedding_file("sd-concepts-library/cat-toy", Some("other.pt"), None, &hub).unwrap_err());
    assert!(e.contains("no other.pt") && !e.contains("learned_embeds.bin"), "{e}");
    // A snapshot link out of the repo's cache folder is refused.
    let outside = dir.path().join("outside.safetensors");
    std::fs::write(&outside, &st).unwrap();
    let snap = cache_repo(&cache, "models--owner--escape", Some("main"), COMMIT, &[]);
    std::os::unix::fs::symlink(&outside, snap.join("learned_embeds.safetensors")).unwrap();
    let e = format!("{:#}", embedding_file("owner/escape", None, None, &hub).unwrap_err());
    assert!(e.contains("outside its repository's cache folder"), "{e}");
}

fn decode_png(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    buf
}

#[test]
fn generate_with_an_embedding_id_equals_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let st = embedding_bytes(dir.path(), "<cat-toy>", 0.5, false);
    let snap = cache_repo(&cache, "models--sd-concepts-library--cat-toy", Some("main"), COMMIT, &[("learned_embeds.safetensors", st)]);
    let run = |embedding: &str, out: &Path, extra: &[&str]| {
        let o = bin()
            .env("HF_HUB_CACHE", &cache)
            .env("HF_HUB_OFFLINE", "1")
            .args(["generate", "--pretrained_model_name_or_path"])
            .arg(repo().join("fixtures/tiny-sd"))
            .args(["--prompt", "a photo of <cat-toy> and <toy2>", "--num_inference_steps", "2", "--seed", "3", "--height", "64", "--width", "64"])
            .args(["--embedding", embedding])
            .args(extra)
            .arg("--output_dir")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        decode_png(&out.join("0000-3.png"))
    };
    let local = snap.join("learned_embeds.safetensors").canonicalize().unwrap();
    let by_file = run(&format!("{}:<toy2>", local.display()), &dir.path().join("a"), &["--embedding", local.to_str().unwrap()]);
    let by_id = run("sd-concepts-library/cat-toy:<toy2>", &dir.path().join("b"), &["--embedding", "sd-concepts-library/cat-toy"]);
    assert_eq!(by_file, by_id);
    // Offline and absent: the id and the hint, before any model loads.
    let o = bin()
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .args(["generate", "--pretrained_model_name_or_path", "fixtures/none", "--prompt", "x", "--embedding", "owner/absent"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("owner/absent@main") && stderr(&o).contains("HF_HUB_OFFLINE"), "{}", stderr(&o));
}

/// The training images (fixtures/train/seed/images), in a fixed order.
fn images() -> Vec<(String, Vec<u8>)> {
    let src = fixtures().join("train/seed/images");
    let mut names: Vec<String> = listing(&src);
    names.sort();
    names.into_iter().map(|n| (n.clone(), std::fs::read(src.join(&n)).unwrap())).collect()
}

fn train(data: &str, out: &Path, env: &[(&str, &Path)], extra: &[&str]) -> Output {
    let mut c = bin();
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(["train", "--pretrained_model_name_or_path"])
        .arg(repo().join("fixtures/tiny-sd"))
        .args(["--train_data_dir", data])
        .args(["--placeholder_token", "<t>", "--initializer_token", "toy", "--resolution", "32", "--max_train_steps", "2", "--train_batch_size", "2"])
        .args(["--seed", "1", "--report_to", "none", "--output_dir"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn training_on_a_dataset_id_equals_training_on_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let imgs = images();
    let files: Vec<(&str, Vec<u8>)> = imgs.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let snap = cache_repo(&cache, "datasets--diffusers--cat_toy_example", Some("main"), COMMIT, &files);
    std::fs::create_dir(snap.join("sub")).unwrap();
    // The same names created in the same order: the same directory order.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for (n, b) in &files {
        std::fs::write(copy.join(n), b).unwrap();
    }
    std::fs::create_dir(copy.join("sub")).unwrap();
    assert_eq!(listing(&snap), listing(&copy), "the two folders list differently: the comparison would not be fair");
    let env = [("HF_HUB_CACHE", cache.as_path()), ("HF_HUB_OFFLINE", Path::new("1"))];
    let (a, b) = (dir.path().join("by-id"), dir.path().join("by-folder"));
    let o = train("diffusers/cat_toy_example", &a, &env, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(copy.to_str().unwrap(), &b, &env, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(a.join("learned_embeds.safetensors")).unwrap(), std::fs::read(b.join("learned_embeds.safetensors")).unwrap());
    // A snapshot entry linking out of the repo's cache folder: refused, by name.
    let outside = dir.path().join("elsewhere.png");
    std::fs::write(&outside, &files[0].1).unwrap();
    std::os::unix::fs::symlink(&outside, snap.join("zz-planted.png")).unwrap();
    let e = format!("{:#}", train_data_dir(Path::new("diffusers/cat_toy_example"), None, &offline(&cache)).unwrap_err());
    assert!(e.contains("zz-planted.png") && e.contains("outside its repository's cache folder"), "{e}");
    let o = train("diffusers/cat_toy_example", &dir.path().join("c"), &env, &[]);
    assert!(!o.status.success() && stderr(&o).contains("zz-planted.png"), "{}", stderr(&o));
    // Absent offline: the id, the cache, the hint.
    let e = format!("{:#}", train_data_dir(Path::new("owner/absent"), None, &offline(&cache)).unwrap_err());
    assert!(e.contains("owner/absent") && e.contains("HF_HUB_OFFLINE"), "{e}");
    // A local folder keeps today's rules: an existing path is never a Hub id.
    assert_eq!(train_data_dir(&copy, None, &offline(&cache)).unwrap(), copy);
}

/// A minimal Hub: `GET /api/<kind>s/<id>/revision/<rev>` (the file list) and
/// `GET /<prefix><id>/resolve/<rev>/<file>` with ranges, the headers hf-hub reads (ETag,
/// X-Repo-Commit, Content-Range); everything else 404. Records each request's first line and
/// Authorization header.
struct Hub {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

fn serve(routes: HashMap<String, (Vec<u8>, bool)>) -> Hub {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut headers = HashMap::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(format!("{path} auth={}", headers.get("authorization").cloned().unwrap_or_default()));
            let response = match routes.get(&path) {
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                Some((body, false)) => {
                    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                        .into_bytes();
                    r.extend(body);
                    r
                }
                Some((body, true)) => {
                    let len = body.len();
                    let (start, end) = match headers.get("range").and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-')) {
                        Some((s, e)) => (s.parse::<usize>().unwrap_or(0), e.parse::<usize>().map(|e| e.min(len - 1)).unwrap_or(len - 1)),
                        None => (0, len - 1),
                    };
                    let part = &body[start..=end];
                    let mut r = format!(
                        "HTTP/1.1 206 Partial Content\r\nETag: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\nContent-Range: bytes {start}-{end}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        etag(body),
                        part.len()
                    )
                    .into_bytes();
                    r.extend(part);
                    r
                }
            };
            let _ = stream.write_all(&response);
            let _ = stream.flush();
            let _ = reader.read(&mut [0; 0]);
        }
    });
    Hub { url, seen }
}

#[test]
fn downloads_through_the_endpoints_hf_hub_calls() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let st = embedding_bytes(dir.path(), "<cat-toy>", 0.5, false);
    let bin_file = embedding_bytes(dir.path(), "<b>", 0.25, true);
    let imgs = images();
    let mut routes = HashMap::new();
    routes.insert("/sd-concepts-library/cat-toy/resolve/main/learned_embeds.safetensors".to_string(), (st.clone(), true));
    routes.insert("/owner/bin-only/resolve/main/learned_embeds.bin".to_string(), (bin_file.clone(), true));
    let mut siblings = vec![serde_json::json!({"rfilename": ".gitattributes"}), serde_json::json!({"rfilename": "sub/nested.png"})];
    for (n, b) in &imgs {
        routes.insert(format!("/datasets/diffusers/cat_toy_example/resolve/main/{n}"), (b.clone(), true));
        siblings.push(serde_json::json!({ "rfilename": n }));
    }
    let info = serde_json::json!({"sha": COMMIT, "siblings": siblings});
    routes.insert("/api/datasets/diffusers/cat_toy_example/revision/main".to_string(), (info.to_string().into_bytes(), false));
    let hub = serve(routes);
    let online = HubOptions { cache_dir: Some(cache.clone()), offline: false, token: Some("tok123".into()), endpoint: Some(hub.url.clone()) };

    let got = embedding_file("sd-concepts-library/cat-toy", None, None, &online).unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), st);
    assert_eq!(got, cache.join("models--sd-concepts-library--cat-toy/snapshots").join(COMMIT).join("learned_embeds.safetensors"));
    // No .safetensors on the Hub (404): the .bin.
    let got = embedding_file("owner/bin-only", None, None, &online).unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), bin_file);

    let snap = train_data_dir(Path::new("diffusers/cat_toy_example"), None, &online).unwrap();
    let repo_dir = cache.join("datasets--diffusers--cat_toy_example");
    assert_eq!(snap, repo_dir.join("snapshots").join(COMMIT));
    let mut names = listing(&snap);
    names.sort();
    assert_eq!(names, imgs.iter().map(|i| i.0.clone()).collect::<Vec<_>>(), "top-level files only, hidden ones left out");
    for (n, b) in &imgs {
        assert!(std::fs::symlink_metadata(snap.join(n)).unwrap().file_type().is_symlink(), "{n}: not linked into blobs");
        assert_eq!(&std::fs::read(snap.join(n)).unwrap(), b);
    }
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    let seen = hub.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.ends_with("auth=Bearer tok123")), "every request carries HF_TOKEN: {seen:?}");
    assert!(!seen.iter().any(|s| s.contains("nested.png") || s.contains(".gitattributes")), "{seen:?}");
    let e = format!("{:#}", train_data_dir(Path::new("data/typo"), None, &online).unwrap_err());
    assert!(e.contains("no folder of that name, and no Hub dataset data/typo"), "{e}");
    // Offline afterwards: the same snapshot from the cache alone.
    assert_eq!(train_data_dir(Path::new("diffusers/cat_toy_example"), None, &offline(&cache)).unwrap(), snap);
    assert_eq!(embedding_file("owner/bin-only", None, None, &offline(&cache)).unwrap(), got);
}

/// A stand-in `hf` in `dir/bin` that appends its command line and whether it got a token to
/// `dir/hf.log`; `hf auth whoami` answers as hf 1.x does with --format json (or fails when
/// `dir/logged-out` exists); `hf upload` fails when `dir/upload-fails` exists.
fn stand_in_hf(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let d = dir.display();
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {d}/hf.log\necho \"token=${{HF_TOKEN:-none}}\" >> {d}/hf.log\n\
         if [ \"$1 $2\" = \"auth whoami\" ]; then\n  if [ -e {d}/logged-out ]; then echo 'Not logged in. Run `hf auth login` first.' >&2; exit 1; fi\n  echo '{{\"user\": \"tester\"}}'\nfi\n\
         if [ \"$1\" = upload ] && [ -e {d}/upload-fails ]; then echo 'upload failed' >&2; exit 3; fi\nexit 0\n"
    );
    let exe = bin_dir.join("hf");
    std::fs::write(&exe, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin_dir
}

#[test]
fn model_card_is_the_scripts() {
    let cards: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("hub/cards.json")).unwrap()).unwrap();
    for case in cards["cases"].as_array().unwrap() {
        let want = std::fs::read_to_string(fixtures().join("hub").join(case["readme"].as_str().unwrap())).unwrap();
        let got = textual_inversion::train::push::model_card(
            case["repo_id"].as_str().unwrap(),
            case["base_model"].as_str().unwrap(),
            case["images"].as_u64().unwrap() as usize,
        );
        assert_eq!(got, want, "case {}", case["name"]);
    }
}

#[test]
fn push_to_hub_uploads_through_hf() {
    let dir = tempfile::tempdir().unwrap();
    let path = stand_in_hf(dir.path());
    let out = dir.path().join("cat-toy-out");
    let extra = ["--push_to_hub", "--hub_token", "sekrit-token", "--validation_prompt", "a <t>", "--num_validation_images", "2", "--validation_steps", "2"];
    let o = train(&fixtures().join("dataset/images").display().to_string(), &out, &[("PATH", &path)], &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read_to_string(dir.path().join("hf.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let commands: Vec<&str> = lines.iter().step_by(2).copied().collect();
    let o_s = out.display().to_string();
    assert_eq!(
        commands,
        vec![
            "auth whoami --format json".to_string(),
            "auth whoami --format json".to_string(),
            "repos create tester/cat-toy-out --exist-ok".to_string(),
            format!("upload tester/cat-toy-out {o_s} . --exclude step_* --exclude epoch_* --commit-message End of training"),
        ]
    );
    // The token reaches hf in its environment only: not its command line, the log, the files.
    assert!(lines.iter().skip(1).step_by(2).all(|l| *l == "token=sekrit-token"), "{log}");
    assert!(!commands.iter().any(|c| c.contains("sekrit")));
    assert!(!stderr(&o).contains("sekrit") && !String::from_utf8_lossy(&o.stdout).contains("sekrit"));
    for entry in walk(&out) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!bytes.windows(6).any(|w| w == b"sekrit"), "{} holds the token", entry.display());
    }
    // The script's card with the last validation's images; the full pipeline saved, as the
    // script forces it.
    let base = repo().join("fixtures/tiny-sd").display().to_string();
    assert_eq!(std::fs::read_to_string(out.join("README.md")).unwrap(), textual_inversion::train::push::model_card("tester/cat-toy-out", &base, 2));
    for i in 0..2 {
        assert_eq!(std::fs::read(out.join(format!("image_{i}.png"))).unwrap(), std::fs::read(out.join(format!("validation/step-2-{i}.png"))).unwrap());
    }
    assert!(out.join("model_index.json").is_file() && out.join("learned_embeds.safetensors").is_file());
    assert!(stderr(&o).contains("Enabling full model saving"), "{}", stderr(&o));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            found.extend(walk(&e.path()));
        } else if t.is_file() {
            found.push(e.path());
        }
    }
    found
}

#[test]
fn push_to_hub_fails_before_training_without_hf_or_login() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixtures().join("dataset/images").display().to_string();
    // No hf on PATH.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = dir.path().join("o1");
    let o = train(&data, &out, &[("PATH", &empty)], &["--push_to_hub"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`hf` command, which is not on PATH") && stderr(&o).contains("pip install"), "{}", stderr(&o));
    assert!(!out.join("learned_embeds.safetensors").exists() && !out.join("model_index.json").exists());
    // Not logged in.
    let path = stand_in_hf(dir.path());
    std::fs::write(dir.path().join("logged-out"), "").unwrap();
    let out = dir.path().join("o2");
    let o = train(&data, &out, &[("PATH", &path)], &["--push_to_hub"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not logged in") && stderr(&o).contains("hf auth login"), "{}", stderr(&o));
    assert!(!out.join("learned_embeds.safetensors").exists());
    let log = std::fs::read_to_string(dir.path().join("hf.log")).unwrap();
    assert!(log.lines().all(|l| l.starts_with("auth whoami") || l.starts_with("token=")), "{log}");
    // Logged in, the upload fails: an error, the trained files kept.
    std::fs::remove_file(dir.path().join("logged-out")).unwrap();
    std::fs::write(dir.path().join("upload-fails"), "").unwrap();
    let out = dir.path().join("o3");
    let o = train(&data, &out, &[("PATH", &path)], &["--push_to_hub", "--hub_model_id", "org/named"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`hf upload` failed") && stderr(&o).contains("kept in"), "{}", stderr(&o));
    assert!(out.join("learned_embeds.safetensors").is_file() && out.join("README.md").is_file());
    assert!(std::fs::read_to_string(dir.path().join("hf.log")).unwrap().contains("repos create org/named --exist-ok"));
}

#[test]
fn push_to_hub_data_parallel_uploads_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = stand_in_hf(dir.path());
    let out = dir.path().join("dp");
    // The data by Hub id too: rank 0 resolves it, rank 1 after it.
    let cache = dir.path().join("hub");
    let imgs = images();
    let files: Vec<(&str, Vec<u8>)> = imgs.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    cache_repo(&cache, "datasets--diffusers--cat_toy_example", Some("main"), COMMIT, &files);
    let env = [("PATH", path.as_path()), ("HF_HUB_CACHE", cache.as_path()), ("HF_HUB_OFFLINE", Path::new("1"))];
    let o = train("diffusers/cat_toy_example", &out, &env, &["--push_to_hub", "--num_processes", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read_to_string(dir.path().join("hf.log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.starts_with("upload ")).count(), 1, "{log}");
    assert_eq!(log.lines().filter(|l| l.starts_with("repos create ")).count(), 1, "{log}");
}
