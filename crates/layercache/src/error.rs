//! The crate's error type.

use std::{borrow::Cow, fmt, sync::Arc};

/// A boxed error from user code (a loader) or a lower layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in a form a caller can match on.
///
/// New kinds may be added in minor releases.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An option given to a builder is invalid; the message names the option.
    Config,
    /// Redis answered with an error, or the connection failed during the call.
    Redis,
    /// Redis was not called at all: the circuit breaker is open, the connection is known to be
    /// down (the client is reconnecting), or the region's generation is not known yet (Redis
    /// was unreachable when it was to be read). Such a failure costs no time; see
    /// [`Error::is_skipped`].
    Unavailable,
    /// A Redis call did not finish within its timeout.
    Timeout,
    /// A value could not be serialized or deserialized by the codec.
    Codec,
    /// A value is larger than `max_value_bytes`.
    ValueTooLarge,
    /// A key is larger than `max_key_bytes`.
    KeyTooLarge,
    /// The user's loader returned an error, panicked or passed its hard timeout; for the
    /// loader's own error see [`Error::loader_error`].
    Loader,
    /// The cache (or the runtime that drives it) has shut down.
    Closed,
    /// layercache was called outside a tokio runtime.
    NoRuntime,
    /// A bug in layercache (a task of its own panicked). Please report it.
    Internal,
    /// An acknowledged write ([`ack_writes`](crate::LayerCacheBuilder::ack_writes)) was not
    /// acknowledged by every live instance within its timeout;
    /// [`Error::unacknowledged`] names them. The write itself is in Redis (or journaled for
    /// repair).
    Unacknowledged,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Config => "invalid configuration",
            Self::Redis => "redis error",
            Self::Unavailable => "redis unavailable",
            Self::Timeout => "redis timeout",
            Self::Codec => "codec error",
            Self::ValueTooLarge => "value too large",
            Self::KeyTooLarge => "key too large",
            Self::Loader => "loader error",
            Self::Closed => "cache closed",
            Self::NoRuntime => "no tokio runtime",
            Self::Internal => "internal error",
            Self::Unacknowledged => "write not acknowledged",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned by layercache operations.
///
/// It carries an [`ErrorKind`], a human-readable context and, where there is one, the
/// underlying error (reachable through [`std::error::Error::source`]). It is cheap to clone,
/// so a single failed load can be handed to every caller that waited on it.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    context: Cow<'static, str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    /// The instances that did not acknowledge a write ([`ErrorKind::Unacknowledged`]).
    unacknowledged: Arc<[crate::coherence::InstanceId]>,
}

impl Error {
    /// An error of `kind` with a context message and no source.
    pub fn new(kind: ErrorKind, context: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
            unacknowledged: Arc::from(Vec::new()),
        }
    }

    /// For [`ErrorKind::Unacknowledged`]: the instances that had not acknowledged the write
    /// when its timeout ran out (empty for other errors).
    pub fn unacknowledged(&self) -> &[crate::coherence::InstanceId] {
        &self.unacknowledged
    }

    /// An [`ErrorKind::Unacknowledged`] error naming `peers`.
    pub(crate) fn unacknowledged_by(
        peers: Vec<crate::coherence::InstanceId>,
        within: std::time::Duration,
    ) -> Self {
        let names: Vec<String> = peers.iter().map(ToString::to_string).collect();
        let mut e = Self::new(
            ErrorKind::Unacknowledged,
            format!(
                "not acknowledged within {within:?} by {} instance(s): {}",
                peers.len(),
                names.join(", ")
            ),
        );
        e.unacknowledged = Arc::from(peers);
        e
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The context message (without the source).
    pub fn context(&self) -> &str {
        &self.context
    }

    /// `true` when a Redis call ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// `true` for errors that came from Redis or its absence (an error reply, a lost
    /// connection, a timeout, or a call skipped because Redis is unavailable).
    pub fn is_redis(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Redis | ErrorKind::Timeout | ErrorKind::Unavailable
        )
    }

    /// `true` when the user's loader failed.
    pub fn is_loader(&self) -> bool {
        self.kind == ErrorKind::Loader
    }

    /// `true` when Redis was not called at all ([`ErrorKind::Unavailable`]). Such a failure
    /// cost no time.
    pub fn is_skipped(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    /// For a [`ErrorKind::Loader`] error: the loader's own error, if it was an `E`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// #[derive(Debug)]
    /// struct NotFound;
    /// impl std::fmt::Display for NotFound {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("not found")
    ///     }
    /// }
    /// impl std::error::Error for NotFound {}
    ///
    /// let cache = layercache::LayerCache::builder("doc").build().await.unwrap();
    /// let users = cache.region::<u64, String>("user").build().await.unwrap();
    /// let err = users
    ///     .get_or_load(&7, |_| async { Err::<String, _>(NotFound) })
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.loader_error::<NotFound>().is_some());
    /// # }
    /// ```
    pub fn loader_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        if self.kind != ErrorKind::Loader {
            return None;
        }
        self.source.as_deref().and_then(|e| e.downcast_ref::<E>())
    }

    /// Whether this is a store's `WRONGTYPE` reply: another type of value sits at the key.
    pub(crate) fn is_wrong_type(&self) -> bool {
        self.to_string().contains("WRONGTYPE")
    }

    pub(crate) fn config(context: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, context)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("context", &self.context);
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_traits<T: Send + Sync + Clone + 'static + std::error::Error>() {}

    #[test]
    fn error_is_send_sync_static_clone() {
        assert_traits::<Error>();
    }

    #[test]
    fn display_includes_kind_context_and_source() {
        let io = std::io::Error::other("boom");
        let e = Error::new(ErrorKind::Redis, "GET failed").with_source(io);
        assert_eq!(e.to_string(), "redis error: GET failed: boom");
        assert!(e.is_redis());
        assert!(!e.is_timeout());
        assert!(std::error::Error::source(&e).is_some());
    }
}
