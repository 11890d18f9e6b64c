//! [`XentBackend`] under burn's autodiff: the forward saves the per-row state xent's
//! kernels produce (the row's max and log-sum-exp, its coefficients) and the reduced totals,
//! and the backward records only the gradient from them: one read of the logits and one
//! write of the gradient, scaled on the device by the upstream gradient burn hands it.
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

use crate::ops::{BinaryCall, BinaryGiven, Call, Given, Targets, Weighting, XentBackend};

/// burn's autodiff float tensor over `B`'s.
type Tracked<B, C> = FloatTensor<Autodiff<B, C>>;

/// The inputs of one call without their autodiff wrapping: constants.
fn constants<B: XentBackend>(given: Given<Autodiff<B, impl CheckpointStrategy>>) -> Given<B> {
    let weights = |w: Weighting<Autodiff<B, _>>| match w {
        Weighting::Uniform => Weighting::Uniform,
        Weighting::By(t) => Weighting::By(t.into_primitive()),
    };
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
fn binary_constants<B: XentBackend>(
    given: BinaryGiven<Autodiff<B, impl CheckpointStrategy>>,
) -> BinaryGiven<B> {
    let weights = |w: Weighting<Autodiff<B, _>>| match w {
        Weighting::Uniform => Weighting::Uniform,
        Weighting::By(t) => Weighting::By(t.into_primitive()),
    };
    BinaryGiven {
        targets: given.targets.into_primitive(),
        class_weights: weights(given.class_weights),
        pos_weight: weights(given.pos_weight),
        sample_weights: weights(given.sample_weights),
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
}
