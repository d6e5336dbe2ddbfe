//! Block-wise recomputation (`--gradient_checkpointing`), built from plain forward and backward
//! calls since tch has no custom autograd functions. Training needs only the gradient with
//! respect to the text conditioning (the UNet's weights are frozen), so:
//!
//! 1. a forward pass without autograd keeps what enters each block (its input, the skip
//!    connections, the time embedding), not the activations inside the blocks;
//! 2. [`Recomputable::context_grad`] walks the blocks from the last to the first, runs each one
//!    again with autograd on, and backpropagates the gradient arriving at its output to its
//!    inputs, summing the gradients that reach the conditioning.
//!
//! Peak memory is then the saved block inputs plus one block's activations, for one more
//! forward pass of compute. The gradient equals plain backpropagation's up to the order in
//! which the blocks' contributions are summed.
use super::UNet2DConditionModel;
use anyhow::{bail, Result};
use tch::Tensor;

/// The UNet's output, and what it takes to backpropagate into the conditioning block by block.
pub struct Recomputable<'u> {
    unet: &'u UNet2DConditionModel,
    /// The conditioning, detached from whatever computed it.
    context: Tensor,
    temb: Tensor,
    /// Every skip connection, in the order the down path makes them (`conv_in` first).
    skips: Vec<Tensor>,
    down: Vec<DownSaved>,
    mid_input: Tensor,
    up: Vec<UpSaved>,
    out_input: Tensor,
    output: Tensor,
}

struct DownSaved {
    input: Tensor,
    /// The indices in `skips` of the states this block adds.
    states: std::ops::Range<usize>,
}

struct UpSaved {
    input: Tensor,
    /// Indices in `skips` of this block's skip connections, last one first.
    skips: Vec<usize>,
    upsample_size: Option<(i64, i64)>,
}

/// `x` cut from its graph, as a leaf that records a gradient.
fn leaf(x: &Tensor) -> Tensor {
    x.detach().set_requires_grad(true)
}

/// The gradients of `Σ (output · grad)` with respect to `inputs` (zeros where an input did not
/// reach an output): the vector-Jacobian product of one recomputed block.
fn vjp(outputs: &[(Tensor, &Tensor)], inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    let mut scalar: Option<Tensor> = None;
    for (out, grad) in outputs {
        let term = (out * *grad).sum(out.kind());
        scalar = Some(match scalar {
            Some(s) => s + term,
            None => term,
        });
    }
    let Some(scalar) = scalar else { bail!("recomputed a block without outputs") };
    let grads = Tensor::f_run_backward(&[scalar], inputs, false, false)?;
    Ok(grads.into_iter().zip(inputs).map(|(g, x)| if g.defined() { g } else { x.zeros_like() }).collect())
}

fn add(total: &mut Option<Tensor>, g: Tensor) {
    *total = Some(match total.take() {
        Some(t) => t + g,
        None => g,
    });
}

impl UNet2DConditionModel {
    /// The forward pass without autograd, keeping each block's inputs (see the module doc);
    /// the output is the same as [`UNet2DConditionModel::forward`]'s.
    pub fn forward_recomputable(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor) -> Recomputable<'_> {
        let _span = tracing::trace_span!("unet_recomputable").entered();
        let _guard = tch::no_grad_guard();
        let context = context.detach();
        let (temb, mut xs, forward_upsample_size) = self.prepare(sample, timesteps);
        let mut skips = vec![xs.shallow_clone()];
        let mut down = Vec::with_capacity(self.down_blocks.len());
        for block in &self.down_blocks {
            let input = xs.shallow_clone();
            let (out, states) = block.forward(&xs, &temb, &context);
            let start = skips.len();
            skips.extend(states);
            down.push(DownSaved { input, states: start..skips.len() });
            xs = out;
        }
        let mid_input = xs.shallow_clone();
        xs = self.mid_block.forward(&xs, &temb, &context);
        let mut pending: Vec<usize> = (0..skips.len()).collect();
        let mut up = Vec::with_capacity(self.up_blocks.len());
        for (i, block) in self.up_blocks.iter().enumerate() {
            let mut mine = pending.split_off(pending.len() - block.layers());
            mine.reverse();
            let upsample_size = self.upsample_size(i, forward_upsample_size, pending.last().map(|&k| &skips[k]));
            let tensors: Vec<Tensor> = mine.iter().map(|&k| skips[k].shallow_clone()).collect();
            let input = xs.shallow_clone();
            xs = block.forward(&xs, &tensors, &temb, &context, upsample_size);
            up.push(UpSaved { input, skips: mine, upsample_size });
        }
        let output = self.out(&xs);
        Recomputable { unet: self, context, temb, skips, down, mid_input, up, out_input: xs, output }
    }
}

