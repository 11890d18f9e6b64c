//! The backend operations: a burn backend extension whose CubeCL implementation runs xent's
//! kernels on the tensors' own buffers (`cube.rs`), and whose autodiff implementation saves
//! the forward's per-row state for a backward that reads the logits once (`autodiff.rs`).
//!
//! Each operation sees the logits as `rows × classes` in a [`Layout`] (rows, or the class
//! dimension at 1 with `spatial` positions), and [`Given`] targets and weights.

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, ExtensionType};
use burn::tensor::{DType, Shape};
use xent::gpu::SAVED_ROW_BYTES;
use xent::{BinaryCrossEntropy, CrossEntropy, Layout};

/// What the kernels need besides the tensors: the options and the flattened shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Call {
    /// The loss's options (reduction, ignore index, smoothing, z-loss, softcap, scale, focal γ).
    pub options: CrossEntropy,
    /// Rows (every position of every sample).
    pub rows: usize,
    /// Classes.
    pub classes: usize,
    /// Where the class dimension is.
    pub layout: Layout,
}

impl Call {
    /// Elements of the loss output: 1 for sum and mean, `rows` for none.
    pub fn loss_len(&self) -> usize {
        match self.options.reduction {
            xent::Reduction::None => self.rows,
            _ => 1,
        }
    }

    /// The shape of the saved per-row state: `[rows, SAVED_ROW_BYTES / 4]`.
    pub fn saved_rows_shape(&self) -> [usize; 2] {
        [self.rows, SAVED_ROW_BYTES as usize / 4]
    }
}

/// A call's targets.
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion)]
pub enum Targets<B: Backend> {
    /// One class index per row, `[rows]`, i32 or i64.
    Index(IntTensor<B>),
    /// A distribution over the classes per row: the logits' shape and layout, f32.
    Dense(FloatTensor<B>),
}

/// Class weights (`[classes]`) or sample weights (`[rows]`), f32.
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion)]
pub enum Weighting<B: Backend> {
    /// Every weight 1.
    Uniform,
    /// These weights.
    By(FloatTensor<B>),
}

impl<B: Backend> Weighting<B> {
    /// The tensor, if any.
    pub fn tensor(self) -> Option<FloatTensor<B>> {
        match self {
            Weighting::Uniform => None,
            Weighting::By(t) => Some(t),
        }
    }
}

/// What a call reads besides the logits: targets and weights. Constants under autodiff.
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion)]
pub struct Given<B: Backend> {
    /// The targets.
    #[extension_type]
    pub targets: Targets<B>,
    /// Per-class weights.
    #[extension_type]
    pub class_weights: Weighting<B>,
    /// Per-row sample weights.
    #[extension_type]
    pub sample_weights: Weighting<B>,
}

/// What a binary cross-entropy call reads besides the logits. Constants under autodiff.
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion)]
pub struct BinaryGiven<B: Backend> {
    /// Targets in `[0, 1]`: the logits' shape, f32.
    pub targets: FloatTensor<B>,
    /// PyTorch's `weight` per class (`[classes]`).
    #[extension_type]
    pub class_weights: Weighting<B>,
    /// PyTorch's `pos_weight` per class (`[classes]`).
    #[extension_type]
    pub pos_weight: Weighting<B>,
    /// Per-row sample weights (`[rows]`), scaling every element of the row.
    #[extension_type]
    pub sample_weights: Weighting<B>,
}

/// A binary cross-entropy call's options and its shape: `rows × classes` elements, the
/// classes last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinaryCall {
    /// The options (reduction, smoothing, focal γ and α).
    pub options: BinaryCrossEntropy,
    /// Rows: every index but the last.
    pub rows: usize,
    /// Classes: the last dimension.
    pub classes: usize,
}

impl BinaryCall {
    /// Elements of the loss output: 1 for sum and mean, every element for none.
    pub fn loss_len(&self) -> usize {
        match self.options.reduction {
            xent::Reduction::None => self.rows * self.classes,
            _ => 1,
        }
    }
}

/// What a linear head's call reads besides `h`, `W` and `b`. Constants under autodiff.
#[derive(ExtensionType, Debug, Clone)]
#[extension_type(fusion)]
pub struct LinearGiven<B: Backend> {
    /// One class index per row, `[rows]`, i32 or i64.
    pub targets: IntTensor<B>,
    /// Per-class weights (`[vocab]`).
    #[extension_type]
    pub class_weights: Weighting<B>,
    /// Per-row sample weights (`[rows]`).
    #[extension_type]
    pub sample_weights: Weighting<B>,
}

/// Which gradients a linear head's call writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wanted {
    /// `dh` `[rows, hidden]`.
    pub hidden: bool,
    /// `dW` `[vocab, hidden]`.
    pub weight: bool,
    /// `db` `[vocab]`.
    pub bias: bool,
}

impl Wanted {
    /// Whether any is.
    pub fn any(&self) -> bool {
        self.hidden || self.weight || self.bias
    }
}

/// A linear head's options and shape: `cross_entropy(h·Wᵀ + b, y)` with `h` `[rows, hidden]`,
/// `W` `[vocab, hidden]`, `b` `[vocab]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearCall {
    /// The loss's options.
    pub options: CrossEntropy,
    /// Rows `N`.
    pub rows: usize,
    /// Hidden size `D`.
    pub hidden: usize,
    /// Vocabulary `V`.
    pub vocab: usize,
    /// Whether `b` is the head's bias (else it is not read).
    pub has_bias: bool,
    /// The gradients to write.
    pub gradients: Wanted,
}

impl LinearCall {
    /// Elements of the loss output: 1 for sum and mean, `rows` for none.
    pub fn loss_len(&self) -> usize {
        match self.options.reduction {
            xent::Reduction::None => self.rows,
            _ => 1,
        }
    }
}

