//! The two ends of a text encoder: the embedding sum that starts it and the sentence pooling
//! that ends it, each one pass over memory on rayon.
//!
//! Hugging Face encoders add a word, a position and (for BERT and RoBERTa) a token-type
//! embedding before their first LayerNorm; they differ only in which position ids they use
//! (BERT counts from 0, RoBERTa and MPNet from the padding index + 1), so the positions arrive
//! here as data. Pooling is sentence-transformers' Pooling module (mean, CLS or max over the
//! attended tokens) with its optional Normalize module fused in.

use candle_core::{bail, Tensor};

use super::fused::for_rows;
use super::planes::with_slice;

/// The lookup tables of an encoder's embeddings, each `[rows, hidden]`.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingTables<'a> {
    pub word: &'a Tensor,
    pub position: &'a Tensor,
    /// `None` for families without token types (DistilBERT, MPNet).
    pub token_type: Option<&'a Tensor>,
}

/// One padded batch of `[B·L]` token ids with their position and token-type ids.
#[derive(Debug, Clone, Copy)]
pub struct TokenIds<'a> {
    pub ids: &'a [u32],
    pub positions: &'a [u32],
    /// Ignored when the tables have no token types.
    pub types: &'a [u32],
}

/// `out[r, :] = word[ids[r]] + position[positions[r]] (+ token_type[types[r]])` as a new
/// `[B·L, H]` tensor.
pub fn embedding_sum(tables: EmbeddingTables, tokens: TokenIds) -> candle_core::Result<Tensor> {
    let hidden = tables.word.dim(1)?;
    let n = tokens.ids.len();
    if tokens.positions.len() != n || (tables.token_type.is_some() && tokens.types.len() != n) {
        bail!("embedding sum: ids, positions and token types differ in length");
    }
    let mut out = vec![0f32; n * hidden];
    let fits = |ids: &[u32], table: &[f32]| {
        ids.iter()
            .all(|i| (*i as usize + 1) * hidden <= table.len())
    };
    with_slice(tables.word, |w| {
        with_slice(tables.position, |p| {
            if !fits(tokens.ids, w) || !fits(tokens.positions, p) {
                bail!("token or position id outside the embedding tables");
            }
            match tables.token_type {
                None => for_rows(&mut out, hidden, |r, row| {
                    let (a, b) = (
                        row_of(w, tokens.ids[r], hidden),
                        row_of(p, tokens.positions[r], hidden),
                    );
                    for ((o, a), b) in row.iter_mut().zip(a).zip(b) {
                        *o = a + b;
                    }
                }),
                Some(table) => with_slice(table, |t| {
                    if !fits(tokens.types, t) {
                        bail!("token type id outside the embedding table");
                    }
                    for_rows(&mut out, hidden, |r, row| {
                        let a = row_of(w, tokens.ids[r], hidden);
                        let b = row_of(p, tokens.positions[r], hidden);
                        let c = row_of(t, tokens.types[r], hidden);
                        // Hugging Face's order: (word + token type) + position.
                        for (((o, a), b), c) in row.iter_mut().zip(a).zip(b).zip(c) {
                            *o = (a + c) + b;
                        }
                    });
                    Ok(())
                })??,
            }
            Ok(())
        })?
    })??;
    Tensor::from_vec(out, (n, hidden), &candle_core::Device::Cpu)
}

/// Row `id` of a `[rows, hidden]` table.
fn row_of(table: &[f32], id: u32, hidden: usize) -> &[f32] {
    let start = id as usize * hidden;
    &table[start..start + hidden]
}

/// How sentence-transformers' Pooling module turns token states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The mean over attended tokens (`sum / max(count, 1e-9)`).
    Mean,
    /// The first attended token (sentence-transformers 6.x: the argmax of the mask; `[CLS]` or
    /// `<s>` for right-padded rows).
    Cls,
    /// The elementwise maximum over attended tokens.
    Max,
}

