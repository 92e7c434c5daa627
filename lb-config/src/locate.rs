//! From a field path to its line in the document, and from a parser
//! error's byte offset back to the field path, with toml_edit's spans.

use toml_edit::{ImDocument, Item, Table, Value};

use crate::{
    error::Located,
    problem::{Element, FieldPath, Problem, Segment},
};

/// 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A parsed document that problems are located in.
pub struct Document<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Document<'a> {
    pub fn parse(text: &'a str) -> Self {
        Self {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// The line of the field at `path`; where the field is not written
    /// (a default that breaks a rule with another field), the line of the
    /// nearest table that is.
    pub fn line(&self, path: &FieldPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut offset = None;
        let mut item: Option<ItemRef<'_>> = Some(ItemRef::Table(doc.as_table()));
        for segment in path.segments() {
            let Some(current) = item.take() else { break };
            match (segment, current) {
                (Segment::Key(key), ItemRef::Table(table)) => {
                    let Some(found) = table.get(key) else { break };
                    offset = key_start(table, key).or(offset);
                    item = ItemRef::of(found);
                }
                (Segment::Key(key), ItemRef::Inline(table)) => {
                    let Some(value) = table.get(key) else { break };
                    offset = table
                        .key(key)
                        .and_then(|k| k.span())
                        .or_else(|| value.span())
                        .map(|s| s.start)
                        .or(offset);
                    item = ItemRef::of_value(value);
                }
                (Segment::Index { index, .. }, ItemRef::Tables(tables)) => {
                    let Some(table) = tables.get(*index) else {
                        break;
                    };
                    offset = table_start(table).or(offset);
                    item = Some(ItemRef::Table(table));
                }
                (Segment::Index { index, .. }, ItemRef::Array(array)) => {
                    let Some(value) = array.get(*index) else {
                        break;
                    };
                    offset = value.span().map(|s| s.start).or(offset);
                    item = ItemRef::of_value(value);
                }
                _ => break,
            }
        }
        offset.map(|offset| line_of(self.text, offset))
    }

    /// Whether the text is TOML at all (else only its syntax is wrong).
    pub fn is_toml(&self) -> bool {
        self.doc.is_some()
    }

    /// `problem` with the line of its field.
    pub fn locate(&self, problem: Problem) -> Located {
        Located {
            line: self.line(&problem.path),
            problem,
        }
    }

    /// The field that byte `offset` belongs to (an error of the parser
    /// points there), with the elements labelled as validation labels them.
    pub fn path_at(&self, offset: usize) -> FieldPath {
        match &self.doc {
            Some(doc) => path_in_table(doc.as_table(), offset, FieldPath::root()),
            None => FieldPath::root(),
        }
    }
}

#[derive(Clone, Copy)]
enum ItemRef<'t> {
    Table(&'t Table),
    Tables(&'t toml_edit::ArrayOfTables),
    Inline(&'t toml_edit::InlineTable),
    Array(&'t toml_edit::Array),
    Scalar,
}

impl<'t> ItemRef<'t> {
    fn of(item: &'t Item) -> Option<Self> {
        match item {
            Item::Table(table) => Some(Self::Table(table)),
            Item::ArrayOfTables(tables) => Some(Self::Tables(tables)),
            Item::Value(value) => Self::of_value(value),
            Item::None => None,
        }
    }

    fn of_value(value: &'t Value) -> Option<Self> {
        Some(match value {
            Value::InlineTable(table) => Self::Inline(table),
            Value::Array(array) => Self::Array(array),
            _ => Self::Scalar,
        })
    }
}

/// Where a table starts: its header, or its first key for implicit tables.
fn table_start(table: &Table) -> Option<usize> {
    table
        .span()
        .map(|s| s.start)
        .or_else(|| table.iter().next().and_then(|(k, _)| key_start(table, k)))
}

fn key_start(table: &Table, key: &str) -> Option<usize> {
    table
        .key(key)
        .and_then(|k| k.span())
        .map(|s| s.start)
        .or_else(|| table.get(key).and_then(Item::span).map(|s| s.start))
}

fn contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

/// The deepest path under `table` whose key, value or header holds
/// `offset`.
fn path_in_table(table: &Table, offset: usize, at: FieldPath) -> FieldPath {
    for (key, item) in table.iter() {
        let here = at.key(key);
        match item {
            Item::ArrayOfTables(tables) => {
                for (index, element) in tables.iter().enumerate() {
                    let element_path = here.index(index, element_label(key, element, table));
                    let inside = path_in_table(element, offset, element_path.clone());
                    if inside != element_path || contains(element.span(), offset) {
                        return inside;
                    }
                }
            }
            Item::Table(sub) => {
                let inside = path_in_table(sub, offset, here.clone());
                if inside != here || contains(sub.span(), offset) {
                    return inside;
                }
            }
            Item::Value(value) => {
                let key_span = table.key(key).and_then(|k| k.span());
                if contains(key_span, offset) || contains(value.span(), offset) {
                    return here;
                }
            }
            Item::None => {}
        }
    }
    at
}

/// The element of `key` as validation names it (`Element`): a service or
/// track script by its name, a backend by `address:port` (the port
/// defaulting to that of `parent`, its service).
fn element_label(key: &str, element: &Table, parent: &Table) -> Option<String> {
    match key {
        "service" | "track_script" => element
            .get("name")
            .and_then(Item::as_str)
            .and_then(|name| Element::Named(name).label()),
        "backend" => {
            let address = element.get("address").and_then(Item::as_str)?;
            let port = element
                .get("port")
                .or_else(|| parent.get("port"))
                .and_then(Item::as_integer)?;
            Element::Backend {
                address: &address,
                port: &port,
            }
            .label()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[node]
public_interface = "pub0"
port_range = [1, 2]

[[service]]
name = "www"
port = 80
  [service.health_check]
  path = "x"
  [[service.backend]]
  address = "10.0.0.1"
  [[service.backend]]
  address = "10.0.0.2"
  weight = 0
"#;

    fn path(text: &str) -> FieldPath {
        let mut path = FieldPath::root();
        for part in text.split('.') {
            match part.split_once('[') {
                Some((key, index)) => {
                    path = path
                        .key(key)
                        .index(index.trim_end_matches(']').parse().expect("index"), None)
                }
                None => path = path.key(part),
            }
        }
        path
    }

    #[test]
    fn paths_find_their_lines() {
        let doc = Document::parse(TEXT);
        for (field, line) in [
            ("node.public_interface", 2),
            ("node.port_range", 3),
            ("node.port_range[1]", 3),
            ("node.state_dir", 1),
            ("service[0]", 5),
            ("service[0].port", 7),
            ("service[0].health_check.path", 9),
            ("service[0].health_check.interval", 8),
            ("service[0].backend[1].weight", 14),
            ("service[0].backend[1].port", 12),
            ("service[3].port", 5),
        ] {
            assert_eq!(doc.line(&path(field)), Some(line), "{field}");
        }
    }

    #[test]
    fn offsets_find_their_fields_with_labels() {
        let doc = Document::parse(TEXT);
        let at = |needle: &str| doc.path_at(TEXT.find(needle).expect("needle"));
        assert_eq!(at("weight = 0").to_string(), "service[0].backend[1].weight");
        assert_eq!(
            at("weight = 0").readable(),
            "service \"www\" backend 10.0.0.2:80 weight"
        );
        assert_eq!(at("\"x\"").to_string(), "service[0].health_check.path");
        assert_eq!(at("[1, 2]").to_string(), "node.port_range");
        assert_eq!(at("pub0").to_string(), "node.public_interface");
    }
}
