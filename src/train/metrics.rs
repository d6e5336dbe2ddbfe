//! Training metrics: TensorBoard event files (as the Python script's `--report_to tensorboard`),
//! a JSON Lines log and a loss-curve PNG.
//!
//! The Python script logs through accelerate's TensorBoard tracker, a
//! `torch.utils.tensorboard.SummaryWriter` on `output_dir/logging_dir/textual_inversion`: scalars
//! `loss` and `lr` every micro-step at the optimizer step (`global_step`), and the validation
//! images as one image (`add_images(..., dataformats="NHWC")`, a grid of up to 8 columns) tagged
//! `validation` at the epoch. [`EventWriter`] writes the same records: TFRecord framing around
//! hand-encoded `tensorboard.Event` protobufs, in a file named as torch names it
//! (`events.out.tfevents.<secs>.<hostname>.<pid>.<n>`).
//!
//! Both streams (`metrics.jsonl`, the event file) are append-only and each record goes to the OS
//! in one write, so a crash loses at most the record being written; `loss.png` is written
//! atomically by [`Metrics::finish`].
use crate::formats::atomic;
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tch::{Kind, Tensor};

/// accelerate's run name for the script's trackers (`init_trackers("textual_inversion")`).
pub const RUN_NAME: &str = "textual_inversion";
/// The JSON Lines log in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The loss curve written by [`Metrics::finish`].
pub const LOSS_PNG: &str = "loss.png";
/// Size of `loss.png` in pixels.
pub const LOSS_PNG_SIZE: (u32, u32) = (800, 400);

// ---------------------------------------------------------------------------------------------
// --report_to

/// Where `--report_to` sends the scalars. `metrics.jsonl` and `loss.png` are written either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportTo {
    /// TensorBoard event files under `output_dir/logging_dir/textual_inversion` (the default).
    #[default]
    Tensorboard,
    /// No tracker.
    None,
}

impl FromStr for ReportTo {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tensorboard" => Ok(Self::Tensorboard),
            "none" => Ok(Self::None),
            "wandb" | "comet_ml" | "all" => {
                bail!("--report_to {s} is not available in this tool; use tensorboard or none")
            }
            _ => bail!("unknown --report_to value `{s}`; use tensorboard or none"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CRC32C and TFRecord framing

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli), as TFRecord uses: `crc32c(b"123456789") == 0xE3069283`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: `((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: u64 length, masked CRC of the length, the data, masked CRC of the data (LE).
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Protobuf (tensorboard/compat/proto/event.proto, summary.proto), encoded by hand

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_float(out: &mut Vec<u8>, field: u32, v: f32) {
    put_key(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_int(out: &mut Vec<u8>, field: u32, v: i64) {
    put_key(out, field, 0);
    put_varint(out, v as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

/// `Event { wall_time = 1, step = 2, file_version = 3 }`.
fn event_header(wall_time: f64, step: u64) -> Vec<u8> {
    let mut e = Vec::new();
    put_double(&mut e, 1, wall_time);
    if step != 0 {
        put_int(&mut e, 2, step.min(i64::MAX as u64) as i64);
    }
    e
}

/// `Event { ..., summary = 5 { value = 1 { tag = 1, <value> } } }`.
fn summary_event(wall_time: f64, step: u64, tag: &str, value: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    put_bytes(&mut v, 1, tag.as_bytes());
    value(&mut v);
    let mut summary = Vec::new();
    put_bytes(&mut summary, 1, &v);
    let mut e = event_header(wall_time, step);
    put_bytes(&mut e, 5, &summary);
    e
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into());
    name.replace(['/', '\\'], "_")
}

/// An append-only TensorBoard event file.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new event file in it (never overwrites one), then writes the
    /// `file_version: "brain.Event:2"` event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let wall_time = now_secs();
        let stem = format!("events.out.tfevents.{:010}.{}.{}", wall_time as u64, hostname(), std::process::id());
        let mut n = 0u32;
        let (file, path) = loop {
            let path = dir.join(format!("{stem}.{n}"));
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        };
        let mut w = Self { file, path };
        let mut e = event_header(wall_time, 0);
        put_bytes(&mut e, 3, b"brain.Event:2");
        w.write_event(&e)?;
        Ok(w)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, event: &[u8]) -> Result<()> {
        self.file
            .write_all(&tfrecord(event))
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// A scalar (`Summary.Value.simple_value`, f32 as `SummaryWriter.add_scalar` stores it).
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: u64, wall_time: f64) -> Result<()> {
        let e = summary_event(wall_time, step, tag, |v| put_float(v, 2, value));
        self.write_event(&e)
    }

    /// An RGB image, PNG-encoded (`Summary.Value.image`: height, width, colorspace 3,
    /// encoded_image_string), as `SummaryWriter.add_image` stores it.
    pub fn add_image(&mut self, tag: &str, image: &Rgb8, step: u64, wall_time: f64) -> Result<()> {
        let mut msg = Vec::new();
        put_int(&mut msg, 1, image.height as i64);
        put_int(&mut msg, 2, image.width as i64);
        put_int(&mut msg, 3, 3);
        put_bytes(&mut msg, 4, &image.to_png()?);
        let e = summary_event(wall_time, step, tag, |v| put_bytes(v, 4, &msg));
        self.write_event(&e)
    }
}

// ---------------------------------------------------------------------------------------------
// Images

/// An RGB u8 image, row-major `[height, width, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Rgb8 {
    /// Checks that `data` holds `width * height * 3` bytes.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        if data.len() as u64 != width as u64 * height as u64 * 3 {
            bail!("an {width}x{height} RGB image needs {} bytes, got {}", width as u64 * height as u64 * 3, data.len());
        }
        Ok(Self { width, height, data })
    }

