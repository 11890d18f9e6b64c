//! [`XentBackend`] under burn's autodiff: the forward saves the per-row state xent's
//! kernels produce (the row's max and log-sum-exp, its coefficients) and the reduced totals,
//! and the backward records only the gradient from them: one read of the logits and one
//! write of the gradient (over the logits' own buffer where nothing else holds it), scaled on
//! the device by
//! the upstream gradient burn hands it. Binary cross-entropy's backward recomputes from the
//! logits; a linear head's forward writes its gradients with the loss (sum and mean).
//!
//! Only the logits are differentiated: soft targets and weights are constants (PyTorch
//! differentiates soft targets too; nothing here asks for it).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::Autodiff;

use burn::backend::TensorMetadata;
use burn::tensor::{DType, Shape};

use crate::ops::{
    BinaryCall, BinaryGiven, Call, Given, LinearCall, LinearGiven, Targets, Wanted, Weighting,
    XentBackend,
};

/// burn's autodiff float tensor over `B`'s.
type Tracked<B, C> = FloatTensor<Autodiff<B, C>>;

/// Optional weights without their autodiff wrapping: constants.
fn weights<B: XentBackend, C: CheckpointStrategy>(w: Weighting<Autodiff<B, C>>) -> Weighting<B> {
    match w {
        Weighting::Uniform => Weighting::Uniform,
        Weighting::By(t) => Weighting::By(t.into_primitive()),
    }
}

/// The inputs of one call without their autodiff wrapping: constants.
fn constants<B: XentBackend, C: CheckpointStrategy>(given: Given<Autodiff<B, C>>) -> Given<B> {
    Given {
        targets: match given.targets {
            Targets::Index(t) => Targets::Index(t),
            Targets::Dense(t) => Targets::Dense(t.into_primitive()),
        },
        class_weights: weights(given.class_weights),
        sample_weights: weights(given.sample_weights),
    }
}

/// What the backward reads: the logits' checkpoint, the constants, the saved state.
#[derive(Debug, Clone)]
struct Saved<B: XentBackend> {
    logits: NodeId,
    given: Given<B>,
    rows: FloatTensor<B>,
    totals: FloatTensor<B>,
    call: Call,
}

/// What binary cross-entropy's backward reads: the logits' checkpoint and the constants (it
/// recomputes each element's sigmoid: one read of the logits and the targets).
#[derive(Debug, Clone)]
struct BinarySaved<B: XentBackend> {
    logits: NodeId,
    given: BinaryGiven<B>,
    call: BinaryCall,
}

#[derive(Debug)]
struct BinaryBackward;

impl<B: XentBackend> Backward<B, 1> for BinaryBackward {
    type State = BinarySaved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let saved = ops.state;
        let logits = checkpointer.retrieve_node_output(saved.logits);
        unary::<B, _>(ops.parents, ops.node, grads, |upstream| {
            B::xent_binary_gradient(logits, saved.given, upstream, saved.call)
        });
    }
}

/// Binary cross-entropy's inputs without their autodiff wrapping.
fn binary_constants<B: XentBackend, C: CheckpointStrategy>(
    given: BinaryGiven<Autodiff<B, C>>,
) -> BinaryGiven<B> {
    BinaryGiven {
        targets: given.targets.into_primitive(),
        class_weights: weights(given.class_weights),
        pos_weight: weights(given.pos_weight),
        sample_weights: weights(given.sample_weights),
    }
}

/// What a linear head's backward reads.
#[derive(Debug, Clone)]
enum LinearState<B: XentBackend> {
    /// Sum and mean: the gradients the forward wrote for an upstream of 1 (`Liger`'s way:
    /// the backward only scales them).
    Gradients {
        hidden: FloatTensor<B>,
        weight: FloatTensor<B>,
        bias: FloatTensor<B>,
    },
    /// None: the inputs, to run the call again with burn's per-row upstream.
    Inputs {
        hidden: NodeId,
        weight: NodeId,
        bias: NodeId,
        given: LinearGiven<B>,
        call: LinearCall,
    },
}

/// The linear state and the parameters' dtypes (the gradients are f32: cast back).
#[derive(Debug, Clone)]
struct LinearSaved<B: XentBackend> {
    state: LinearState<B>,
    dtypes: [DType; 3],
}

