//! How log events read on a person's terminal: `fieldsync run` (or any command) without
//! `RUST_LOG` prints each event as one line, `13:06:21 warning: API request refused: since=999
//! is past … (code SINCE_AHEAD)`: the local time, the level as a word, the event's sentence and
//! what it carries, values as plain text. tracing's own format (`2026-…Z  WARN … code="X"`)
//! quotes and escapes text fields the way Rust's debug format does, which two newcomers read
//! among the agent's sentences as raw internals. With `RUST_LOG` set, a developer gets
//! tracing's own format (with module paths) as before (`main.rs`).

use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The format for people (see the module doc). Span fields are left out: the events people
/// see (warnings and errors) name what they are about in their own fields.
pub struct ForPeople;

/// An event's fields as text: its sentence(s) (`message`), what went wrong (`error`, said as
/// the sentence's detail: "session failed: cannot reach …", not "(error cannot reach …)",
/// which a newcomer read as key=value logging), and the others in order.
#[derive(Default)]
struct Fields {
    messages: Vec<String>,
    errors: Vec<String>,
    others: Vec<(&'static str, String)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.messages.push(value),
            "error" => self.errors.push(value),
            name => self.others.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string());
    }

    // `%value` fields and the sentence itself arrive here, printed by their `Display`.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, format!("{value:?}"));
    }
}

/// The level as a word a person reads.
fn word(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// One event as a line without the time: `warning: sentence: detail (key value, …)`. The
/// sentence a macro was given comes first among an event's `message` fields, and a field named
/// `message` besides it (the API's refusals carry one) or `error` is its detail.
fn line(level: &Level, fields: Fields) -> String {
    let mut messages = fields.messages.into_iter().chain(fields.errors);
    let headline = messages.next().unwrap_or_default();
    let mut out = format!("{}: {headline}", word(level));
    for m in messages {
        out += ": ";
        out += &m;
    }
    if !fields.others.is_empty() {
        let details: Vec<String> = fields
            .others
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out += &format!(" ({})", details.join(", "));
    }
    out
}

impl<S, N> FormatEvent<S, N> for ForPeople
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = chrono::Local::now().format("%H:%M:%S");
        writeln!(writer, "{time} {}", line(event.metadata().level(), fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What a person reads for the API's refusal and a sync failure: the sentence first, text
    /// without quotes or escapes, details in parentheses, the time as HH:MM:SS.
    #[test]
    fn events_read_as_sentences_with_plain_text_values() {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || WriteTo(sink.clone()))
            .event_format(ForPeople)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let detail = "since=999 is past the last change on this laptop (24)";
            tracing::warn!(code = "SINCE_AHEAD", message = %detail, "API request refused");
            let e = "cannot reach 127.0.0.1:7759: connection refused";
            tracing::warn!(error = %e, name = "laptop \"B\"", "session failed");
            tracing::error!("the database could not be opened");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let without_time = |l: &str| {
            let (time, rest) = l.split_once(' ').unwrap();
            assert!(
                time.len() == 8 && time.chars().filter(|c| *c == ':').count() == 2,
                "{l}"
            );
            rest.to_string()
        };
        assert_eq!(
            lines.iter().map(|l| without_time(l)).collect::<Vec<_>>(),
            [
                "warning: API request refused: since=999 is past the last change on this \
                 laptop (24) (code SINCE_AHEAD)",
                "warning: session failed: cannot reach 127.0.0.1:7759: connection refused \
                 (name laptop \"B\")",
                "error: the database could not be opened",
            ]
        );
    }

    struct WriteTo(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for WriteTo {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
