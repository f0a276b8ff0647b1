//! The tracing spans of Redis writes and batch reads (OpenTelemetry's database-client
//! conventions).

use crate::remote::WriteCondition;

/// The span of one conditional write: `operation` is `EVALSHA` for the fill script, `SET` for
/// a plain write sent without it (see `fenced_set`); `announced`: sent with its bus message.
pub(super) fn write_span(
    operation: &'static str,
    condition: &WriteCondition<'_>,
    announced: bool,
) -> tracing::Span {
    tracing::debug_span!(
        "layercache.l2.set",
        db.system = "redis",
        db.operation.name = operation,
        otel.kind = "client",
        mode = condition.mode.name(),
        fenced = condition.fence.is_some(),
        announced
    )
}

/// [`write_span`] of one run of the fill script.
pub(super) fn fill_span(condition: &WriteCondition<'_>, announced: bool) -> tracing::Span {
    write_span("EVALSHA", condition, announced)
}

/// [`write_span`] of a plain write sent without a script.
pub(super) fn set_span(condition: &WriteCondition<'_>, announced: bool) -> tracing::Span {
    write_span("SET", condition, announced)
}

/// The span of a batch read (`MGET`s; with `sliding`, a `PEXPIRE` per key with each).
pub(crate) fn get_many_span(keys: usize, sliding: bool) -> tracing::Span {
    tracing::debug_span!(
        "layercache.l2.get_many",
        db.system = "redis",
        db.operation.name = "MGET",
        otel.kind = "client",
        keys,
        sliding
    )
}

/// The span of a batch write: `operation` is `EVALSHA` (the batch script) or `SET` (a plain
/// batch sent without one).
pub(super) fn set_many_span(operation: &'static str, entries: usize) -> tracing::Span {
    tracing::debug_span!(
        "layercache.l2.set_many",
        db.system = "redis",
        db.operation.name = operation,
        otel.kind = "client",
        entries
    )
}
