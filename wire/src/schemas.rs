//! JSON Schemas of values the wire types ([`crate`]) carry as plain strings, numbers and
//! lists but the library constrains: names, event types, free text, list lengths and page sizes.
//! Each is built from the constant its check uses ([`crate::limits`], the names below), so the
//! OpenAPI document cannot drift from what the server accepts; `utoipa`'s attributes take
//! literals only, so these are types the wire fields name with `value_type`.
//!
//! The types hold no data: a type named like its component (`StreamName`) becomes
//! `#/components/schemas/StreamName`; the others are inlined (`#[schema(inline)]`) where used.

use std::borrow::Cow;

use serde_json::json;
use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::limits::{
    APPEND_EVENTS_MAX, APPEND_STREAMS_MAX, AUDIT_PAGE_MAX, ERASURES_LIST_MAX, EVENT_TYPE_LEN_MAX, FILTER_TYPES_MAX,
    NAME_LEN_MAX, READ_PAGE_EVENTS_MAX, REASON_LEN_MAX, RETENTION_KEEP_FOR_LEN_MAX, RETENTION_KEEP_FOR_YEARS_MAX,
    SCHEMA_BYTES_MAX, SCHEMA_PERSONAL_FIELDS_MAX, TOKEN_NAME_LEN_MAX, WEBHOOK_SECRET_LEN_MAX, WEBHOOK_SECRET_LEN_MIN,
    WEBHOOK_URL_LEN_MAX,
};
/// The roles of tokens, as the server names them (`lethe::model::Role::as_str`; a test of the
/// server holds the two equal).
pub const ROLES: [&str; 3] = ["reader", "writer", "admin"];
/// The statuses of erasure requests, in the order they are reached (`lethe::model::ErasureStatus`).
pub const ERASURE_STATUSES: [&str; 5] = [
    "pending",
    "keys_destroyed",
    "awaiting_acknowledgements",
    "completed",
    "refused",
];
/// The statuses of streams (`lethe::model::StreamStatus`).
pub const STREAM_STATUSES: [&str; 3] = ["active", "erased", "deleted"];
/// What a retention policy's period counts from (`lethe::model::RetentionAnchor`).
pub const RETENTION_ANCHORS: [&str; 2] = ["last_event", "first_event"];

/// Characters `char::is_control` refuses (Unicode category Cc), as a regex class body.
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// Control characters free text may not hold (all but tab, line feed and carriage return).
const TEXT_FORBIDDEN: &str = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f";
/// Characters `str::trim` removes (Unicode `White_Space`), as a regex class body.
const TRIMMED: &str = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// Declares a schema-only type: `$name`'s schema is `$schema`, and `$deps` are the named schemas
/// it refers to (so that they land in the document's components).
macro_rules! schema_type {
    ($(#[$doc:meta])* $name:ident = $schema:expr $(; refers to $($dep:ty),+)?) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema.into()
            }
        }

        impl ToSchema for $name {
            fn schemas(_schemas: &mut Vec<(String, RefOr<Schema>)>) {
                $($(
                    _schemas.push((<$dep as ToSchema>::name().into_owned(), <$dep as PartialSchema>::schema()));
                    <$dep as ToSchema>::schemas(_schemas);
                )+)?
            }
        }
    };
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn integer(minimum: usize, maximum: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(minimum))
        .maximum(Some(maximum))
}

/// Strings of 1 to [`NAME_LEN_MAX`] characters of the name charset (`model::validation`).
fn name_pattern() -> String {
    format!("^[A-Za-z0-9_.:@-]{{1,{NAME_LEN_MAX}}}$")
}

/// No control characters.
fn no_control() -> String {
    format!("^[^{CONTROL}]*$")
}

/// Free text: no control characters but tabs and line breaks.
fn text_pattern() -> String {
    format!("^[^{TEXT_FORBIDDEN}]*$")
}

schema_type!(
    /// A stream name.
    StreamName = string()
        .description(Some(format!(
            "1 to {NAME_LEN_MAX} characters of `A-Z a-z 0-9 _ . : @ -` (a leading `$` is reserved for system \
             streams). Never personal data: names are stored in clear."
        )))
        .pattern(Some(name_pattern()))
);

schema_type!(
    /// A stream name or a system stream's (`$erasures`).
    ReadableStreamName = string().pattern(Some(format!("^\\$?[A-Za-z0-9_.:@-]{{1,{NAME_LEN_MAX}}}$")))
);

schema_type!(
    /// A data subject's id.
    SubjectId = string()
        .description(Some(format!(
            "A data subject's opaque, pseudonymous id: 1 to {NAME_LEN_MAX} characters of `A-Z a-z 0-9 _ . : @ -`."
        )))
        .pattern(Some(name_pattern()))
);

