//! RGB u8 images: what the loss plot draws into, what validation images become, and the grid
//! that TensorBoard gets.
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

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
        crate::image_out::encode_png(self.width, self.height, &self.data, &[])
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
