//! The schema registry: registering immutable versions of event types' schemas, and listing
//! them. What an append does with them is the core's (`core::schemas`, `core::append`).

use serde_json::Value;

use crate::core::Core;
use crate::core::schemas::check_schema;
use crate::error::{Error, ValidationError};
use crate::limits::{SCHEMA_BYTES_MAX, SCHEMA_TYPES_MAX, SCHEMA_VERSIONS_MAX};
use crate::model::validation::check_event_type;
use crate::model::{EventSchema, SchemaMode};
use crate::storage::SchemaRegistration;

/// Registers `schema` as the next version of `event_type`'s schema; the answer says whether a
/// version was created (false: the latest version already had this schema and mode).
pub(crate) async fn register(
    core: &Core,
    event_type: &str,
    schema: &Value,
    mode: SchemaMode,
    actor: &str,
) -> Result<(EventSchema, bool), Error> {
    check_event_type(event_type)?;
    if schema.to_string().len() > SCHEMA_BYTES_MAX {
        return Err(ValidationError::InvalidSchema {
            reason: format!("the schema is larger than {SCHEMA_BYTES_MAX} bytes"),
        }
        .into());
    }
    check_schema(schema)?;
    let registration = core.storage.register_schema(event_type, mode, schema, actor).await?;
    core.schemas.invalidate();
    match registration {
        SchemaRegistration::Registered(registered) => {
            tracing::info!(
                event_type,
                version = registered.version,
                mode = mode.as_str(),
                "schema registered"
            );
            Ok((registered, true))
        }
        SchemaRegistration::Unchanged(latest) => Ok((latest, false)),
        SchemaRegistration::TooManyVersions => Err(ValidationError::TooMany {
            what: "schema versions of one event type",
            max: SCHEMA_VERSIONS_MAX,
        }
        .into()),
        SchemaRegistration::TooManyTypes => Err(ValidationError::TooMany {
            what: "event types with a schema",
            max: SCHEMA_TYPES_MAX,
        }
        .into()),
    }
}

/// The latest version of every event type's schema, by type.
pub(crate) async fn latest(core: &Core) -> Result<Vec<EventSchema>, Error> {
    let mut latest: Vec<EventSchema> = Vec::new();
    for schema in core.storage.schemas().await? {
        match latest.last_mut() {
            Some(last) if last.event_type == schema.event_type => *last = schema,
            _ => latest.push(schema),
        }
    }
    Ok(latest)
}

/// Every version of one event type's schema, oldest first (`not_found` if it has none).
pub(crate) async fn versions(core: &Core, event_type: &str) -> Result<Vec<EventSchema>, Error> {
    let versions: Vec<EventSchema> = core
        .storage
        .schemas()
        .await?
        .into_iter()
        .filter(|s| s.event_type == event_type)
        .collect();
    if versions.is_empty() {
        return Err(Error::NotFound { what: "schema" });
    }
    Ok(versions)
}
