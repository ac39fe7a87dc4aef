//! Shape inference of a `sequential` stack: the row shape each layer makes of its input, by
//! PyTorch's formulas, or what the layer takes instead (for the config error).

use super::layers::{ConvGeometry, LayerSpec, PoolGeometry};

/// `[N, a, b]`: a shape as messages show it, the batch dimension as `N`.
pub fn shape_text(shape: &[usize]) -> String {
    let mut parts = vec!["N".to_string()];
    parts.extend(shape.iter().map(|d| d.to_string()));
    format!("[{}]", parts.join(", "))
}

/// Why a layer cannot take its input: what it takes (text), to be shown beside what it got.
pub struct Mismatch(pub String);

/// `dim` (counting the batch dimension, negative from the end) as an index into a row's shape.
fn row_dim(dim: i64, rank: usize, what: &str) -> Result<usize, Mismatch> {
    let full = rank as i64 + 1;
    let d = if dim < 0 { dim + full } else { dim };
    if d < 0 || d >= full {
        return Err(Mismatch(format!(
            "a tensor with dimension {dim} ({what}), i.e. at least {} dimensions",
            dim.unsigned_abs() + u64::from(dim >= 0)
        )));
    }
    if d == 0 {
        return Err(Mismatch(format!(
            "{what} {dim} is the batch dimension, which would mix the requests of one batch"
        )));
    }
    Ok(d as usize - 1)
}

/// Output size of a sliding window, PyTorch's formula (`ceil_mode` as in its pooling shape
/// check: a last window that starts in the right padding is dropped).
pub fn window_out(
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = size + 2 * pad;
    if padded < span {
        return None;
    }
    let room = padded - span;
    let mut out = if ceil {
        room.div_ceil(stride) + 1
    } else {
        room / stride + 1
    };
    if ceil && (out - 1) * stride >= size + pad {
        out -= 1;
    }
    Some(out)
}

impl LayerSpec {
    /// The row shape this layer makes of `input` (a row's shape, batch excluded), or what it
    /// takes instead.
    pub fn output_shape(&self, input: &[usize], first: bool) -> Result<Vec<usize>, Mismatch> {
        let rank = input.len();
        match self {
            LayerSpec::Linear {
                in_features,
                out_features,
                ..
            } => match input.last() {
                Some(last) if last == in_features => {
                    let mut out = input.to_vec();
                    out[rank - 1] = *out_features;
                    Ok(out)
                }
                _ => Err(Mismatch(format!("[N, *, {in_features}]"))),
            },
            LayerSpec::Conv { geometry: g, .. } => conv_shape(g, input),
            LayerSpec::BatchNorm { features, dims, .. } => {
                let ok = match dims {
                    1 => (rank == 1 || rank == 2) && input[0] == *features,
                    _ => rank == 3 && input[0] == *features,
                };
                if ok {
                    Ok(input.to_vec())
                } else if *dims == 1 {
                    Err(Mismatch(format!("[N, {features}] or [N, {features}, L]")))
                } else {
                    Err(Mismatch(format!("[N, {features}, H, W]")))
                }
            }
            LayerSpec::LayerNorm { shape, .. } => {
                if rank >= shape.len() && input[rank - shape.len()..] == shape[..] {
                    Ok(input.to_vec())
                } else {
                    let tail: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
                    Err(Mismatch(format!("[N, *, {}]", tail.join(", "))))
                }
            }
            LayerSpec::GroupNorm { channels, .. } => match input.first() {
                Some(c) if c == channels => Ok(input.to_vec()),
                _ => Err(Mismatch(format!("[N, {channels}, *]"))),
            },
            LayerSpec::Embedding { dim, .. } => {
                if !first {
                    return Err(Mismatch(
                        "INT64 token ids, so an Embedding can only be the first layer".to_string(),
                    ));
                }
                let mut out = input.to_vec();
                out.push(*dim);
                Ok(out)
            }
            LayerSpec::NoOp | LayerSpec::Act(_) => Ok(input.to_vec()),
            LayerSpec::Softmax { dim, .. } => {
                row_dim(*dim, rank, "dim")?;
                Ok(input.to_vec())
            }
            LayerSpec::MaxPool(g) | LayerSpec::AvgPool { geometry: g, .. } => pool_shape(g, input),
            LayerSpec::AdaptiveAvgPool { size } => {
                if rank != 2 && rank != 3 {
                    return Err(Mismatch("[N, C, H, W] or [N, H, W]".to_string()));
                }
                let mut out = input.to_vec();
                out[rank - 2] = size[0];
                out[rank - 1] = size[1];
                Ok(out)
            }
            LayerSpec::Flatten { start, end } => flatten_shape(*start, *end, input),
            LayerSpec::Unflatten { dim, sizes } => unflatten_shape(*dim, sizes, input),
        }
    }
}

