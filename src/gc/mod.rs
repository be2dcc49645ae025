//! Retention: the admin's prune. `plan` (pure) decides; `run` applies, one collection at a
//! time, in an order that keeps the cache consistent at every instant.

pub mod pins;
pub mod plan;
pub mod reconcile;
pub mod run;

pub use plan::{Plan, Policy};
pub use run::{collect, preview, GcError, GcReport};
