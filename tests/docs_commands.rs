//! The documentation cannot drift from the tool:
//!
//! - every shell block marked runnable in README.md and docs/*.md runs: a fence with the info
//!   string `sh` on the line right after `<!-- ci: run -->`. Each page's blocks run in order,
//!   each with `bash -euo pipefail`, in one fresh temporary folder per page holding a link
//!   `fixtures` to the repository's fixtures (so examples read as typed from the repository
//!   root), with the built binary first on PATH, one libtorch thread and the Hub offline;
//! - every relative link in README.md, CONTRIBUTING.md, CHANGELOG.md and docs/*.md points to an
//!   existing file, and every `#anchor` to a heading there (GitHub's slugs);
//! - README.md stays short, and the pages it promises exist.
//!
//! `DOCS_PAGE=training.md` runs only the blocks of pages whose path ends so.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const MARKER: &str = "<!-- ci: run -->";
const README_MAX_BYTES: usize = 10_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, CONTRIBUTING.md, CHANGELOG.md and docs/*.md, sorted.
fn pages() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md"].iter().map(|p| repo().join(p)).collect();
    let mut docs: Vec<PathBuf> =
        std::fs::read_dir(repo().join("docs")).expect("docs/").map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    docs.sort();
    out.extend(docs);
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap_or(path).display().to_string()
}

/// A fenced code block: its info string, first line (1-based, the fence) and text.
struct Fence {
    info: String,
    line: usize,
    body: String,
    runnable: bool,
}

/// The page's fenced blocks, and its lines outside them (numbered) for links and headings.
fn parse(text: &str, page: &str) -> (Vec<Fence>, Vec<(usize, String)>) {
    let mut fences = Vec::new();
    let mut prose = Vec::new();
    let mut open: Option<(String, Fence)> = None;
    let mut marked_at: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim_start();
        if let Some((fence, block)) = &mut open {
            if trimmed.starts_with(fence.as_str()) && trimmed.trim_start_matches(fence.chars().next().unwrap()).trim().is_empty() {
                fences.push(open.take().unwrap().1);
            } else {
                block.body.push_str(line);
                block.body.push('\n');
            }
            continue;
        }
        let fence_char = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(c) = fence_char.filter(|c| trimmed.starts_with(&c.to_string().repeat(3))) {
            let len = trimmed.chars().take_while(|x| *x == c).count();
            let info = trimmed[len..].trim().to_string();
            let runnable = marked_at == Some(n - 1);
            if runnable {
                assert_eq!(info, "sh", "{page}:{n}: a `{MARKER}` block must be a ```sh fence");
            }
            marked_at = None;
            open = Some((c.to_string().repeat(len), Fence { info, line: n, body: String::new(), runnable }));
            continue;
        }
        if let Some(m) = marked_at {
            panic!("{page}:{m}: `{MARKER}` must be followed directly by a ```sh fence");
        }
        if trimmed == MARKER {
            marked_at = Some(n);
        } else if trimmed.starts_with("<!--") && trimmed.contains("ci:") {
            panic!("{page}:{n}: unknown marker {trimmed:?} (the runnable marker is `{MARKER}`)");
        }
        prose.push((n, line.to_string()));
    }
    assert!(open.is_none(), "{page}: a fenced block is not closed");
    assert!(marked_at.is_none(), "{page}: `{MARKER}` at the end of the page");
    (fences, prose)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn runnable_blocks(path: &Path) -> Vec<Fence> {
    parse(&read(path), &rel(path)).0.into_iter().filter(|f| f.runnable).collect()
}

#[test]
fn runnable_blocks_run() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_textual-inversion"));
    let path_var = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let only = std::env::var("DOCS_PAGE").ok().filter(|s| !s.is_empty());
    let mut failures = Vec::new();
    let mut ran = 0;
    for page in pages() {
        if only.as_ref().is_some_and(|o| !rel(&page).ends_with(o.as_str())) {
            continue;
        }
        let blocks = runnable_blocks(&page);
        if blocks.is_empty() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(repo().join("fixtures"), dir.path().join("fixtures")).unwrap();
        for block in blocks {
            let start = Instant::now();
            let out = Command::new("bash")
                .args(["-euo", "pipefail", "-c", &block.body])
                .current_dir(dir.path())
                .env("PATH", &path_var)
                .env("HF_HUB_OFFLINE", "1")
                .env("NO_COLOR", "1")
                // Tiny models: one thread is fastest, and on a busy machine libtorch's OpenMP
                // threads waiting on each other make a second one up to 15x slower.
                .env("OMP_NUM_THREADS", "1")
                .output()
                .expect("bash");
            ran += 1;
            let place = format!("{}:{}", rel(&page), block.line);
            eprintln!("{place}: {} in {:.1} s", if out.status.success() { "ok" } else { "FAILED" }, start.elapsed().as_secs_f64());
            if !out.status.success() {
                let tail = |b: &[u8]| {
                    let s = String::from_utf8_lossy(b);
                    let lines: Vec<&str> = s.lines().collect();
                    lines[lines.len().saturating_sub(25)..].join("\n")
                };
                failures.push(format!(
                    "{place}: the block failed ({})\n--- block\n{}--- stdout (end)\n{}\n--- stderr (end)\n{}",
                    out.status,
                    block.body,
                    tail(&out.stdout),
                    tail(&out.stderr)
                ));
            }
        }
    }
    assert!(only.is_some() || ran > 0, "no runnable blocks found");
    assert!(failures.is_empty(), "{} of {ran} documented command blocks failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn task_pages_have_runnable_examples() {
    // A marker typo would silently stop a page's examples from running: the pages that show
    // commands must keep some marked.
    for page in ["README.md", "docs/training.md", "docs/generating.md", "docs/sdxl.md", "docs/embeddings.md", "docs/models.md", "docs/install.md"] {
        let n = runnable_blocks(&repo().join(page)).len();
        assert!(n > 0, "{page} has no `{MARKER}` block");
    }
    for page in pages() {
        for f in parse(&read(&page), &rel(&page)).0 {
            // Unmarked shell blocks are fine (real models, GPUs); a runnable block must be sh.
            assert!(!f.runnable || f.info == "sh", "{}:{}", rel(&page), f.line);
        }
    }
}

#[test]
fn readme_is_short_and_the_promised_pages_exist() {
    let size = std::fs::metadata(repo().join("README.md")).unwrap().len() as usize;
    assert!(size <= README_MAX_BYTES, "README.md is {size} bytes, more than {README_MAX_BYTES}: move detail into docs/");
    for page in ["training", "generating", "sdxl", "embeddings", "models", "install", "fidelity", "benchmarks", "cli", "safety"] {
        assert!(repo().join(format!("docs/{page}.md")).is_file(), "docs/{page}.md is missing");
    }
    for file in ["CONTRIBUTING.md", "CHANGELOG.md"] {
        assert!(repo().join(file).is_file(), "{file} is missing");
    }
}

/// Text without inline code spans (a link inside backticks is not a link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let fence = "`".repeat(ticks);
        match rest[start + ticks..].find(&fence) {
            Some(end) => rest = &rest[start + ticks + end + ticks..],
            None => {
                rest = &rest[start + ticks..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `[text](target)` targets in a line of prose.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].trim();
        // `[text](target "title")`
        let target = target.split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
        rest = &after[end + 1..];
    }
    out
}

/// GitHub's anchor for a heading's text: formatting dropped, lowercased, punctuation removed
/// (letters, digits, `_`, `-` kept), spaces to `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    // [text](url) -> text
    let mut rest = heading;
    while let Some(i) = rest.find('[') {
        text.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match (after.find("]("), after.find(')')) {
            (Some(close), Some(paren)) if close < paren => {
                text.push_str(&after[..close]);
                rest = &after[paren + 1..];
            }
            _ => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.to_lowercase().chars().filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' ')).map(|c| if c == ' ' { '-' } else { c }).collect()
}

/// Every anchor a page's headings give (duplicates numbered as GitHub does).
fn anchors(path: &Path) -> BTreeSet<String> {
    let (_, prose) = parse(&read(path), &rel(path));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose {
        let t = line.trim_start();
        let hashes = t.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !t[hashes..].starts_with(' ') {
            continue;
        }
        let text = t[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(text);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn relative_links_resolve() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let (_, prose) = parse(&read(&page), &rel(&page));
        for (n, line) in prose {
            for target in link_targets(&line) {
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let dest = if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
                if !dest.exists() {
                    broken.push(format!("{}:{n}: {target}: no file {}", rel(&page), rel(&dest)));
                    continue;
                }
                if let Some(anchor) = anchor {
                    if dest.extension().is_some_and(|e| e == "md") && !anchors(&dest).contains(anchor) {
                        broken.push(format!("{}:{n}: {target}: {} has no heading with the anchor #{anchor}", rel(&page), rel(&dest)));
                    }
                }
            }
        }
    }
    assert!(checked > 0, "no relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("Reproduce a Python run with `--seed`"), "reproduce-a-python-run-with---seed");
    assert_eq!(slug("Differences from textual_inversion_sdxl.py"), "differences-from-textual_inversion_sdxlpy");
    assert_eq!(slug("Options from kohya's scripts and the A1111 web UI"), "options-from-kohyas-scripts-and-the-a1111-web-ui");
    assert_eq!(slug("Check the installation: info"), "check-the-installation-info");
    assert_eq!(slug("See [the docs](x.md)"), "see-the-docs");
}
