//! The decoder memory budget. Every compressed upload is charged what its stream declares
//! it needs (the first xz block's dictionary, the first zstd frame's window; see
//! `nixfmt::declared_memory`), at most the per-decoder limit, and its decoder is held to
//! that charge. The decoders running at once may together use no more than the budget: a
//! semaphore of MiB permits holds the line, so N concurrent bombs (or N honest uploads)
//! cannot multiply memory — the next upload waits for a decoder to finish — while honest
//! uploads, which declare little, run many at a time.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::nixfmt::{Compression, Declared, DecoderLimit, VerifyError};

/// The per-decoder limit and the shared budget, in MiB.
#[derive(Debug, Clone)]
pub struct DecoderBudget {
    limit_mib: u32,
    permits: Arc<Semaphore>,
}

/// A decoder's admission: the limit it runs under, and its share of the budget, returned
/// when dropped.
#[derive(Debug)]
pub struct Share {
    /// What the decoder is held to.
    pub limit: DecoderLimit,
    _permit: Option<OwnedSemaphorePermit>,
}

impl DecoderBudget {
    /// `limit_mib` per decoder, `budget_mib` for all of them (at least `limit_mib`).
    pub fn new(limit_mib: u32, budget_mib: u32) -> Self {
        Self { limit_mib, permits: Arc::new(Semaphore::new(budget_mib.max(limit_mib) as usize)) }
    }

    /// Waits until a decoder for a stream that declared `declared` fits in the budget.
    /// A stream that declares more than the per-decoder limit is refused at once; one that
    /// declares nothing is charged the whole limit; an uncompressed NAR needs no decoder.
    pub async fn admit(&self, compression: Compression, declared: Declared) -> Result<Share, VerifyError> {
        let limit = DecoderLimit::from_mib(u64::from(self.limit_mib));
        let Some(mib) = charge(compression, declared, self.limit_mib) else {
            return Err(VerifyError::DecoderMemory { compression: compression.as_str(), limit_mib: limit.mib() });
        };
        if mib == 0 {
            return Ok(Share { limit, _permit: None });
        }
        // The semaphore is never closed.
        let permit = self.permits.clone().acquire_many_owned(mib).await.ok();
        Ok(Share { limit: limit.lowered_to(u64::from(mib)), _permit: permit })
    }
}

/// MiB charged for a decoder, `None` when the stream asks for more than `limit_mib`.
fn charge(compression: Compression, declared: Declared, limit_mib: u32) -> Option<u32> {
    match (compression, declared) {
        (Compression::None, _) => Some(0),
        (_, Declared::Bytes(bytes)) => {
            let mib = bytes.div_ceil(1 << 20).max(1);
            u32::try_from(mib).ok().filter(|m| *m <= limit_mib)
        }
        (_, Declared::NeedMore | Declared::Unknown) => Some(limit_mib),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges() {
        let mib = 1u64 << 20;
        for (compression, declared, expected) in [
            (Compression::None, Declared::Unknown, Some(0)),
            (Compression::Xz, Declared::Bytes(9 * mib), Some(9)),
            (Compression::Xz, Declared::Bytes(9 * mib + 1), Some(10)),
            (Compression::Zstd, Declared::Bytes(1), Some(1)),
            (Compression::Zstd, Declared::Bytes(32 * mib), Some(32)),
            (Compression::Zstd, Declared::Bytes(32 * mib + 1), None),
            (Compression::Xz, Declared::Bytes(u64::MAX), None),
            (Compression::Xz, Declared::Unknown, Some(32)),
            (Compression::Zstd, Declared::NeedMore, Some(32)),
        ] {
            assert_eq!(charge(compression, declared, 32), expected, "{compression:?} {declared:?}");
        }
    }

    #[tokio::test]
    async fn decoders_beyond_the_budget_wait() {
        let budget = DecoderBudget::new(32, 64);
        let a = budget.admit(Compression::Xz, Declared::Unknown).await.unwrap();
        assert_eq!(a.limit, DecoderLimit::from_mib(32));
        let _b = budget.admit(Compression::Zstd, Declared::Bytes(20 << 20)).await.unwrap();
        let small = budget.admit(Compression::Zstd, Declared::Bytes(3 << 20)).await.unwrap();
        assert_eq!(small.limit, DecoderLimit::from_mib(32).lowered_to(3), "held to what it declared");
        let _none = budget.admit(Compression::None, Declared::Unknown).await.unwrap();
        let next = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            budget.admit(Compression::Xz, Declared::Bytes(16 << 20)),
        );
        assert!(next.await.is_err(), "a decoder beyond the budget waits");
        drop(a);
        assert!(budget.admit(Compression::Xz, Declared::Bytes(16 << 20)).await.is_ok(), "and runs once one finishes");
        assert!(
            budget.admit(Compression::Xz, Declared::Bytes(33 << 20)).await.is_err(),
            "over the limit: refused, not queued"
        );
    }
}
