//! The schema registry as the append and read paths use it: every registered version, compiled
//! once and held in memory (versions are immutable, and their number is bounded by
//! `SCHEMA_TYPES_MAX` × `SCHEMA_VERSIONS_MAX`).
//!
//! Appends validate against the latest version of their type; reads find the personal fields
//! of the exact version an event was written under. The registry is read again when a schema
//! is registered (by this process, or — announced on PostgreSQL — by another), and when a read
//! meets a version it does not hold yet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::error::{Error, ValidationError};
use crate::model::schema::personal_fields;
use crate::model::{EventSchema, PersonalField};
use crate::storage::Storage;

/// The `$schema` a registered schema may name (or leave out).
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
/// Error messages quote at most this much of the validator's own explanation.
const REASON_CHARS_MAX: usize = 300;

/// One schema version, ready to validate events and to find their personal fields.
pub(crate) struct CompiledSchema {
    pub(crate) schema: EventSchema,
    pub(crate) personal: Vec<PersonalField>,
    validator: jsonschema::Validator,
}

impl CompiledSchema {
    /// Checks an event's data against this version: the first failure, by the pointer of the
    /// failing value and the keyword that failed (never the value itself).
    pub(crate) fn validate(&self, data: &Value) -> Result<(), ValidationError> {
        // The common case first: `is_valid` stops early and builds no error.
        if self.validator.is_valid(data) {
            return Ok(());
        }
        match self.validator.iter_errors(data).next() {
            None => Ok(()),
            Some(error) => Err(ValidationError::SchemaViolation {
                version: self.schema.version,
                pointer: error.instance_path().to_string(),
                keyword: error.kind().keyword().to_owned(),
            }),
        }
    }
}

/// Checks a schema document before it is registered: a valid JSON Schema 2020-12 that compiles
/// without fetching anything, with well-formed personal-field declarations.
pub(crate) fn check_schema(schema: &Value) -> Result<Vec<PersonalField>, ValidationError> {
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(invalid("a schema is a JSON object (or a boolean)".to_owned()));
    }
    if let Some(declared) = schema.get("$schema")
        && declared.as_str() != Some(DRAFT_2020_12)
    {
        return Err(invalid(format!("\"$schema\" must be {DRAFT_2020_12:?} when given")));
    }
    jsonschema::draft202012::meta::validate(schema)
        .map_err(|e| invalid(format!("not a valid JSON Schema 2020-12: {}", quote(&e.to_string()))))?;
    jsonschema::draft202012::new(schema)
        .map_err(|e| invalid(format!("the schema does not compile: {}", quote(&e.to_string()))))?;
    personal_fields(schema)
}

fn compile(schema: EventSchema) -> Result<CompiledSchema, Error> {
    let corrupt = |what: String| Error::Corrupt {
        detail: format!(
            "stored schema {:?} version {}: {what}",
            schema.event_type, schema.version
        ),
    };
    let validator = jsonschema::draft202012::new(&schema.schema).map_err(|e| corrupt(quote(&e.to_string())))?;
    let personal = personal_fields(&schema.schema).map_err(|e| corrupt(e.to_string()))?;
    Ok(CompiledSchema {
        schema,
        personal,
        validator,
    })
}

fn invalid(reason: String) -> ValidationError {
    ValidationError::InvalidSchema { reason }
}

fn quote(text: &str) -> String {
    text.chars().take(REASON_CHARS_MAX).collect()
}

/// Every version of every schema, compiled.
#[derive(Default)]
pub(crate) struct Registry {
    latest: HashMap<String, Arc<CompiledSchema>>,
    versions: HashMap<(String, u32), Arc<CompiledSchema>>,
}

impl Registry {
    /// The latest version of a type's schema (the one appends are validated against).
    pub(crate) fn latest(&self, event_type: &str) -> Option<&Arc<CompiledSchema>> {
        self.latest.get(event_type)
    }

