//! Borrowed views of the inputs: logits (dtype, layout, shape), targets and per-class weights.

use crate::error::{Error, Result};
use half::{bf16, f16};

/// Element type of the logits in memory. Arithmetic is always f32 or wider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

/// A logit element type: `f32`, `half::f16` or `half::bf16`.
pub trait Element: bytemuck::Pod + Send + Sync + private::Sealed {
    /// The runtime tag of this type.
    const DTYPE: Dtype;
    /// Widens to f32 (exact).
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type (round to nearest even).
    fn from_f32(value: f32) -> Self;
    /// Widens a slice (SIMD where the `half` crate has it).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// Rounds a slice of f32 into this type.
    fn narrow(src: &[f32], dst: &mut [Self]);
    #[doc(hidden)]
    fn shared(data: &[Self]) -> Storage<'_>;
    #[doc(hidden)]
    fn exclusive(data: &mut [Self]) -> Storage<'_>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(value: f32) -> Self {
        value
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src)
    }
    fn shared(data: &[Self]) -> Storage<'_> {
        Storage::F32(data)
    }
    fn exclusive(data: &mut [Self]) -> Storage<'_> {
        Storage::F32Mut(data)
    }
}

macro_rules! half_element {
    ($t:ty, $dtype:expr, $shared:ident, $exclusive:ident) => {
        impl Element for $t {
            const DTYPE: Dtype = $dtype;
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
            fn from_f32(value: f32) -> Self {
                <$t>::from_f32(value)
            }
            fn widen(src: &[Self], dst: &mut [f32]) {
                use half::slice::HalfFloatSliceExt;
                src.convert_to_f32_slice(dst)
            }
            fn narrow(src: &[f32], dst: &mut [Self]) {
                use half::slice::HalfFloatSliceExt;
                dst.convert_from_f32_slice(src)
            }
            fn shared(data: &[Self]) -> Storage<'_> {
                Storage::$shared(data)
            }
            fn exclusive(data: &mut [Self]) -> Storage<'_> {
                Storage::$exclusive(data)
            }
        }
    };
}
half_element!(f16, Dtype::F16, F16, F16Mut);
half_element!(bf16, Dtype::Bf16, Bf16, Bf16Mut);

/// Where class `c` of row `r` lives.
///
/// `Rows`: `rows × classes` row-major, the language-model case (`offset = r·C + c`).
/// `ClassDim1 { spatial }`: PyTorch's `(N, C, d1, …)` with `spatial = d1·d2·…` and
/// `rows = N·spatial`; row `r = n·spatial + s` has `offset = n·C·spatial + c·spatial + s`
/// (class stride `spatial`), read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Contiguous rows.
    #[default]
    Rows,
    /// Class dimension at 1, `spatial` positions per sample.
    ClassDim1 {
        /// Product of the trailing dimensions `d1·d2·…` (at least 1).
        spatial: usize,
    },
}

impl Layout {
    /// Distance in elements between class `c` and `c + 1` of one row.
    pub const fn class_stride(self) -> usize {
        match self {
            Layout::Rows => 1,
            Layout::ClassDim1 { spatial } => spatial,
        }
    }
    /// Offset of element (row, class) for `classes` classes.
    #[inline]
    pub const fn offset(self, row: usize, class: usize, classes: usize) -> usize {
        match self {
            Layout::Rows => row * classes + class,
            Layout::ClassDim1 { spatial } => {
                let (n, s) = (row / spatial, row % spatial);
                (n * classes + class) * spatial + s
            }
        }
    }
    /// Rows that share one contiguous block of `rows_per_block × classes` elements.
    pub const fn rows_per_block(self) -> usize {
        match self {
            Layout::Rows => 1,
            Layout::ClassDim1 { spatial } => spatial,
        }
    }
}

