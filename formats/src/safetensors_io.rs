//! safetensors: memory-mapped reading through the `safetensors` crate (which bounds-checks the
//! header and every tensor's offsets), and atomic writing with `__metadata__`.
use crate::error::{Error, Result};
use crate::tensor::{DType, RawTensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Whether `bytes` plausibly start a safetensors file: a little-endian u64 header length that
/// fits in the file, then a JSON object.
pub fn sniff(bytes: &[u8]) -> bool {
    if bytes.len() < 10 {
        return false;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(a);
    n >= 2 && n <= (bytes.len() - 8) as u64 && bytes[8] == b'{'
}

/// A memory-mapped safetensors file.
pub struct SafetensorsFile {
    name: String,
    map: memmap2::MmapMut,
}

/// What a safetensors header says about one tensor.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: a private copy-on-write mapping: writes through it (none are made) would never
        // reach the file; a concurrent writer of the file can change values but never the
        // bounds we check.
        let map = unsafe { memmap2::MmapOptions::new().map_copy(&file) }.map_err(|e| Error::io(path, e))?;
        let name = path.display().to_string();
        // Validate once up front so later accessors cannot fail on structure.
        parse(&name, &map)?;
        Ok(SafetensorsFile { name, map })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn view(&self) -> Result<safetensors::SafeTensors<'_>> {
        parse(&self.name, &self.map)
    }

    pub fn metadata(&self) -> Result<BTreeMap<String, String>> {
        metadata(&self.name, &self.map)
    }
}

fn parse<'a>(name: &str, bytes: &'a [u8]) -> Result<safetensors::SafeTensors<'a>> {
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::format(name, format!("not a valid safetensors file: {e}")))
}

/// The `__metadata__` string map (empty when absent).
pub fn metadata(name: &str, bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::format(name, format!("not a valid safetensors file: {e}")))?;
    Ok(meta.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default())
}

/// Every tensor of an in-memory safetensors file, in header order (sorted by offset).
pub fn read_all(name: &str, bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
    read_view(name, &parse(name, bytes)?)
}

/// [`read_all`] of a file already parsed (parsing a header of many tensors is the slow part).
pub fn read_view(name: &str, st: &safetensors::SafeTensors<'_>) -> Result<Vec<(String, RawTensor)>> {
    let mut items: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    items.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    items
        .into_iter()
        .map(|(k, v)| {
            let dtype = DType::from_safetensors(v.dtype()).ok_or_else(|| Error::format(name, format!("tensor {k}: unsupported dtype {:?}", v.dtype())))?;
            let t = RawTensor::new(dtype, v.shape().to_vec(), v.data().to_vec()).map_err(|e| e.in_file(name))?;
            Ok((k, t))
        })
        .collect()
}

/// Serialises tensors (in the given order) with optional metadata.
pub fn to_bytes(tensors: &[(String, RawTensor)], metadata: Option<&BTreeMap<String, String>>) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(k, t)| {
            safetensors::tensor::TensorView::new(t.dtype.to_safetensors(), t.shape.clone(), &t.data)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::format("safetensors writer", format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: Option<HashMap<String, String>> = metadata.map(|m| m.clone().into_iter().collect());
    safetensors::serialize(views, meta).map_err(|e| Error::format("safetensors writer", e.to_string()))
}

/// Writes a safetensors file atomically with `{"format": "pt"}`, the metadata
/// `safetensors.torch.save_file` writes and transformers' loaders check for.
pub fn save_pt(path: &Path, tensors: &[(String, RawTensor)]) -> Result<()> {
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    save(path, tensors, Some(&meta))
}

/// Writes a safetensors file atomically.
pub fn save(path: &Path, tensors: &[(String, RawTensor)], metadata: Option<&BTreeMap<String, String>>) -> Result<()> {
    crate::atomic::write(path, &to_bytes(tensors, metadata)?)
}
