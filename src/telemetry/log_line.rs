//! The layout of a log line, text or JSON: tracing-subscriber's own, except that a field the
//! event carries itself is not repeated from its span. The audit event names its caller (it must,
//! for a pipeline that keeps the `audit` target alone), and the call's span names the same
//! caller for every other line of the call: the audit line says it once.

use std::fmt;

use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::{DefaultFields, JsonFields, Writer},
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

/// Ends each span field as stored by [`SpanFields`] (a value's own control characters are
/// escaped by `Debug`, so this one cannot occur inside a field).
const FIELD_END: char = '\u{1f}';

/// Stores a span's fields for [`TextLine`] as `name=value` items it can tell apart, so that a
/// line can leave out the ones its event repeats.
#[derive(Debug, Default)]
pub struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = SpanFieldVisitor { writer: writer.by_ref(), result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }

    // Items end themselves: no separator between the fields of `new_span` and of `record`.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        self.format_fields(current.as_writer(), fields)
    }
}

struct SpanFieldVisitor<'a> {
    writer: Writer<'a>,
    result: fmt::Result,
}

impl Visit for SpanFieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = write!(self.writer, "{}={value:?}{FIELD_END}", field.name());
        }
    }
}

/// The human-readable line: `TIME LEVEL span{fields}: target: message fields`, colours only
/// when the writer has them (see [`super::colour_wanted`]).
#[derive(Debug, Default)]
pub struct TextLine;

impl<S> FormatEvent<S, SpanFields> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ansi = writer.has_ansi_escapes();
        let paint = |code: &'static str| if ansi { code } else { "" };
        let (dim, bold, italic, reset) = (paint("\x1b[2m"), paint("\x1b[1m"), paint("\x1b[3m"), paint("\x1b[0m"));
        let metadata = event.metadata();

        write!(writer, "{dim}")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "{reset} {}{:>5}{reset} ", paint(level_colour(metadata.level())), metadata.level().as_str())?;

        let repeated = |name: &str| event.fields().any(|field| field.name() == name);
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{bold}{}{reset}", span.name())?;
                let extensions = span.extensions();
                let fields = extensions.get::<FormattedFields<SpanFields>>();
                let mut kept = fields
                    .map(|fields| fields.fields.split_terminator(FIELD_END))
                    .into_iter()
                    .flatten()
                    .filter_map(|item| item.split_once('='))
                    .filter(|(name, _)| !repeated(name))
                    .peekable();
                if kept.peek().is_some() {
                    write!(writer, "{bold}{{{reset}")?;
                    for (index, (name, value)) in kept.enumerate() {
                        let space = if index == 0 { "" } else { " " };
                        write!(writer, "{space}{italic}{name}{reset}{dim}={reset}{value}")?;
                    }
                    write!(writer, "{bold}}}{reset}")?;
                }
                write!(writer, "{dim}:{reset}")?;
            }
            writer.write_char(' ')?;
        }
        write!(writer, "{dim}{}:{reset} ", metadata.target())?;
        DefaultFields::new().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn level_colour(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "\x1b[31m",
        tracing::Level::WARN => "\x1b[33m",
        tracing::Level::INFO => "\x1b[32m",
        tracing::Level::DEBUG => "\x1b[34m",
        tracing::Level::TRACE => "\x1b[35m",
    }
}

/// One JSON object per line: `timestamp`, `level`, `fields` (the event's), `target`, and `span`
/// (the innermost span's `name` and fields, less those the event carries), as
/// tracing-subscriber's JSON layout writes them (its `spans` list, a copy of the same fields,
/// is left out).
#[derive(Debug, Default)]
pub struct JsonLine;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = JsonFieldVisitor::default();
        event.record(&mut fields);

        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("fields".into(), Value::Object(fields.0.clone()));
        line.insert("target".into(), metadata.target().into());
        if let Some(span) = ctx.lookup_current() {
            let mut object = Map::new();
            let extensions = span.extensions();
            if let Some(Value::Object(stored)) = extensions
                .get::<FormattedFields<JsonFields>>()
                .and_then(|stored| serde_json::from_str::<Value>(&stored.fields).ok())
            {
                object.extend(stored.into_iter().filter(|(name, _)| !fields.0.contains_key(name)));
            }
            object.insert("name".into(), span.name().into());
            line.insert("span".into(), Value::Object(object));
        }
        let line = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// An event's fields as JSON values (numbers and booleans as such, everything else as text).
#[derive(Default)]
struct JsonFieldVisitor(Map<String, Value>);

impl Visit for JsonFieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}
