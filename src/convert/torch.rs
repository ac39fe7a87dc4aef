//! What torch's objects mean as data, and where the state dict is.
//!
//! `torch.save` writes a tensor as `_rebuild_tensor_v2(storage, offset, size, stride, ...)` over a
//! persistent id naming a storage record: [`rebuild`] turns such calls into [`TensorRef`]
//! descriptions (a strided view of a storage, nothing read) and gives every other allowlisted
//! callable its fixed, data-only meaning; [`storage_id`] reads the persistent ids. [`select`] then
//! finds the state dict at the top level or under `--key` and lists everything it drops
//! (optimizer state, epoch, ...) with [`describe`].

use std::collections::HashSet;

use super::objects::{Global, Object, PickleError, StorageRef, TensorRef, Unpickled, Value};
use super::pickle::Machine;

/// Dimensions of a tensor description in the pickle, before the finer output caps apply.
const MAX_PICKLE_RANK: usize = 64;

/// Applies an allowlisted callable to its arguments, as data. Called by REDUCE.
pub(super) fn rebuild(
    m: &mut Machine<'_>,
    global: Global,
    args: &[Value],
) -> Result<Value, PickleError> {
    match global {
        Global::OrderedDict => match args {
            [] => m.alloc(Object::Dict(Vec::new())),
            _ => Err(wrong_arguments(
                m,
                global,
                format!(
                    "{} argument(s); torch.save writes OrderedDict()",
                    args.len()
                ),
            )),
        },
        Global::RebuildTensorV2 => {
            let tensor = tensor_v2(m, args).map_err(|reason| wrong_arguments(m, global, reason))?;
            m.alloc(Object::Tensor(tensor))
        }
        Global::RebuildParameter | Global::RebuildParameterWithState => parameter(m, global, args),
        Global::RebuildFromTypeV2 => from_type_v2(m, args),
        Global::CodecsEncode => codecs_encode(m, args),
        Global::TensorClass | Global::ParameterClass | Global::Storage(_) => {
            Err(PickleError::NotCallable {
                offset: m.op_pos,
                callable: global.name(),
            })
        }
    }
}

/// The error for a call of `global` with arguments torch.save never writes.
fn wrong_arguments(m: &Machine<'_>, global: Global, reason: String) -> PickleError {
    PickleError::Arguments {
        offset: m.op_pos,
        callable: global.name(),
        reason,
    }
}

/// `_rebuild_parameter(data, requires_grad, hooks)` and `_rebuild_parameter_with_state(...,
/// state)`: the data tensor itself.
fn parameter(m: &Machine<'_>, global: Global, args: &[Value]) -> Result<Value, PickleError> {
    let wrong = |reason: String| wrong_arguments(m, global, reason);
    let expected = if global == Global::RebuildParameter {
        3
    } else {
        4
    };
    match args {
        [data, Value::Bool(_), hooks, ..] if args.len() == expected => {
            if !matches!(m.object(*data), Some(Object::Tensor(_))) {
                return Err(wrong(format!("{} as its data", m.kind(*data))));
            }
            if !matches!(m.object(*hooks), Some(Object::Dict(_))) {
                return Err(wrong(format!("{} as its hooks", m.kind(*hooks))));
            }
            // A Parameter holds exactly its data tensor; extra Python state is dropped.
            Ok(*data)
        }
        _ => Err(wrong(format!(
            "{} argument(s) instead of {expected}",
            args.len()
        ))),
    }
}

/// `_rebuild_from_type_v2(func, Tensor or Parameter, args, state)`: `func(*args)`, for the
/// rebuild functions above only; the Python state must be empty or a dict, and is dropped.
fn from_type_v2(m: &mut Machine<'_>, args: &[Value]) -> Result<Value, PickleError> {
    let global = Global::RebuildFromTypeV2;
    match args {
        [Value::Global(func), Value::Global(Global::TensorClass | Global::ParameterClass), inner, state] =>
        {
            if !matches!(
                func,
                Global::RebuildTensorV2
                    | Global::RebuildParameter
                    | Global::RebuildParameterWithState
            ) {
                let reason = format!("`{}` as the function to apply", func.name());
                return Err(wrong_arguments(m, global, reason));
            }
            if !matches!(state, Value::None) && !matches!(m.object(*state), Some(Object::Dict(_))) {
                let reason = format!("{} as the Python state", m.kind(*state));
                return Err(wrong_arguments(m, global, reason));
            }
            let inner = m.expect_tuple("REDUCE", *inner)?;
            rebuild(m, *func, &inner)
        }
        _ => Err(wrong_arguments(
            m,
            global,
            "arguments other than (rebuild function, torch.Tensor or Parameter, args, state)"
                .into(),
        )),
    }
}

