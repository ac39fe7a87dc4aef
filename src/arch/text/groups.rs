//! Batching of text rows: the rows of every request in a batch are regrouped by length, so each
//! group is padded to its own longest row and padding never exceeds [`PAD_SLACK`] of the real
//! tokens (TEI measured padded CPU batches slower per sequence than singles; grouping by length
//! keeps batching at least as fast as one-by-one, see the README's benchmark). Attention memory
//! of a group is capped by [`ATTENTION_BUDGET`].

use super::encoder::TokenBatch;
use super::model::{id_values, IDS, MASK, TYPES};
use crate::model::Prepared;

/// A group's padded token count may exceed its real token count by at most this factor.
const PAD_SLACK: f64 = 1.25;

/// Attention scores of one group (rows × heads × L × L f32 values) stay below this (128 MiB).
const ATTENTION_BUDGET: usize = 32 << 20;

/// One sequence of a batch, with trailing padding trimmed.
pub struct Row<'a> {
    pub request: usize,
    pub row: usize,
    ids: &'a [u32],
    mask: &'a [u32],
    types: &'a [u32],
}

pub fn collect_rows<'a>(batch: &[&'a Prepared]) -> candle_core::Result<Vec<Row<'a>>> {
    let mut rows = Vec::new();
    for (request, prepared) in batch.iter().enumerate() {
        let tensor = |i: usize| match prepared.tensors.get(i) {
            Some(Some(t)) if t.shape.len() == 2 => Ok(t),
            _ => candle_core::bail!("a prepared text request lacks its token tensors"),
        };
        let (ids, mask, types) = (tensor(IDS)?, tensor(MASK)?, tensor(TYPES)?);
        let len = ids.shape[1];
        let (ids, mask, types) = (id_values(ids), id_values(mask), id_values(types));
        let size = prepared.rows * len;
        if ids.len() != size || mask.len() != size || types.len() != size {
            candle_core::bail!("a prepared text request's token tensors disagree in size");
        }
        for row in 0..prepared.rows {
            let span = row * len..(row + 1) * len;
            let m = &mask[span.clone()];
            // Trailing padding is dropped; padding inside a row stays masked.
            let used = m.iter().rposition(|v| *v != 0).map_or(0, |p| p + 1);
            let start = span.start;
            rows.push(Row {
                request,
                row,
                ids: &ids[start..start + used],
                mask: &m[..used],
                types: &types[start..start + used],
            });
        }
    }
    Ok(rows)
}

/// Groups row indices so each group's padding stays within [`PAD_SLACK`], its attention
/// scores within [`ATTENTION_BUDGET`] and its padded tokens within `max_tokens` (the batching
/// config's `max_batch_tokens`; 0: none): rows sorted by length, longest first, taken greedily.
/// A row longer than `max_tokens` alone still forms its own group.
pub fn plan_groups(rows: &[Row], heads: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].ids.len()));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = rows[i].ids.len();
        let fits = groups.last().is_some_and(|g| {
            let longest = rows[g[0]].ids.len();
            let padded = (g.len() + 1) * longest;
            padded as f64 <= (real + len) as f64 * PAD_SLACK
                && (g.len() + 1) * heads * longest * longest <= ATTENTION_BUDGET
                && (max_tokens == 0 || padded <= max_tokens)
        });
        if fits {
            if let Some(g) = groups.last_mut() {
                g.push(i);
            }
            real += len;
        } else {
            groups.push(vec![i]);
            real = len;
        }
    }
    groups
}

/// The rows of `group` padded to its longest with `pad_id` (the family's padding token, so
/// padding gets the position ids transformers gives padding) and mask 0.
pub fn pad_group(rows: &[Row], group: &[usize], pad_id: u32) -> TokenBatch {
    let len = group.iter().map(|&i| rows[i].ids.len()).max().unwrap_or(0);
    let n = group.len() * len;
    let (mut ids, mut types, mut mask) = (vec![pad_id; n], vec![0u32; n], vec![0f32; n]);
    for (k, &i) in group.iter().enumerate() {
        let row = &rows[i];
        for (j, ((id, m), ty)) in row.ids.iter().zip(row.mask).zip(row.types).enumerate() {
            // Values were range-checked in `prepare` (tokenizer ids fit vocab_size by construction).
            ids[k * len + j] = *id;
            types[k * len + j] = *ty;
            mask[k * len + j] = *m as f32;
        }
    }
    TokenBatch {
        ids,
        types,
        mask,
        rows: group.len(),
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ids: &[u32]) -> Row<'_> {
        Row {
            request: 0,
            row: 0,
            ids,
            mask: ids,
            types: ids,
        }
    }

    #[test]
    fn groups_bound_padding_waste() {
        let long = vec![1u32; 100];
        let mid = vec![1u32; 90];
        let short = vec![1u32; 10];
        let rows = vec![row(&short), row(&long), row(&mid), row(&short), row(&long)];
        let groups = plan_groups(&rows, 12, 0);
        // The two 100s and the 90 share a group (waste 3.4%); the 10s are grouped apart.
        assert_eq!(groups, vec![vec![1, 4, 2], vec![0, 3]]);
        // Attention budget: huge sequences are never batched beyond it.
        let huge = vec![1u32; 512];
        let rows: Vec<Row> = (0..20).map(|_| row(&huge)).collect();
        let groups = plan_groups(&rows, 12, 0);
        assert!(groups
            .iter()
            .all(|g| g.len() * 12 * 512 * 512 <= ATTENTION_BUDGET));
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 20);
        // A token budget splits groups that padding alone would keep together.
        let rows: Vec<Row> = (0..10).map(|_| row(&mid)).collect();
        let groups = plan_groups(&rows, 12, 300);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        assert!(groups.iter().all(|g| g.len() * 90 <= 300));
    }

    #[test]
    fn groups_are_padded_with_the_padding_token() {
        let (a, b) = ([5u32, 6, 7], [8u32]);
        let rows = vec![row(&a), row(&b)];
        let batch = pad_group(&rows, &[0, 1], 1);
        assert_eq!(batch.ids, vec![5, 6, 7, 8, 1, 1]);
        assert_eq!(batch.mask, vec![5., 6., 7., 8., 0., 0.]);
        assert_eq!((batch.rows, batch.len), (2, 3));
    }
}
