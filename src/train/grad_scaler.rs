//! fp16 loss scaling as accelerate's `GradScaler` (init 65536, growth 2 every 2000 finite
//! steps, backoff 0.5): the loss is multiplied before backward so small fp16 gradients do not
//! vanish; before the optimizer step the gradient is divided back, and a step whose gradient
//! has inf/NaN is skipped. Only the placeholder rows are checked (the Python script checks the
//! whole embedding matrix, whose other rows it then restores anyway).
use anyhow::Result;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    pub scale: f64,
    pub growth_tracker: u64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler { scale: 65536.0, growth_tracker: 0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

impl GradScaler {
    /// Divides the gradients of `params` by the scale in place; returns false (and backs the
    /// scale off) if any is not finite, in which case the caller skips the optimizer step.
    pub fn unscale(&mut self, params: &[Tensor]) -> Result<bool> {
        let mut finite = true;
        for p in params {
            let g = p.grad();
            if g.defined() && !bool::try_from(g.isfinite().all())? {
                finite = false;
            }
        }
        if !finite {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
            return Ok(false);
        }
        tch::no_grad(|| {
            for p in params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(1.0 / self.scale);
                }
            }
        });
        self.growth_tracker += 1;
        if self.growth_tracker == self.growth_interval {
            self.scale *= self.growth_factor;
            self.growth_tracker = 0;
        }
        Ok(true)
    }

    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("scale".into(), Tensor::from_slice(&[self.scale]).to_kind(Kind::Double)),
            ("growth_tracker".into(), Tensor::from_slice(&[self.growth_tracker as i64])),
        ]
    }

    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        for (k, t) in state {
            match k.as_str() {
                "scale" => self.scale = t.double_value(&[0]),
                "growth_tracker" => self.growth_tracker = t.int64_value(&[0]).max(0) as u64,
                _ => {}
            }
        }
        Ok(())
    }
}
