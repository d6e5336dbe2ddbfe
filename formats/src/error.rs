//! One error type for every reader and writer: each variant says which file and what was wrong.
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The bytes do not form a valid file of the expected kind.
    #[error("{context}: {message}")]
    Format { context: String, message: String },
    /// A pickle asked for a Python global outside the allow-list; nothing was executed.
    #[error("{context}: refused to load global `{module}.{name}`: only tensors, storages and plain containers are allowed (the file may try to run code)")]
    RefusedGlobal { context: String, module: String, name: String },
    /// A size in the file is larger than the file (or a limit) allows.
    #[error("{context}: {message}")]
    TooLarge { context: String, message: String },
}

impl Error {
    pub fn format(context: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format { context: context.into(), message: message.into() }
    }
    pub fn too_large(context: impl Into<String>, message: impl Into<String>) -> Self {
        Error::TooLarge { context: context.into(), message: message.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// Prefixes the context (usually with the file name) so nested errors name the file.
    pub fn in_file(self, file: &str) -> Self {
        match self {
            Error::Format { context, message } => Error::Format { context: join(file, &context), message },
            Error::TooLarge { context, message } => Error::TooLarge { context: join(file, &context), message },
            Error::RefusedGlobal { context, module, name } => Error::RefusedGlobal { context: join(file, &context), module, name },
            e @ Error::Io { .. } => e,
        }
    }
}

fn join(file: &str, context: &str) -> String {
    if context.is_empty() || context == file {
        file.to_string()
    } else if context.starts_with(file) {
        context.to_string()
    } else {
        format!("{file}: {context}")
    }
}
