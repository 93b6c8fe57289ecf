//! Event schemas ("weak schema") and the personal fields they declare.
//!
//! A schema is a JSON Schema (draft 2020-12) registered for an event type; its versions are
//! immutable. Besides describing the event's `data`, it may mark properties as personal data of
//! a subject with `x-lethe-personal` (`{"subject": "/pointer"}` or `{"subject": "$stream"}`),
//! optionally with the value such a field reads as once its subject is forgotten
//! (`x-lethe-erased`). [`personal_fields`] finds them; the rules it enforces are Lethe's own
//! (the JSON Schema validator knows nothing of them):
//! - personal fields are reached from the root through `properties` only (not `items`,
//!   `$defs`, `allOf` …), so each has one JSON pointer, known before any event is seen;
//! - a personal field is never inside another one, and never the whole event;
//! - a subject pointer is an RFC 6901 pointer into the same event's data that does not point
//!   into a personal field (subject ids are not personal fields themselves).

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{SubjectId, ValidationError};
use crate::limits::{SCHEMA_PERSONAL_FIELDS_MAX, SCHEMA_POINTER_LEN_MAX};

/// The keyword that marks a property as personal data of a subject.
pub const PERSONAL_KEYWORD: &str = "x-lethe-personal";
/// The keyword that gives a personal field's value once its subject is forgotten.
pub const ERASED_KEYWORD: &str = "x-lethe-erased";
/// The `subject` of a personal field that belongs to the stream's bound subject.
pub const STREAM_SUBJECT: &str = "$stream";

/// What happens to an event that does not match its type's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaMode {
    /// The append is refused (`schema_violation`) and nothing of it is stored.
    Enforce,
    /// The event is stored and the violation counted (`lethe_schema_violations_total`).
    Warn,
}

impl SchemaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaMode::Enforce => "enforce",
            SchemaMode::Warn => "warn",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enforce" => Some(SchemaMode::Enforce),
            "warn" => Some(SchemaMode::Warn),
            _ => None,
        }
    }
}

/// One registered (immutable) version of an event type's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSchema {
    pub event_type: String,
    /// 1 for the first version of a type, then one more for each registration.
    pub version: u32,
    pub mode: SchemaMode,
    /// The JSON Schema document as registered.
    pub schema: Value,
    pub registered_at: DateTime<Utc>,
}

/// Where a personal field's subject id is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectSource {
    /// At this JSON pointer into the same event's data (a string subject id).
    Pointer(JsonPointer),
    /// The stream's bound subject (`"$stream"`).
    Stream,
}

/// A property that a schema marks as personal data of one subject.
#[derive(Clone, PartialEq)]
pub struct PersonalField {
    /// RFC 6901 pointer to the field in the event's data.
    pub pointer: JsonPointer,
    pub subject: SubjectSource,
    /// What the field reads as once its subject is forgotten (`null` unless the schema says).
    pub erased: Value,
}

impl PersonalField {
    /// The field's value in `data` (see [`JsonPointer::find`]).
    pub fn find<'v>(&self, data: &'v Value) -> Option<&'v Value> {
        self.pointer.find(data)
    }

    /// [`PersonalField::find`], mutable.
    pub fn find_mut<'v>(&self, data: &'v mut Value) -> Option<&'v mut Value> {
        self.pointer.find_mut(data)
    }
}

/// A well-formed RFC 6901 JSON pointer, with its reference tokens unescaped once: appends and
/// reads look one up in every event, and `Value::pointer` parses (and allocates) each time.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