/// `_codecs.encode(text, "latin1")`: how protocol 2 pickles bytes; refused outside latin-1.
fn codecs_encode(m: &mut Machine<'_>, args: &[Value]) -> Result<Value, PickleError> {
    let wrong = |m: &Machine<'_>, reason: String| wrong_arguments(m, Global::CodecsEncode, reason);
    match args {
        [text, encoding] if matches!(m.str_of(*encoding), Some("latin1" | "latin-1")) => {
            let Some(text) = m.str_of(*text) else {
                return Err(wrong(m, format!("{} to encode", m.kind(*text))));
            };
            let bytes: Option<Vec<u8>> = text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect();
            let bytes = bytes.ok_or_else(|| wrong(m, "text outside latin-1".into()))?;
            m.alloc(Object::Bytes(bytes))
        }
        _ => Err(wrong(m, "arguments other than (str, 'latin1')".into())),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
fn tensor_v2(m: &Machine<'_>, args: &[Value]) -> Result<TensorRef, String> {
    let [storage, offset, size, stride, requires_grad, hooks, rest @ ..] = args else {
        return Err(format!("{} argument(s) instead of 6 or 7", args.len()));
    };
    let Some(Object::Storage(storage)) = m.object(*storage) else {
        return Err(format!(
            "{} as its storage (expected a persistent storage id)",
            m.kind(*storage)
        ));
    };
    let offset = non_negative(*offset).ok_or("a storage offset that is not a non-negative int")?;
    let shape = int_tuple(m, *size).ok_or("a size that is not a tuple of non-negative ints")?;
    let stride =
        int_tuple(m, *stride).ok_or("a stride that is not a tuple of non-negative ints")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "{} sizes but {} strides",
            shape.len(),
            stride.len()
        ));
    }
    if !matches!(requires_grad, Value::Bool(_)) {
        return Err(format!("{} as requires_grad", m.kind(*requires_grad)));
    }
    if !matches!(m.object(*hooks), Some(Object::Dict(_))) {
        return Err(format!("{} as backward_hooks", m.kind(*hooks)));
    }
    match rest {
        [] | [Value::None] => {}
        [metadata] if matches!(m.object(*metadata), Some(Object::Dict(d)) if d.is_empty()) => {}
        // Tensor metadata (e.g. conjugate or negative bits) changes what the bytes mean.
        _ => {
            return Err(
                "tensor metadata (conjugate/negative bits or similar), which wick cannot represent"
                    .into(),
            )
        }
    }
    Ok(TensorRef {
        storage: storage.clone(),
        offset,
        shape,
        stride,
    })
}