/// The logit (or probability) storage: shared for out-of-place use, exclusive for in-place gradients.
#[derive(Debug)]
#[doc(hidden)]
pub enum Storage<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    F32Mut(&'a mut [f32]),
    F16Mut(&'a mut [f16]),
    Bf16Mut(&'a mut [bf16]),
}

/// A borrowed view of the logits: `rows × classes` values in some dtype and layout.
///
/// ```
/// use xent::Logits;
/// let x = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6];
/// let logits = Logits::new(&x, 2, 3);
/// assert_eq!((logits.rows(), logits.classes()), (2, 3));
/// ```
#[derive(Debug)]
pub struct Logits<'a> {
    pub(crate) storage: Storage<'a>,
    rows: usize,
    classes: usize,
    layout: Layout,
}

impl<'a> Logits<'a> {
    /// Contiguous `rows × classes` logits, read only (gradients go to a separate buffer).
    pub fn new<T: Element>(data: &'a [T], rows: usize, classes: usize) -> Self {
        Self::with_storage(T::shared(data), rows, classes, Layout::Rows)
    }
    /// Contiguous logits that an in-place gradient may overwrite ([`Request::gradient_in_place`](crate::Request::gradient_in_place)).
    pub fn new_mut<T: Element>(data: &'a mut [T], rows: usize, classes: usize) -> Self {
        Self::with_storage(T::exclusive(data), rows, classes, Layout::Rows)
    }
    /// PyTorch's `(batch, classes, d1, …)` layout, `spatial = d1·d2·…`; rows are `batch·spatial`.
    pub fn class_dim1<T: Element>(
        data: &'a [T],
        batch: usize,
        classes: usize,
        spatial: usize,
    ) -> Self {
        let rows = batch.saturating_mul(spatial);
        Self::with_storage(
            T::shared(data),
            rows,
            classes,
            Layout::ClassDim1 { spatial },
        )
    }
    /// As [`class_dim1`](Self::class_dim1), writable for an in-place gradient.
    pub fn class_dim1_mut<T: Element>(
        data: &'a mut [T],
        batch: usize,
        classes: usize,
        spatial: usize,
    ) -> Self {
        let rows = batch.saturating_mul(spatial);
        Self::with_storage(
            T::exclusive(data),
            rows,
            classes,
            Layout::ClassDim1 { spatial },
        )
    }
    fn with_storage(storage: Storage<'a>, rows: usize, classes: usize, layout: Layout) -> Self {
        Logits {
            storage,
            rows,
            classes,
            layout,
        }
    }
    /// Number of rows (samples × spatial positions).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// Memory layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Element type.
    pub fn dtype(&self) -> Dtype {
        match self.storage {
            Storage::F32(_) | Storage::F32Mut(_) => Dtype::F32,
            Storage::F16(_) | Storage::F16Mut(_) => Dtype::F16,
            Storage::Bf16(_) | Storage::Bf16Mut(_) => Dtype::Bf16,
        }
    }
    /// Whether an in-place gradient may be written over these logits.
    pub fn is_writable(&self) -> bool {
        matches!(
            self.storage,
            Storage::F32Mut(_) | Storage::F16Mut(_) | Storage::Bf16Mut(_)
        )
    }
    /// Number of elements in the storage.
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::F32(d) => d.len(),
            Storage::F16(d) => d.len(),
            Storage::Bf16(d) => d.len(),
            Storage::F32Mut(d) => d.len(),
            Storage::F16Mut(d) => d.len(),
            Storage::Bf16Mut(d) => d.len(),
        }
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The value at (row, class), widened to f32. For references and tests; slow.
    pub fn get(&self, row: usize, class: usize) -> f32 {
        let i = self.layout.offset(row, class, self.classes);
        match &self.storage {
            Storage::F32(d) => d[i],
            Storage::F16(d) => d[i].to_f32(),
            Storage::Bf16(d) => d[i].to_f32(),
            Storage::F32Mut(d) => d[i],
            Storage::F16Mut(d) => d[i].to_f32(),
            Storage::Bf16Mut(d) => d[i].to_f32(),
        }
    }
    /// The logits' storage as bytes (for an upload).
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::F32(d) => bytemuck::cast_slice(d),
            Storage::F16(d) => bytemuck::cast_slice(d),
            Storage::Bf16(d) => bytemuck::cast_slice(d),
            Storage::F32Mut(d) => bytemuck::cast_slice(d),
            Storage::F16Mut(d) => bytemuck::cast_slice(d),
            Storage::Bf16Mut(d) => bytemuck::cast_slice(d),
        }
    }
    /// Checks `len == rows·classes` (and `classes ≥ 1`, sizes that fit in bytes).
    pub(crate) fn check(&self) -> Result<()> {
        if self.classes == 0 {
            return Err(Error::NoClasses);
        }
        let shape = self.shape_string();
        let expected = self
            .rows
            .checked_mul(self.classes)
            .filter(|n| n.checked_mul(4).is_some())
            .ok_or_else(|| Error::Overflow {
                shape: shape.clone(),
            })?;
        if let Layout::ClassDim1 { spatial: 0 } = self.layout {
            return Err(Error::Shape {
                what: "spatial",
                expected: 1,
                actual: 0,
                shape,
            });
        }
        if self.len() != expected {
            return Err(Error::Shape {
                what: "logits",
                expected,
                actual: self.len(),
                shape,
            });
        }
        Ok(())
    }
    /// `"rows R × classes C"` or `"(N, C, spatial S)"`.
    pub fn shape_string(&self) -> String {
        match self.layout {
            Layout::Rows => format!("rows {} × classes {}", self.rows, self.classes),
            Layout::ClassDim1 { spatial } => format!(
                "(batch {}, classes {}, spatial {spatial})",
                self.rows.checked_div(spatial).unwrap_or(0),
                self.classes
            ),
        }
    }
}

