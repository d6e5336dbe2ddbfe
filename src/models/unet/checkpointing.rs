//! Block-wise recomputation (`--gradient_checkpointing`), built from plain forward and backward
//! calls since tch has no custom autograd functions. Training needs only the gradient with
//! respect to the text conditioning (the UNet's weights are frozen), so:
//!
//! 1. a forward pass without autograd keeps what enters each block (its input, the skip
//!    connections, the time embedding), not the activations inside the blocks;
//! 2. [`Recomputable::backward`] walks the blocks from the last to the first, runs each one
//!    again with autograd on, and backpropagates the gradient arriving at its output to its
//!    inputs, summing the gradients that reach the conditioning.
//!
//! With SDXL's added conditioning the pooled text embedding reaches every resnet through the
//! time embedding: the blocks' gradients with respect to the time embedding are summed too and
//! taken back through `add_embedding` to the pooled embedding.
//!
//! Peak memory is then the saved block inputs plus one block's activations, for one more
//! forward pass of compute. The gradient equals plain backpropagation's up to the order in
//! which the blocks' contributions are summed.
use super::{AddedConditioning, UNet2DConditionModel};
use anyhow::{bail, Result};
use tch::Tensor;

/// What [`Recomputable::backward`] returns: the gradients reaching the text conditioning.
pub struct ConditioningGrads {
    /// With respect to `context` (the per-token hidden states).
    pub context: Tensor,
    /// With respect to the added conditioning's `text_embeds` (SDXL).
    pub text_embeds: Option<Tensor>,
}

/// The UNet's output, and what it takes to backpropagate into the conditioning block by block.
pub struct Recomputable<'u> {
    unet: &'u UNet2DConditionModel,
    /// The conditioning, detached from whatever computed it.
    context: Tensor,
    /// What the blocks see: the timestep's embedding plus the added one.
    temb: Tensor,
    /// SDXL: the timestep's embedding alone, and the added conditioning (detached).
    added: Option<(Tensor, AddedConditioning)>,
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

/// The leaves one recomputed block reads besides its hidden input: the conditioning (if the
/// block has cross-attention) and the time embedding (if its gradient is wanted).
struct Leaves {
    context: Tensor,
    temb: Tensor,
    temb_grad_wanted: bool,
}

impl Leaves {
    fn inputs<'a>(&'a self, first: Vec<&'a Tensor>, uses_context: bool) -> Vec<&'a Tensor> {
        let mut inputs = first;
        if uses_context {
            inputs.push(&self.context);
        }
        if self.temb_grad_wanted {
            inputs.push(&self.temb);
        }
        inputs
    }

    /// Takes the conditioning's and time embedding's gradients off the end of `grads`.
    fn collect(&self, grads: &mut Vec<Tensor>, uses_context: bool, context_grad: &mut Option<Tensor>, temb_grad: &mut Option<Tensor>) {
        if self.temb_grad_wanted {
            add(temb_grad, grads.pop().unwrap_or_else(|| self.temb.zeros_like()));
        }
        if uses_context {
            add(context_grad, grads.pop().unwrap_or_else(|| self.context.zeros_like()));
        }
    }
}

impl UNet2DConditionModel {
    /// The forward pass without autograd, keeping each block's inputs (see the module doc);
    /// the output is the same as [`UNet2DConditionModel::forward`]'s.
    pub fn forward_recomputable(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor, added: Option<&AddedConditioning>) -> Result<Recomputable<'_>> {
        let _span = tracing::trace_span!("unet_recomputable").entered();
        let _guard = tch::no_grad_guard();
        let context = context.detach();
        let parts = self.prepare_parts(sample, timesteps, added)?;
        let (temb, added) = match (parts.added, added) {
            (Some(extra), Some(a)) => {
                let kept = AddedConditioning { text_embeds: a.text_embeds.detach(), time_ids: a.time_ids.detach() };
                (&parts.temb + extra, Some((parts.temb, kept)))
            }
            _ => (parts.temb, None),
        };
        let (mut xs, forward_upsample_size) = (parts.conv_in, parts.forward_upsample_size);
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
        Ok(Recomputable { unet: self, context, temb, added, skips, down, mid_input, up, out_input: xs, output })
    }
}

