//! [`XentBackend`] on burn's Flex backend (its pure-Rust CPU backend, feature `flex`): every
//! call is xent's CPU path (`host.rs`), reading the tensors' data and creating the outputs.
#![cfg(feature = "flex")]

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::Flex;

use crate::host;
use crate::inputs::{Inputs, LinearInputs, LinearOutputs};
use crate::ops::{BinaryCall, BinaryGiven, Call, Given, LinearCall, LinearGiven, XentBackend};

impl XentBackend for Flex {
    fn xent_loss(
        logits: FloatTensor<Self>,
        given: Given<Self>,
        call: Call,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        host::loss(Inputs::new(logits, given), call)
    }

    fn xent_loss_saved(
        logits: FloatTensor<Self>,
        given: Given<Self>,
        call: Call,
    ) -> (
        FloatTensor<Self>,
        IntTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        host::loss_saved(Inputs::new(logits, given), call)
    }

    fn xent_gradient(
        logits: FloatTensor<Self>,
        given: Given<Self>,
        _saved_rows: FloatTensor<Self>,
        _saved_totals: FloatTensor<Self>,
        upstream: FloatTensor<Self>,
        call: Call,
    ) -> FloatTensor<Self> {
        host::gradient(Inputs::new(logits, given), upstream, call)
    }

    fn xent_binary_loss(
        logits: FloatTensor<Self>,
        given: BinaryGiven<Self>,
        call: BinaryCall,
    ) -> FloatTensor<Self> {
        host::binary_loss(Inputs::binary(logits, given), call)
    }

    fn xent_binary_gradient(
        logits: FloatTensor<Self>,
        given: BinaryGiven<Self>,
        upstream: FloatTensor<Self>,
        call: BinaryCall,
    ) -> FloatTensor<Self> {
        host::binary_gradient(Inputs::binary(logits, given), upstream, call)
    }

    fn xent_linear(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        given: LinearGiven<Self>,
        upstream: FloatTensor<Self>,
        call: LinearCall,
    ) -> LinearOutputs<Self> {
        let inputs = LinearInputs::new(hidden, weight, bias, call.has_bias, given);
        host::linear(inputs, upstream, call)
    }
}