/// Targets: class indices (i32 or i64, one per row) or a dense `rows × classes` f32 tensor
/// (soft targets for softmax cross-entropy, multi-label targets for BCE), in the logits' layout.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// One class index per row (PyTorch's `int32`).
    I32(&'a [i32]),
    /// One class index per row (PyTorch's default `int64`).
    I64(&'a [i64]),
    /// Dense targets, same shape and layout as the logits.
    Dense(&'a [f32]),
}

impl Targets<'_> {
    /// The index target of a row, widened to i64 (`None` for dense targets).
    #[inline]
    pub fn index(&self, row: usize) -> Option<i64> {
        match self {
            Targets::I32(t) => Some(t[row] as i64),
            Targets::I64(t) => Some(t[row]),
            Targets::Dense(_) => None,
        }
    }
    /// Number of stored elements.
    pub fn len(&self) -> usize {
        match self {
            Targets::I32(t) => t.len(),
            Targets::I64(t) => t.len(),
            Targets::Dense(t) => t.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [i32]> for Targets<'a> {
    fn from(t: &'a [i32]) -> Self {
        Targets::I32(t)
    }
}
impl<'a> From<&'a [i64]> for Targets<'a> {
    fn from(t: &'a [i64]) -> Self {
        Targets::I64(t)
    }
}
impl<'a> From<&'a [f32]> for Targets<'a> {
    fn from(t: &'a [f32]) -> Self {
        Targets::Dense(t)
    }
}

/// Everything one loss call reads: logits, targets, the optional per-class weights and the
/// optional per-row sample weights.
///
/// ```
/// use xent::{Batch, Logits};
/// let x = [0.0f32; 6];
/// let y = [2i64, 0];
/// let w = [1.0f32, 2.0, 0.5];
/// let batch = Batch::new(Logits::new(&x, 2, 3), &y[..]).class_weights(&w);
/// assert_eq!(batch.logits.rows(), 2);
/// ```
#[derive(Debug)]
pub struct Batch<'a> {
    /// The logits (or probabilities).
    pub logits: Logits<'a>,
    /// The targets.
    pub targets: Targets<'a>,
    /// Per-class weights `w[c]` (softmax CE) or BCE's `weight[c]`; all 1 when absent.
    pub class_weights: Option<&'a [f32]>,
    /// BCE's `pos_weight[c]`; all 1 when absent. Not used by softmax cross-entropy.
    pub pos_weight: Option<&'a [f32]>,
    /// Per-row sample weights `s[n]` (length `rows`; BCE: every element of row `n`); all 1
    /// when absent (SEMANTICS.md sections 2c and 4). Each row's loss and gradient are
    /// multiplied by `s[n]`. The mean (`Reduction::Mean`) of softmax cross-entropy divides
    /// the cross-entropy terms by `D = Σ_valid s[n]·w[y[n]]` (soft targets: `Σ_n s[n]`) and
    /// the z-loss term by `Σ_valid s[n]`, the sample-weighted count of valid rows: that is
    /// `V` when every `s[n]` is 1, as in SEMANTICS.md section 2, where the z-loss ignores
    /// class weights. Scaling every `s[n]` alike leaves the mean unchanged. BCE's mean still
    /// divides by `N·C`.
    pub sample_weights: Option<&'a [f32]>,
}

