//! Crash points for the fault-injection tests. In debug builds only, `BERTH_CRASH_AT=<step>`
//! makes the process abort the moment publication reaches that step: no destructors, no
//! flushing, nothing cleaned up, as a `kill -9` there would leave it. Release builds compile
//! every point to nothing.

/// The steps of ingest and publication, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The NAR is complete and verified in staging, not yet under its name.
    NarStaged,
    /// The NAR object is under its name, not yet recorded in the index.
    NarCommitted,
    /// The NAR is recorded; no narinfo points at it yet.
    NarRecorded,
    /// The narinfo object is written, not yet in the index.
    NarInfoWritten,
    /// The narinfo is in the index.
    NarInfoIndexed,
    /// `berth cache resign`: the first batch's progress is recorded, the next not started.
    ResignBatchRecorded,
}

impl Step {
    /// Every step of publication, in order (for the tests that crash at each).
    pub const ALL: [Step; 5] =
        [Step::NarStaged, Step::NarCommitted, Step::NarRecorded, Step::NarInfoWritten, Step::NarInfoIndexed];

    /// The name `BERTH_CRASH_AT` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::NarStaged => "nar-staged",
            Step::NarCommitted => "nar-committed",
            Step::NarRecorded => "nar-recorded",
            Step::NarInfoWritten => "narinfo-written",
            Step::NarInfoIndexed => "narinfo-indexed",
            Step::ResignBatchRecorded => "resign-batch-recorded",
        }
    }
}

/// Aborts the process if `BERTH_CRASH_AT` names `step` (debug builds only).
#[inline]
pub fn point(step: Step) {
    #[cfg(debug_assertions)]
    {
        static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if AT.get_or_init(|| std::env::var("BERTH_CRASH_AT").ok()).as_deref() == Some(step.as_str()) {
            eprintln!("berth: crash point {} reached (BERTH_CRASH_AT)", step.as_str());
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}
