//! Moving tensors between the file readers ([`RawTensor`]) and libtorch.
use crate::formats::{DType, RawTensor};
use anyhow::{Context, Result};
use tch::{Kind, Tensor};

pub fn kind(dtype: DType) -> Kind {
    match dtype {
        DType::F64 => Kind::Double,
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

pub fn dtype(kind: Kind) -> Result<DType> {
    Ok(match kind {
        Kind::Double => DType::F64,
        Kind::Float => DType::F32,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Int64 => DType::I64,
        Kind::Int => DType::I32,
        Kind::Int16 => DType::I16,
        Kind::Int8 => DType::I8,
        Kind::Uint8 => DType::U8,
        Kind::Bool => DType::Bool,
        k => anyhow::bail!("tensors of kind {k:?} cannot be saved"),
    })
}

/// A CPU tensor holding a copy of `t`'s values.
pub fn to_tch(t: &RawTensor) -> Result<Tensor> {
    let size: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(&t.data, &size, kind(t.dtype)).with_context(|| format!("building a {:?} tensor", t.shape))
}

/// The values of `t` (any device, any layout) as a dense little-endian [`RawTensor`].
pub fn from_tch(t: &Tensor) -> Result<RawTensor> {
    let dtype = dtype(t.kind())?;
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * dtype.size()];
    t.f_copy_data_u8(&mut data, numel)?;
    let shape = t.size().iter().map(|&d| d as usize).collect();
    Ok(RawTensor::new(dtype, shape, data)?)
}