schema_type!(
    /// A consumer's name (the stream-name charset).
    ConsumerName = string().pattern(Some(name_pattern()))
);

schema_type!(
    /// A retention policy's name (the stream-name charset).
    RetentionPolicyName = string().pattern(Some(name_pattern()))
);

schema_type!(
    /// The stream prefix a retention policy covers.
    RetentionPrefix = string()
        .description(Some(format!(
            "1 to {NAME_LEN_MAX} characters of `A-Z a-z 0-9 _ . : @ -` (never a system stream's `$`)."
        )))
        .pattern(Some(name_pattern()))
);

schema_type!(
    /// How long a retention policy keeps data.
    RetentionPeriod = string()
        .description(Some(format!(
            "An ISO 8601 duration (`P30D`, `P1Y6M`, `PT12H`, `P2W`): longer than zero, at most \
             {RETENTION_KEEP_FOR_YEARS_MAX} years."
        )))
        .examples(["P30D"])
        .max_length(Some(RETENTION_KEEP_FOR_LEN_MAX))
        .pattern(Some("^P[0-9YMWDTHS]*$".to_owned()))
);

schema_type!(
    /// What a retention policy's period counts from.
    RetentionAfter = string()
        .description(Some(
            "`last_event` (default): each stream's last event, so a stream appended to stays young; \
             `first_event`: each stream's first event.",
        ))
        .enum_values(Some(RETENTION_ANCHORS))
);

schema_type!(
    /// An event type.
    EventType = string()
        .min_length(Some(1))
        .max_length(Some(EVENT_TYPE_LEN_MAX))
        .pattern(Some(no_control()))
);

schema_type!(
    /// A JSON Schema document (draft 2020-12): an event type's schema.
    JsonSchema = ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Boolean]))
        .description(Some(format!(
            "A JSON Schema (draft 2020-12) of the events' `data`: an object or a boolean, at most {} KiB \
             serialized; `$schema`, when given, must be `https://json-schema.org/draft/2020-12/schema`, and \
             nothing is fetched from elsewhere. On a property reached from the root through `properties` only, \
             `\"x-lethe-personal\": {{\"subject\": P}}` marks its value as personal data of the subject whose id \
             is at `P`, a JSON pointer into the same event's `data` (e.g. `/sender_id`), or `\"$stream\"` for the \
             stream's bound subject; `\"x-lethe-erased\": <value>` beside it is what the field reads as once that \
             subject is forgotten (default `null`). At most {SCHEMA_PERSONAL_FIELDS_MAX} personal fields; a \
             personal field is never inside another, and a subject pointer never points into one.",
            SCHEMA_BYTES_MAX / 1024
        )))
);

schema_type!(
    /// A token's role.
    Role = string().enum_values(Some(ROLES))
);

schema_type!(
    /// An erasure request's status.
    ErasureStatus = string().enum_values(Some(ERASURE_STATUSES))
);

schema_type!(
    /// A stream's status.
    StreamStatus = string().enum_values(Some(STREAM_STATUSES))
);

schema_type!(
    /// `reason`, `requested_by`, `reference` of erasure requests.
    Text = string().max_length(Some(REASON_LEN_MAX)).pattern(Some(text_pattern()))
);

schema_type!(
    /// A legal hold's reason: free text that is not only whitespace.
    HoldReason = string()
        .description(Some(
            "Why (not only whitespace; no control characters but tabs and line breaks; no personal data).",
        ))
        .max_length(Some(REASON_LEN_MAX))
        .pattern(Some(format!(
            "^[^{TEXT_FORBIDDEN}]*[^{TRIMMED}{TEXT_FORBIDDEN}][^{TEXT_FORBIDDEN}]*$"
        )))
);

schema_type!(
    /// A token's name.
    TokenName = string()
        .min_length(Some(1))
        .max_length(Some(TOKEN_NAME_LEN_MAX))
        .pattern(Some(no_control()))
);

schema_type!(
    /// A stream-name prefix filter.
    StreamPrefix = string()
        .description(Some(format!("At most {NAME_LEN_MAX} characters, no control characters.")))
        .max_length(Some(NAME_LEN_MAX))
        .pattern(Some(no_control()))
);

schema_type!(
    /// A consumer's event types.
    ConsumerTypes = ArrayBuilder::new()
        .max_items(Some(FILTER_TYPES_MAX))
        .items(Ref::from_schema_name(EventType::name()))
        ; refers to EventType
);

schema_type!(
    /// `types` of a query: comma-separated items, each trimmed, then 0 (ignored) to
    /// [`EVENT_TYPE_LEN_MAX`] characters without control characters.
    TypesFilter = {
        let item = format!("[{TRIMMED}]*[^,{CONTROL}]{{0,{EVENT_TYPE_LEN_MAX}}}[{TRIMMED}]*");
        string()
            .description(Some(format!(
                "At most {FILTER_TYPES_MAX} types of 1 to {EVENT_TYPE_LEN_MAX} characters without control characters."
            )))
            .pattern(Some(format!("^{item}(,{item})*$")))
    }
);

