//! ClipTokenizer against Hugging Face transformers 5.23 (`CLIPTokenizer`), from
//! fixtures/tokenizer/expected.json (written by scripts/fixtures/make_fixtures_tokenizer.py).
//!
//! Compared, with exact equality (no tolerance), for each of ~280 prompts (punctuation, unicode,
//! whitespace, contractions, numbers, casing, over-long prompts, the textual_inversion.py templates,
//! placeholders glued to punctuation, special tokens in the text, the empty string):
//!   * `encode` == `tokenizer(p, padding="max_length", truncation=True, max_length=77).input_ids`
//!   * `encode_unpadded` == `tokenizer(p).input_ids`
//!   * `tokenize` == `tokenizer.tokenize(p)` (cases that recorded it)
//!   * `len`, `pad_id`/`bos_id`/`eos_id`, `model_max_length`, and the placeholders' ids.
//!
//! Cases: the SD 1.5 folder (vocab.json + merges.txt) with and without `add_tokens`; the SD 2.x
//! variant (pad "!") and transformers-4 saves (added_tokens_decoder, added_tokens.json), each
//! assembled in a tempdir from sd15's vocab/merges plus a small overlay folder; and the folders
//! transformers 5 `save_pretrained` writes (tokenizer.json), unzipped to a tempdir. Plus the
//! errors: missing files, garbage files, adding a token that exists.
mod common;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;
use textual_inversion::models::tokenizer::ClipTokenizer;

fn fixtures() -> PathBuf {
    common::fixtures().join("tokenizer")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("fixtures/tokenizer/expected.json");
    serde_json::from_str(&text).expect("expected.json")
}

/// The sd15 vocab/merges with another folder's config files over them, in a tempdir.
fn assemble(overlay: &str) -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join(overlay);
    std::fs::create_dir(&dir).unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(fixtures().join("sd15").join(f), dir.join(f)).unwrap();
    }
    for entry in std::fs::read_dir(fixtures().join(overlay)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    (tmp, dir)
}

/// The folder a case loads from (the TempDir, if any, must outlive its use).
fn case_dir(case: &Value) -> (Option<TempDir>, PathBuf) {
    let folder = case["folder"].as_str().unwrap();
    if let Some(overlay) = case["overlay"].as_str() {
        let (tmp, dir) = assemble(overlay);
        return (Some(tmp), dir);
    }
    if let Some(zip) = case["zip"].as_str() {
        let tmp = TempDir::new().unwrap();
        let file = std::fs::File::open(fixtures().join(zip)).unwrap();
        zip::ZipArchive::new(file).unwrap().extract(tmp.path()).unwrap();
        let dir = tmp.path().join(folder);
        return (Some(tmp), dir);
    }
    (None, fixtures().join(folder))
}

