//! What the pickle machine builds, and how it refuses a file.
//!
//! Objects live in an arena ([`Unpickled::objects`]) and are referenced by index, so the memo
//! shares objects exactly as Python does without cloning them (no quadratic blow-up through
//! BINGET), cyclic structures cannot leak, and dropping a deeply nested result never recurses.
//! [`Global`] is the whole allowlist: a name that does not resolve to one of its variants is
//! refused where it appears.

use crate::state_dict::FileDtype;

/// A reference into [`Unpickled::objects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjId(pub usize);

/// One item on the pickle stack. Scalars are inline; everything else is an arena reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// One of the allowlisted globals, as a value (it only does something under REDUCE).
    Global(Global),
    Obj(ObjId),
}

/// The globals a `torch.save` state dict may name; nothing else resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    TensorClass,
    ParameterClass,
    /// `_codecs.encode`: how protocol 2 spells a `bytes` object.
    CodecsEncode,
    /// `torch.<X>Storage`, with the element type it declares.
    Storage(FileDtype),
}

const STORAGES: [(&str, FileDtype); 10] = [
    ("FloatStorage", FileDtype::F32),
    ("DoubleStorage", FileDtype::F64),
    ("HalfStorage", FileDtype::F16),
    ("BFloat16Storage", FileDtype::BF16),
    ("LongStorage", FileDtype::I64),
    ("IntStorage", FileDtype::I32),
    ("ShortStorage", FileDtype::I16),
    ("CharStorage", FileDtype::I8),
    ("ByteStorage", FileDtype::U8),
    ("BoolStorage", FileDtype::BOOL),
];

impl Global {
    /// Exact-match lookup: no attribute walking, no prefixes, no aliases.
    pub fn resolve(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
            ("torch", "Tensor") => Global::TensorClass,
            ("torch.nn.parameter", "Parameter") => Global::ParameterClass,
            ("_codecs", "encode") => Global::CodecsEncode,
            ("torch", storage) => {
                let (_, dtype) = STORAGES.iter().find(|(n, _)| *n == storage)?;
                Global::Storage(*dtype)
            }
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::RebuildParameterWithState => {
                "torch._utils._rebuild_parameter_with_state".into()
            }
            Global::RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2".into(),
            Global::TensorClass => "torch.Tensor".into(),
            Global::ParameterClass => "torch.nn.parameter.Parameter".into(),
            Global::CodecsEncode => "_codecs.encode".into(),
            Global::Storage(dtype) => {
                let name = STORAGES
                    .iter()
                    .find(|(_, d)| *d == dtype)
                    .map_or("?", |(n, _)| n);
                format!("torch.{name}")
            }
        }
    }
}

/// A storage as a persistent id declares it: `('storage', torch.XStorage, key, location, numel)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    pub dtype: FileDtype,
    pub key: String,
    pub numel: u64,
}

/// What `_rebuild_tensor_v2` would build: a strided view of a storage. Nothing is read yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Str(String),
    Bytes(Vec<u8>),
    /// An integer wider than 64 bits (kept as its byte length: state dicts never need its value).
    BigInt(usize),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered entries; duplicate keys are kept so that the caller can refuse them.
    Dict(Vec<(Value, Value)>),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// Why data.pkl was refused. Offsets are byte positions in data.pkl.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    #[error("data.pkl ends at byte {offset} inside {what}")]
    Truncated { offset: usize, what: &'static str },
    #[error("data.pkl byte {offset}: unknown pickle opcode 0x{opcode:02x}")]
    UnknownOpcode { offset: usize, opcode: u8 },
    #[error(
        "data.pkl byte {offset}: refusing opcode {name}: torch.save never writes it for a state dict and it \
         can construct or call objects"
    )]
    RefusedOpcode { offset: usize, name: &'static str },
    #[error(
        "data.pkl byte {offset}: refusing global `{module}.{name}` ({opcode}): only the classes and functions \
         torch.save writes for tensors and state dicts are allowed, and nothing is ever imported or called"
    )]
    ForbiddenGlobal {
        offset: usize,
        opcode: &'static str,
        module: String,
        name: String,
    },
    #[error("data.pkl byte {offset}: pickle protocol {protocol} is not supported (torch.save writes protocols 2 to 5)")]
    Protocol { offset: usize, protocol: u8 },
    #[error(
        "data.pkl does not start with a PROTO opcode: protocol 0 and 1 pickles are not supported"
    )]
    NoProto,
    #[error("data.pkl byte {offset}: {op} needs {needed} item(s) above the current mark, {available} available")]
    StackUnderflow {
        offset: usize,
        op: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("data.pkl byte {offset}: {op} without a matching MARK")]
    NoMark { offset: usize, op: &'static str },
    #[error("data.pkl byte {offset}: {op} reads memo slot {index}, which was never written")]
    MemoMissing {
        offset: usize,
        op: &'static str,
        index: u64,
    },
    #[error("data.pkl byte {offset}: {op} expects {expected}, found {found}")]
    Type {
        offset: usize,
        op: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("data.pkl byte {offset}: `{callable}` is not callable here (only as data)")]
    NotCallable { offset: usize, callable: String },
    #[error("data.pkl byte {offset}: `{callable}` called with {reason}")]
    Arguments {
        offset: usize,
        callable: String,
        reason: String,
    },
    #[error("data.pkl byte {offset}: {what} is not valid UTF-8")]
    Utf8 { offset: usize, what: &'static str },
    #[error("data.pkl byte {offset}: {what} exceeds the limit of {limit}")]
    Limit {
        offset: usize,
        what: &'static str,
        limit: u64,
    },
    #[error(
        "data.pkl byte {offset}: STOP leaves {items} item(s) on the stack and {marks} open mark(s); a \
         torch.save pickle leaves exactly one object"
    )]
    BadStop {
        offset: usize,
        items: usize,
        marks: usize,
    },
    #[error("{count} byte(s) follow the STOP opcode at data.pkl byte {offset}")]
    TrailingBytes { offset: usize, count: usize },
}

/// The result of reading a pickle: the arena and the object STOP returned.
#[derive(Debug, Clone)]
pub struct Unpickled {
    pub objects: Vec<Object>,
    pub root: Value,
    pub protocol: u8,
}

impl Unpickled {
    pub fn get(&self, id: ObjId) -> Option<&Object> {
        self.objects.get(id.0)
    }

    /// The object a value refers to, if it is a reference.
    pub fn object(&self, value: Value) -> Option<&Object> {
        match value {
            Value::Obj(id) => self.get(id),
            _ => None,
        }
    }

    pub fn str(&self, value: Value) -> Option<&str> {
        match self.object(value) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }
}
