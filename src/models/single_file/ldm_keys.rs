//! The original (LDM/SGM) checkpoint layout, key by key, in diffusers' names: what diffusers'
//! `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`
//! and `convert_open_clip_checkpoint` do, written as one function per component from a stored
//! key (its component prefix removed) to the names it provides. A key a function does not know
//! maps to nothing (EMA copies, loss weights, buffers) and is left alone.
use crate::models::weights::View;

/// Where each of the original UNet's `input_blocks` / `output_blocks` goes, from the number of
/// resnets in each down block (`layers_per_block`, one per block).
pub struct UNetLayout {
    /// input_blocks[i] (i >= 1) → (down block, layer, is the downsampler)
    input: Vec<(usize, usize, bool)>,
    /// output_blocks[i] → (up block, layer)
    output: Vec<(usize, usize)>,
}

impl UNetLayout {
    pub fn new(layers_per_block: &[usize]) -> Self {
        let n = layers_per_block.len();
        let mut input = vec![(0, 0, false)]; // input_blocks.0 is conv_in
        for (b, &layers) in layers_per_block.iter().enumerate() {
            input.extend((0..layers).map(|l| (b, l, false)));
            if b + 1 < n {
                input.push((b, layers, true));
            }
        }
        let mut output = Vec::new();
        for (b, &layers) in layers_per_block.iter().rev().enumerate() {
            output.extend((0..=layers).map(|l| (b, l)));
        }
        UNetLayout { input, output }
    }

    /// diffusers' name for a key under `model.diffusion_model.`.
    pub fn key(&self, key: &str) -> Option<String> {
        let (head, rest) = split_index(key)?;
        Some(match head {
            "time_embed" => match rest.split_once('.')? {
                ("0", r) => format!("time_embedding.linear_1.{r}"),
                ("2", r) => format!("time_embedding.linear_2.{r}"),
                _ => return None,
            },
            // SDXL's added conditioning: label_emb.0 is Sequential(Linear, SiLU, Linear).
            "label_emb" => match rest.strip_prefix("0.")?.split_once('.')? {
                ("0", r) => format!("add_embedding.linear_1.{r}"),
                ("2", r) => format!("add_embedding.linear_2.{r}"),
                _ => return None,
            },
            "out" => match rest.split_once('.')? {
                ("0", r) => format!("conv_norm_out.{r}"),
                ("2", r) => format!("conv_out.{r}"),
                _ => return None,
            },
            "input_blocks" => {
                let (i, rest) = take_index(rest)?;
                let (j, rest) = take_index(rest)?;
                if i == 0 {
                    return (j == 0).then(|| format!("conv_in.{rest}"));
                }
                let &(b, l, down) = self.input.get(i)?;
                match (j, down) {
                    (0, true) => format!("down_blocks.{b}.downsamplers.0.conv.{}", rest.strip_prefix("op.")?),
                    (0, false) => format!("down_blocks.{b}.resnets.{l}.{}", resnet(rest)?),
                    (1, false) => format!("down_blocks.{b}.attentions.{l}.{rest}"),
                    _ => return None,
                }
            }
            "middle_block" => {
                let (j, rest) = take_index(rest)?;
                match j {
                    0 => format!("mid_block.resnets.0.{}", resnet(rest)?),
                    1 => format!("mid_block.attentions.0.{rest}"),
                    2 => format!("mid_block.resnets.1.{}", resnet(rest)?),
                    _ => return None,
                }
            }
            "output_blocks" => {
                let (i, rest) = take_index(rest)?;
                let (j, rest) = take_index(rest)?;
                let &(b, l) = self.output.get(i)?;
                match j {
                    0 => format!("up_blocks.{b}.resnets.{l}.{}", resnet(rest)?),
                    // The upsampler follows the attention where the block has one (index 2), else
                    // the resnet (index 1); it is the only module holding a bare `conv`.
                    1 | 2 if rest.starts_with("conv.") => format!("up_blocks.{b}.upsamplers.0.{rest}"),
                    1 => format!("up_blocks.{b}.attentions.{l}.{rest}"),
                    _ => return None,
                }
            }
            _ => return None,
        })
    }
}

