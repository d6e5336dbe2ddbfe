//! `generate --prompt_file F`: many prompts in one run, as jobs with stable indices, so that
//! the images of a job are the same and carry the same file names however many processes share
//! the file and in whatever order they run it.
//!
//! A line is a job unless it is blank or starts with `#`. A line starting with `{` is a JSON
//! object with any of `prompt`, `negative_prompt`, `seed`, `width`, `height`,
//! `num_inference_steps`, `guidance_scale`, `num_images` (any other key is refused, naming the
//! line and the key); any other line is a prompt as written. What a line leaves out comes from
//! the command's flags.
//!
//! Job k's seed is the line's `seed`, or else the command's seed plus k (wrapping at 2^64): a
//! function of k alone, never of which rank runs the job or what ran before it. Its images are
//! one batch drawn from that seed, the images `generate --seed S --num_images_per_prompt N`
//! makes for the same prompt, written as [`image_name`].
use super::GenerateOptions;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The largest prompt file read: a million prompts of a dozen words fit well below it.
pub const MAX_BYTES: u64 = 64 << 20;

/// One line of the prompt file, with every setting resolved.
#[derive(Debug, Clone)]
pub struct Job {
    /// 0-based among the file's jobs (blank and `#` lines are not counted).
    pub index: usize,
    /// 1-based line in the file, for messages.
    pub line: usize,
    /// What the pipeline makes for this job; `seed` resolved as the module's doc says.
    pub options: GenerateOptions,
}

impl Job {
    /// The file names of this job's images, in batch order.
    pub fn image_names(&self) -> Vec<String> {
        (0..self.options.num_images_per_prompt).map(|i| image_name(self.index, i, self.options.seed)).collect()
    }
}

/// `JJJJ-II-SEED.png`: job index (4 digits or more), image index in the job's batch (2 digits),
/// and the job's seed. A different shape from the single-prompt `NNNN-SEED.png`, so that the
/// two kinds of runs can share a folder without taking each other's names.
pub fn image_name(job: usize, image: usize, seed: u64) -> String {
    format!("{job:04}-{image:02}-{seed}.png")
}

/// A JSON line: every field optional.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: Option<String>,
    negative_prompt: Option<String>,
    seed: Option<u64>,
    width: Option<i64>,
    height: Option<i64>,
    num_inference_steps: Option<usize>,
    guidance_scale: Option<f64>,
    num_images: Option<usize>,
}

/// Reads the jobs of `path` (a regular file of UTF-8 text, at most [`MAX_BYTES`]). `base` holds
/// the command's settings, `base.seed` the command's seed; `default_prompt` is `--prompt`, for
/// JSON lines without a prompt. Errors name the file and line.
pub fn read(path: &Path, base: &GenerateOptions, default_prompt: Option<&str>) -> Result<Vec<Job>> {
    let text = crate::formats::regular::read_to_string(path, MAX_BYTES).context("reading the prompt file (--prompt_file)")?;
    parse(&text, &path.display().to_string(), base, default_prompt)
}

/// [`read`] on text already read; `name` is the file named in errors.
pub fn parse(text: &str, name: &str, base: &GenerateOptions, default_prompt: Option<&str>) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let index = jobs.len();
        let mut options = GenerateOptions { seed: base.seed.wrapping_add(index as u64), ..base.clone() };
        if trimmed.starts_with('{') {
            let l: Line = serde_json::from_str(trimmed).with_context(|| {
                format!("{name}:{line}: expected a JSON object with any of prompt, negative_prompt, seed (0..2^64), width, height, num_inference_steps, guidance_scale, num_images")
            })?;
            options.prompt = match (l.prompt, default_prompt) {
                (Some(p), _) => p,
                (None, Some(p)) => p.to_string(),
                (None, None) => bail!("{name}:{line}: no \"prompt\" in this line and no --prompt to fall back on"),
            };
            if l.negative_prompt.is_some() {
                options.negative_prompt = l.negative_prompt;
            }
            if let Some(s) = l.seed {
                options.seed = s;
            }
            options.width = l.width.or(options.width);
            options.height = l.height.or(options.height);
            options.steps = l.num_inference_steps.unwrap_or(options.steps);
            options.guidance_scale = l.guidance_scale.or(options.guidance_scale);
            options.num_images_per_prompt = l.num_images.unwrap_or(options.num_images_per_prompt);
        } else {
            options.prompt = trimmed.to_string();
        }
        options.check().with_context(|| format!("{name}:{line}: this job's settings"))?;
        jobs.push(Job { index, line, options });
    }
    if jobs.is_empty() {
        bail!("{name}: no prompts (every line is blank or a # comment)");
    }
    Ok(jobs)
}