impl Recomputable<'_> {
    /// The UNet's prediction (no graph).
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// The gradients with respect to the conditioning, given the gradient with respect to the
    /// output, recomputing one block at a time.
    pub fn backward(self, grad_output: &Tensor) -> Result<ConditioningGrads> {
        let _span = tracing::trace_span!("unet_recompute_backward").entered();
        let unet = self.unet;
        let leaves = Leaves { context: leaf(&self.context), temb: leaf(&self.temb), temb_grad_wanted: self.added.is_some() };
        let (mut context_grad, mut temb_grad) = (None, None);
        let mut skip_grads: Vec<Option<Tensor>> = (0..self.skips.len()).map(|_| None).collect();

        let x = leaf(&self.out_input);
        let mut grad = vjp(&[(unet.out(&x), grad_output)], &[&x])?.remove(0);

        for (block, saved) in unet.up_blocks.iter().zip(&self.up).rev() {
            let x = leaf(&saved.input);
            let skips: Vec<Tensor> = saved.skips.iter().map(|&k| leaf(&self.skips[k])).collect();
            let out = block.forward(&x, &skips, &leaves.temb, &leaves.context, saved.upsample_size);
            let inputs = leaves.inputs(std::iter::once(&x).chain(&skips).collect(), block.uses_context());
            let mut grads = vjp(&[(out, &grad)], &inputs)?;
            leaves.collect(&mut grads, block.uses_context(), &mut context_grad, &mut temb_grad);
            let mut grads = grads.into_iter();
            grad = grads.next().unwrap_or_else(|| x.zeros_like());
            for (&k, g) in saved.skips.iter().zip(grads) {
                add(&mut skip_grads[k], g);
            }
        }

        let x = leaf(&self.mid_input);
        let out = unet.mid_block.forward(&x, &leaves.temb, &leaves.context);
        let mut grads = vjp(&[(out, &grad)], &leaves.inputs(vec![&x], true))?;
        leaves.collect(&mut grads, true, &mut context_grad, &mut temb_grad);
        grad = grads.pop().unwrap_or_else(|| x.zeros_like());

        for (block, saved) in unet.down_blocks.iter().zip(&self.down).rev() {
            let x = leaf(&saved.input);
            let (out, states) = block.forward(&x, &leaves.temb, &leaves.context);
            // The block's output feeds the next block; its states feed the up blocks.
            let state_grads: Vec<(Tensor, Tensor)> =
                states.into_iter().zip(saved.states.clone()).filter_map(|(s, k)| skip_grads[k].take().map(|g| (s, g))).collect();
            let inputs = leaves.inputs(vec![&x], block.uses_context());
            let mut grads = {
                let mut outputs = vec![(out, &grad)];
                outputs.extend(state_grads.iter().map(|(s, g)| (s.shallow_clone(), g)));
                vjp(&outputs, &inputs)?
            };
            leaves.collect(&mut grads, block.uses_context(), &mut context_grad, &mut temb_grad);
            grad = grads.pop().unwrap_or_else(|| x.zeros_like());
        }
        let context = context_grad.unwrap_or_else(|| leaves.context.zeros_like());
        // SDXL: the time embedding is the timestep's plus add_embedding([text_embeds, ...]).
        let text_embeds = match (self.added, temb_grad) {
            (Some((_, a)), Some(g)) => {
                let text_embeds = leaf(&a.text_embeds);
                let batch = text_embeds.size()[0];
                let extra = unet.added_embedding(&AddedConditioning { text_embeds: text_embeds.shallow_clone(), time_ids: a.time_ids }, batch, g.kind())?;
                Some(vjp(&[(extra, &g)], &[&text_embeds])?.remove(0))
            }
            _ => None,
        };
        Ok(ConditioningGrads { context, text_embeds })
    }
}