/// A UNet ResBlock's inner names.
fn resnet(rest: &str) -> Option<String> {
    let (module, param) = rest.rsplit_once('.')?;
    let name = match module {
        "in_layers.0" => "norm1",
        "in_layers.2" => "conv1",
        "emb_layers.1" => "time_emb_proj",
        "out_layers.0" => "norm2",
        "out_layers.3" => "conv2",
        "skip_connection" => "conv_shortcut",
        _ => return None,
    };
    Some(format!("{name}.{param}"))
}

/// diffusers' name for a key under `first_stage_model.`; `blocks` is the number of VAE blocks
/// (the decoder's `up` list is stored in reverse order).
pub fn vae_key(key: &str, blocks: usize) -> Option<String> {
    let (coder, rest) = key.split_once('.')?;
    if !matches!(coder, "encoder" | "decoder") {
        return matches!(coder, "quant_conv" | "post_quant_conv").then(|| key.to_string());
    }
    let inner = match split_index(rest)? {
        ("conv_in" | "conv_out", _) => rest.to_string(),
        ("norm_out", r) => format!("conv_norm_out.{r}"),
        ("down", r) if coder == "encoder" => {
            let (i, r) = take_index(r)?;
            vae_block(i, r, "down_blocks", "downsample", "downsamplers")?
        }
        ("up", r) if coder == "decoder" => {
            let (i, r) = take_index(r)?;
            vae_block(blocks.checked_sub(i + 1)?, r, "up_blocks", "upsample", "upsamplers")?
        }
        ("mid", r) => {
            let (module, r) = r.split_once('.')?;
            match module {
                "block_1" => format!("mid_block.resnets.0.{}", vae_resnet(r)?),
                "block_2" => format!("mid_block.resnets.1.{}", vae_resnet(r)?),
                "attn_1" => {
                    let (m, p) = r.split_once('.')?;
                    let name = match m {
                        "norm" => "group_norm",
                        "q" => "to_q",
                        "k" => "to_k",
                        "v" => "to_v",
                        "proj_out" => "to_out.0",
                        _ => return None,
                    };
                    format!("mid_block.attentions.0.{name}.{p}")
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(format!("{coder}.{inner}"))
}

fn vae_block(b: usize, rest: &str, blocks: &str, sampler: &str, samplers: &str) -> Option<String> {
    let (module, r) = rest.split_once('.')?;
    if module == "block" {
        let (j, r) = take_index(r)?;
        Some(format!("{blocks}.{b}.resnets.{j}.{}", vae_resnet(r)?))
    } else if module == sampler {
        r.starts_with("conv.").then(|| format!("{blocks}.{b}.{samplers}.0.{r}"))
    } else {
        None
    }
}

fn vae_resnet(rest: &str) -> Option<String> {
    let (module, param) = rest.split_once('.')?;
    let name = match module {
        "norm1" | "conv1" | "norm2" | "conv2" => module,
        "nin_shortcut" => "conv_shortcut",
        _ => return None,
    };
    Some(format!("{name}.{param}"))
}

/// transformers' name for a key of a Hugging Face CLIP text model stored under
/// `cond_stage_model.transformer.` (SD 1.x) or `conditioner.embedders.0.transformer.` (SDXL):
/// the same names, `text_model.` added where old files lack it; `position_ids` (a buffer
/// transformers rebuilds) dropped.
pub fn clip_key(key: &str) -> Option<String> {
    if key.ends_with("position_ids") {
        return None;
    }
    Some(if key.starts_with("text_model.") { key.to_string() } else { format!("text_model.{key}") })
}

/// transformers' names for a key of an OpenCLIP text tower stored under
/// `cond_stage_model.model.` (SD 2.x: `layers` of its blocks are used, the last one is not) or
/// `conditioner.embedders.1.model.` (SDXL, whose projection is kept: `projection`).
/// `in_proj_*` holds q, k and v stacked: each is a third of its rows.
pub fn open_clip_keys(key: &str, shape: &[i64], layers: usize, projection: bool) -> Vec<(String, View)> {
    let whole = |k: String| vec![(k, View::Whole)];
    match key {
        "token_embedding.weight" => return whole("text_model.embeddings.token_embedding.weight".into()),
        "positional_embedding" => return whole("text_model.embeddings.position_embedding.weight".into()),
        "text_projection" if projection => return vec![("text_projection.weight".into(), View::Transposed)],
        _ => {}
    }
    if let Some(p) = key.strip_prefix("ln_final.") {
        return whole(format!("text_model.final_layer_norm.{p}"));
    }
    let Some((n, rest)) = key.strip_prefix("transformer.resblocks.").and_then(take_index) else { return Vec::new() };
    if n >= layers {
        return Vec::new();
    }
    let layer = format!("text_model.encoder.layers.{n}");
    if let Some(param) = rest.strip_prefix("attn.in_proj_") {
        let Some(&rows) = shape.first().filter(|&&r| r % 3 == 0) else { return Vec::new() };
        let d = rows / 3;
        return ["q_proj", "k_proj", "v_proj"]
            .iter()
            .enumerate()
            .map(|(i, proj)| (format!("{layer}.self_attn.{proj}.{param}"), View::Rows { start: i as i64 * d, len: d }))
            .collect();
    }
    let Some((module, param)) = rest.rsplit_once('.') else { return Vec::new() };
    let name = match module {
        "ln_1" => "layer_norm1",
        "ln_2" => "layer_norm2",
        "mlp.c_fc" => "mlp.fc1",
        "mlp.c_proj" => "mlp.fc2",
        "attn.out_proj" => "self_attn.out_proj",
        _ => return Vec::new(),
    };
    whole(format!("{layer}.{name}.{param}"))
}

/// `name.rest` → (`name`, `rest`).
fn split_index(key: &str) -> Option<(&str, &str)> {
    key.split_once('.')
}

/// `12.rest` → (12, `rest`).
fn take_index(key: &str) -> Option<(usize, &str)> {
    let (i, rest) = key.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD 1.5's layout: 4 blocks of 2 resnets (the names diffusers' converter gives them).
    #[test]
    fn sd15_unet_names() {
        let u = UNetLayout::new(&[2, 2, 2, 2]);
        let cases = [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            ("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"),
            ("input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight"),
            ("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
            ("input_blocks.4.0.skip_connection.bias", "down_blocks.1.resnets.0.conv_shortcut.bias"),
            ("input_blocks.11.0.out_layers.3.weight", "down_blocks.3.resnets.1.conv2.weight"),
            ("middle_block.1.proj_in.weight", "mid_block.attentions.0.proj_in.weight"),
            ("middle_block.2.emb_layers.1.bias", "mid_block.resnets.1.time_emb_proj.bias"),
            ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
            ("output_blocks.5.1.norm.weight", "up_blocks.1.attentions.2.norm.weight"),
            ("output_blocks.11.0.skip_connection.weight", "up_blocks.3.resnets.2.conv_shortcut.weight"),
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
            ("out.0.bias", "conv_norm_out.bias"),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(u.key(ldm).as_deref(), Some(diffusers), "{ldm}");
        }
        assert_eq!(u.key("input_blocks.12.0.in_layers.0.weight"), None);
    }

    #[test]
    fn vae_and_text_names() {
        assert_eq!(vae_key("decoder.up.3.block.0.nin_shortcut.weight", 4).as_deref(), Some("decoder.up_blocks.0.resnets.0.conv_shortcut.weight"));
        assert_eq!(vae_key("decoder.up.1.upsample.conv.bias", 4).as_deref(), Some("decoder.up_blocks.2.upsamplers.0.conv.bias"));
        assert_eq!(vae_key("encoder.down.0.downsample.conv.weight", 4).as_deref(), Some("encoder.down_blocks.0.downsamplers.0.conv.weight"));
        assert_eq!(vae_key("encoder.mid.attn_1.proj_out.weight", 4).as_deref(), Some("encoder.mid_block.attentions.0.to_out.0.weight"));
        assert_eq!(vae_key("loss.logvar", 4), None);
        assert_eq!(clip_key("text_model.embeddings.position_ids"), None);
        assert_eq!(clip_key("embeddings.token_embedding.weight").as_deref(), Some("text_model.embeddings.token_embedding.weight"));
        let qkv = open_clip_keys("transformer.resblocks.1.attn.in_proj_weight", &[3072, 1024], 23, false);
        assert_eq!(qkv[1], ("text_model.encoder.layers.1.self_attn.k_proj.weight".into(), View::Rows { start: 1024, len: 1024 }));
        assert!(open_clip_keys("transformer.resblocks.23.ln_1.weight", &[1024], 23, false).is_empty());
        assert!(open_clip_keys("text_projection", &[1024, 1024], 23, false).is_empty());
        assert_eq!(open_clip_keys("text_projection", &[1280, 1280], 32, true)[0].1, View::Transposed);
    }
}
