//! Why a config file could not be used.

use std::{fmt, path::Path};

use crate::problem::Problem;

/// A problem and the line of the document it is about, when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub line: Option<usize>,
    pub problem: Problem,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.problem.fmt(f)
    }
}

/// Errors of reading and validating a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not text (binary garbage, another encoding).
    #[error("{path}:{line}: {}", not_utf8(*byte))]
    NotUtf8 {
        path: String,
        byte: usize,
        line: usize,
    },
    /// The file is not valid TOML.
    #[error("{}: {message}", at(path, *line))]
    Syntax {
        path: String,
        line: Option<usize>,
        message: String,
    },
    /// The file is TOML but does not fit the model or describes something
    /// that cannot work; each problem with its field and line.
    #[error("config {path} is invalid:\n{}", problems.iter().map(|p| format!("  {}: {}", at(path, p.line), p.problem)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        problems: Vec<Located>,
    },
}

/// What is wrong with a file whose bytes stop being UTF-8 at `byte`.
pub fn not_utf8(byte: usize) -> String {
    format!(
        "not UTF-8 at byte {byte}; a config file is UTF-8 text (was another file copied over it?)"
    )
}

/// `FILE:LINE`, or `FILE` when the line is not known.
fn at(path: &str, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{path}:{line}"),
        None => path.to_string(),
    }
}

/// The text of a config file; bytes that are not UTF-8 are reported with
/// their offset and line, which `read_to_string` does not tell.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|error| {
        let byte = error.utf8_error().valid_up_to();
        let line =
            crate::locate::line_of(&String::from_utf8_lossy(&error.as_bytes()[..byte]), byte);
        ConfigError::NotUtf8 {
            path: shown,
            byte,
            line,
        }
    })
}
