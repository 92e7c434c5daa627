//! Problems with a config, each tied to the field it is about by a path
//! (`service[1].backend[0].weight`) rather than by its wording, so that the
//! line can be found in the document and messages can be reworded freely.

use std::fmt;

/// One step of a field path: a key, or an element of an array of tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    /// `label` names the element for people (a service's name, a
    /// backend's `address:port`); the index alone locates it.
    Index {
        index: usize,
        label: Option<String>,
    },
}

/// An element of an array of tables as people know it: the one place
/// that says how elements are labelled, for problems found in the model
/// (validation) and in the document (the parser's errors) alike.
#[derive(Clone, Copy)]
pub(crate) enum Element<'a> {
    /// A service or a track script, by its `name` (unlabelled when empty).
    Named(&'a str),
    /// A backend, by its address and the port it is reached at (its own,
    /// else its service's).
    Backend {
        address: &'a dyn fmt::Display,
        port: &'a dyn fmt::Display,
    },
}

impl Element<'_> {
    /// `"www"`, `10.200.0.21:80`; `None` for an element without a name.
    pub(crate) fn label(self) -> Option<String> {
        match self {
            Self::Named(name) => (!name.is_empty()).then(|| format!("{name:?}")),
            Self::Backend { address, port } => Some(format!("{address}:{port}")),
        }
    }
}

/// Where a field is in the document, from its root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    pub fn root() -> Self {
        Self::default()
    }

    /// This path followed by `key`.
    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_string()));
        next
    }

    /// This path (ending at an array) followed by its element `index`.
    pub fn index(&self, index: usize, label: Option<String>) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index { index, label });
        next
    }

    /// This path (ending at an array of tables) followed by its element
    /// `index`, labelled as `element`.
    pub(crate) fn element(&self, index: usize, element: Element<'_>) -> Self {
        self.index(index, element.label())
    }

    /// `self` followed by every step of `relative`.
    pub fn join(&self, relative: &FieldPath) -> Self {
        let mut next = self.clone();
        next.0.extend(relative.0.iter().cloned());
        next
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as people read it: keys joined by dots, elements by their
    /// label (`service "www" backend 10.200.0.21:80 weight`), or by their
    /// index when they have none (`node.snat_addresses[1]`).
    pub fn readable(&self) -> String {
        let mut text = String::new();
        let mut after_element = false;
        for segment in &self.0 {
            match segment {
                Segment::Key(key) => {
                    if !text.is_empty() {
                        text.push(if after_element { ' ' } else { '.' });
                    }
                    text.push_str(key);
                    after_element = false;
                }
                Segment::Index {
                    label: Some(label), ..
                } => {
                    text.push(' ');
                    text.push_str(label);
                    after_element = true;
                }
                Segment::Index { index, label: None } => {
                    text.push_str(&format!("[{index}]"));
                    after_element = false;
                }
            }
        }
        text
    }
}

/// The exact form: `service[1].backend[0].weight`.
impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if n == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index { index, .. } => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// What is wrong, where, and (when there is more to say than the message
/// does) how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: FieldPath,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The same problem under `prefix` (for rules that check one part of
    /// the config and are applied at several places).
    pub fn under(mut self, prefix: &FieldPath) -> Self {
        self.path = prefix.join(&self.path);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_root() {
            write!(f, "{}: ", self.path.readable())?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// Problems collected by one validation pass.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn push(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }

    pub(crate) fn push_with_hint(
        &mut self,
        path: FieldPath,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.0.push(Problem::new(path, message).with_hint(hint));
    }

    pub(crate) fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.0.extend(problems);
    }

    pub(crate) fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_exactly_and_for_people() {
        let weight = FieldPath::root()
            .key("service")
            .index(1, Some("\"www\"".into()))
            .key("backend")
            .index(0, Some("10.200.0.21:80".into()))
            .key("weight");
        assert_eq!(weight.to_string(), "service[1].backend[0].weight");
        assert_eq!(
            weight.readable(),
            "service \"www\" backend 10.200.0.21:80 weight"
        );
        let range = FieldPath::root().key("node").key("port_range");
        assert_eq!(range.to_string(), "node.port_range");
        assert_eq!(range.readable(), "node.port_range");
        let unnamed = FieldPath::root().key("service").index(2, None);
        assert_eq!(unnamed.readable(), "service[2]");
        let check = FieldPath::root()
            .key("service")
            .index(0, Some("\"www\"".into()))
            .key("health_check")
            .key("path");
        assert_eq!(check.readable(), "service \"www\" health_check.path");
    }

    #[test]
    fn a_problem_says_where_what_and_how() {
        let problem = Problem::new(
            FieldPath::root().key("node").key("state_dir"),
            "\"x\" is relative",
        )
        .with_hint("write an absolute directory");
        assert_eq!(
            problem.to_string(),
            "node.state_dir: \"x\" is relative; write an absolute directory"
        );
        let relative = Problem::new(FieldPath::root().key("weight"), "0 is out of range")
            .under(&FieldPath::root().key("service").index(0, None));
        assert_eq!(relative.path.to_string(), "service[0].weight");
    }
}