#[derive(Debug)]
struct LinearBackward;

impl<B: XentBackend> Backward<B, 3> for LinearBackward {
    type State = LinearSaved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let upstream = grads.consume::<B>(&ops.node);
        let [hidden_node, weight_node, bias_node] = ops.parents;
        let [hidden_dtype, weight_dtype, bias_dtype] = ops.state.dtypes;
        let (dh, dw, db) = match ops.state.state {
            LinearState::Gradients {
                hidden,
                weight,
                bias,
            } => {
                // burn's upstream is [1]: broadcast it over each gradient.
                let scale = |gradient: FloatTensor<B>| {
                    let rank = gradient.shape().num_dims();
                    let factor = B::float_reshape(upstream.clone(), Shape::from(vec![1; rank]));
                    B::float_mul(gradient, factor)
                };
                (scale(hidden), scale(weight), scale(bias))
            }
            LinearState::Inputs {
                hidden,
                weight,
                bias,
                given,
                call,
            } => {
                let hidden = checkpointer.retrieve_node_output(hidden);
                let weight = checkpointer.retrieve_node_output(weight);
                let bias = checkpointer.retrieve_node_output(bias);
                let (_, _, dh, dw, db) =
                    B::xent_linear(hidden, weight, bias, given, upstream, call);
                (dh, dw, db)
            }
        };
        let cast = |gradient: FloatTensor<B>, dtype: DType| {
            if gradient.dtype() == dtype {
                gradient
            } else {
                B::float_cast(gradient, dtype.into())
            }
        };
        if let Some(node) = hidden_node {
            grads.register::<B>(node.id, cast(dh, hidden_dtype));
        }
        if let Some(node) = weight_node {
            grads.register::<B>(node.id, cast(dw, weight_dtype));
        }
        if let Some(node) = bias_node {
            grads.register::<B>(node.id, cast(db, bias_dtype));
        }
    }
}

#[derive(Debug)]
struct LossBackward;

impl<B: XentBackend> Backward<B, 1> for LossBackward {
    type State = Saved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let saved = ops.state;
        let logits = checkpointer.retrieve_node_output(saved.logits);
        unary::<B, _>(ops.parents, ops.node, grads, |upstream| {
            B::xent_gradient(
                logits,
                saved.given,
                saved.rows,
                saved.totals,
                upstream,
                saved.call,
            )
        });
    }
}

