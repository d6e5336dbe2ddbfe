//! TensorBoard event files, as the Python script's `--report_to tensorboard` writes them.
//!
//! The Python script logs through accelerate's TensorBoard tracker, a
//! `torch.utils.tensorboard.SummaryWriter` on `output_dir/logging_dir/textual_inversion`: scalars
//! `loss` and `lr` every micro-step at the optimizer step (`global_step`), and the validation
//! images as one image (`add_images(..., dataformats="NHWC")`, a grid of up to 8 columns) tagged
//! `validation` at the epoch. [`EventWriter`] writes the same records: TFRecord framing around
//! hand-encoded `tensorboard.Event` protobufs, in a file named as torch names it
//! (`events.out.tfevents.<secs>.<hostname>.<pid>.<n>`).
use super::Rgb8;
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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

pub(super) fn now_secs() -> f64 {
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
        self.file.write_all(&tfrecord(event)).and_then(|()| self.file.flush()).with_context(|| format!("writing {}", self.path.display()))
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
