//! String-valued config fields as enums.
//!
//! A field such as `down_block_types` or `prediction_type` names one of a fixed set of values.
//! Each set is an enum declared with [`config_enum!`], holding the values this tool implements
//! under the exact strings diffusers and transformers write. A file may still name anything, so
//! the field is a [`Named`]: one of the enum's values, or the string as written. Deserializing
//! therefore never fails on an unknown name: serde's own "unknown variant" error would name
//! neither the file nor the key, where each config's `validate` (and each scheduler's
//! constructor, which accepts some values diffusers ignores) reports it with both.
use serde::de::IntoDeserializer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An enum of config values: their names as written in config files.
pub trait ConfigName: Copy + 'static {
    /// Every value, in declaration order (the order error messages list them in).
    const ALL: &'static [Self];
    /// The string a config file writes for this value.
    fn name(self) -> &'static str;
}

/// Declares an enum of config values, each with the string config files write for it: serde
/// reads and writes that string, and [`ConfigName`] gives it back for messages.
macro_rules! config_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }
        impl $crate::models::config::ConfigName for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }
    };
}
pub(crate) use config_enum;

/// A string-valued config field: one of `T`'s values, or any other string, kept as written so
/// that the check that refuses it can quote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named<T> {
    Known(T),
    Other(String),
}

impl<T: ConfigName + for<'de> Deserialize<'de>> Named<T> {
    /// `text` as a config file's value: `T`'s serde names decide what is known.
    pub fn parse(text: &str) -> Self {
        let known: Result<T, serde::de::value::Error> = T::deserialize(text.into_deserializer());
        match known {
            Ok(v) => Named::Known(v),
            Err(_) => Named::Other(text.to_string()),
        }
    }
}

impl<T: ConfigName> Named<T> {
    /// The value as the file wrote it.
    pub fn name(&self) -> &str {
        match self {
            Named::Known(v) => v.name(),
            Named::Other(s) => s,
        }
    }

    /// The value, if it is one of `T`'s.
    pub fn known(&self) -> Option<T> {
        match self {
            Named::Known(v) => Some(*v),
            Named::Other(_) => None,
        }
    }
}

impl<T> From<T> for Named<T> {
    fn from(v: T) -> Self {
        Named::Known(v)
    }
}

impl<T: ConfigName> fmt::Display for Named<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `T`'s names joined by ", " (the supported values, for messages).
pub fn names<T: ConfigName>() -> String {
    T::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
}

impl<'de, T: ConfigName + for<'a> Deserialize<'a>> Deserialize<'de> for Named<T> {
    /// A string (anything else is serde's usual type error), read by [`Named::parse`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Named::parse(&String::deserialize(d)?))
    }
}

impl<T: ConfigName> Serialize for Named<T> {
    /// The string as read: a config written back says what the file said.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    config_enum! {
        enum Letter {
            A = "a",
            Bee = "b_e",
        }
    }

    #[test]
    fn names_round_trip_and_other_strings_are_kept() {
        for &v in Letter::ALL {
            assert_eq!(Named::<Letter>::parse(v.name()), Named::Known(v));
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("{:?}", v.name()));
        }
        let other: Named<Letter> = serde_json::from_str(r#""B_E""#).unwrap();
        assert_eq!(other, Named::Other("B_E".into()));
        assert_eq!(serde_json::to_string(&other).unwrap(), r#""B_E""#);
        assert_eq!(serde_json::to_string(&Named::Known(Letter::Bee)).unwrap(), r#""b_e""#);
        assert_eq!(names::<Letter>(), "a, b_e");
        let e = serde_json::from_str::<Named<Letter>>("3").unwrap_err().to_string();
        assert!(e.contains("expected a string"), "{e}");
    }
}