    fn version(&self, event_type: &str, version: u32) -> Option<&Arc<CompiledSchema>> {
        self.versions.get(&(event_type.to_owned(), version))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

/// The registry, kept current.
pub(crate) struct Schemas {
    storage: Arc<dyn Storage>,
    registry: RwLock<Arc<Registry>>,
    /// Set when the stored registry may have changed: the next use reads it again.
    stale: AtomicBool,
    /// Events stored in `warn` mode although they did not match their schema.
    violations: AtomicU64,
}

impl Schemas {
    pub(crate) fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            registry: RwLock::new(Arc::new(Registry::default())),
            stale: AtomicBool::new(true),
            violations: AtomicU64::new(0),
        }
    }

    /// The registry as it stands (read again first if it may have changed).
    pub(crate) async fn current(&self) -> Result<Arc<Registry>, Error> {
        if self.stale.load(Ordering::Acquire) {
            self.reload().await?;
        }
        Ok(self.snapshot())
    }

    /// The version an event was written under, reading the registry again once if another
    /// process registered it since.
    pub(crate) async fn version(&self, event_type: &str, version: u32) -> Result<Arc<CompiledSchema>, Error> {
        if let Some(found) = self.current().await?.version(event_type, version) {
            return Ok(found.clone());
        }
        self.reload().await?;
        self.snapshot()
            .version(event_type, version)
            .cloned()
            .ok_or_else(|| Error::Corrupt {
                detail: format!("event written under schema {event_type:?} version {version}, which is not registered"),
            })
    }

    /// Marks the registry as possibly changed (a registration here or elsewhere).
    pub(crate) fn invalidate(&self) {
        self.stale.store(true, Ordering::Release);
    }

    pub(crate) fn count_violation(&self) {
        self.violations.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn violations(&self) -> u64 {
        self.violations.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Arc<Registry> {
        // A panic cannot leave the registry half-replaced (one assignment), so a poisoned lock
        // is still good.
        self.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn reload(&self) -> Result<(), Error> {
        // Cleared first: a registration announced while this reads is read by the next use.
        self.stale.store(false, Ordering::Release);
        let loaded = match self.storage.schemas().await {
            Ok(loaded) => loaded,
            Err(e) => {
                self.stale.store(true, Ordering::Release);
                return Err(e.into());
            }
        };
        let mut registry = Registry::default();
        for schema in loaded {
            let key = (schema.event_type.clone(), schema.version);
            let compiled = Arc::new(compile(schema)?);
            // Rows come by type and version: the last one of a type is its latest.
            registry.latest.insert(key.0.clone(), compiled.clone());
            registry.versions.insert(key, compiled);
        }
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schemas_are_checked_before_registration() {
        assert!(check_schema(&json!({"type": "object", "properties": {"a": {"type": "string"}}})).is_ok());
        assert!(check_schema(&json!(true)).is_ok());
        for bad in [
            json!(3),
            json!({"type": "no-such-type"}),
            json!({"minimum": "five"}),
            json!({"$schema": "http://json-schema.org/draft-07/schema#"}),
            json!({"$ref": "https://example.com/elsewhere.json"}),
            json!({"properties": {"a": {"x-lethe-personal": {"subject": "nope"}}}}),
        ] {
            let result = check_schema(&bad);
            assert!(
                matches!(result, Err(ValidationError::InvalidSchema { .. })),
                "{bad} gave {result:?}"
            );
        }
    }

    #[test]
    fn violations_name_pointer_and_keyword_never_the_value() {
        let schema = EventSchema {
            event_type: "T".into(),
            version: 3,
            mode: crate::model::SchemaMode::Enforce,
            schema: json!({"type": "object", "properties": {"email": {"type": "string", "maxLength": 5}},
                           "required": ["email"]}),
            registered_at: chrono::DateTime::UNIX_EPOCH,
        };
        let compiled = compile(schema).unwrap();
        assert!(compiled.validate(&json!({"email": "a@b"})).is_ok());
        let error = compiled
            .validate(&json!({"email": "secret-marker@example.com"}))
            .unwrap_err();
        assert_eq!(
            error,
            ValidationError::SchemaViolation {
                version: 3,
                pointer: "/email".into(),
                keyword: "maxLength".into()
            }
        );
        assert!(!error.to_string().contains("secret-marker"), "{error}");
        let missing = compiled.validate(&json!({})).unwrap_err();
        assert!(matches!(missing, ValidationError::SchemaViolation { ref keyword, .. } if keyword == "required"));
    }
}