/// The jobs rank `rank` of `world_size` runs: job k goes to rank k mod world_size.
pub fn share(jobs: &[Job], rank: usize, world_size: usize) -> impl Iterator<Item = &Job> {
    jobs.iter().filter(move |j| j.index % world_size.max(1) == rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> GenerateOptions {
        GenerateOptions { seed: 100, steps: 2, ..GenerateOptions::default() }
    }

    #[test]
    fn lines_become_jobs_with_stable_indices_and_seeds() {
        let text = "# a comment\n\na cat\r\n  {\"prompt\": \"a dog\", \"seed\": 7, \"width\": 64, \"height\": 32, \"num_images\": 2, \"num_inference_steps\": 5, \"guidance_scale\": 3.5}\n{\"negative_prompt\": \"blurry\"}\nlast\n";
        let jobs = parse(text, "p.txt", &base(), Some("fallback")).unwrap();
        assert_eq!(jobs.len(), 4);
        assert_eq!((jobs[0].index, jobs[0].line, jobs[0].options.prompt.as_str(), jobs[0].options.seed), (0, 3, "a cat", 100));
        let dog = &jobs[1].options;
        assert_eq!((dog.prompt.as_str(), dog.seed, dog.width, dog.height, dog.num_images_per_prompt), ("a dog", 7, Some(64), Some(32), 2));
        assert_eq!((dog.steps, dog.guidance_scale), (5, Some(3.5)));
        assert_eq!((jobs[0].options.steps, jobs[0].options.guidance_scale), (2, None));
        assert_eq!(jobs[1].image_names(), ["0001-00-7.png", "0001-01-7.png"]);
        assert_eq!((jobs[2].options.prompt.as_str(), jobs[2].options.negative_prompt.as_deref(), jobs[2].options.seed), ("fallback", Some("blurry"), 102));
        assert_eq!((jobs[3].line, jobs[3].options.seed), (6, 103));
        let ranks: Vec<Vec<usize>> = (0..3).map(|r| share(&jobs, r, 3).map(|j| j.index).collect()).collect();
        assert_eq!(ranks, [vec![0, 3], vec![1], vec![2]]);
        let seed_max = GenerateOptions { seed: u64::MAX, ..base() };
        assert_eq!(parse("a\nb\n", "p", &seed_max, None).unwrap()[1].options.seed, 0);
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let err = |text: &str, prompt: Option<&str>| format!("{:#}", parse(text, "p.txt", &base(), prompt).unwrap_err());
        let e = err("ok\n{\"prompt\": \"x\", \"seed\": -1}\n", None);
        assert!(e.starts_with("p.txt:2:") && e.contains("seed"), "{e}");
        let e = err("{\"prompt\": \"x\", \"colour\": 1}", None);
        assert!(e.starts_with("p.txt:1:") && e.contains("unknown field `colour`"), "{e}");
        let e = err("{\"prompt\": \"x\"", None);
        assert!(e.starts_with("p.txt:1:") && e.contains("EOF"), "{e}");
        let e = err("\n{\"seed\": 1}", None);
        assert!(e.starts_with("p.txt:2:") && e.contains("no \"prompt\""), "{e}");
        let e = err("{\"prompt\": \"x\", \"width\": 99999}", None);
        assert!(e.starts_with("p.txt:1:") && e.contains("--width 99999"), "{e}");
        let e = err("a\n\n{\"prompt\": \"x\", \"steps\": 3}", None);
        assert!(e.starts_with("p.txt:3:") && e.contains("unknown field `steps`") && e.contains("num_inference_steps"), "{e}");
        let e = err("{\"prompt\": \"x\", \"num_inference_steps\": 0}", None);
        assert!(e.starts_with("p.txt:1:") && e.contains("--num_inference_steps 0"), "{e}");
        let e = err("{\"prompt\": \"x\", \"guidance_scale\": \"high\"}", None);
        assert!(e.starts_with("p.txt:1:") && e.contains("guidance_scale"), "{e}");
        let e = err("# only\n\n", None);
        assert!(e.contains("no prompts"), "{e}");
    }
}