impl Recomputable<'_> {
    /// The UNet's prediction (no graph).
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// The gradient with respect to the conditioning, given the gradient with respect to the
    /// output, recomputing one block at a time.
    pub fn context_grad(self, grad_output: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("unet_recompute_backward").entered();
        let unet = self.unet;
        let context = leaf(&self.context);
        let mut context_grad: Option<Tensor> = None;
        let mut skip_grads: Vec<Option<Tensor>> = (0..self.skips.len()).map(|_| None).collect();

        let x = leaf(&self.out_input);
        let mut grad = vjp(&[(unet.out(&x), grad_output)], &[&x])?.remove(0);

        for (block, saved) in unet.up_blocks.iter().zip(&self.up).rev() {
            let x = leaf(&saved.input);
            let skips: Vec<Tensor> = saved.skips.iter().map(|&k| leaf(&self.skips[k])).collect();
            let out = block.forward(&x, &skips, &self.temb, &context, saved.upsample_size);
            let mut inputs: Vec<&Tensor> = std::iter::once(&x).chain(&skips).collect();
            if block.uses_context() {
                inputs.push(&context);
            }
            let mut grads = vjp(&[(out, &grad)], &inputs)?;
            if block.uses_context() {
                add(&mut context_grad, grads.pop().unwrap_or_else(|| context.zeros_like()));
            }
            let mut grads = grads.into_iter();
            grad = grads.next().unwrap_or_else(|| x.zeros_like());
            for (&k, g) in saved.skips.iter().zip(grads) {
                add(&mut skip_grads[k], g);
            }
        }

        let x = leaf(&self.mid_input);
        let out = unet.mid_block.forward(&x, &self.temb, &context);
        let mut grads = vjp(&[(out, &grad)], &[&x, &context])?;
        add(&mut context_grad, grads.pop().unwrap_or_else(|| context.zeros_like()));
        grad = grads.pop().unwrap_or_else(|| x.zeros_like());

        for (block, saved) in unet.down_blocks.iter().zip(&self.down).rev() {
            let x = leaf(&saved.input);
            let (out, states) = block.forward(&x, &self.temb, &context);
            // The block's output feeds the next block; its states feed the up blocks.
            let state_grads: Vec<(Tensor, Tensor)> = states
                .into_iter()
                .zip(saved.states.clone())
                .filter_map(|(s, k)| skip_grads[k].take().map(|g| (s, g)))
                .collect();
            let mut inputs = vec![&x];
            if block.uses_context() {
                inputs.push(&context);
            }
            let mut grads = {
                let mut outputs = vec![(out, &grad)];
                outputs.extend(state_grads.iter().map(|(s, g)| (s.shallow_clone(), g)));
                vjp(&outputs, &inputs)?
            };
            if block.uses_context() {
                add(&mut context_grad, grads.pop().unwrap_or_else(|| context.zeros_like()));
            }
            grad = grads.pop().unwrap_or_else(|| x.zeros_like());
        }
        Ok(context_grad.unwrap_or_else(|| context.zeros_like()))
    }
}
