//! The Python globals a pickle may name; everything else is refused.
use crate::tensor::DType;

/// The Python globals a checkpoint may name. Everything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    TensorClass,
    ParameterClass,
    Storage(DType),
    /// A dtype object such as `torch.float32`.
    DType(DType),
    TorchSize,
    CodecsEncode,
    Set,
    FrozenSet,
    /// `copyreg._reconstructor`, how protocol-2 pickles rebuild plain objects.
    Reconstructor,
    Object,
    /// `torch.nn.ParameterDict`: the original Textual Inversion code stored `string_to_param` as one.
    ParameterDict,
}

impl Global {
    pub fn lookup(module: &str, name: &str) -> Option<Global> {
        use Global::*;
        Some(match (module, name) {
            ("collections", "OrderedDict") => OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor") => RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => RebuildFromTypeV2,
            ("torch", "Tensor") | ("torch._tensor", "Tensor") => TensorClass,
            ("torch.nn.parameter", "Parameter") | ("torch.nn", "Parameter") => ParameterClass,
            ("torch", "Size") => TorchSize,
            ("torch", n) => match crate::tensor::DType::from_storage_class(n) {
                Some(d) => Storage(d),
                None => DType(dtype_object(n)?),
            },
            ("_codecs", "encode") => CodecsEncode,
            ("builtins" | "__builtin__", "set") => Set,
            ("builtins" | "__builtin__", "frozenset") => FrozenSet,
            ("builtins" | "__builtin__", "object") => Object,
            ("copyreg" | "copy_reg", "_reconstructor") => Reconstructor,
            ("torch.nn.modules.container", "ParameterDict") => ParameterDict,
            _ => return None,
        })
    }
    pub fn path(&self) -> String {
        use Global::*;
        match self {
            OrderedDict => "collections.OrderedDict".into(),
            RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            RebuildTensor => "torch._utils._rebuild_tensor".into(),
            RebuildParameter => "torch._utils._rebuild_parameter".into(),
            RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state".into(),
            RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2".into(),
            TensorClass => "torch.Tensor".into(),
            ParameterClass => "torch.nn.parameter.Parameter".into(),
            Storage(d) => format!("torch.{}", d.storage_class()),
            DType(d) => format!("torch.{}", d.torch_name()),
            TorchSize => "torch.Size".into(),
            CodecsEncode => "_codecs.encode".into(),
            Set => "builtins.set".into(),
            FrozenSet => "builtins.frozenset".into(),
            Reconstructor => "copyreg._reconstructor".into(),
            Object => "builtins.object".into(),
            ParameterDict => "torch.nn.modules.container.ParameterDict".into(),
        }
    }
}

fn dtype_object(name: &str) -> Option<DType> {
    Some(match name {
        "float64" | "double" => DType::F64,
        "float32" | "float" => DType::F32,
        "float16" | "half" => DType::F16,
        "bfloat16" => DType::BF16,
        "int64" | "long" => DType::I64,
        "int32" | "int" => DType::I32,
        "int16" | "short" => DType::I16,
        "int8" => DType::I8,
        "uint8" => DType::U8,
        "bool" => DType::Bool,
        _ => return None,
    })
}