fn non_negative(value: Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

fn int_tuple(m: &Machine<'_>, value: Value) -> Option<Vec<u64>> {
    match m.object(value) {
        Some(Object::Tuple(items)) if items.len() <= MAX_PICKLE_RANK => {
            items.iter().map(|v| non_negative(*v)).collect()
        }
        _ => None,
    }
}

/// BINPERSID: `('storage', torch.<X>Storage, key, location, numel)`, how torch.save refers to a
/// storage record. The location (`cpu`, `cuda:0`) does not matter: the bytes are in the archive.
pub(super) fn storage_id(m: &Machine<'_>, pid: Value) -> Result<StorageRef, PickleError> {
    let bad = |reason: String| PickleError::Arguments {
        offset: m.op_pos,
        callable: "BINPERSID".into(),
        reason,
    };
    let Some(Object::Tuple(items)) = m.object(pid) else {
        return Err(m.type_error(
            "BINPERSID",
            "a ('storage', type, key, location, numel) tuple",
            pid,
        ));
    };
    let [tag, kind, key, location, numel] = items.as_slice() else {
        return Err(bad(format!(
            "a persistent id of {} items instead of 5",
            items.len()
        )));
    };
    if m.str_of(*tag) != Some("storage") {
        return Err(bad("a persistent id that is not a storage".into()));
    }
    let Value::Global(Global::Storage(dtype)) = kind else {
        return Err(m.type_error("BINPERSID", "a torch.<X>Storage type", *kind));
    };
    let key = m
        .str_of(*key)
        .ok_or_else(|| bad("a storage key that is not a string".into()))?;
    if key.is_empty()
        || key.len() > 64
        || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(bad(format!(
            "the storage key {key:?} (torch writes short alphanumeric keys)"
        )));
    }
    if m.str_of(*location).is_none() {
        return Err(bad("a storage location that is not a string".into()));
    }
    let numel = match numel {
        Value::Int(n) => {
            u64::try_from(*n).map_err(|_| bad(format!("a negative storage size {n}")))?
        }
        other => return Err(m.type_error("BINPERSID", "an integer storage size", *other)),
    };
    Ok(StorageRef {
        dtype: *dtype,
        key: key.to_string(),
        numel,
    })
}

/// Why no state dict could be found in the unpickled checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error(
        "the checkpoint's top level is {found}, not a dict: there is no state dict to convert"
    )]
    NotADict { found: String },
    #[error("the checkpoint has no key {key:?}; its keys are: {}", .available.join(", "))]
    KeyMissing { key: String, available: Vec<String> },
    #[error("the checkpoint's {key:?} entry is {found}, not a state dict")]
    KeyNotADict { key: String, found: String },
    #[error("no tensors at {location}{hint}")]
    NoTensors { location: String, hint: String },
    #[error("the state dict has the key {name:?} more than once")]
    DuplicateKey { name: String },
}

/// An entry that is not part of the converted state dict, with what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub name: String,
    pub what: String,
}

/// The state dict found in a checkpoint.
#[derive(Debug, Clone)]
pub struct Selection {
    /// "the top level" or "key \"model\"".
    pub location: String,
    pub tensors: Vec<(String, TensorRef)>,
    pub dropped: Vec<Dropped>,
}

/// Finds the state dict at the top level or under `key`, keeping its tensors and listing
/// everything else (optimizer state, epoch, metadata) as dropped.
pub fn select(u: &Unpickled, key: Option<&str>) -> Result<Selection, SelectError> {
    let Some(Object::Dict(root)) = u.object(u.root) else {
        return Err(SelectError::NotADict {
            found: describe(u, u.root),
        });
    };
    let mut dropped = Vec::new();
    let (location, entries) = match key {
        None => ("the top level".to_string(), root.as_slice()),
        Some(key) => (
            format!("key {key:?}"),
            entry_under(u, root, key, &mut dropped)?,
        ),
    };
    let mut tensors = Vec::new();
    let mut seen = HashSet::new();
    for (k, v) in entries {
        match (u.str(*k), u.object(*v)) {
            (Some(name), Some(Object::Tensor(t))) => {
                if !seen.insert(name) {
                    return Err(SelectError::DuplicateKey {
                        name: name.to_string(),
                    });
                }
                tensors.push((name.to_string(), t.clone()));
            }
            _ => dropped.push(Dropped {
                name: key_name(u, *k),
                what: describe(u, *v),
            }),
        }
    }
    if tensors.is_empty() {
        let hint = state_dict_hint(u, entries);
        return Err(SelectError::NoTensors { location, hint });
    }
    Ok(Selection {
        location,
        tensors,
        dropped,
    })
}

