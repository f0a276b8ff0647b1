//! Batch fills of plain entries on a cluster without a script (see `fenced_set`): per bucket, a
//! `SET` per entry and a `GET` of the bucket's copy of the generation after them, all chunks
//! pipelined at once.

use fred::types::Value;

use super::{generation_ttl_ms, placement::Bucket, unexpected, ClusterStore};
use crate::{
    error::Result,
    l2::fenced_set,
    remote::{BatchEntry, BatchFilled, BatchWrite, Filled},
};

/// One chunk of a batch: its bucket, the entries' positions in the batch, the entries (keys
/// placed in the bucket).
pub(super) type Chunk = (Bucket, Vec<usize>, Vec<BatchEntry>);

impl ClusterStore {
    /// Writes `chunks` (every entry plain: see [`fenced_set::plain_batch`]) of a batch of `n`
    /// entries fenced at `fence`. A bucket whose copy of the generation is found behind the
    /// fence (its first write under this generation) is caught up, and its writes then stand
    /// as they landed, in the live key space (as a single plain write's do); a copy past the
    /// fence fences the bucket's entries.
    pub(super) async fn fill_plain_chunks(
        &self,
        chunks: Vec<Chunk>,
        n: usize,
        fence: u64,
        generation_key: &str,
    ) -> Result<BatchFilled> {
        let mut commands = Vec::new();
        let mut layout = Vec::with_capacity(chunks.len());
        for (b, at, entries) in chunks {
            let copy = b.generation_copy(generation_key);
            commands.extend(fenced_set::batch_commands(BatchWrite {
                entries,
                fence: Some(fence),
                generation_key: &copy,
                tags: Vec::new(),
                marks: Vec::new(),
            }));
            layout.push((b, at));
        }
        // Each bucket's commands are its entries' outcome: a bucket whose node did not answer
        // fails its own entries only (its `SET`s may or may not have landed: not known).
        let mut replies = self
            .pipelined_each("redis SET × n + GET (generation)", commands)
            .await?
            .into_iter();
        let mut out: BatchFilled = vec![Ok(Filled::Refused); n];
        for (b, at) in layout {
            let sets: Result<Vec<Value>> = replies.by_ref().take(at.len()).collect();
            let copy = replies
                .next()
                .unwrap_or_else(|| Err(unexpected("SET × n + GET")));
            let (sets, copy) = match (sets, copy) {
                (Ok(sets), Ok(copy)) if sets.len() == at.len() => (sets, copy),
                (Ok(_), Ok(_)) => return Err(unexpected("SET × n + GET")),
                (Err(e), _) | (_, Err(e)) => {
                    super::fail(&mut out, &at, &e);
                    continue;
                }
            };
            let caught_up = if fenced_set::behind(&copy, fence) {
                match self
                    .catch_up(b, generation_key, fence, generation_ttl_ms())
                    .await
                {
                    Ok(caught_up) => caught_up,
                    Err(e) => {
                        super::fail(&mut out, &at, &e);
                        continue;
                    }
                }
            } else {
                false
            };
            for (i, set) in at.into_iter().zip(&sets) {
                out[i] = Ok(if caught_up {
                    fenced_set::outcome(set, None, None)
                } else {
                    fenced_set::outcome(set, Some(&copy), Some(fence))
                });
            }
        }
        Ok(out)
    }
}