/// Pools `[B·L, H]` hidden states over each row's attended positions (`mask` is `[B·L]` 0/1)
/// and, with `normalize`, divides each vector by `max(‖x‖, 1e-12)` (`F.normalize`, the
/// Normalize module). Returns `[B, H]` row-major.
pub fn pool(
    hidden: &Tensor,
    mask: &[f32],
    len: usize,
    mode: Pool,
    normalize: bool,
) -> candle_core::Result<Vec<f32>> {
    let width = hidden.dim(1)?;
    let rows = mask.len() / len.max(1);
    let mut out = vec![0f32; rows * width];
    with_slice(hidden, |h| {
        if h.len() != rows * len * width || mask.len() != rows * len {
            bail!("{} hidden values do not match a {rows}x{len} mask", h.len());
        }
        for (b, pooled) in out.chunks_mut(width).enumerate() {
            let keep = &mask[b * len..(b + 1) * len];
            let state = |j: usize| &h[(b * len + j) * width..(b * len + j + 1) * width];
            let attended = keep.iter().enumerate().filter(|(_, k)| **k != 0.0);
            match mode {
                Pool::Mean => {
                    let mut count = 0f32;
                    for (j, k) in attended {
                        count += k;
                        pooled
                            .iter_mut()
                            .zip(state(j))
                            .for_each(|(o, s)| *o += s * k);
                    }
                    let denom = count.max(1e-9);
                    pooled.iter_mut().for_each(|o| *o /= denom);
                }
                Pool::Cls => {
                    let first = keep.iter().position(|k| *k != 0.0).unwrap_or(0);
                    pooled.copy_from_slice(state(first));
                }
                Pool::Max => {
                    pooled.fill(f32::NEG_INFINITY);
                    for (j, _) in attended {
                        pooled
                            .iter_mut()
                            .zip(state(j))
                            .for_each(|(o, s)| *o = o.max(*s));
                    }
                }
            }
            if normalize {
                let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                pooled.iter_mut().for_each(|o| *o /= norm);
            }
        }
        Ok(())
    })??;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    fn tensor(values: Vec<f32>, rows: usize, cols: usize) -> Tensor {
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn embedding_sum_matches_lookups() {
        let h = 5;
        let word = tensor((0..7 * h).map(|i| i as f32).collect(), 7, h);
        let position = tensor((0..4 * h).map(|i| i as f32 * 0.5).collect(), 4, h);
        let types = tensor((0..2 * h).map(|i| -(i as f32)).collect(), 2, h);
        let ids = [3u32, 6, 0];
        let positions = [2u32, 3, 1];
        let type_ids = [1u32, 0, 1];
        let tokens = TokenIds {
            ids: &ids,
            positions: &positions,
            types: &type_ids,
        };
        let with = embedding_sum(
            EmbeddingTables {
                word: &word,
                position: &position,
                token_type: Some(&types),
            },
            tokens,
        )
        .unwrap();
        let without = embedding_sum(
            EmbeddingTables {
                word: &word,
                position: &position,
                token_type: None,
            },
            tokens,
        )
        .unwrap();
        for r in 0..3 {
            let base = (word.i(ids[r] as usize).unwrap()
                + position.i(positions[r] as usize).unwrap())
            .unwrap();
            let typed = (&base + types.i(type_ids[r] as usize).unwrap()).unwrap();
            assert_eq!(
                without.i(r).unwrap().to_vec1::<f32>().unwrap(),
                base.to_vec1::<f32>().unwrap()
            );
            assert_eq!(
                with.i(r).unwrap().to_vec1::<f32>().unwrap(),
                typed.to_vec1::<f32>().unwrap()
            );
        }
        // A position past the table is an error, not a panic.
        let bad = TokenIds {
            positions: &[2, 4, 1],
            ..tokens
        };
        assert!(embedding_sum(
            EmbeddingTables {
                word: &word,
                position: &position,
                token_type: None
            },
            bad
        )
        .is_err());
    }

    #[test]
    fn pooling_follows_sentence_transformers() {
        // Two rows of three tokens, hidden 2; row 1 attends to tokens 1 and 2 only (left padding).
        let h = tensor(
            vec![
                1., -2., 3., 4., -5., 6., /* row 1 */ 9., 9., 2., -1., 4., 3.,
            ],
            6,
            2,
        );
        let mask = [1., 1., 1., 0., 1., 1.];
        let mean = pool(&h, &mask, 3, Pool::Mean, false).unwrap();
        assert_eq!(mean, vec![-1. / 3., 8. / 3., 3., 1.]);
        let cls = pool(&h, &mask, 3, Pool::Cls, false).unwrap();
        assert_eq!(cls, vec![1., -2., 2., -1.]);
        let max = pool(&h, &mask, 3, Pool::Max, false).unwrap();
        assert_eq!(max, vec![3., 6., 4., 3.]);
        let normalized = pool(&h, &mask, 3, Pool::Max, true).unwrap();
        assert_eq!(
            normalized,
            vec![3. / 45f32.sqrt(), 6. / 45f32.sqrt(), 0.8, 0.6]
        );
        assert!(pool(&h, &mask[..4], 3, Pool::Mean, false).is_err());
    }
}