/// The dict under `key` of the top-level dict `root`; every other top-level entry goes to
/// `dropped`.
fn entry_under<'u>(
    u: &'u Unpickled,
    root: &[(Value, Value)],
    key: &str,
    dropped: &mut Vec<Dropped>,
) -> Result<&'u [(Value, Value)], SelectError> {
    let mut chosen = None;
    for (k, v) in root {
        if u.str(*k) == Some(key) {
            if chosen.replace(*v).is_some() {
                return Err(SelectError::DuplicateKey {
                    name: key.to_string(),
                });
            }
        } else {
            dropped.push(Dropped {
                name: key_name(u, *k),
                what: describe(u, *v),
            });
        }
    }
    let Some(value) = chosen else {
        let available = root
            .iter()
            .map(|(k, v)| format!("{} ({})", key_name(u, *k), describe(u, *v)))
            .collect();
        return Err(SelectError::KeyMissing {
            key: key.to_string(),
            available,
        });
    };
    match u.object(value) {
        Some(Object::Dict(entries)) => Ok(entries),
        _ => Err(SelectError::KeyNotADict {
            key: key.to_string(),
            found: describe(u, value),
        }),
    }
}

/// "; try --key model (3 tensors)" when some `entries` are state dicts themselves (a training
/// checkpoint; not `optimizer`, whose tensors sit deeper), else nothing.
fn state_dict_hint(u: &Unpickled, entries: &[(Value, Value)]) -> String {
    let hint: Vec<String> = entries
        .iter()
        .filter_map(|(k, v)| {
            let name = u.str(*k)?;
            let Some(Object::Dict(inner)) = u.object(*v) else {
                return None;
            };
            let count = inner
                .iter()
                .filter(|(k, v)| {
                    u.str(*k).is_some() && matches!(u.object(*v), Some(Object::Tensor(_)))
                })
                .count();
            (count > 0).then(|| format!("--key {name} ({count} tensors)"))
        })
        .collect();
    if hint.is_empty() {
        String::new()
    } else {
        format!("; try {}", hint.join(" or "))
    }
}

fn key_name(u: &Unpickled, key: Value) -> String {
    match (key, u.str(key)) {
        (_, Some(s)) => s.to_string(),
        (Value::Int(n), _) => n.to_string(),
        (other, _) => format!("<{}>", describe(u, other)),
    }
}

/// A one-line description of a value for the summary: its type, size and a short preview.
pub fn describe(u: &Unpickled, value: Value) -> String {
    match value {
        Value::None => "None".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Int(n) => format!("int {n}"),
        Value::Float(x) => format!("float {x}"),
        Value::Global(g) => format!("the global {}", g.name()),
        Value::Obj(_) => {
            let inside = |n: usize| match n {
                0 => String::new(),
                n => format!(", {n} tensors inside"),
            };
            match u.object(value) {
                Some(Object::Str(s)) if s.chars().count() > 40 => {
                    format!("str {:?}…", s.chars().take(40).collect::<String>())
                }
                Some(Object::Str(s)) => format!("str {s:?}"),
                Some(Object::Bytes(b)) => format!("bytes ({} bytes)", b.len()),
                Some(Object::BigInt(n)) => format!("int ({n} bytes wide)"),
                Some(Object::Tuple(t)) => format!(
                    "tuple of {} items{}",
                    t.len(),
                    inside(count_tensors(u, value))
                ),
                Some(Object::List(l)) => format!(
                    "list of {} items{}",
                    l.len(),
                    inside(count_tensors(u, value))
                ),
                Some(Object::Dict(d)) => format!(
                    "dict of {} entries{}",
                    d.len(),
                    inside(count_tensors(u, value))
                ),
                Some(Object::Storage(s)) => format!("a bare {} storage", s.dtype),
                Some(Object::Tensor(t)) => format!("tensor {} {:?}", t.storage.dtype, t.shape),
                None => "a dangling reference".into(),
            }
        }
    }
}

/// Tensors reachable from `value`, each object visited once (shared and cyclic structures stay
/// linear) and without recursion (deep nesting cannot overflow the stack).
fn count_tensors(u: &Unpickled, value: Value) -> usize {
    let mut seen = HashSet::new();
    let mut todo = vec![value];
    let mut count = 0usize;
    while let Some(v) = todo.pop() {
        let Value::Obj(id) = v else { continue };
        if !seen.insert(id) {
            continue;
        }
        match u.get(id) {
            Some(Object::Tensor(_)) => count = count.saturating_add(1),
            Some(Object::Tuple(items) | Object::List(items)) => todo.extend(items.iter().copied()),
            Some(Object::Dict(entries)) => todo.extend(entries.iter().flat_map(|(k, v)| [*k, *v])),
            _ => {}
        }
    }
    count
}
