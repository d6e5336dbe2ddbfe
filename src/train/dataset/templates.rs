//! The script's caption templates, and how they are filled with the placeholder tokens.

/// `imagenet_templates_small` of the script (`--learnable_property object`), in order.
pub const OBJECT_TEMPLATES: [&str; 27] = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
];

/// `imagenet_style_templates_small` (`--learnable_property style`), in order; entries 3/12 and
/// 10/14 are duplicated in the script, which doubles their probability, so they stay.
pub const STYLE_TEMPLATES: [&str; 19] = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
];

/// `--learnable_property`: which template list captions come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LearnableProperty {
    #[default]
    Object,
    Style,
}

impl LearnableProperty {
    pub fn templates(self) -> &'static [&'static str] {
        match self {
            Self::Object => &OBJECT_TEMPLATES,
            Self::Style => &STYLE_TEMPLATES,
        }
    }
}

/// The string the templates are filled with: all placeholder tokens joined by spaces, as the
/// script passes `" ".join(placeholder_tokens)` to the dataset.
pub fn placeholder_string<S: AsRef<str>>(tokens: &[S]) -> String {
    tokens.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ")
}

/// `template.format(placeholder)`: every template has exactly one `{}` and no other braces.
pub fn caption(template: &str, placeholder: &str) -> String {
    template.replacen("{}", placeholder, 1)
}
