//! The decoder memory budget: every upload's decompressor may use up to the per-decoder
//! limit, and the decoders running at once may together use no more than the budget. A
//! semaphore of MiB permits holds the line, so N concurrent bombs (or N honest uploads)
//! cannot multiply memory: the next upload waits for a decoder to finish.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::nixfmt::{Compression, DecoderLimit};

/// The per-decoder limit and the shared budget, in MiB.
#[derive(Debug, Clone)]
pub struct DecoderBudget {
    limit_mib: u32,
    permits: Arc<Semaphore>,
}

impl DecoderBudget {
    /// `limit_mib` per decoder, `budget_mib` for all of them (at least `limit_mib`).
    pub fn new(limit_mib: u32, budget_mib: u32) -> Self {
        Self { limit_mib, permits: Arc::new(Semaphore::new(budget_mib.max(limit_mib) as usize)) }
    }

    /// The limit each decoder runs under.
    pub fn limit(&self) -> DecoderLimit {
        DecoderLimit::from_mib(u64::from(self.limit_mib))
    }

    /// Waits until a decoder for `compression` fits in the budget; the permit returns its
    /// share when dropped. An uncompressed NAR needs no decoder and no permit.
    pub async fn acquire(&self, compression: Compression) -> Option<OwnedSemaphorePermit> {
        if compression == Compression::None {
            return None;
        }
        // The semaphore is never closed.
        self.permits.clone().acquire_many_owned(self.limit_mib).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn decoders_beyond_the_budget_wait() {
        let budget = DecoderBudget::new(32, 64);
        let a = budget.acquire(Compression::Xz).await;
        let _b = budget.acquire(Compression::Zstd).await;
        assert!(budget.acquire(Compression::None).await.is_none(), "no decoder, no share");
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), budget.acquire(Compression::Xz));
        assert!(third.await.is_err(), "a third decoder waits");
        drop(a);
        assert!(budget.acquire(Compression::Xz).await.is_some(), "and runs once one finishes");
    }
}