impl<'a> Batch<'a> {
    /// Logits and targets, no weights.
    pub fn new(logits: Logits<'a>, targets: impl Into<Targets<'a>>) -> Self {
        Batch {
            logits,
            targets: targets.into(),
            class_weights: None,
            pos_weight: None,
            sample_weights: None,
        }
    }
    /// Sets per-class weights (length `classes`).
    pub fn class_weights(mut self, weights: &'a [f32]) -> Self {
        self.class_weights = Some(weights);
        self
    }
    /// Sets BCE's per-class positive weights (length `classes`).
    pub fn pos_weight(mut self, weights: &'a [f32]) -> Self {
        self.pos_weight = Some(weights);
        self
    }
    /// Sets per-row sample weights `s[n]` (length `rows`, finite and non-negative); the
    /// `sample_weights` field says what the mean divides by.
    pub fn sample_weights(mut self, weights: &'a [f32]) -> Self {
        self.sample_weights = Some(weights);
        self
    }
}

/// A borrowed row-major matrix, read only: `rows × cols` values of one dtype. The linear
/// cross-entropy's hidden states `h` [N × D], the head's weight `W` [V × D] (PyTorch
/// `nn.Linear` layout) and its bias `b` \[V\] (a 1 × V matrix).
///
/// ```
/// use xent::Matrix;
/// let w = [half::bf16::from_f32(0.5); 6];
/// let weight = Matrix::new(&w, 3, 2);
/// assert_eq!((weight.rows(), weight.cols()), (3, 2));
/// ```
#[derive(Debug)]
pub struct Matrix<'a> {
    pub(crate) storage: Storage<'a>,
    rows: usize,
    cols: usize,
}