    /// Images from `[n, H, W, 3]` or `[H, W, 3]` u8 pixels (see `image_out::to_pixels`).
    pub fn from_tensor(pixels: &Tensor) -> Result<Vec<Self>> {
        let size = pixels.size();
        let (n, h, w) = match size.as_slice() {
            [n, h, w, 3] => (*n, *h, *w),
            [h, w, 3] => (1, *h, *w),
            _ => bail!("expected [n, H, W, 3] or [H, W, 3] pixels, got {size:?}"),
        };
        if pixels.kind() != Kind::Uint8 {
            bail!("expected u8 pixels, got {:?}", pixels.kind());
        }
        let pixels = pixels.to_device(tch::Device::Cpu).contiguous().reshape([n, h * w * 3]);
        let len = (h * w * 3) as usize;
        (0..n)
            .map(|i| {
                let mut data = vec![0u8; len];
                pixels.get(i).f_copy_data_u8(&mut data, len)?;
                Self::new(w as u32, h as u32, data)
            })
            .collect()
    }

    /// PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header()?;
            writer.write_image_data(&self.data)?;
            writer.finish()?;
        }
        Ok(bytes)
    }
}

/// tensorboard's `make_grid` for `add_images`: up to 8 columns, no padding, black fill.
pub fn image_grid(images: &[Rgb8]) -> Result<Rgb8> {
    let Some(first) = images.first() else { bail!("no images to log") };
    let (w, h) = (first.width as usize, first.height as usize);
    if let Some(other) = images.iter().find(|i| (i.width, i.height) != (first.width, first.height)) {
        bail!("images of different sizes ({w}x{h} and {}x{}) cannot share one grid", other.width, other.height);
    }
    let cols = images.len().min(8);
    let rows = images.len().div_ceil(cols);
    let (gw, gh) = (w * cols, h * rows);
    let mut data = vec![0u8; gw * gh * 3];
    for (i, img) in images.iter().enumerate() {
        let (x0, y0) = ((i % cols) * w, (i / cols) * h);
        for y in 0..h {
            let dst = ((y0 + y) * gw + x0) * 3;
            data[dst..dst + w * 3].copy_from_slice(&img.data[y * w * 3..(y + 1) * w * 3]);
        }
    }
    Rgb8::new(gw as u32, gh as u32, data)
}

// ---------------------------------------------------------------------------------------------
// The facade

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Optimizer step (the script's `global_step`, the TensorBoard step).
    pub step: u64,
    /// Micro-step (batches seen, counting gradient-accumulation steps).
    pub micro_step: u64,
    pub epoch: u64,
    /// `null` when not finite.
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    /// Seconds since [`Metrics::new`].
    pub elapsed_s: f64,
    /// Micro-steps per second over the last (up to) 20 micro-steps.
    pub it_per_s: f64,
}

