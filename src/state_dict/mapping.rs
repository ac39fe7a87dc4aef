//! Key mapping between checkpoint names and model names: `strip_prefix` and `ignore` globs.
//!
//! Training scripts save `{'model': ..., 'optimizer': ..., 'epoch': ...}`; flattened, the weights
//! are `model.fc1.weight` and the optimiser state is `optimizer.state.0.exp_avg`. A mapping like
//! `{ strip_prefix = "model.", ignore = ["optimizer.*"] }` turns that into the model's own names
//! without hiding anything: ignored keys are listed in the report, never silently dropped.

/// A `*`/`?` glob over whole keys (`*` also crosses dots: `optimizer.*` matches
/// `optimizer.state.0.exp_avg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("an ignore pattern must not be empty".to_string());
        }
        if pattern.len() > 256 {
            return Err(format!(
                "ignore pattern {pattern:?} is longer than 256 bytes"
            ));
        }
        Ok(Glob(pattern.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.0.as_bytes(), text.as_bytes())
    }
}

/// Iterative wildcard matching with single backtracking point: linear in practice, no recursion.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == b'?' || *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// How a checkpoint's keys become the model's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMapping {
    pub strip_prefix: Option<String>,
    pub ignore: Vec<Glob>,
}

/// What the mapping makes of one checkpoint key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped<'a> {
    /// Matched an `ignore` pattern (tested against the key as stored in the file).
    Ignored,
    /// The model-side name.
    Key(&'a str),
}

impl KeyMapping {
    pub fn new(strip_prefix: Option<String>, ignore: Vec<String>) -> Result<KeyMapping, String> {
        if strip_prefix.as_deref() == Some("") {
            return Err("strip_prefix must not be empty".to_string());
        }
        let ignore = ignore
            .iter()
            .map(|p| Glob::new(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyMapping {
            strip_prefix,
            ignore,
        })
    }

    pub fn map<'a>(&self, file_key: &'a str) -> Mapped<'a> {
        if self.ignore.iter().any(|g| g.matches(file_key)) {
            return Mapped::Ignored;
        }
        match &self.strip_prefix {
            Some(prefix) => Mapped::Key(file_key.strip_prefix(prefix.as_str()).unwrap_or(file_key)),
            None => Mapped::Key(file_key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = |p: &str, t: &str| Glob::new(p).unwrap().matches(t);
        assert!(g("optimizer.*", "optimizer.state.0.exp_avg"));
        assert!(!g("optimizer.*", "model.optimizer.x"));
        assert!(g(
            "*.num_batches_tracked",
            "layer1.0.bn1.num_batches_tracked"
        ));
        assert!(g("pooler.*", "pooler.dense.weight"));
        assert!(g("a?c", "abc") && !g("a?c", "ac"));
        assert!(g("*", "") && g("**x", "x") && !g("x*y", "xay.z"));
        assert!(g("epoch", "epoch") && !g("epoch", "epochs"));
        assert!(Glob::new("").is_err());
    }

    #[test]
    fn mapping_strips_and_ignores() {
        let m = KeyMapping::new(Some("model.".into()), vec!["optimizer.*".into()]).unwrap();
        assert_eq!(m.map("model.fc1.weight"), Mapped::Key("fc1.weight"));
        assert_eq!(m.map("optimizer.state.0.step"), Mapped::Ignored);
        assert_eq!(m.map("epoch"), Mapped::Key("epoch"));
        assert_eq!(KeyMapping::default().map("a.b"), Mapped::Key("a.b"));
    }
}
