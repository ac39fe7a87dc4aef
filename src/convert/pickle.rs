//! A bounded pickle reader that builds data and never executes anything.
//!
//! Python's `pickle` is a small stack machine whose GLOBAL and REDUCE opcodes import and call any
//! function a file names: that is how a `.pth` file runs code (docs/security.md, "Threats and defences"). This machine
//! interprets only the opcodes `torch.save` writes for state dicts (protocols 2 to 5), resolves a
//! global only when its exact `module.name` is on a short allowlist, and gives each allowed
//! callable a fixed, data-only meaning (an `OrderedDict()` is an empty dict, a
//! `_rebuild_tensor_v2(...)` is a tensor *description*). Everything else is refused with an error
//! that names the opcode or the global and the byte where it occurs.
//!
//! Every length is checked against the bytes that remain before anything is allocated, and no
//! operation can panic. This file reads opcodes; [`super::machine`] holds the stack, memo and
//! container operations, [`super::objects`] what gets built.

use std::collections::HashMap;

use super::objects::{Global, Object, PickleError, Unpickled, Value};
use super::torch::{rebuild, storage_id};

/// Caps that keep a hostile pickle from costing unbounded memory.
#[derive(Debug, Clone, Copy)]
pub struct PickleLimits {
    /// Objects (strings, tuples, dicts, tensors...) the pickle may create.
    pub max_objects: usize,
}

impl Default for PickleLimits {
    fn default() -> Self {
        // A state dict costs about fifteen objects per tensor: this allows a million tensors.
        PickleLimits {
            max_objects: 16 << 20,
        }
    }
}

/// Reads a whole pickle (exactly one, nothing after STOP).
pub fn parse(input: &[u8], limits: &PickleLimits) -> Result<Unpickled, PickleError> {
    let mut machine = Machine {
        input,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
        limits: *limits,
    };
    if input.first() != Some(&0x80) {
        return Err(PickleError::NoProto);
    }
    let mut protocol = 0;
    loop {
        machine.op_pos = machine.pos;
        let opcode = machine.byte("an opcode")?;
        if opcode == b'.' {
            let root = machine.finish()?;
            return Ok(Unpickled {
                objects: machine.objects,
                root,
                protocol,
            });
        }
        if opcode == 0x80 {
            protocol = machine.byte("PROTO")?;
            if !(2..=5).contains(&protocol) {
                return Err(PickleError::Protocol {
                    offset: machine.op_pos,
                    protocol,
                });
            }
            continue;
        }
        machine.step(opcode)?;
    }
}

/// The machine state: input cursor, stack with marks, memo, arena.
pub(super) struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    /// Where the current opcode starts, for error messages.
    pub(super) op_pos: usize,
    pub(super) stack: Vec<Value>,
    /// Stack heights at each open MARK; pops never go below the innermost one.
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u64, Value>,
    pub(super) objects: Vec<Object>,
    pub(super) limits: PickleLimits,
}

