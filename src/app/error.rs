//! The one error type of the application layer, with what every door needs to report it: a
//! stable machine code, the HTTP status, the offending input field and the CLI exit code.

use crate::model::ValidationError;
use crate::store::StoreError;

/// Why an application operation failed. The message (Display) is one line that names the
/// problem and the next step; nothing was written when an operation returns an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The input is wrong (HTTP 400, exit code 2).
    #[error("{message}")]
    Invalid {
        /// Stable code, e.g. `INVALID_TABLE`.
        code: &'static str,
        /// What is wrong and what to do.
        message: String,
        /// The input field at fault (`table`, `id`, `fields.name`, `ops[3]`, a query parameter).
        field: Option<String>,
    },
    /// The thing asked for does not exist (HTTP 404, exit code 1).
    #[error("{message}")]
    NotFound {
        /// Stable code: `NOT_FOUND`, `RECORD_DELETED`, `CONFLICT_NOT_FOUND`, `PEER_NOT_FOUND`.
        code: &'static str,
        /// What was not found.
        message: String,
        /// The input that names it (`id`, `ops[2].id`), if one does.
        field: Option<String>,
    },
    /// The write would break a rule of the data: a unique value already used (HTTP 409,
    /// exit code 2).
    #[error("{message}")]
    Conflict {
        /// Stable code: `UNIQUE_CLASH`, or `MASS_DELETE` (a batch over the `[brake]` limit
        /// without confirmation).
        code: &'static str,
        /// What clashes with what.
        message: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// The record changed since the revision the caller had read (If-Match; HTTP 412, exit
    /// code 2).
    #[error("{0}")]
    Precondition(String),
    /// The operation needs something this agent does not have now: sync is off (HTTP 503,
    /// exit code 3).
    #[error("{0}")]
    Unavailable(String),
    /// A peer could not be reached or refused (HTTP 502, exit code 3).
    #[error("{0}")]
    Peer(String),
    /// The database failed (HTTP 500, exit code 3).
    #[error(transparent)]
    Store(StoreError),
}

impl AppError {
    /// A 400 with a code and the field at fault.
    pub fn invalid(code: &'static str, field: impl Into<String>, message: impl ToString) -> Self {
        AppError::Invalid {
            code,
            message: message.to_string(),
            field: Some(field.into()),
        }
    }

    /// The stable machine code (`SCREAMING_SNAKE_CASE`), documented in docs/API.md.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Invalid { code, .. }
            | AppError::NotFound { code, .. }
            | AppError::Conflict { code, .. } => code,
            AppError::Precondition(_) => "REVISION_MISMATCH",
            AppError::Unavailable(_) => "SYNC_OFF",
            AppError::Peer(_) => "PEER_FAILED",
            AppError::Store(_) => "STORE_ERROR",
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            AppError::Invalid { .. } => 400,
            AppError::NotFound { .. } => 404,
            AppError::Conflict { .. } => 409,
            AppError::Precondition(_) => 412,
            AppError::Unavailable(_) => 503,
            AppError::Peer(_) => 502,
            AppError::Store(_) => 500,
        }
    }

    /// The input field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            AppError::Invalid { field, .. }
            | AppError::Conflict { field, .. }
            | AppError::NotFound { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The CLI exit code: 1 not found, 2 invalid input, 3 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::NotFound { .. } => 1,
            AppError::Invalid { .. } | AppError::Conflict { .. } | AppError::Precondition(_) => 2,
            AppError::Unavailable(_) | AppError::Peer(_) | AppError::Store(_) => 3,
        }
    }

    /// The message in the HTTP API's words: messages are written for the CLI, so its flags
    /// are said as the request body's fields (`--keep-value JSON` → `"keep_value": JSON`).
    pub fn api_message(&self) -> String {
        api_words(&self.to_string())
    }

    /// Prefixes the field at fault (`ops[2].` + `table`), for errors inside a batch.
    fn in_field(mut self, prefix: &str) -> Self {
        if let AppError::Invalid { field, .. }
        | AppError::Conflict { field, .. }
        | AppError::NotFound { field, .. } = &mut self
        {
            *field = Some(match field.take() {
                Some(f) => format!("{prefix}.{f}"),
                None => prefix.to_string(),
            });
        }
        self
    }
}

