//! The prompts a run is evaluated with. As in the Textual Inversion paper's evaluation: one
//! reconstruction prompt (the paper's "A photo of S*") whose images are compared with the training
//! images, and a set of editing prompts whose images are compared with the prompt's text without
//! the learned word (the paper scores "A photo of S* on the moon" against "A photo of on the
//! moon"). `{}` in a prompt stands for the learned token.
use anyhow::{bail, Result};

/// What the run learned (`train --learnable_property`): the default prompts differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Property {
    Object,
    Style,
}

/// The default reconstruction prompt.
pub fn reconstruction(property: Property) -> &'static str {
    match property {
        Property::Object => "a photo of a {}",
        Property::Style => "a painting in the style of {}",
    }
}

/// The default editing prompts: a new place, a new medium, a new context, a new subject.
pub fn editing(property: Property) -> &'static [&'static str] {
    match property {
        Property::Object => {
            &["a photo of a {} on the beach", "an oil painting of a {}", "a photo of a {} in the snow", "a {} on a table next to a cup of coffee"]
        }
        Property::Style => &[
            "a painting of a dog in the style of {}",
            "a house by a lake in the style of {}",
            "a portrait of a woman in the style of {}",
            "a city street at night in the style of {}",
        ],
    }
}

/// `template` with `{}` replaced by `token`; a prompt without `{}` must name the token itself.
pub fn with_token(template: &str, token: &str) -> Result<String> {
    if template.contains("{}") {
        return Ok(template.replace("{}", token));
    }
    if !template.contains(token) {
        bail!("prompt {template:?} has neither {{}} nor the learned token {token}: it would not show what was learned");
    }
    Ok(template.to_string())
}

/// The text an editing prompt's images are scored against: the prompt with every occurrence of
/// `token` removed and runs of spaces collapsed to one, trimmed (the paper's "A photo of on the
/// moon").
pub fn without_token(prompt: &str, token: &str) -> String {
    prompt.replace(token, " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_in_and_comes_out() {
        assert_eq!(with_token("a photo of a {} on the beach", "<cat-toy>").unwrap(), "a photo of a <cat-toy> on the beach");
        assert_eq!(with_token("<cat-toy> in snow", "<cat-toy>").unwrap(), "<cat-toy> in snow");
        assert!(with_token("a dog", "<cat-toy>").is_err());
        assert_eq!(without_token("a photo of a <cat-toy> on the beach", "<cat-toy>"), "a photo of a on the beach");
        assert_eq!(without_token("<cat-toy>  by <cat-toy>", "<cat-toy>"), "by");
        for p in [Property::Object, Property::Style] {
            assert!(reconstruction(p).contains("{}") && editing(p).iter().all(|e| e.contains("{}")));
        }
    }
}
