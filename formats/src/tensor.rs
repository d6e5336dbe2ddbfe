//! A dense, contiguous, little-endian tensor as read from a file: the hand-off format between
//! the readers of this crate and libtorch.
use crate::error::{Error, Result};
use half::{bf16, f16};

/// The element types PyTorch checkpoints and safetensors files hold and we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
    /// PyTorch's name (`torch.float32` prints as `float32`).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
    /// The legacy storage class `torch.save` names in its pickles (`torch.FloatStorage`).
    pub fn storage_class(self) -> &'static str {
        match self {
            DType::F64 => "DoubleStorage",
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }
    pub fn from_storage_class(name: &str) -> Option<DType> {
        ALL.iter().copied().find(|d| d.storage_class() == name)
    }
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        use safetensors::Dtype as S;
        Some(match d {
            S::F64 => DType::F64,
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::I64 => DType::I64,
            S::I32 => DType::I32,
            S::I16 => DType::I16,
            S::I8 => DType::I8,
            S::U8 => DType::U8,
            S::BOOL => DType::Bool,
            _ => return None,
        })
    }
    pub fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::F64 => S::F64,
            DType::F32 => S::F32,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I64 => S::I64,
            DType::I32 => S::I32,
            DType::I16 => S::I16,
            DType::I8 => S::I8,
            DType::U8 => S::U8,
            DType::Bool => S::BOOL,
        }
    }
}

const ALL: [DType; 10] = [DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16, DType::I8, DType::U8, DType::Bool];

/// Number of elements of `shape`, or an error if it overflows.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[derive(Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `numel * dtype.size()` bytes, row-major, little-endian.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RawTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawTensor({:?}, {:?})", self.dtype, self.shape)
    }
}

impl RawTensor {
    /// Checks that `data` has exactly the bytes `shape` and `dtype` call for.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let n = numel(&shape).and_then(|n| n.checked_mul(dtype.size()));
        if n != Some(data.len()) {
            return Err(Error::format("tensor", format!("shape {shape:?} of {} needs {n:?} bytes, got {}", dtype.torch_name(), data.len())));
        }
        Ok(RawTensor { dtype, shape, data })
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        RawTensor::new(DType::F32, shape, data)
    }

    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Values widened (or narrowed) to f64, for statistics and conversions.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let s = self.dtype.size();
        self.data
            .chunks_exact(s)
            .map(|c| match self.dtype {
                DType::F64 => f64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
                DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                DType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f64(),
                DType::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f64(),
                DType::I64 => i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64,
                DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                DType::I16 => i16::from_le_bytes([c[0], c[1]]) as f64,
                DType::I8 => c[0] as i8 as f64,
                DType::U8 => c[0] as f64,
                DType::Bool => (c[0] != 0) as u8 as f64,
            })
            .collect()
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            _ => self.to_f64_vec().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// The same values in another floating-point type (rounding to nearest even when narrowing,
    /// as PyTorch's `.to()` does).
    pub fn cast(&self, dtype: DType) -> Result<RawTensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        if !dtype.is_float() || !self.dtype.is_float() {
            return Err(Error::format(
                "tensor",
                format!("cannot convert {} to {}: only floating-point casts are supported", self.dtype.torch_name(), dtype.torch_name()),
            ));
        }
        let v = self.to_f64_vec();
        let data: Vec<u8> = match dtype {
            DType::F64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::F32 => v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
            // Through f32 first, as torch does, so double rounding matches it.
            DType::F16 => v.iter().flat_map(|&x| f16::from_f32(x as f32).to_le_bytes()).collect(),
            DType::BF16 => v.iter().flat_map(|&x| bf16::from_f32(x as f32).to_le_bytes()).collect(),
            _ => unreachable!("checked above"),
        };
        RawTensor::new(dtype, self.shape.clone(), data)
    }

    /// L2 norm of each row of the last dimension (one per vector of an embedding).
    pub fn row_norms(&self) -> Vec<f64> {
        let width = self.shape.last().copied().unwrap_or(1).max(1);
        self.to_f64_vec().chunks(width).map(|r| r.iter().map(|x| x * x).sum::<f64>().sqrt()).collect()
    }
}
