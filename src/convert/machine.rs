//! The pickle machine's state operations: the stack and its marks, the memo, the containers
//! that SETITEM/APPEND fill, BUILD, and the lookups the rebuild functions share.
//!
//! Pops never reach below the innermost MARK (as in CPython's unpickler), containers are only
//! ever extended when they really are lists or dicts (Python would call whatever `append` or
//! `extend` attribute the target has), and every allocation counts against the object cap.

use super::objects::{ObjId, Object, PickleError, Value};
use super::pickle::Machine;

impl Machine<'_> {
    // --- stack -----------------------------------------------------------------------------

    pub(super) fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    pub(super) fn underflow(&self, op: &'static str, needed: usize) -> PickleError {
        PickleError::StackUnderflow {
            offset: self.op_pos,
            op,
            needed,
            available: self.stack.len().saturating_sub(self.floor()),
        }
    }

    pub(super) fn pop(&mut self, op: &'static str) -> Result<Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.underflow(op, 1));
        }
        self.stack.pop().ok_or_else(|| self.underflow(op, 1))
    }

    pub(super) fn peek(&self, op: &'static str) -> Result<Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.underflow(op, 1));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.underflow(op, 1))
    }

    pub(super) fn pop_n(&mut self, op: &'static str, n: usize) -> Result<Vec<Value>, PickleError> {
        let available = self.stack.len().saturating_sub(self.floor());
        if available < n {
            return Err(self.underflow(op, n));
        }
        Ok(self.stack.split_off(self.stack.len().saturating_sub(n)))
    }

    pub(super) fn pop_mark(&mut self, op: &'static str) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or(PickleError::NoMark {
            offset: self.op_pos,
            op,
        })?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    pub(super) fn push_object(&mut self, object: Object) -> Result<(), PickleError> {
        let value = self.alloc(object)?;
        self.stack.push(value);
        Ok(())
    }

    pub(super) fn alloc(&mut self, object: Object) -> Result<Value, PickleError> {
        if self.objects.len() >= self.limits.max_objects {
            return Err(self.limit("the number of objects", self.limits.max_objects as u64));
        }
        let id = ObjId(self.objects.len());
        self.objects.push(object);
        Ok(Value::Obj(id))
    }

    pub(super) fn limit(&self, what: &'static str, limit: u64) -> PickleError {
        PickleError::Limit {
            offset: self.op_pos,
            what,
            limit,
        }
    }

    // --- memo ------------------------------------------------------------------------------

    pub(super) fn memo_put(&mut self, op: &'static str, index: u64) -> Result<(), PickleError> {
        let value = self.peek(op)?;
        // Each PUT consumes at least one input byte, so the memo is bounded by the input.
        self.memo.insert(index, value);
        Ok(())
    }

    pub(super) fn memo_get(&mut self, op: &'static str, index: u64) -> Result<(), PickleError> {
        let value = *self.memo.get(&index).ok_or(PickleError::MemoMissing {
            offset: self.op_pos,
            op,
            index,
        })?;
        self.stack.push(value);
        Ok(())
    }

    // --- containers ------------------------------------------------------------------------

    pub(super) fn extend_list(
        &mut self,
        op: &'static str,
        items: Vec<Value>,
    ) -> Result<(), PickleError> {
        let target = self.peek(op)?;
        match self.object_mut(target) {
            Some(Object::List(list)) => {
                list.extend(items);
                Ok(())
            }
            // Python would call the target's `append`/`extend` attribute: only real lists here.
            _ => Err(self.type_error(op, "a list", target)),
        }
    }

    pub(super) fn extend_dict(
        &mut self,
        op: &'static str,
        items: Vec<Value>,
    ) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(PickleError::Arguments {
                offset: self.op_pos,
                callable: op.into(),
                reason: format!("an odd number of items ({})", items.len()),
            });
        }
        let target = self.peek(op)?;
        match self.object_mut(target) {
            Some(Object::Dict(entries)) => {
                entries.extend(items.chunks_exact(2).filter_map(|kv| match kv {
                    [k, v] => Some((*k, *v)),
                    _ => None,
                }));
                Ok(())
            }
            _ => Err(self.type_error(op, "a dict", target)),
        }
    }

    /// BUILD sets attributes or calls `__setstate__` in Python. An OrderedDict's state is its
    /// instance dict (`_metadata` of a state dict) and a tensor's is its Python attributes:
    /// both are dropped. Anything else is refused.
    pub(super) fn build(&mut self, target: Value, state: Value) -> Result<(), PickleError> {
        match self.object(target) {
            Some(Object::Dict(_) | Object::Tensor(_)) => match (state, self.object(state)) {
                (Value::None, _) | (_, Some(Object::Dict(_) | Object::Tuple(_))) => Ok(()),
                _ => Err(self.type_error("BUILD", "a dict of attributes", state)),
            },
            _ => Err(self.type_error("BUILD", "a dict or a tensor to set attributes on", target)),
        }
    }

    // --- lookups shared with the rebuild functions ----------------------------------------

    pub(super) fn object(&self, value: Value) -> Option<&Object> {
        match value {
            Value::Obj(id) => self.objects.get(id.0),
            _ => None,
        }
    }

    pub(super) fn object_mut(&mut self, value: Value) -> Option<&mut Object> {
        match value {
            Value::Obj(id) => self.objects.get_mut(id.0),
            _ => None,
        }
    }

    pub(super) fn str_of(&self, value: Value) -> Option<&str> {
        match self.object(value) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub(super) fn expect_str(&self, op: &'static str, value: Value) -> Result<String, PickleError> {
        self.str_of(value)
            .map(str::to_string)
            .ok_or_else(|| self.type_error(op, "a string", value))
    }

    pub(super) fn expect_tuple(
        &self,
        op: &'static str,
        value: Value,
    ) -> Result<Vec<Value>, PickleError> {
        match self.object(value) {
            Some(Object::Tuple(items)) => Ok(items.clone()),
            _ => Err(self.type_error(op, "a tuple", value)),
        }
    }

    pub(super) fn type_error(
        &self,
        op: &'static str,
        expected: &'static str,
        found: Value,
    ) -> PickleError {
        PickleError::Type {
            offset: self.op_pos,
            op,
            expected,
            found: self.kind(found),
        }
    }

    /// A short name for what a value is, for error messages.
    pub(super) fn kind(&self, value: Value) -> String {
        match value {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Global(g) => format!("`{}`", g.name()),
            Value::Obj(_) => match self.object(value) {
                Some(Object::Str(_)) => "a string".into(),
                Some(Object::Bytes(_)) => "bytes".into(),
                Some(Object::BigInt(_)) => "a big int".into(),
                Some(Object::Tuple(t)) => format!("a tuple of {}", t.len()),
                Some(Object::List(_)) => "a list".into(),
                Some(Object::Dict(_)) => "a dict".into(),
                Some(Object::Storage(_)) => "a storage".into(),
                Some(Object::Tensor(_)) => "a tensor".into(),
                None => "a dangling reference".into(),
            },
        }
    }
}