/// The output specs of a linear call: loss, flag, and `dh`, `dW`, `db` (f32; `[1]` when not
/// wanted).
type LinearSpecs = (TensorSpec, TensorSpec, TensorSpec, TensorSpec, TensorSpec);

fn linear_spec(call: &LinearCall) -> LinearSpecs {
    let f32_spec = |wanted: bool, shape: Vec<usize>| {
        TensorSpec::new(
            Shape::from(if wanted { shape } else { vec![1] }),
            DType::F32,
        )
    };
    let g = call.gradients;
    (
        TensorSpec::new(Shape::new([call.loss_len()]), DType::F32),
        TensorSpec::new(Shape::new([1]), DType::U32),
        f32_spec(g.hidden, vec![call.rows, call.hidden]),
        f32_spec(g.weight, vec![call.vocab, call.hidden]),
        f32_spec(g.bias, vec![call.vocab]),
    )
}

fn binary_spec(call: &BinaryCall) -> TensorSpec {
    TensorSpec::new(Shape::new([call.loss_len()]), DType::F32)
}

fn loss_spec(call: &Call) -> (TensorSpec, TensorSpec) {
    (
        TensorSpec::new(Shape::new([call.loss_len()]), DType::F32),
        TensorSpec::new(Shape::new([1]), DType::U32),
    )
}

fn saved_spec(call: &Call) -> (TensorSpec, TensorSpec, TensorSpec, TensorSpec) {
    let (loss, flag) = loss_spec(call);
    (
        loss,
        flag,
        TensorSpec::new(Shape::new(call.saved_rows_shape()), DType::F32),
        TensorSpec::new(Shape::new([4]), DType::F32),
    )
}

/// xent's softmax cross-entropy as burn operations. Implemented for burn's CubeCL backend
/// (xent's GPU kernels on a registered wgpu device, xent's CPU path on any other runtime),
/// for burn's Flex backend with the `flex` feature (xent's CPU path), lazily under burn's
/// fusion, and for `Autodiff` over any of them.
#[backend_extension(Cube, Flex: cfg(feature = "flex"), Fusion, Autodiff)]
pub trait XentBackend: Backend {
    /// The loss (`[1]` for sum and mean, `[rows]` for none) and the target-error flag (`[1]`
    /// u32: 0, or `u32::MAX − row` of the lowest row whose class index is out of range; that
    /// row counts as ignored).
    #[fusion(meta = |_logits, _given, call| loss_spec(call))]
    fn xent_loss(
        logits: FloatTensor<Self>,
        #[extension_type] given: Given<Self>,
        call: Call,
    ) -> (FloatTensor<Self>, IntTensor<Self>);

    /// As [`XentBackend::xent_loss`], also returning the state [`XentBackend::xent_gradient`]
    /// reads: per-row records (`[rows, SAVED_ROW_BYTES / 4]`, opaque) and the reduced totals
    /// (`[4]`, opaque).
    #[allow(clippy::type_complexity)]
    #[fusion(meta = |_logits, _given, call| saved_spec(call))]
    fn xent_loss_saved(
        logits: FloatTensor<Self>,
        #[extension_type] given: Given<Self>,
        call: Call,
    ) -> (
        FloatTensor<Self>,
        IntTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    /// d loss / d logits in the logits' shape and dtype, from the saved state and the
    /// upstream gradient (`[1]` for sum and mean, `[rows]` for none). Takes the logits by
    /// value: where nothing else holds their buffer, the gradient is written over it.
    #[fusion(dtype = logits, shape = logits)]
    fn xent_gradient(
        logits: FloatTensor<Self>,
        #[extension_type] given: Given<Self>,
        saved_rows: FloatTensor<Self>,
        saved_totals: FloatTensor<Self>,
        upstream: FloatTensor<Self>,
        call: Call,
    ) -> FloatTensor<Self>;

    /// Binary cross-entropy with logits: the loss (`[1]` for sum and mean, one per element,
    /// in the logits' order, for none).
    #[fusion(meta = |_logits, _given, call| binary_spec(call))]
    fn xent_binary_loss(
        logits: FloatTensor<Self>,
        #[extension_type] given: BinaryGiven<Self>,
        call: BinaryCall,
    ) -> FloatTensor<Self>;

    /// d loss / d logits of binary cross-entropy in the logits' shape and dtype, for the
    /// upstream gradient (`[1]` for sum and mean, one per element for none). As
    /// [`XentBackend::xent_gradient`], it may write over the logits' buffer.
    #[fusion(dtype = logits, shape = logits)]
    fn xent_binary_gradient(
        logits: FloatTensor<Self>,
        #[extension_type] given: BinaryGiven<Self>,
        upstream: FloatTensor<Self>,
        call: BinaryCall,
    ) -> FloatTensor<Self>;

    /// A linear head's loss `cross_entropy(h·Wᵀ + b, y)` without its logits: the loss (`[1]`
    /// for sum and mean, `[rows]` for none), the target-error flag, and the gradients
    /// `call.gradients` asks for (f32; `[1]` placeholders for the others). The gradients are for
    /// an upstream of 1 with sum and mean, and for `upstream` (`[rows]`) with none; `upstream`
    /// is not read otherwise.
    #[allow(clippy::type_complexity)]
    #[fusion(meta = |_hidden, _weight, _bias, _given, _upstream, call| linear_spec(call))]
    fn xent_linear(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        #[extension_type] given: LinearGiven<Self>,
        upstream: FloatTensor<Self>,
        call: LinearCall,
    ) -> (
        FloatTensor<Self>,
        IntTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}