impl JsonPointer {
    /// The pointer `text`, if it is a well-formed, non-empty one ([`is_json_pointer`]).
    pub fn parse(text: &str) -> Option<Self> {
        is_json_pointer(text).then(|| Self {
            text: text.to_owned(),
            tokens: text
                .split('/')
                .skip(1)
                .map(|token| token.replace("~1", "/").replace("~0", "~"))
                .collect(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What `data.pointer(self.as_str())` finds, without parsing the pointer (and allocating
    /// each token) again.
    pub fn find<'v>(&self, data: &'v Value) -> Option<&'v Value> {
        self.tokens.iter().try_fold(data, |target, token| match target {
            Value::Object(map) => map.get(token),
            Value::Array(list) => array_index(token).and_then(|i| list.get(i)),
            _ => None,
        })
    }

    /// [`JsonPointer::find`], mutable.
    pub fn find_mut<'v>(&self, data: &'v mut Value) -> Option<&'v mut Value> {
        self.tokens.iter().try_fold(data, |target, token| match target {
            Value::Object(map) => map.get_mut(token),
            Value::Array(list) => array_index(token).and_then(move |i| list.get_mut(i)),
            _ => None,
        })
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

/// A reference token as an array index, as `serde_json::Value::pointer` reads one (no sign, no
/// leading zero).
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

// The replacement value is the schema author's, but keep Debug output about structure only.
impl fmt::Debug for PersonalField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersonalField")
            .field("pointer", &self.pointer)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// The personal fields a schema declares, by property name at each level; `invalid_schema` if a declaration
/// breaks the rules of the module comment.
pub fn personal_fields(schema: &Value) -> Result<Vec<PersonalField>, ValidationError> {
    if let Some(root) = schema.as_object()
        && (root.contains_key(PERSONAL_KEYWORD) || root.contains_key(ERASED_KEYWORD))
    {
        return Err(invalid(
            "the whole event cannot be a personal field: mark its properties, or bind the stream to the subject",
        ));
    }
    let mut fields = Vec::new();
    collect(schema, "", &[], false, &mut fields)?;
    // Every occurrence of the keywords must have been one of the fields found.
    let (personal, erased) = count_keywords(schema);
    let erased_found = fields.iter().filter(|f| f.erased_declared).count();
    if personal != fields.len() || erased != erased_found {
        return Err(invalid(
            "x-lethe-personal and x-lethe-erased may only stand on a property reached from the root through \
             `properties` alone (not under items, $defs, allOf, anyOf, oneOf, not, if/then/else or \
             additionalProperties), and x-lethe-erased only beside x-lethe-personal",
        ));
    }
    if fields.len() > SCHEMA_PERSONAL_FIELDS_MAX {
        return Err(ValidationError::InvalidSchema {
            reason: format!(
                "{} personal fields declared; at most {SCHEMA_PERSONAL_FIELDS_MAX}",
                fields.len()
            ),
        });
    }
    for field in &fields {
        if let SubjectSource::Pointer(subject) = &field.field.subject
            && let Some(other) = fields.iter().find(|f| {
                is_within(subject.as_str(), f.field.pointer.as_str())
                    || is_within(f.field.pointer.as_str(), subject.as_str())
            })
        {
            return Err(ValidationError::InvalidSchema {
                reason: format!(
                    "the subject pointer {subject:?} of {:?} overlaps the personal field {:?}: a subject id is \
                     not itself a personal field",
                    field.field.pointer, other.field.pointer
                ),
            });
        }
    }
    Ok(fields.into_iter().map(|f| f.field).collect())
}

/// The personal fields present in one event's `data`, each with its subject: found at the
/// field's subject pointer, or the stream's bound subject (`stream_subject`) for `$stream`.
/// A field that is absent needs no subject; a present one whose subject is missing, not a
/// string, not a legal subject id, or `$stream` on an unbound stream is `invalid_subject`.
pub fn field_subjects<'f>(
    fields: &'f [PersonalField],
    data: &Value,
    stream_subject: Option<&SubjectId>,
) -> Result<Vec<(&'f PersonalField, SubjectId)>, ValidationError> {
    let mut found = Vec::new();
    for field in fields {
        if field.find(data).is_none() {
            continue;
        }
        let invalid = |reason: &'static str| ValidationError::InvalidFieldSubject {
            field: field.pointer.to_string(),
            reason,
        };
        let subject = match &field.subject {
            SubjectSource::Stream => stream_subject
                .cloned()
                .ok_or_else(|| invalid("is the stream's subject (\"$stream\"), but the stream is bound to none"))?,
            SubjectSource::Pointer(pointer) => match pointer.find(data) {
                None => return Err(invalid("is missing: the field's subject pointer finds nothing")),
                Some(Value::String(id)) => SubjectId::new(id.as_str()).map_err(|_| {
                    invalid("is not a legal subject id (1-200 characters of [A-Za-z0-9_.:@-], no leading '$')")
                })?,
                Some(_) => return Err(invalid("is not a string")),
            },
        };
        found.push((field, subject));
    }
    Ok(found)
}

/// Removes the member a JSON pointer names from its parent object (nothing if there is none).
pub fn remove_at(data: &mut Value, pointer: &str) {
    let Some((parent, token)) = pointer.rsplit_once('/') else {
        return;
    };
    let token = token.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(object)) = data.pointer_mut(parent) {
        object.remove(&token);
    }
}