fn i64s(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn check_case(name: &str) {
    let all = expected();
    let case = &all["cases"][name];
    assert!(case.is_object(), "no case {name} in expected.json");
    let (_tmp, dir) = case_dir(case);
    let mut tok = ClipTokenizer::from_folder(&dir).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    if let Some(add) = case["add_tokens"].as_array() {
        let add: Vec<&str> = add.iter().map(|t| t.as_str().unwrap()).collect();
        let ids = tok.add_tokens(&add).unwrap();
        let want: Vec<i64> = add.iter().map(|t| case["added"][t].as_i64().unwrap()).collect();
        assert_eq!(ids, want, "{name}: ids of the added tokens");
    }
    for (t, id) in case["added"].as_object().unwrap() {
        assert_eq!(tok.token_id(t), id.as_i64(), "{name}: id of {t:?}");
    }
    assert_eq!(tok.len() as u64, case["len"].as_u64().unwrap(), "{name}: len(tokenizer)");
    assert_eq!(tok.model_max_length() as u64, case["model_max_length"].as_u64().unwrap(), "{name}");
    assert_eq!(tok.pad_id(), case["pad_id"].as_i64().unwrap(), "{name}: pad id");
    assert_eq!(tok.bos_id(), case["bos_id"].as_i64().unwrap(), "{name}: bos id");
    assert_eq!(tok.eos_id(), case["eos_id"].as_i64().unwrap(), "{name}: eos id");

    let prompts: Vec<&str> = all["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(prompts.len() >= 250);
    let mut failures = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let ids = i64s(&case["ids"][i]);
        let mut padded = ids.clone();
        padded.extend(std::iter::repeat_n(tok.pad_id(), case["pad"][i].as_u64().unwrap() as usize));
        let got = tok.encode(p).unwrap();
        if got != padded {
            failures.push(format!("encode({p:?}):\n  transformers {padded:?}\n  ours         {got:?}"));
        }
        let full = case["full"].get(i.to_string()).map(i64s).unwrap_or(ids);
        let got = tok.encode_unpadded(p).unwrap();
        if got != full {
            failures.push(format!("encode_unpadded({p:?}):\n  transformers {full:?}\n  ours         {got:?}"));
        }
        if let Some(tokens) = case.get("tokens") {
            let want: Vec<&str> = tokens[i].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
            let got = tok.tokenize(p).unwrap();
            if got != want {
                failures.push(format!("tokenize({p:?}):\n  transformers {want:?}\n  ours         {got:?}"));
            }
        }
    }
    let batch = tok.encode_batch(&prompts[..20]).unwrap();
    for (p, ids) in prompts[..20].iter().zip(batch) {
        assert_eq!(ids, tok.encode(p).unwrap(), "{name}: encode_batch vs encode for {p:?}");
    }
    assert!(failures.is_empty(), "{name}: {} mismatches with transformers; first ones:\n{}", failures.len(), failures[..failures.len().min(8)].join("\n"));
}

#[test]
fn sd15_vocab_and_merges() {
    check_case("sd15");
}

#[test]
fn sd15_with_placeholders() {
    check_case("sd15_added");
}

#[test]
fn sd2_pad_token() {
    check_case("sd2");
}

#[test]
fn sd2_with_placeholders() {
    check_case("sd2_added");
}

#[test]
fn transformers4_save_with_added_tokens_decoder() {
    check_case("legacy");
}

#[test]
fn transformers4_save_with_added_tokens_json_only() {
    check_case("legacy_old");
}

#[test]
fn tokenizer_json_as_transformers5_saves_it() {
    check_case("json");
}

#[test]
fn tokenizer_json_with_saved_placeholders() {
    check_case("json_added");
}

#[test]
fn the_brief_example() {
    let tok = ClipTokenizer::from_folder(&fixtures().join("sd15")).unwrap();
    let ids = tok.encode("a photo of a cat").unwrap();
    assert_eq!(ids[..7], [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert_eq!(ids.len(), 77);
    assert!(ids[7..].iter().all(|&i| i == 49407));
}

fn err_of(r: anyhow::Result<ClipTokenizer>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn adding_an_existing_token_fails() {
    let (_tmp, dir) = case_dir(&expected()["cases"]["json_added"]);
    let mut tok = ClipTokenizer::from_folder(&dir).unwrap();
    let before = tok.len();
    let e = tok.add_tokens(&["<new>", "<cat-toy>"]).unwrap_err().to_string();
    assert!(e.contains("already contains the token \"<cat-toy>\"") && e.contains("49408"), "{e}");
    let e = tok.add_tokens(&["cat"]).unwrap_err().to_string(); // a vocabulary entry
    assert!(e.contains("\"cat\"") && e.contains("1481"), "{e}");
    let e = tok.add_tokens(&["<x>", "<x>"]).unwrap_err().to_string();
    assert!(e.contains("listed twice"), "{e}");
    assert!(tok.add_tokens(&[""]).unwrap_err().to_string().contains("empty"));
    assert_eq!(tok.len(), before, "a failed add_tokens must add nothing");
    assert_eq!(tok.add_tokens(&["<new>"]).unwrap(), vec![before as i64]);
}

#[test]
fn missing_and_broken_files_are_named() {
    let tmp = TempDir::new().unwrap();
    let e = err_of(ClipTokenizer::from_folder(tmp.path()));
    assert!(e.contains("no tokenizer.json") && e.contains("vocab.json is missing"), "{e}");

    let (_t, dir) = assemble("sd2");
    std::fs::remove_file(dir.join("merges.txt")).unwrap();
    let e = err_of(ClipTokenizer::from_folder(&dir));
    assert!(e.contains("merges.txt is missing"), "{e}");

    let (_t, dir) = assemble("sd2");
    std::fs::write(dir.join("vocab.json"), b"{\"a\": 0, garbage").unwrap();
    let e = err_of(ClipTokenizer::from_folder(&dir));
    assert!(e.contains("vocab.json"), "{e}");

    let (_t, dir) = assemble("sd2");
    std::fs::write(dir.join("vocab.json"), b"[1, 2, 3]").unwrap();
    let e = err_of(ClipTokenizer::from_folder(&dir));
    assert!(e.contains("vocab.json"), "{e}");

    let (_t, dir) = assemble("sd2");
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\ni n\nthree parts here\n").unwrap();
    let e = err_of(ClipTokenizer::from_folder(&dir));
    assert!(e.contains("merges.txt"), "{e}");

    let (_t, dir) = assemble("sd2");
    std::fs::write(dir.join("tokenizer_config.json"), "{not json").unwrap();
    let e = err_of(ClipTokenizer::from_folder(&dir));
    assert!(e.contains("tokenizer_config.json is not valid JSON"), "{e}");

    let (_t, dir) = assemble("sd2");
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"model_max_length": 1}"#).unwrap();
    let e = err_of(ClipTokenizer::from_folder(&dir));
    assert!(e.contains("tokenizer_config.json") && e.contains("model_max_length"), "{e}");

    let (_t, dir) = assemble("legacy_old");
    std::fs::write(dir.join("added_tokens.json"), r#"{"<cat-toy>": 49500}"#).unwrap();
    let e = err_of(ClipTokenizer::from_folder(&dir));
    assert!(e.contains("\"<cat-toy>\" is saved with id 49500 but gets id 49408"), "{e}");

    let tmp = TempDir::new().unwrap();
    std::fs::write(tmp.path().join("tokenizer.json"), r#"{"model": {"type": "Unigram", "vocab": []}}"#).unwrap();
    let e = err_of(ClipTokenizer::from_folder(tmp.path()));
    assert!(e.contains("tokenizer.json") && e.contains("not \"BPE\""), "{e}");
}

#[test]
fn model_max_length_defaults_to_77() {
    let (_t, dir) = assemble("sd2");
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"model_max_length": 1000000000000000019884624838656}"#).unwrap();
    assert_eq!(ClipTokenizer::from_folder(&dir).unwrap().model_max_length(), 77);
    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
    let tok = ClipTokenizer::from_folder(Path::new(&dir)).unwrap();
    assert_eq!(tok.model_max_length(), 77);
    // Without tokenizer_config.json the pad token comes from special_tokens_map.json ("!").
    assert_eq!(tok.pad_id(), 0);
}
