//! Image files in: decoding to upright 8-bit RGB as Pillow sees them ([`decode`]) and Pillow's
//! resampling ([`resample`]), shared by training (its dataset) and generation (img2img's
//! `--init_image`). Depends on nothing above the file formats.
pub mod decode;
pub mod resample;

pub use decode::{load_rgb, load_rgb_alpha, LoadedImage, MAX_FILE_BYTES, MAX_PIXELS};
pub use resample::{resize, resize_bicubic, Filter};