impl<'a> Machine<'a> {
    fn step(&mut self, opcode: u8) -> Result<(), PickleError> {
        match opcode {
            // Framing (protocol 4+) only groups opcodes for buffered reading.
            0x95 => {
                let len = u64::from_le_bytes(self.array("FRAME")?);
                if len > self.remaining() as u64 {
                    return Err(self.truncated("a FRAME"));
                }
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop("POP")?;
            }
            b'1' => {
                self.pop_mark("POP_MARK")?;
            }
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.array("BININT")?);
                self.stack.push(Value::Int(i64::from(v)));
            }
            b'K' => {
                let v = self.byte("BININT1")?;
                self.stack.push(Value::Int(i64::from(v)));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array("BININT2")?);
                self.stack.push(Value::Int(i64::from(v)));
            }
            0x8a => {
                let n = usize::from(self.byte("LONG1")?);
                self.long(n)?;
            }
            0x8b => {
                let n = i32::from_le_bytes(self.array("LONG4")?);
                let n = usize::try_from(n).map_err(|_| self.limit("a negative LONG4 length", 0))?;
                self.long(n)?;
            }
            b'G' => {
                let v = f64::from_be_bytes(self.array("BINFLOAT")?);
                self.stack.push(Value::Float(v));
            }
            b'X' => {
                let n = u32::from_le_bytes(self.array("BINUNICODE")?);
                self.unicode(u64::from(n))?;
            }
            0x8c => {
                let n = self.byte("SHORT_BINUNICODE")?;
                self.unicode(u64::from(n))?;
            }
            0x8d => {
                let n = u64::from_le_bytes(self.array("BINUNICODE8")?);
                self.unicode(n)?;
            }
            b'B' => {
                let n = u32::from_le_bytes(self.array("BINBYTES")?);
                self.bytes(u64::from(n))?;
            }
            b'C' => {
                let n = self.byte("SHORT_BINBYTES")?;
                self.bytes(u64::from(n))?;
            }
            0x8e => {
                let n = u64::from_le_bytes(self.array("BINBYTES8")?);
                self.bytes(n)?;
            }
            b')' => self.push_object(Object::Tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark("TUPLE")?;
                self.push_object(Object::Tuple(items))?;
            }
            0x85..=0x87 => {
                let n = usize::from(opcode.saturating_sub(0x84));
                let items = self.pop_n("TUPLE1/2/3", n)?;
                self.push_object(Object::Tuple(items))?;
            }
            b']' => self.push_object(Object::List(Vec::new()))?,
            b'}' => self.push_object(Object::Dict(Vec::new()))?,
            b'a' => {
                let item = self.pop("APPEND")?;
                self.extend_list("APPEND", vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark("APPENDS")?;
                self.extend_list("APPENDS", items)?;
            }
            b's' => {
                let pair = self.pop_n("SETITEM", 2)?;
                self.extend_dict("SETITEM", pair)?;
            }
            b'u' => {
                let items = self.pop_mark("SETITEMS")?;
                self.extend_dict("SETITEMS", items)?;
            }
            b'q' => {
                let index = self.byte("BINPUT")?;
                self.memo_put("BINPUT", u64::from(index))?;
            }
            b'r' => {
                let index = u32::from_le_bytes(self.array("LONG_BINPUT")?);
                self.memo_put("LONG_BINPUT", u64::from(index))?;
            }
            0x94 => {
                // Python memoizes at len(memo), whatever indices earlier PUTs chose.
                let index = self.memo.len() as u64;
                self.memo_put("MEMOIZE", index)?;
            }
            b'h' => {
                let index = self.byte("BINGET")?;
                self.memo_get("BINGET", u64::from(index))?;
            }
            b'j' => {
                let index = u32::from_le_bytes(self.array("LONG_BINGET")?);
                self.memo_get("LONG_BINGET", u64::from(index))?;
            }
            b'c' => {
                let module = self.line("GLOBAL module")?;
                let name = self.line("GLOBAL name")?;
                let global = self.resolve("GLOBAL", module, name)?;
                self.stack.push(Value::Global(global));
            }
            0x93 => {
                let pair = self.pop_n("STACK_GLOBAL", 2)?;
                let (module, name) = match pair.as_slice() {
                    [module, name] => (
                        self.expect_str("STACK_GLOBAL", *module)?,
                        self.expect_str("STACK_GLOBAL", *name)?,
                    ),
                    _ => return Err(self.underflow("STACK_GLOBAL", 2)),
                };
                let global = self.resolve("STACK_GLOBAL", module, name)?;
                self.stack.push(Value::Global(global));
            }
            b'i' => {
                // INST names its class inline: report it like a global, allowed or not.
                let module = self.line("INST module")?;
                let name = self.line("INST name")?;
                return Err(match Global::resolve(&module, &name) {
                    Some(_) => PickleError::RefusedOpcode {
                        offset: self.op_pos,
                        name: "INST",
                    },
                    None => PickleError::ForbiddenGlobal {
                        offset: self.op_pos,
                        opcode: "INST",
                        module,
                        name,
                    },
                });
            }
            b'R' => {
                let args = self.pop("REDUCE")?;
                let callable = self.pop("REDUCE")?;
                let Value::Global(global) = callable else {
                    return Err(self.type_error("REDUCE", "an allowlisted callable", callable));
                };
                let args = self.expect_tuple("REDUCE", args)?;
                let result = rebuild(self, global, &args)?;
                self.stack.push(result);
            }
            b'b' => {
                let state = self.pop("BUILD")?;
                let target = self.peek("BUILD")?;
                self.build(target, state)?;
            }
            b'Q' => {
                let pid = self.pop("BINPERSID")?;
                let storage = storage_id(self, pid)?;
                self.push_object(Object::Storage(storage))?;
            }
            _ => {
                return Err(match refused_opcode_name(opcode) {
                    Some(name) => PickleError::RefusedOpcode {
                        offset: self.op_pos,
                        name,
                    },
                    None => PickleError::UnknownOpcode {
                        offset: self.op_pos,
                        opcode,
                    },
                })
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Value, PickleError> {
        let trailing = self.remaining();
        if trailing > 0 {
            return Err(PickleError::TrailingBytes {
                offset: self.op_pos,
                count: trailing,
            });
        }
        match (self.stack.as_slice(), self.marks.len()) {
            ([root], 0) => Ok(*root),
            (items, marks) => Err(PickleError::BadStop {
                offset: self.op_pos,
                items: items.len(),
                marks,
            }),
        }
    }

    // --- input -----------------------------------------------------------------------------

    fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.pos)
    }

    fn truncated(&self, what: &'static str) -> PickleError {
        PickleError::Truncated {
            offset: self.input.len(),
            what,
        }
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], PickleError> {
        let input: &'a [u8] = self.input;
        let n = usize::try_from(n).map_err(|_| self.truncated(what))?;
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.truncated(what))?;
        let slice = input
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(what))?;
        self.pos = end;
        Ok(slice)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, PickleError> {
        let b = *self
            .input
            .get(self.pos)
            .ok_or_else(|| self.truncated(what))?;
        self.pos = self.pos.saturating_add(1);
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    /// A `\n`-terminated line (GLOBAL and INST operands), capped so a missing newline cannot
    /// make a huge name.
    fn line(&mut self, what: &'static str) -> Result<String, PickleError> {
        const MAX_LINE: usize = 512;
        let input: &'a [u8] = self.input;
        let rest = input.get(self.pos..).unwrap_or_default();
        let Some(len) = rest.iter().take(MAX_LINE + 1).position(|b| *b == b'\n') else {
            return Err(if rest.len() > MAX_LINE {
                self.limit(what, MAX_LINE as u64)
            } else {
                self.truncated(what)
            });
        };
        let text = self.take(len as u64, what)?;
        let text = std::str::from_utf8(text)
            .map_err(|_| PickleError::Utf8 {
                offset: self.op_pos,
                what,
            })?
            .to_string();
        self.pos = self.pos.saturating_add(1); // the newline, known to exist
        Ok(text)
    }

    fn long(&mut self, n: usize) -> Result<(), PickleError> {
        let bytes = self.take(n as u64, "a LONG")?;
        let value = match bytes.len() {
            0 => Value::Int(0),
            len if len <= 8 => {
                // Sign-extend little-endian two's complement to 64 bits.
                let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
                let mut raw = [if negative { 0xff } else { 0 }; 8];
                for (dst, src) in raw.iter_mut().zip(bytes) {
                    *dst = *src;
                }
                Value::Int(i64::from_le_bytes(raw))
            }
            len => {
                self.push_object(Object::BigInt(len))?;
                return Ok(());
            }
        };
        self.stack.push(value);
        Ok(())
    }

    fn unicode(&mut self, n: u64) -> Result<(), PickleError> {
        let offset = self.op_pos;
        let bytes = self.take(n, "a string")?;
        let text = std::str::from_utf8(bytes).map_err(|_| PickleError::Utf8 {
            offset,
            what: "a string",
        })?;
        let text = text.to_string();
        self.push_object(Object::Str(text))
    }

    fn bytes(&mut self, n: u64) -> Result<(), PickleError> {
        let bytes = self.take(n, "a bytes object")?.to_vec();
        self.push_object(Object::Bytes(bytes))
    }

    fn resolve(
        &self,
        opcode: &'static str,
        module: String,
        name: String,
    ) -> Result<Global, PickleError> {
        Global::resolve(&module, &name).ok_or(PickleError::ForbiddenGlobal {
            offset: self.op_pos,
            opcode,
            module,
            name,
        })
    }
}

/// Names of valid pickle opcodes that torch.save never writes for state dicts.
fn refused_opcode_name(opcode: u8) -> Option<&'static str> {
    Some(match opcode {
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        b'P' => "PERSID",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'd' => "DICT",
        b'l' => "LIST",
        b'g' => "GET",
        b'p' => "PUT",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}