impl<'a> Matrix<'a> {
    /// `rows × cols` values, row-major.
    pub fn new<T: Element>(data: &'a [T], rows: usize, cols: usize) -> Self {
        Matrix {
            storage: T::shared(data),
            rows,
            cols,
        }
    }
    /// A vector as one row of `data.len()` values.
    pub fn vector<T: Element>(data: &'a [T]) -> Self {
        Self::new(data, 1, data.len())
    }
    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Element type.
    pub fn dtype(&self) -> Dtype {
        match self.storage {
            Storage::F32(_) | Storage::F32Mut(_) => Dtype::F32,
            Storage::F16(_) | Storage::F16Mut(_) => Dtype::F16,
            Storage::Bf16(_) | Storage::Bf16Mut(_) => Dtype::Bf16,
        }
    }
    /// Number of stored elements.
    pub fn len(&self) -> usize {
        self.as_logits().len()
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The value at (row, col), widened to f32. For references and tests; slow.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        self.as_logits().get(row, col)
    }
    /// The storage as bytes.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        match self.storage {
            Storage::F32(d) => bytemuck::cast_slice(d),
            Storage::F16(d) => bytemuck::cast_slice(d),
            Storage::Bf16(d) => bytemuck::cast_slice(d),
            // `Matrix::new` only builds shared storage.
            Storage::F32Mut(_) | Storage::F16Mut(_) | Storage::Bf16Mut(_) => &[],
        }
    }
    /// The whole storage, when it is f32.
    pub(crate) fn f32_data(&self) -> Option<&'a [f32]> {
        match self.storage {
            Storage::F32(d) => Some(d),
            _ => None,
        }
    }
    /// Rows `range` as f32: borrowed when the storage is f32, widened into `buf` otherwise.
    pub(crate) fn rows_f32<'b>(
        &'b self,
        range: std::ops::Range<usize>,
        buf: &'b mut Vec<f32>,
    ) -> &'b [f32] {
        let span = range.start * self.cols..range.end * self.cols;
        fn widen<'c, T: Element>(src: &[T], buf: &'c mut Vec<f32>) -> &'c [f32] {
            buf.resize(src.len(), 0.0);
            T::widen(src, buf);
            buf
        }
        match &self.storage {
            Storage::F32(d) => &d[span],
            Storage::F32Mut(d) => &d[span],
            Storage::F16(d) => widen(&d[span], buf),
            Storage::F16Mut(d) => widen(&d[span], buf),
            Storage::Bf16(d) => widen(&d[span], buf),
            Storage::Bf16Mut(d) => widen(&d[span], buf),
        }
    }

    /// Columns `range` as the rows of a `range.len() × rows` f32 matrix (the transposition of
    /// those columns), into `buf`: a `[D × V]` head weight read a block of classes at a time.
    pub(crate) fn columns_f32<'b>(
        &self,
        range: std::ops::Range<usize>,
        buf: &'b mut Vec<f32>,
    ) -> &'b [f32] {
        fn gather<T: Element>(
            src: &[T],
            (rows, cols): (usize, usize),
            range: std::ops::Range<usize>,
            buf: &mut [f32],
        ) {
            // Row by row of the source (contiguous reads); each write goes to its own line
            // of `buf`, the same `range.len()` lines for every row.
            for (l, row) in src.chunks_exact(cols).take(rows).enumerate() {
                for (j, v) in row[range.clone()].iter().enumerate() {
                    buf[j * rows + l] = v.to_f32();
                }
            }
        }
        let shape = (self.rows, self.cols);
        buf.resize(range.len() * self.rows, 0.0);
        if buf.is_empty() {
            return buf;
        }
        match &self.storage {
            Storage::F32(d) => gather(d, shape, range, buf),
            Storage::F32Mut(d) => gather(d, shape, range, buf),
            Storage::F16(d) => gather(d, shape, range, buf),
            Storage::F16Mut(d) => gather(d, shape, range, buf),
            Storage::Bf16(d) => gather(d, shape, range, buf),
            Storage::Bf16Mut(d) => gather(d, shape, range, buf),
        }
        buf
    }
    /// The same storage seen as `rows × cols` logits (shares their length and element access).
    fn as_logits(&self) -> Logits<'_> {
        let storage = match &self.storage {
            Storage::F32(d) => Storage::F32(d),
            Storage::F32Mut(d) => Storage::F32(d),
            Storage::F16(d) => Storage::F16(d),
            Storage::F16Mut(d) => Storage::F16(d),
            Storage::Bf16(d) => Storage::Bf16(d),
            Storage::Bf16Mut(d) => Storage::Bf16(d),
        };
        Logits::with_storage(storage, self.rows, self.cols, Layout::Rows)
    }
    /// Checks `len == rows·cols` with a byte count that fits; `what` names the matrix.
    pub(crate) fn check(&self, what: &'static str) -> Result<()> {
        let shape = format!("{what}: rows {} × cols {}", self.rows, self.cols);
        let expected = self
            .rows
            .checked_mul(self.cols)
            .filter(|n| n.checked_mul(4).is_some())
            .ok_or_else(|| Error::Overflow {
                shape: shape.clone(),
            })?;
        if self.len() != expected {
            return Err(Error::Shape {
                what,
                expected,
                actual: self.len(),
                shape,
            });
        }
        Ok(())
    }
}