const RATE_WINDOW: usize = 20;

/// What the trainer logs to: TensorBoard (per `--report_to`), `metrics.jsonl`, `loss.png`.
pub struct Metrics {
    output_dir: PathBuf,
    events: Option<EventWriter>,
    jsonl: File,
    jsonl_path: PathBuf,
    start: Instant,
    recent: VecDeque<Instant>,
    losses: Vec<(u64, f64)>,
}

impl Metrics {
    /// Opens `output_dir/metrics.jsonl` for appending (a resumed run continues it) and, for
    /// TensorBoard, a new event file in `output_dir/logging_dir/textual_inversion` (an absolute
    /// `logging_dir` is used as is, like the script's `Path(output_dir, logging_dir)`).
    pub fn new(output_dir: &Path, logging_dir: &str, report_to: ReportTo) -> Result<Self> {
        std::fs::create_dir_all(output_dir).with_context(|| format!("creating {}", output_dir.display()))?;
        let jsonl_path = output_dir.join(METRICS_FILE);
        let mut jsonl = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&jsonl_path)
            .with_context(|| format!("opening {}", jsonl_path.display()))?;
        // A crash mid-line leaves a partial last line: end it so the next record starts clean.
        let len = jsonl.metadata()?.len();
        if len > 0 {
            let mut last = [0u8];
            jsonl.seek(SeekFrom::Start(len - 1))?;
            jsonl.read_exact(&mut last)?;
            if last[0] != b'\n' {
                jsonl.write_all(b"\n").with_context(|| format!("writing {}", jsonl_path.display()))?;
            }
        }
        let events = match report_to {
            ReportTo::Tensorboard => Some(EventWriter::create(&output_dir.join(logging_dir).join(RUN_NAME))?),
            ReportTo::None => None,
        };
        let start = Instant::now();
        Ok(Self {
            output_dir: output_dir.to_path_buf(),
            events,
            jsonl,
            jsonl_path,
            start,
            recent: VecDeque::from([start]),
            losses: Vec::new(),
        })
    }

    /// The TensorBoard event file, if `--report_to tensorboard`.
    pub fn event_file(&self) -> Option<&Path> {
        self.events.as_ref().map(|e| e.path())
    }

    /// Logs one micro-step: `loss` and `lr` at `step` to TensorBoard, a line to `metrics.jsonl`.
    pub fn log(&mut self, step: u64, micro_step: u64, epoch: u64, loss: f64, lr: f64) -> Result<()> {
        let now = Instant::now();
        self.recent.push_back(now);
        if self.recent.len() > RATE_WINDOW + 1 {
            self.recent.pop_front();
        }
        let span = now.duration_since(self.recent[0]).as_secs_f64();
        let it_per_s = if span > 0.0 { (self.recent.len() - 1) as f64 / span } else { 0.0 };
        let record = Record {
            step,
            micro_step,
            epoch,
            loss: loss.is_finite().then_some(loss),
            lr: lr.is_finite().then_some(lr),
            elapsed_s: now.duration_since(self.start).as_secs_f64(),
            it_per_s,
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        self.jsonl
            .write_all(&line)
            .and_then(|()| self.jsonl.flush())
            .with_context(|| format!("writing {}", self.jsonl_path.display()))?;
        if let Some(ev) = &mut self.events {
            let t = now_secs();
            ev.add_scalar("loss", loss as f32, step, t)?;
            ev.add_scalar("lr", lr as f32, step, t)?;
        }
        if loss.is_finite() {
            self.losses.push((micro_step, loss));
        }
        Ok(())
    }

    /// Logs validation images as one grid tagged `validation` at `step` (the script passes the
    /// epoch). Does nothing without TensorBoard.
    pub fn log_images(&mut self, step: u64, images: &[Rgb8]) -> Result<()> {
        let Some(ev) = &mut self.events else { return Ok(()) };
        ev.add_image("validation", &image_grid(images)?, step, now_secs())
    }

    /// [`Self::log_images`] for `[n, H, W, 3]` u8 pixels.
    pub fn log_image_tensor(&mut self, step: u64, pixels: &Tensor) -> Result<()> {
        if self.events.is_none() {
            return Ok(());
        }
        let images = Rgb8::from_tensor(pixels)?;
        self.log_images(step, &images)
    }

    /// Writes `output_dir/loss.png` (atomically) from this run's losses.
    pub fn finish(&mut self) -> Result<()> {
        let path = self.output_dir.join(LOSS_PNG);
        let png = loss_plot(&self.losses, LOSS_PNG_SIZE.0, LOSS_PNG_SIZE.1).to_png()?;
        atomic::write(&path, &png).with_context(|| format!("writing {}", path.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// The loss plot

/// TensorBoard-style debiased EMA; the weight grows with the number of points (0.6 to 0.99).
pub fn smooth(values: &[f64]) -> Vec<f64> {
    let w = (1.0 - 25.0 / values.len().max(1) as f64).clamp(0.6, 0.99);
    let (mut ema, mut debias) = (0.0, 1.0);
    values
        .iter()
        .map(|&v| {
            ema = w * ema + (1.0 - w) * v;
            debias *= w;
            ema / (1.0 - debias)
        })
        .collect()
}

/// Text is drawn with font8x8's public-domain 8x8 glyphs (bit 0 is the leftmost pixel).
const CHAR_W: i64 = 8;
const CHAR_H: i64 = 8;

struct Canvas {
    w: i64,
    h: i64,
    data: Vec<u8>,
}

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if (0..self.w).contains(&x) && (0..self.h).contains(&y) {
            let i = ((y * self.w + x) * 3) as usize;
            self.data[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.put(x0, y0, c);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    /// `s` with its top-left corner at (x, y), each font pixel `scale` x `scale`.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3], scale: i64) {
        use font8x8::UnicodeFonts;
        for (i, ch) in s.chars().enumerate() {
            let Some(rows) = font8x8::BASIC_FONTS.get(ch) else { continue };
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        for d in 0..scale * scale {
                            let (px, py) = (x + (i as i64 * CHAR_W + col) * scale + d % scale, y + r as i64 * scale + d / scale);
                            self.put(px, py, c);
                        }
                    }
                }
            }
        }
    }
}

fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * CHAR_W * scale
}

