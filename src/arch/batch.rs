//! Helpers for families whose requests stack along the batch dimension: concatenate every
//! request's rows, run one forward pass, split the output rows back per request.

use crate::model::{HostData, HostTensor, Prepared};

/// The batching strategy of fixed-shape models (linear, mlp, resnet): concatenate the one F32
/// input of every request along the batch dimension, run `f` once, split its output rows back.
pub fn forward_stacked(
    batch: &[&Prepared],
    input_dims: &[usize],
    f: impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
) -> candle_core::Result<Vec<Vec<HostTensor>>> {
    let row_len: usize = input_dims.iter().product();
    let (flat, total_rows) = stack_f32(batch, row_len)?;
    let mut shape = Vec::with_capacity(input_dims.len() + 1);
    shape.push(total_rows);
    shape.extend_from_slice(input_dims);
    let x = candle_core::Tensor::from_vec(flat, shape, &candle_core::Device::Cpu)?;
    let y = f(&x)?;
    split_rows(&y, batch.iter().map(|p| p.rows))
}

/// The first (F32) input of every request in `batch`, rows of `row_len` values, concatenated;
/// and the total rows.
pub fn stack_f32(batch: &[&Prepared], row_len: usize) -> candle_core::Result<(Vec<f32>, usize)> {
    let total_rows: usize = batch.iter().map(|p| p.rows).sum();
    let mut flat = Vec::with_capacity(total_rows * row_len);
    for prepared in batch {
        match prepared.tensors.first() {
            Some(Some(tensor)) => match tensor.data.f32s() {
                Some(values) => flat.extend_from_slice(values),
                None => candle_core::bail!("a prepared request lacks its F32 input"),
            },
            _ => candle_core::bail!("a prepared request lacks its F32 input"),
        }
    }
    Ok((flat, total_rows))
}

/// Splits a batched F32 output back into per-request tensors of `rows` rows each.
pub fn split_rows(
    y: &candle_core::Tensor,
    rows: impl Iterator<Item = usize>,
) -> candle_core::Result<Vec<Vec<HostTensor>>> {
    let dims = y.dims().to_vec();
    let row_len: usize = dims[1..].iter().product();
    let values = y.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::new();
    let mut offset = 0usize;
    for r in rows {
        let end = offset + r * row_len;
        let part = values
            .get(offset..end)
            .ok_or_else(|| {
                candle_core::Error::Msg("model returned fewer rows than it was given".into())
            })?
            .to_vec();
        let mut shape = dims.clone();
        shape[0] = r;
        out.push(vec![HostTensor {
            shape,
            data: HostData::F32(part),
        }]);
        offset = end;
    }
    Ok(out)
}
