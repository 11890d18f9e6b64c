//! The host's one copy of the per-row math that the CPU backend and the vocabulary-parallel
//! `combine` share: a row's online-softmax state and its merge (`online`), a row's finish from
//! that state (`row`), the focal factors (`focal`) and the reduction's scales and loss
//! (`reduce`). WGSL keeps its own copy (`shaders/include/softmax_row.wgsl`); the f64 oracle
//! (`reference`) keeps its own, written independently from `SEMANTICS.md`.

pub(crate) mod focal;
pub(crate) mod online;
pub(crate) mod reduce;
pub(crate) mod row;