/// "Nice" ticks (1, 2 or 5 times a power of ten) in `[lo, hi]`, and the decimals to print.
fn ticks(lo: f64, hi: f64, target: f64) -> (Vec<f64>, usize) {
    let raw = (hi - lo) / target;
    if !(raw > 0.0 && raw.is_finite()) {
        return (vec![lo], 0);
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let step = mag * if f < 1.5 { 1.0 } else if f < 3.5 { 2.0 } else if f < 7.5 { 5.0 } else { 10.0 };
    let decimals = (-step.log10().floor()).clamp(0.0, 12.0) as usize;
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    ((first..=last).map(|k| k as f64 * step).collect(), decimals)
}

/// Loss per micro-step (light blue) and its smoothed curve (dark blue), with a title, axis
/// labels, tick labels and a legend.
pub fn loss_plot(points: &[(u64, f64)], width: u32, height: u32) -> Rgb8 {
    const WHITE: [u8; 3] = [255, 255, 255];
    const GRID: [u8; 3] = [230, 230, 230];
    const AXIS: [u8; 3] = [90, 90, 90];
    const RAW: [u8; 3] = [170, 200, 240];
    const EMA: [u8; 3] = [20, 60, 160];
    let (w, h) = (width.max(64) as i64, height.max(48) as i64);
    let mut cv = Canvas { w, h, data: WHITE.repeat((w * h) as usize) };

    let points: Vec<(f64, f64)> = points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (x as f64, y)).collect();
    let (mut x_lo, mut x_hi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y_lo, mut y_hi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if points.is_empty() {
        (x_lo, x_hi, y_lo, y_hi) = (0.0, 1.0, 0.0, 1.0);
    }
    if x_hi <= x_lo {
        (x_lo, x_hi) = (x_lo - 1.0, x_hi + 1.0);
    }
    if y_hi <= y_lo {
        let pad = if y_lo == 0.0 { 1.0 } else { y_lo.abs() * 0.1 };
        (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
    }
    let pad = (y_hi - y_lo) * 0.05;
    (y_lo, y_hi) = (y_lo - pad, y_hi + pad);

    let (y_ticks, y_dec) = ticks(y_lo, y_hi, 5.0);
    let mut y_labels: Vec<String> = y_ticks.iter().map(|v| format!("{v:.y_dec$}")).collect();
    if y_labels.iter().any(|s| s.len() > 12) {
        y_labels.iter_mut().for_each(String::clear); // absurd magnitudes: ticks without labels
    }
    let label_w = y_labels.iter().map(|s| s.len() as i64).max().unwrap_or(1) * CHAR_W;
    // Title (2x) above, "loss" over the y axis, tick labels and "micro-step" below.
    let (left, right, top, bottom) = (label_w + 10, w - 12, 2 * CHAR_H + 16, h - 2 * CHAR_H - 20);
    let title = "Training loss";
    cv.text((w - text_width(title, 2)) / 2, 4, title, AXIS, 2);
    cv.text(4, top - CHAR_H - 6, "loss", AXIS, 1);
    let x_title = "micro-step";
    cv.text((left + right - text_width(x_title, 1)) / 2, h - CHAR_H - 4, x_title, AXIS, 1);
    // Clamped, so that no line is ever longer than the canvas.
    let px = |x: f64| (left + ((x - x_lo) / (x_hi - x_lo) * (right - left) as f64).round() as i64).clamp(-1, w);
    let py = |y: f64| (bottom - ((y - y_lo) / (y_hi - y_lo) * (bottom - top) as f64).round() as i64).clamp(-1, h);

    for (v, label) in y_ticks.iter().zip(&y_labels) {
        let y = py(*v);
        cv.line((left, y), (right, y), GRID);
        cv.line((left - 4, y), (left, y), AXIS);
        cv.text(left - 6 - text_width(label, 1), y - CHAR_H / 2, label, AXIS, 1);
    }
    let (x_ticks, _) = ticks(x_lo, x_hi, 6.0);
    for v in x_ticks.iter().filter(|v| v.fract() == 0.0) {
        let x = px(*v);
        cv.line((x, top), (x, bottom), GRID);
        cv.line((x, bottom), (x, bottom + 4), AXIS);
        let label = format!("{v:.0}");
        cv.text(x - text_width(&label, 1) / 2, bottom + 8, &label, AXIS, 1);
    }
    cv.line((left, top), (left, bottom), AXIS);
    cv.line((left, bottom), (right, bottom), AXIS);

    let raw: Vec<(i64, i64)> = points.iter().map(|&(x, y)| (px(x), py(y))).collect();
    for seg in raw.windows(2) {
        cv.line(seg[0], seg[1], RAW);
    }
    if let [only] = raw.as_slice() {
        cv.put(only.0, only.1, RAW);
    }
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let ema: Vec<(i64, i64)> = points.iter().zip(smooth(&ys)).map(|(p, y)| (px(p.0), py(y))).collect();
    for seg in ema.windows(2) {
        cv.line(seg[0], seg[1], EMA);
        cv.line((seg[0].0, seg[0].1 + 1), (seg[1].0, seg[1].1 + 1), EMA);
    }
    // Legend, top right inside the plot.
    let entries = [("each micro-step", RAW), ("smoothed (EMA)", EMA)];
    let legend_w = entries.iter().map(|(t, _)| text_width(t, 1)).max().unwrap_or(0) + 30;
    let lx = right - legend_w - 6;
    let (bx0, by0, bx1, by1) = (lx - 6, top + 2, right - 2, top + 10 + entries.len() as i64 * (CHAR_H + 6));
    for y in by0..=by1 {
        cv.line((bx0, y), (bx1, y), WHITE);
    }
    for (a, b) in [((bx0, by0), (bx1, by0)), ((bx1, by0), (bx1, by1)), ((bx1, by1), (bx0, by1)), ((bx0, by1), (bx0, by0))] {
        cv.line(a, b, GRID);
    }
    for (k, (label, color)) in entries.iter().enumerate() {
        let ly = top + 6 + k as i64 * (CHAR_H + 6);
        for dy in 0..2 {
            cv.line((lx, ly + CHAR_H / 2 + dy), (lx + 20, ly + CHAR_H / 2 + dy), *color);
        }
        cv.text(lx + 26, ly, label, AXIS, 1);
    }
    Rgb8 { width: w as u32, height: h as u32, data: cv.data }
}