schema_type!(
    /// A webhook's URL.
    WebhookUrl = string()
        .description(Some(format!(
            "`http://` or `https://`, at most {WEBHOOK_URL_LEN_MAX} bytes, no whitespace."
        )))
        .max_length(Some(WEBHOOK_URL_LEN_MAX))
        .pattern(Some(format!("^https?://[^{TRIMMED}{CONTROL}]*$")))
);

schema_type!(
    /// A webhook's signing secret.
    WebhookSecret = string()
        .description(Some(
            "Signs each delivery (`X-Lethe-Signature: sha256=<hex HMAC-SHA256(secret, body)>`).",
        ))
        .min_length(Some(WEBHOOK_SECRET_LEN_MIN))
        .max_length(Some(WEBHOOK_SECRET_LEN_MAX))
        .write_only(true)
        .pattern(Some(no_control()))
);

schema_type!(
    /// The events of one append.
    AppendEvents = ArrayBuilder::new()
        .description(Some("Event ids must be distinct."))
        .min_items(Some(1))
        .max_items(Some(APPEND_EVENTS_MAX))
        .items(Ref::from_schema_name(crate::EventIn::name()))
        ; refers to crate::EventIn
);

schema_type!(
    /// The streams of a multi-stream append.
    Appends = ArrayBuilder::new()
        .description(Some(format!(
            "Distinct streams, at most {APPEND_EVENTS_MAX} events over all of them, event ids distinct."
        )))
        .min_items(Some(1))
        .max_items(Some(APPEND_STREAMS_MAX))
        .items(Ref::from_schema_name(crate::StreamAppendIn::name()))
        ; refers to crate::StreamAppendIn
);

schema_type!(
    /// `limit` of stream reads, the log and consumer reads.
    ReadLimit = integer(1, READ_PAGE_EVENTS_MAX).default(Some(json!(crate::limits::READ_LIMIT_DEFAULT)))
);

schema_type!(
    /// `limit` of erasure listings.
    ErasuresLimit = integer(1, ERASURES_LIST_MAX).default(Some(json!(crate::limits::ERASURES_LIMIT_DEFAULT)))
);

schema_type!(
    /// `limit` of audit pages.
    AuditLimit = integer(1, AUDIT_PAGE_MAX).default(Some(json!(crate::limits::AUDIT_LIMIT_DEFAULT)))
);

schema_type!(
    /// A consumer read's `wait_ms`.
    WaitMs = integer(0, usize::MAX)
        .description(Some(format!(
            "Longer waits are cut to {} ms.",
            crate::limits::LONG_POLL_MAX.as_millis()
        )))
        .default(Some(json!(0)))
);

schema_type!(
    /// `format` of the erasure report.
    ReportFormat = string().enum_values(Some(["json", "csv"]))
);

schema_type!(
    /// A stream's last version as an entity tag.
    ETag = string().pattern(Some("^\"[0-9]+\"$"))
);

schema_type!(
    /// One Server-Sent Event of `GET /subscribe`, as OpenAPI 3.2's `itemSchema` describes it: a
    /// stored event (`id: <position>`, `data: <Event as JSON>`), or after a failure an `error`
    /// event whose data is the error code (the stream then ends).
    ServerSentEvent = AnyOfBuilder::new()
        .description(Some("One event of `GET /subscribe`."))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("event", string().enum_values(Some(["message"])))
                .property(
                    "id",
                    string()
                        .pattern(Some("^[1-9][0-9]*$"))
                        .description(Some("The event's position.")),
                )
                .property(
                    "data",
                    string()
                        .content_media_type("application/json")
                        .content_schema(Some(Ref::from_schema_name(crate::EventOut::name()))),
                )
                .required("id")
                .required("data"),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("event", string().enum_values(Some(["error"])))
                .property(
                    "data",
                    string().description(Some("The error code (e.g. `storage_unavailable`).")),
                )
                .required("event")
                .required("data"),
        )
        ; refers to crate::EventOut
);

impl ToSchema for crate::ExpectedVersionWire {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ExpectedVersion")
    }
}

/// Its `Deserialize` is written by hand (precise errors), so its schema is too.
impl PartialSchema for crate::ExpectedVersionWire {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .description(Some(
                "`any` (default), `no_stream`, `exists`, or the stream's last version.",
            ))
            .item(string().enum_values(Some(["any", "no_stream", "exists"])))
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::from(Type::Integer))
                    .minimum(Some(0))
                    .maximum(Some(u64::MAX)),
            )
            .into()
    }
}