/// Whether `pointer` is `parent` or lies inside it.
pub fn is_within(pointer: &str, parent: &str) -> bool {
    pointer == parent || (pointer.starts_with(parent) && pointer[parent.len()..].starts_with('/'))
}

/// Whether `pointer` is a well-formed, non-empty RFC 6901 JSON pointer.
pub fn is_json_pointer(pointer: &str) -> bool {
    if !pointer.starts_with('/') || pointer.len() > SCHEMA_POINTER_LEN_MAX || pointer.chars().any(char::is_control) {
        return false;
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// One reference token escaped for a JSON pointer.
fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

struct Found {
    field: PersonalField,
    erased_declared: bool,
}

fn invalid(reason: &str) -> ValidationError {
    ValidationError::InvalidSchema {
        reason: reason.to_owned(),
    }
}

/// Walks `properties` from `node` (at data pointer `pointer`), collecting personal fields.
fn collect(
    node: &Value,
    pointer: &str,
    tokens: &[String],
    inside_personal: bool,
    out: &mut Vec<Found>,
) -> Result<(), ValidationError> {
    let Some(properties) = node
        .as_object()
        .and_then(|o| o.get("properties"))
        .and_then(Value::as_object)
    else {
        return Ok(());
    };
    for (name, subschema) in properties {
        let here = format!("{pointer}/{}", escape_token(name));
        let here_tokens: Vec<String> = tokens.iter().cloned().chain([name.clone()]).collect();
        let Some(object) = subschema.as_object() else {
            continue;
        };
        let personal = match object.get(PERSONAL_KEYWORD) {
            Some(declaration) => {
                if inside_personal {
                    return Err(ValidationError::InvalidSchema {
                        reason: format!("the personal field {here:?} lies inside another personal field"),
                    });
                }
                if here.len() > SCHEMA_POINTER_LEN_MAX {
                    return Err(ValidationError::InvalidSchema {
                        reason: format!("the pointer of a personal field is longer than {SCHEMA_POINTER_LEN_MAX}"),
                    });
                }
                out.push(Found {
                    field: PersonalField {
                        subject: parse_declaration(&here, declaration)?,
                        erased: object.get(ERASED_KEYWORD).cloned().unwrap_or(Value::Null),
                        pointer: JsonPointer {
                            text: here.clone(),
                            tokens: here_tokens.clone(),
                        },
                    },
                    erased_declared: object.contains_key(ERASED_KEYWORD),
                });
                true
            }
            None => false,
        };
        collect(subschema, &here, &here_tokens, inside_personal || personal, out)?;
    }
    Ok(())
}

/// `{"subject": "/pointer" | "$stream"}`, nothing else.
fn parse_declaration(field: &str, declaration: &Value) -> Result<SubjectSource, ValidationError> {
    let malformed = |what: &str| ValidationError::InvalidSchema {
        reason: format!("x-lethe-personal of {field:?}: {what}"),
    };
    let object: &Map<String, Value> = declaration
        .as_object()
        .ok_or_else(|| malformed("must be an object {\"subject\": <JSON pointer or \"$stream\">}"))?;
    if object.keys().any(|k| k != "subject") {
        return Err(malformed("has members other than \"subject\""));
    }
    match object.get("subject").and_then(Value::as_str) {
        Some(STREAM_SUBJECT) => Ok(SubjectSource::Stream),
        Some(text) => JsonPointer::parse(text).map(SubjectSource::Pointer).ok_or_else(|| {
            malformed(
                "\"subject\" must be an RFC 6901 JSON pointer into the event's data (like \"/sender_id\") or \"$stream\"",
            )
        }),
        None => Err(malformed("\"subject\" is missing or not a string")),
    }
}

/// Occurrences of the two keywords as object members anywhere in the document.
fn count_keywords(node: &Value) -> (usize, usize) {
    match node {
        Value::Object(object) => object.iter().fold(
            (
                usize::from(object.contains_key(PERSONAL_KEYWORD)),
                usize::from(object.contains_key(ERASED_KEYWORD)),
            ),
            |(p, e), (key, value)| {
                // A declaration's own contents are not searched (a replacement value may be any JSON).
                if key == PERSONAL_KEYWORD || key == ERASED_KEYWORD {
                    return (p, e);
                }
                let (vp, ve) = count_keywords(value);
                (p + vp, e + ve)
            },
        ),
        Value::Array(items) => items.iter().fold((0, 0), |(p, e), item| {
            let (ip, ie) = count_keywords(item);
            (p + ip, e + ie)
        }),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(schema: Value) -> Result<Vec<(String, SubjectSource, Value)>, String> {
        personal_fields(&schema)
            .map(|fields| {
                fields
                    .into_iter()
                    .map(|f| (f.pointer.to_string(), f.subject, f.erased))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    /// `find` and `find_mut` (and a parsed [`JsonPointer`]'s `find`) answer exactly what `Value::pointer` does with the field's pointer,
    /// for escaped names and for data of another shape than the schema's (warn mode stores it).
    #[test]
    fn a_field_is_found_where_its_pointer_points() {
        let fields = personal_fields(&json!({
            "properties": {
                "name": {"x-lethe-personal": {"subject": "$stream"}},
                "0": {"x-lethe-personal": {"subject": "$stream"}},
                "01": {"x-lethe-personal": {"subject": "$stream"}},
                "a": {"properties": {"iban/no~": {"x-lethe-personal": {"subject": "$stream"}},
                                     "1": {"x-lethe-personal": {"subject": "$stream"}}}}
            }
        }))
        .unwrap();
        assert_eq!(fields.len(), 5);
        let shapes = [
            json!({"name": "Ann", "0": 1, "01": 2, "a": {"iban/no~": "DE1", "1": true}}),
            json!(["zero", "one"]),
            json!({"a": ["x", "y"]}),
            json!({"a": "flat", "name": null}),
            json!(7),
        ];
        for data in shapes {
            for field in &fields {
                assert_eq!(
                    field.find(&data),
                    data.pointer(field.pointer.as_str()),
                    "{} in {data}",
                    field.pointer
                );
                let parsed = JsonPointer::parse(field.pointer.as_str()).unwrap();
                assert_eq!(parsed.find(&data), data.pointer(field.pointer.as_str()));
                let mut copy = data.clone();
                let expected = copy.pointer_mut(field.pointer.as_str()).map(|v| v.clone());
                assert_eq!(field.find_mut(&mut copy).map(|v| v.clone()), expected);
            }
        }
    }

    #[test]
    fn finds_personal_fields_through_properties() {
        let fields = check(json!({
            "type": "object",
            "properties": {
                "sender_id": {"type": "string"},
                "sender_name": {"type": "string", "x-lethe-personal": {"subject": "/sender_id"}, "x-lethe-erased": "[erased]"},
                "receiver": {"type": "object", "properties": {
                    "id": {"type": "string"},
                    "iban/no~": {"x-lethe-personal": {"subject": "/receiver/id"}}
                }},
                "owner_name": {"x-lethe-personal": {"subject": "$stream"}}
            }
        }))
        .unwrap();
        assert_eq!(
            fields,
            vec![
                ("/owner_name".into(), SubjectSource::Stream, Value::Null),
                (
                    "/receiver/iban~1no~0".into(),
                    SubjectSource::Pointer(JsonPointer::parse("/receiver/id").unwrap()),
                    Value::Null
                ),
                (
                    "/sender_name".into(),
                    SubjectSource::Pointer(JsonPointer::parse("/sender_id").unwrap()),
                    json!("[erased]")
                ),
            ]
        );
        assert_eq!(check(json!({"type": "object"})).unwrap(), vec![]);
        assert_eq!(check(json!(true)).unwrap(), vec![]);
    }

    #[test]
    fn refuses_malformed_declarations() {
        let refused = [
            json!({"properties": {"a": {"x-lethe-personal": {"subject": "sender"}}}}),
            json!({"properties": {"a": {"x-lethe-personal": {"subject": ""}}}}),
            json!({"properties": {"a": {"x-lethe-personal": {"subject": "/a~2"}}}}),
            json!({"properties": {"a": {"x-lethe-personal": {"subject": 3}}}}),
            json!({"properties": {"a": {"x-lethe-personal": "/id"}}}),
            json!({"properties": {"a": {"x-lethe-personal": {"subject": "/id", "more": 1}}}}),
            json!({"properties": {"a": {"x-lethe-personal": {}}}}),
            // Not reached through `properties` alone.
            json!({"properties": {"a": {"items": {"x-lethe-personal": {"subject": "/id"}}}}}),
            json!({"$defs": {"a": {"x-lethe-personal": {"subject": "/id"}}}}),
            json!({"allOf": [{"properties": {"a": {"x-lethe-personal": {"subject": "/id"}}}}]}),
            // The whole event, a nested personal field, an erased value on its own.
            json!({"x-lethe-personal": {"subject": "$stream"}}),
            json!({"properties": {"a": {"x-lethe-personal": {"subject": "/id"}, "properties": {
                "b": {"x-lethe-personal": {"subject": "/id"}}}}}}),
            json!({"properties": {"a": {"x-lethe-erased": "x"}}}),
            // A subject pointer into a personal field.
            json!({"properties": {"a": {"x-lethe-personal": {"subject": "/a/id"}}}}),
            json!({"properties": {"a": {"x-lethe-personal": {"subject": "/b"}}, "b": {"x-lethe-personal": {"subject": "/c"}}}}),
        ];
        for schema in refused {
            let result = personal_fields(&schema);
            assert!(
                matches!(result, Err(ValidationError::InvalidSchema { .. })),
                "{schema} gave {result:?}"
            );
        }
    }

    #[test]
    fn removing_a_member_by_pointer() {
        let mut data = json!({"a": {"b/c": 1, "d": 2}, "e": 3});
        remove_at(&mut data, "/a/b~1c");
        remove_at(&mut data, "/e");
        remove_at(&mut data, "/missing/x");
        assert_eq!(data, json!({"a": {"d": 2}}));
    }

    #[test]
    fn json_pointers() {
        for good in ["/a", "/a/0", "/~0~1", "/", "/a b"] {
            assert!(is_json_pointer(good), "{good}");
        }
        for bad in ["", "a", "/~", "/~2", "/a\u{1}"] {
            assert!(!is_json_pointer(bad), "{bad}");
        }
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(!is_within("/ab", "/a"));
    }
}
