//! The one error type every call returns (SEMANTICS.md section 7).

/// Everything that can go wrong in a call. Messages name the row, value or shape at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer's length does not match the shape it was described with.
    #[error("{what} has length {actual}, expected {expected} ({shape})")]
    Shape {
        /// Which argument (`"logits"`, `"targets"`, `"class_weights"`, ...).
        what: &'static str,
        /// Length the shape implies.
        expected: usize,
        /// Length that was passed.
        actual: usize,
        /// The shape, spelled out (e.g. `"rows 4 × classes 10"`).
        shape: String,
    },
    /// `classes` was 0: a softmax over no classes is undefined.
    #[error("classes must be at least 1, got 0")]
    NoClasses,
    /// A valid row's class-index target is outside `[0, classes)`.
    #[error("target {value} at row {row} is out of range for {classes} classes (ignore_index is {ignore_index})")]
    TargetOutOfRange {
        /// Row index (in rows of the flattened batch).
        row: usize,
        /// The offending target.
        value: i64,
        /// Number of classes.
        classes: usize,
        /// The ignore index in force.
        ignore_index: i64,
    },
    /// A soft target, BCE target or probability input is negative, above its bound, or not finite.
    #[error("{what} at row {row}, class {class} is {value}, which is not allowed: {why}")]
    BadValue {
        /// Which argument.
        what: &'static str,
        /// Row index.
        row: usize,
        /// Class index.
        class: usize,
        /// The value.
        value: f32,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A per-class or per-row weight is negative or not finite.
    #[error("{what}[{index}] is {value}: weights must be finite and non-negative")]
    BadWeight {
        /// `"class_weights"`, `"pos_weight"` or `"sample_weights"`.
        what: &'static str,
        /// Index into that vector.
        index: usize,
        /// The value.
        value: f32,
    },
    /// An option is outside its domain.
    #[error("option {option} = {value} is invalid: {why}")]
    BadOption {
        /// Option name, as the builder method spells it.
        option: &'static str,
        /// The value (an f32, so that it prints as it was typed: `-0.1`, not its f64 widening).
        value: f32,
        /// Its domain.
        why: &'static str,
    },
    /// The byte size of a shape does not fit in `usize` (or `u64` on the device).
    #[error("shape {shape} overflows the addressable size")]
    Overflow {
        /// The shape.
        shape: String,
    },
    /// A device buffer slice starts at an offset the device cannot bind.
    #[error("{what} starts at byte {offset}, not a multiple of the device's storage-buffer offset alignment {alignment}")]
    Misaligned {
        /// Which argument.
        what: &'static str,
        /// The slice's offset in its buffer (bytes).
        offset: u64,
        /// `wgpu::Limits::min_storage_buffer_offset_alignment` of the device.
        alignment: u64,
    },
    /// A combination this call does not take (e.g. an in-place gradient with a strided view).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// No usable GPU adapter, or one that can't run compute shaders.
    #[error("no usable GPU: {0}")]
    NoGpu(String),
    /// The device reported an error (validation, out of memory, lost device).
    #[error("GPU error: {0}")]
    Device(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
