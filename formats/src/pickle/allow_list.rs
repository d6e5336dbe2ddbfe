//! The Python globals a pickle may name, and what applying each one builds. A pickle names
//! functions to call, so this list is the whole of what a file can make us do: anything not
//! here is refused by name, and the entries are interpreted here, never executed.
use super::value::{as_usize, usize_tuple};
use super::{TensorRef, Value};
use crate::tensor::DType;

/// The Python globals a checkpoint may name. Everything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`: what `state_dict()` returns, and the empty `backward_hooks`
    /// every tensor rebuild carries.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`: how every tensor is pickled.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor`: the same without `requires_grad`, in files from old torch.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`: an `nn.Parameter` saved as such (the original
    /// Textual Inversion code saved its embeddings this way).
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state`: a parameter carrying Python attributes,
    /// which are dropped.
    RebuildParameterWithState,
    /// `torch._tensor._rebuild_from_type_v2`: how torch pickles a tensor whose class or
    /// attributes are not the plain ones; accepted only when the class is `Tensor` or `Parameter`.
    RebuildFromTypeV2,
    /// `torch.Tensor`, only as the class argument of `_rebuild_from_type_v2`.
    TensorClass,
    /// `torch.nn.Parameter`, only as the class argument of `_rebuild_from_type_v2`.
    ParameterClass,
    /// `torch.FloatStorage` and kin: the element type in a storage's persistent id.
    Storage(DType),
    /// A dtype object such as `torch.float32`, saved as a plain value (pickled by name).
    DType(DType),
    /// `torch.Size`: a saved `tensor.shape`; read as a tuple.
    TorchSize,
    /// `_codecs.encode`: protocol 2 has no bytes opcode, so Python writes `bytes` as
    /// `_codecs.encode(text, 'latin1')`.
    CodecsEncode,
    /// `builtins.set`: protocol 2 has no set opcodes, so sets are rebuilt by calling it.
    Set,
    /// `builtins.frozenset`, for the same reason; read as a set.
    FrozenSet,
    /// `copyreg._reconstructor`, how protocol-2 pickles rebuild plain objects.
    Reconstructor,
    /// `builtins.object`, only as `_reconstructor`'s base-class argument.
    Object,
    /// `torch.nn.ParameterDict`: the original Textual Inversion code stored `string_to_param` as one.
    ParameterDict,
}

impl Global {
    /// Resolves `module.name` (Python 2 module spellings included), or `None` if refused.
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
    /// The dotted name, for error messages.
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

/// The modules whose classes and functions a training checkpoint (`.ckpt`) may name beside its
/// weights, read as inert values in [`super::Mode::Checkpoint`]: PyTorch Lightning's callbacks
/// and loop states, OmegaConf configs, numpy scalars and arrays' metadata, argparse
/// namespaces, and the original LDM/SGM code's own classes. `os`, `subprocess`, `builtins` and
/// the like stay refused: a file naming them is not a checkpoint anyone should load.
pub const INERT_MODULES: &[&str] =
    &["pytorch_lightning", "lightning", "lightning_fabric", "omegaconf", "numpy", "argparse", "ldm", "sgm", "collections", "pathlib", "typing", "enum"];

/// Whether `module.name` may be kept inert in a checkpoint: `INERT_MODULES` and their
/// submodules, and builtin value types passed as arguments (`defaultdict(list)`).
pub fn is_inert(module: &str, name: &str) -> bool {
    let builtin_type = matches!(module, "builtins" | "__builtin__")
        && matches!(name, "list" | "dict" | "tuple" | "int" | "float" | "str" | "bool" | "bytes" | "complex" | "slice" | "range");
    builtin_type || INERT_MODULES.iter().any(|m| module == *m || module.strip_prefix(m).is_some_and(|rest| rest.starts_with('.')))
}

/// The `torch.<name>` dtype objects, aliases included.
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

/// `REDUCE`: applies an allowed callable to its arguments. Errors are messages the unpickler
/// places in the file.
pub(super) fn call(func: Value, args: Vec<Value>) -> Result<Value, String> {
    let Value::Global(g) = func else {
        return Err(format!("cannot call a {}", func.kind()));
    };
    let bad = |what: &str| format!("{}: {what}", g.path());
    match g {
        // The items are moved, never copied: the unpickler charged them once.
        Global::OrderedDict => match <[Value; 1]>::try_from(args) {
            Err(args) if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Ok([Value::List(items)]) => {
                let mut pairs = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::Tuple(kv) | Value::List(kv) => match <[Value; 2]>::try_from(kv) {
                            Ok([k, v]) => pairs.push((k, v)),
                            Err(_) => return Err(bad("items must be (key, value) pairs")),
                        },
                        _ => return Err(bad("items must be (key, value) pairs")),
                    }
                }
                Ok(Value::Dict(pairs))
            }
            _ => Err(bad("unexpected arguments")),
        },
        Global::Set | Global::FrozenSet => match args.into_iter().next() {
            None => Ok(Value::Set(Vec::new())),
            Some(Value::List(v) | Value::Tuple(v) | Value::Set(v)) => Ok(Value::Set(v)),
            Some(_) => Err(bad("expects a sequence")),
        },
        Global::TorchSize => match args.into_iter().next() {
            Some(Value::Tuple(v) | Value::List(v)) => Ok(Value::Tuple(v)),
            None => Ok(Value::Tuple(Vec::new())),
            Some(_) => Err(bad("expects a tuple")),
        },
        Global::CodecsEncode => match args.as_slice() {
            [Value::Str(s), Value::Str(enc)] if enc == "latin1" || enc == "latin-1" => {
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    out.push(u8::try_from(c as u32).map_err(|_| bad("character outside latin-1"))?);
                }
                Ok(Value::Bytes(out))
            }
            [Value::Str(s), Value::Str(enc)] if enc == "utf-8" || enc == "utf8" => Ok(Value::Bytes(s.as_bytes().to_vec())),
            _ => Err(bad("unsupported arguments")),
        },
        Global::RebuildTensorV2 | Global::RebuildTensor => {
            if args.len() < 4 {
                return Err(bad("needs (storage, offset, size, stride, ...)"));
            }
            let mut it = args.into_iter();
            let (storage, offset, size, stride) = (it.next(), it.next(), it.next(), it.next());
            let requires_grad = matches!(it.next(), Some(Value::Bool(true)));
            let Some(Value::Storage(storage)) = storage else {
                return Err(bad("first argument must be a storage"));
            };
            let offset = as_usize(offset.as_ref()).ok_or_else(|| bad("offset must be a non-negative int"))?;
            let shape = usize_tuple(size.as_ref()).ok_or_else(|| bad("size must be a tuple of non-negative ints"))?;
            let stride = usize_tuple(stride.as_ref()).ok_or_else(|| bad("stride must be a tuple of non-negative ints"))?;
            if shape.len() != stride.len() {
                return Err(bad(&format!("size {shape:?} and stride {stride:?} differ in length")));
            }
            let t = TensorRef { storage: *storage, offset, shape, stride, requires_grad };
            if t.extent().is_none() {
                return Err(bad("tensor view overflows"));
            }
            Ok(Value::Tensor(Box::new(t)))
        }
        Global::RebuildParameter | Global::RebuildParameterWithState => {
            let mut it = args.into_iter();
            match (it.next(), it.next()) {
                (Some(Value::Tensor(mut t)), rg) => {
                    t.requires_grad = matches!(rg, Some(Value::Bool(true)));
                    Ok(Value::Tensor(t))
                }
                _ => Err(bad("first argument must be a tensor")),
            }
        }
        Global::RebuildFromTypeV2 => {
            let mut it = args.into_iter();
            match (it.next(), it.next(), it.next()) {
                (Some(f @ Value::Global(_)), Some(Value::Global(Global::TensorClass | Global::ParameterClass)), Some(Value::Tuple(a))) => call(f, a),
                _ => Err(bad("only plain tensors and parameters can be rebuilt")),
            }
        }
        Global::Reconstructor => {
            let mut it = args.into_iter();
            match it.next() {
                Some(Value::Global(cls @ Global::ParameterDict)) => Ok(Value::Object { class: cls, state: Box::new(Value::None) }),
                Some(Value::Global(Global::OrderedDict)) => Ok(Value::Dict(Vec::new())),
                _ => Err(bad("only allow-listed classes can be reconstructed")),
            }
        }
        Global::ParameterDict => Ok(Value::Object { class: g, state: Box::new(Value::None) }),
        Global::TensorClass | Global::ParameterClass | Global::Storage(_) | Global::DType(_) | Global::Object => Err(bad("cannot be called here")),
    }
}

/// `NEWOBJ`/`NEWOBJ_EX`: `cls.__new__(cls, *args)` for the classes that allow it.
pub(super) fn new_object(cls: Value, args: Value) -> Result<Value, String> {
    match cls {
        Value::Global(Global::OrderedDict) => Ok(Value::Dict(Vec::new())),
        Value::Global(g @ Global::ParameterDict) => Ok(Value::Object { class: g, state: Box::new(Value::None) }),
        Value::Global(Global::Set) => call(Value::Global(Global::Set), vec![args]),
        other => Err(format!("cannot instantiate a {}", other.kind())),
    }
}