/// CLI words and the request-body words that replace them in the HTTP API's messages, longest
/// first (a whole phrase where the CLI message already names both).
const API_WORDS: &[(&str, &str)] = &[
    (
        "run it again with --yes (API: \"confirm_mass_delete\": true)",
        "send it again with \"confirm_mass_delete\": true",
    ),
    (" with --record ID", " with \"record\": ID"),
    ("add --record ID", "add \"record\": ID"),
    ("--keep-value JSON", "\"keep_value\": JSON"),
    ("--keep-from NAME_OR_ID", "\"keep_from\": NAME_OR_ID"),
    ("--keep-value", "\"keep_value\""),
    ("--keep-from", "\"keep_from\""),
    ("--record", "\"record\""),
    ("--keep", "\"keep\""),
    (
        "use `fieldsync patch TABLE KEY`",
        "use PATCH /v1/tables/TABLE/records/KEY",
    ),
    // A query parameter, not a body field: said as the API reads it.
    ("use --include-deleted", "add ?include_deleted=true"),
    // A newcomer's GET by a name read the CLI's import flag in the API's 404.
    (
        "the value of the `import --key` field",
        "the value of the field a list was imported by (its import key)",
    ),
    (
        "`fieldsync conflicts` shows it",
        "GET /v1/conflicts shows it",
    ),
    (
        "put it again with all its fields (`get --include-deleted` shows its last ones)",
        "PUT it again with all its fields (GET it with ?include_deleted=true for its last ones)",
    ),
];

/// `text` with the CLI's flags replaced by the HTTP API's field names ([`API_WORDS`]).
pub(crate) fn api_words(text: &str) -> String {
    let mut out = text.to_string();
    for (cli, api) in API_WORDS {
        out = out.replace(cli, api);
    }
    // CLI commands whose table (and record) vary, so they are not in the list: each said as
    // the request that does the same.
    out = replace_between(&out, "(`fieldsync list ", "` shows them)", |table| {
        Some(format!("(GET /v1/tables/{table}/records lists them)"))
    });
    out = replace_between(&out, "`fieldsync delete ", " ID`", |table| {
        Some(format!("DELETE /v1/tables/{table}/records/ID"))
    });
    out = replace_between(&out, "(`fieldsync get ", "` shows it)", |inner| {
        let (table, id) = inner.split_once(' ')?;
        Some(format!("(GET /v1/tables/{table}/records/{id} shows it)"))
    });
    out
}

/// `text` with its first `open … close` replaced by what `say` makes of the text between them
/// (unchanged when either is missing or `say` declines).
fn replace_between(
    text: &str,
    open: &str,
    close: &str,
    say: impl Fn(&str) -> Option<String>,
) -> String {
    let Some(start) = text.find(open) else {
        return text.to_string();
    };
    let rest = &text[start + open.len()..];
    let Some(end) = rest.find(close) else {
        return text.to_string();
    };
    match say(&rest[..end]) {
        Some(said) => format!("{}{said}{}", &text[..start], &rest[end + close.len()..]),
        None => text.to_string(),
    }
}