fn conv_shape(g: &ConvGeometry, input: &[usize]) -> Result<Vec<usize>, Mismatch> {
    let spatial = if g.dims == 1 {
        match input {
            [c, l] if *c == g.cin => vec![1, *l],
            _ => return Err(Mismatch(format!("[N, {}, L]", g.cin))),
        }
    } else {
        match input {
            [c, h, w] if *c == g.cin => vec![*h, *w],
            _ => return Err(Mismatch(format!("[N, {}, H, W]", g.cin))),
        }
    };
    let mut out = vec![g.cout];
    for (i, size) in spatial.iter().enumerate().skip(2 - g.dims) {
        let o = window_out(
            *size,
            g.kernel[i],
            g.stride[i],
            g.padding[i],
            g.dilation[i],
            false,
        )
        .ok_or_else(|| {
            Mismatch(format!(
                "an input at least as large as the dilated kernel {:?} minus the padding",
                &g.kernel[2 - g.dims..]
            ))
        })?;
        out.push(o);
    }
    Ok(out)
}

fn pool_shape(g: &PoolGeometry, input: &[usize]) -> Result<Vec<usize>, Mismatch> {
    let rank = input.len();
    if rank != 2 && rank != 3 {
        return Err(Mismatch("[N, C, H, W] or [N, H, W]".to_string()));
    }
    let mut out = input.to_vec();
    for i in 0..2 {
        let at = rank - 2 + i;
        out[at] = window_out(
            input[at],
            g.kernel[i],
            g.stride[i],
            g.padding[i],
            g.dilation[i],
            g.ceil_mode,
        )
        .ok_or_else(|| {
            Mismatch(format!(
                "an input at least as large as the window {:?} minus the padding",
                g.kernel
            ))
        })?;
    }
    Ok(out)
}

fn flatten_shape(start: i64, end: i64, input: &[usize]) -> Result<Vec<usize>, Mismatch> {
    let rank = input.len();
    let s = row_dim(start, rank, "start_dim")?;
    let e = row_dim(end, rank, "end_dim")?;
    if s > e {
        return Err(Mismatch(format!(
            "start_dim {start} at or before end_dim {end}"
        )));
    }
    let mut out = input[..s].to_vec();
    out.push(input[s..=e].iter().product());
    out.extend_from_slice(&input[e + 1..]);
    Ok(out)
}

fn unflatten_shape(dim: i64, sizes: &[i64], input: &[usize]) -> Result<Vec<usize>, Mismatch> {
    let rank = input.len();
    let d = row_dim(dim, rank, "dim")?;
    let known: i64 = sizes.iter().filter(|s| **s != -1).product();
    let holes = sizes.iter().filter(|s| **s == -1).count();
    if sizes.is_empty() || holes > 1 || sizes.iter().any(|s| *s == 0 || *s < -1) {
        return Err(Mismatch(
            "unflattened_size of positive sizes (at most one -1)".to_string(),
        ));
    }
    let total = input[d] as i64;
    let fits = if holes == 1 {
        total % known == 0
    } else {
        total == known
    };
    if !fits {
        return Err(Mismatch(format!(
            "dimension {dim} of a size that unflattened_size {sizes:?} divides exactly"
        )));
    }
    let mut out = input[..d].to_vec();
    out.extend(sizes.iter().map(|s| {
        if *s == -1 {
            (total / known) as usize
        } else {
            *s as usize
        }
    }));
    out.extend_from_slice(&input[d + 1..]);
    Ok(out)
}
