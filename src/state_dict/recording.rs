//! The recording backend: learns which parameters an architecture asks for, without weights.
//!
//! An architecture is built once against a `VarBuilder` whose backend records every request
//! (name, shape, dtype) and answers with a zero-stride placeholder, so nothing of the parameter's
//! size is allocated for the request itself. The recorded list is the model's side of the strict
//! comparison; it is computed once per configured architecture and cached by the caller.

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::report::ParamSpec;

/// Why the parameter list could not be recorded: a bug in an architecture, not in a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the architecture failed to build against the recording backend: {0}")]
    Build(#[from] candle_core::Error),
    #[error(
        "the architecture requests {name:?} twice with different shapes: {first:?} and {second:?}"
    )]
    Conflict {
        name: String,
        first: Vec<usize>,
        second: Vec<usize>,
    },
}

#[derive(Clone, Default)]
struct Recorder {
    requests: Arc<Mutex<Vec<ParamSpec>>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ParamSpec {
                name: name.to_string(),
                shape: s.dims().to_vec(),
                dtype,
            });
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        // A parameter without an expected shape cannot be checked strictly: architectures in
        // wick always state the shape they need.
        Err(candle_core::Error::Msg(format!(
            "architecture asked for {name:?} without a shape; strict loading needs one"
        )))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        // Canonical names only: probing for legacy aliases (gamma/beta) must not branch here.
        false
    }
}

/// Runs `build` against a recording `VarBuilder` (F32, CPU) and returns the parameters it asked
/// for, in request order, each name once.
pub fn record<F>(build: F) -> Result<Vec<ParamSpec>, RecordError>
where
    F: FnOnce(VarBuilder<'static>) -> candle_core::Result<()>,
{
    let recorder = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    build(vb)?;
    let requests = std::mem::take(
        &mut *recorder
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let mut out: Vec<ParamSpec> = Vec::with_capacity(requests.len());
    for request in requests {
        match out.iter().find(|p| p.name == request.name) {
            Some(first) if first.shape != request.shape || first.dtype != request.dtype => {
                return Err(RecordError::Conflict {
                    name: request.name,
                    first: first.shape.clone(),
                    second: request.shape,
                });
            }
            Some(_) => {}
            None => out.push(request),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_names_and_shapes() {
        let params = record(|vb| {
            let _ = candle_nn::linear(3, 2, vb.pp("fc"))?;
            let _ = candle_nn::layer_norm(2, 1e-5, vb.pp("ln"))?;
            Ok(())
        })
        .unwrap();
        let names: Vec<_> = params
            .iter()
            .map(|p| (p.name.as_str(), p.shape.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("fc.weight", vec![2, 3]),
                ("fc.bias", vec![2]),
                ("ln.weight", vec![2]),
                ("ln.bias", vec![2]),
            ]
        );
    }

    #[test]
    fn conflicting_requests_are_a_bug() {
        let err = record(|vb| {
            vb.get(3, "w")?;
            vb.get(4, "w")?;
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, RecordError::Conflict { .. }));
    }
}