impl<B: XentBackend, C: CheckpointStrategy> XentBackend for Autodiff<B, C> {
    fn xent_loss(
        logits: FloatTensor<Autodiff<B, C>>,
        given: Given<Self>,
        call: Call,
    ) -> (FloatTensor<Autodiff<B, C>>, IntTensor<B>) {
        let given = constants(given);
        match LossBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let node = prep.checkpoint(&logits);
                let (loss, flag, rows, totals) =
                    B::xent_loss_saved(logits.into_primitive(), given.clone(), call);
                let saved = Saved {
                    logits: node,
                    given,
                    rows,
                    totals,
                    call,
                };
                (prep.finish(saved, loss), flag)
            }
            OpsKind::UnTracked(prep) => {
                let (loss, flag) = B::xent_loss(logits.into_primitive(), given, call);
                (prep.finish(loss), flag)
            }
        }
    }

    fn xent_loss_saved(
        logits: FloatTensor<Autodiff<B, C>>,
        given: Given<Self>,
        call: Call,
    ) -> (
        FloatTensor<Autodiff<B, C>>,
        IntTensor<B>,
        FloatTensor<Autodiff<B, C>>,
        FloatTensor<Autodiff<B, C>>,
    ) {
        let (loss, flag, rows, totals) =
            B::xent_loss_saved(logits.into_primitive(), constants(given), call);
        (
            Tracked::<B, C>::new(loss),
            flag,
            Tracked::<B, C>::new(rows),
            Tracked::<B, C>::new(totals),
        )
    }

    fn xent_gradient(
        logits: FloatTensor<Autodiff<B, C>>,
        given: Given<Self>,
        saved_rows: FloatTensor<Autodiff<B, C>>,
        saved_totals: FloatTensor<Autodiff<B, C>>,
        upstream: FloatTensor<Autodiff<B, C>>,
        call: Call,
    ) -> FloatTensor<Autodiff<B, C>> {
        Tracked::<B, C>::new(B::xent_gradient(
            logits.into_primitive(),
            constants(given),
            saved_rows.into_primitive(),
            saved_totals.into_primitive(),
            upstream.into_primitive(),
            call,
        ))
    }

    fn xent_binary_loss(
        logits: FloatTensor<Autodiff<B, C>>,
        given: BinaryGiven<Self>,
        call: BinaryCall,
    ) -> FloatTensor<Autodiff<B, C>> {
        let given = binary_constants(given);
        match BinaryBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let node = prep.checkpoint(&logits);
                let loss = B::xent_binary_loss(logits.into_primitive(), given.clone(), call);
                let saved = BinarySaved {
                    logits: node,
                    given,
                    call,
                };
                prep.finish(saved, loss)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::xent_binary_loss(logits.into_primitive(), given, call))
            }
        }
    }

    fn xent_binary_gradient(
        logits: FloatTensor<Autodiff<B, C>>,
        given: BinaryGiven<Self>,
        upstream: FloatTensor<Autodiff<B, C>>,
        call: BinaryCall,
    ) -> FloatTensor<Autodiff<B, C>> {
        Tracked::<B, C>::new(B::xent_binary_gradient(
            logits.into_primitive(),
            binary_constants(given),
            upstream.into_primitive(),
            call,
        ))
    }

    fn xent_linear(
        hidden: FloatTensor<Autodiff<B, C>>,
        weight: FloatTensor<Autodiff<B, C>>,
        bias: FloatTensor<Autodiff<B, C>>,
        given: LinearGiven<Self>,
        upstream: FloatTensor<Autodiff<B, C>>,
        call: LinearCall,
    ) -> (
        FloatTensor<Autodiff<B, C>>,
        IntTensor<B>,
        FloatTensor<Autodiff<B, C>>,
        FloatTensor<Autodiff<B, C>>,
        FloatTensor<Autodiff<B, C>>,
    ) {
        let given = LinearGiven {
            targets: given.targets,
            class_weights: weights(given.class_weights),
            sample_weights: weights(given.sample_weights),
        };
        let upstream = upstream.into_primitive();
        let wanted = Wanted {
            hidden: hidden.is_tracked(),
            weight: weight.is_tracked(),
            bias: call.has_bias && bias.is_tracked(),
        };
        let dtypes = [hidden.dtype(), weight.dtype(), bias.dtype()];
        let prep = LinearBackward
            .prepare::<C>([hidden.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let per_row = call.options.reduction == xent::Reduction::None;
        let mut prep = prep;
        // None computes the gradients in the backward, from the inputs; sum and mean write them
        // with the loss.
        let nodes = match &mut prep {
            OpsKind::Tracked(prep) if per_row => Some([
                prep.checkpoint(&hidden),
                prep.checkpoint(&weight),
                prep.checkpoint(&bias),
            ]),
            _ => None,
        };
        let now = match &prep {
            OpsKind::Tracked(_) if !per_row => wanted,
            _ => Wanted::default(),
        };
        let inner = LinearCall {
            gradients: now,
            ..call
        };
        let (loss, flag, dh, dw, db) = B::xent_linear(
            hidden.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
            given.clone(),
            upstream,
            inner,
        );
        let loss = match prep {
            OpsKind::Tracked(prep) => {
                let state = match nodes {
                    Some([hidden, weight, bias]) => LinearState::Inputs {
                        hidden,
                        weight,
                        bias,
                        given,
                        call: LinearCall {
                            gradients: wanted,
                            ..call
                        },
                    },
                    None => LinearState::Gradients {
                        hidden: dh.clone(),
                        weight: dw.clone(),
                        bias: db.clone(),
                    },
                };
                prep.finish(LinearSaved { state, dtypes }, loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(loss),
        };
        (
            loss,
            flag,
            Tracked::<B, C>::new(dh),
            Tracked::<B, C>::new(dw),
            Tracked::<B, C>::new(db),
        )
    }
}