impl From<ValidationError> for AppError {
    fn from(e: ValidationError) -> Self {
        let (code, field) = match &e {
            ValidationError::Table(_) => ("INVALID_TABLE", "table"),
            ValidationError::Id(_) => ("INVALID_ID", "id"),
            ValidationError::NotAnObject(_) => ("INVALID_FIELDS", "fields"),
            ValidationError::TooLarge(_) => ("RECORD_TOO_LARGE", "fields"),
            ValidationError::FieldName(_) => ("INVALID_FIELD_NAME", "fields"),
            ValidationError::Reserved(_) => ("RESERVED_TABLE", "table"),
        };
        AppError::invalid(code, field, e)
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        // Messages stay the store's own text: the CLI prints them unchanged.
        let message = e.to_string();
        match e {
            // The record is named by the request's id (in a batch: `ops[2].id`).
            StoreError::NotFound { .. } => AppError::NotFound {
                code: "NOT_FOUND",
                message,
                field: Some("id".into()),
            },
            StoreError::Deleted { .. } => AppError::NotFound {
                code: "RECORD_DELETED",
                message,
                field: Some("id".into()),
            },
            StoreError::ConflictNotFound(_) => AppError::NotFound {
                code: "CONFLICT_NOT_FOUND",
                // A record's short id can be all digits, and then reads as a number.
                message: format!(
                    "{message}: conflicts are numbered on each laptop (`fieldsync conflicts --all` \
                     lists them); a record's id is not a conflict number"
                ),
                field: None,
            },
            StoreError::HoldNotFound(_) => AppError::NotFound {
                code: "HOLD_NOT_FOUND",
                message,
                field: None,
            },
            StoreError::UniqueClash { field, .. } => AppError::Conflict {
                code: "UNIQUE_CLASH",
                message,
                field: Some(format!("fields.{field}")),
            },
            StoreError::BadResolution(_) => AppError::invalid("BAD_RESOLUTION", "keep", message),
            StoreError::LocalOnly(_) => AppError::invalid("LOCAL_ONLY_TABLE", "table", message),
            StoreError::BadHistory(_) => AppError::invalid("BAD_HISTORY", "history", message),
            StoreError::Invalid(v) => {
                let mut a = AppError::from(v);
                if let AppError::Invalid { message: m, .. } = &mut a {
                    *m = message;
                }
                a
            }
            StoreError::Op { index, source } => {
                // Counted from 1 for a person, and named as the field an app sent (from 0).
                let message = format!("operation {} (ops[{index}]): {source}", index + 1);
                let inner = AppError::from(*source).in_field(&format!("ops[{index}]"));
                match inner {
                    AppError::Invalid { code, field, .. } => AppError::Invalid {
                        code,
                        message,
                        field,
                    },
                    AppError::NotFound { code, field, .. } => AppError::NotFound {
                        code,
                        message,
                        field,
                    },
                    AppError::Conflict { code, field, .. } => AppError::Conflict {
                        code,
                        message,
                        field,
                    },
                    other => other,
                }
            }
            other => AppError::Store(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_messages_name_request_fields_not_cli_flags() {
        let e = AppError::invalid(
            "INVALID_KEEP",
            "keep",
            "`x` is not a side: --keep takes mine, theirs, deleted or alive; to keep a value use \
             --keep-value JSON (quote strings: '\"text\"')",
        );
        assert_eq!(
            e.api_message(),
            "`x` is not a side: \"keep\" takes mine, theirs, deleted or alive; to keep a value \
             use \"keep_value\": JSON (quote strings: '\"text\"')"
        );
        let brake = AppError::Conflict {
            code: "MASS_DELETE",
            message: "nothing was written; run it again with --yes (API: \"confirm_mass_delete\": \
                      true) if that is what you want"
                .into(),
            field: None,
        };
        let gone = AppError::NotFound {
            field: None,
            code: "RECORD_DELETED",
            message: "record person/x is deleted (use --include-deleted to see it)".into(),
        };
        assert_eq!(
            gone.api_message(),
            "record person/x is deleted (add ?include_deleted=true to see it)"
        );
        let absent = AppError::NotFound {
            field: None,
            code: "NOT_FOUND",
            message: "person has no record with the id or import key \"C-9\": an id is a UUID \
                      (`fieldsync list person` shows them); an import key is the value of the \
                      `import --key` field, e.g. A-1"
                .into(),
        };
        assert_eq!(
            absent.api_message(),
            "person has no record with the id or import key \"C-9\": an id is a UUID (GET \
             /v1/tables/person/records lists them); an import key is the value of the field a \
             list was imported by (its import key), e.g. A-1"
        );
        let clash = AppError::invalid(
            "AMBIGUOUS_ID",
            "id",
            "2 records of person have the key \"C-8\" (an open name clash: `fieldsync \
             conflicts` shows it): give the id of the one you mean",
        );
        let rename = AppError::invalid(
            "BAD_RESOLUTION",
            "keep",
            "rename one record with --keep-value JSON (its new value, e.g. '\"C-8b\"'; add \
             --record ID to say which), or delete one of the two with `fieldsync delete person \
             ID`",
        );
        assert_eq!(
            rename.api_message(),
            "rename one record with \"keep_value\": JSON (its new value, e.g. '\"C-8b\"'; add \
             \"record\": ID to say which), or delete one of the two with DELETE \
             /v1/tables/person/records/ID"
        );
        assert!(
            clash
                .api_message()
                .contains("(an open name clash: GET /v1/conflicts shows it)"),
            "{}",
            clash.api_message()
        );
        assert_eq!(
            brake.api_message(),
            "nothing was written; send it again with \"confirm_mass_delete\": true if that is \
             what you want"
        );
    }
}
