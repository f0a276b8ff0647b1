//! The shared tier: Redis through a fred client.
//!
//! Every call is bounded by the command timeout (fred's default has none), the client has a
//! reconnect policy (fred's default has none) and a bounded command buffer. This module knows
//! nothing of values or codecs: it moves bytes under string keys.

use std::time::Duration;

use fred::{
    clients::{Pipeline, WithOptions},
    prelude::{ClientLike, Config, KeysInterface, LuaInterface, PubsubInterface, ReconnectPolicy},
    types::{config::Options, Builder, ConnectHandle, Expiration, SetOptions, Value},
};
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, PoisonError,
};

use tracing::Instrument;

use crate::{
    breaker::{Breaker, Verdict},
    bus::Sequencer,
    error::{Error, ErrorKind, Result},
    options::L2Startup,
    stats::Counters,
};

/// Connection settings for the Redis tier, filled by the builder.
#[derive(Clone)]
pub(crate) struct L2Settings {
    pub(crate) url: String,
    pub(crate) command_timeout: Duration,
    /// The bound on commands while Redis is suspect (see [`L2::bounded`]).
    pub(crate) suspect_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_command_buffer: usize,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    /// PEM of the CA roots to trust for TLS (instead of the system's).
    pub(crate) tls_ca_pem: Option<Vec<u8>>,
    /// Whether `build()` may return before the first connection.
    pub(crate) startup: L2Startup,
}

impl std::fmt::Debug for L2Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2Settings")
            .field("url", &redact_url(&self.url))
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_command_buffer", &self.max_command_buffer)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("tls_ca_pem", &self.tls_ca_pem.is_some())
            .finish()
    }
}

/// The URL with any password replaced by `***`, for logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &rest[at..])
        }
        None => url.to_owned(),
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// Builds and connects a fred client with our settings. `broadcast_capacity` sizes the
/// client's pub/sub message buffer (for the bus's subscriber). Returns the client and the task
/// that runs its connection (it ends after `quit`).
pub(crate) async fn connect_client(
    s: &L2Settings,
    broadcast_capacity: Option<usize>,
) -> Result<(fred::prelude::Client, ConnectHandle)> {
    let mut config = Config::from_url(&s.url).map_err(|e| {
        Error::config(format!("redis_url {:?} is invalid", redact_url(&s.url))).with_source(e)
    })?;
    #[cfg(feature = "tls")]
    if let Some(pem) = &s.tls_ca_pem {
        config.tls = Some(tls_with_roots(pem)?);
    }
    #[cfg(not(feature = "tls"))]
    if s.tls_ca_pem.is_some() {
        return Err(Error::config("l2_tls_ca_pem needs the `tls` feature"));
    }
    // Degraded start: the first connection goes through the reconnect policy too.
    config.fail_fast = s.startup == L2Startup::FailFast;
    let mut b = Builder::from_config(config);
    b.with_connection_config(|c| {
        c.connection_timeout = s.connect_timeout;
        c.internal_command_timeout = s.command_timeout.max(Duration::from_secs(1));
        c.max_command_buffer_len = s.max_command_buffer;
    })
    .with_performance_config(|p| {
        p.default_command_timeout = s.command_timeout;
        if let Some(capacity) = broadcast_capacity {
            p.broadcast_channel_capacity = capacity;
        }
    })
    .set_policy(ReconnectPolicy::new_exponential(
        0,
        millis_u32(s.reconnect_min),
        millis_u32(s.reconnect_max),
        2,
    ));
    let client = b
        .build()
        .map_err(|e| Error::config("redis client configuration").with_source(e))?;
    if s.startup == L2Startup::Degraded {
        // The first connection is retried like any reconnect; wait for it up to the connect
        // timeout, then go on without it.
        let handle = client.connect();
        match tokio::time::timeout(s.connect_timeout, client.wait_for_connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis unreachable at start; running degraded until it answers");
            }
            Err(_) => {
                tracing::warn!(timeout = ?s.connect_timeout, "redis unreachable at start; running degraded until it answers");
            }
        }
        return Ok((client, handle));
    }
    let connect = async {
        client
            .init()
            .await
            .map_err(|e| map_err("connecting to redis", e))
    };
    match tokio::time::timeout(s.connect_timeout, connect).await {
        Ok(Ok(handle)) => Ok((client, handle)),
        Ok(Err(e)) => {
            let _ = client.quit().await;
            Err(e)
        }
        Err(_) => {
            let _ = client.quit().await;
            Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "connecting to redis took longer than {:?}",
                    s.connect_timeout
                ),
            ))
        }
    }
}

/// A rustls TLS configuration trusting exactly the CA certificates in `pem`.
#[cfg(feature = "tls")]
fn tls_with_roots(pem: &[u8]) -> Result<fred::types::config::TlsConfig> {
    use fred::rustls::{
        pki_types::{pem::PemObject, CertificateDer},
        ClientConfig, RootCertStore,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| {
            Error::config("l2_tls_ca_pem holds an unreadable certificate")
                .with_source(e.to_string())
        })?;
        roots.add(cert).map_err(|e| {
            Error::config("l2_tls_ca_pem holds an unusable certificate").with_source(e)
        })?;
    }
    if roots.is_empty() {
        return Err(Error::config("l2_tls_ca_pem holds no certificate"));
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(fred::types::config::TlsConfig::from(config))
}

/// Reads a region's generation, creating it (as the current Unix time in milliseconds, so a
/// counter that was lost never restarts below an older value) when missing, and refreshes its
/// TTL. ARGV: the initial value, the TTL in ms.
const LOAD_GENERATION: &str = "local g = redis.call('GET', KEYS[1]) \
if not g then g = ARGV[1] redis.call('SET', KEYS[1], g) end \
redis.call('PEXPIRE', KEYS[1], ARGV[2]) return g";

/// Moves a region's generation to at least ARGV[1] and past its current value, atomically.
/// ARGV: the floor, the TTL in ms.
const BUMP_GENERATION: &str = "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0 \
local nxt = math.max(cur + 1, tonumber(ARGV[1])) \
local s = string.format('%d', nxt) \
redis.call('SET', KEYS[1], s, 'PX', ARGV[2]) return s";

/// Releases a lock only if it still holds our token. KEYS: the lock. ARGV: the token.
const RELEASE_LOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
return redis.call('DEL', KEYS[1]) else return 0 end";

/// Extends a lock only if it still holds our token. KEYS: the lock. ARGV: the token, the TTL.
const RENEW_LOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// Writes an entry: `nx` only if absent; `cas` only if the key still holds what the load saw
/// (a tombstone, a stale or corrupt value: same length, same first bytes — the envelope header,
/// whose CRC and creation time tell entries apart, and whose nonce tells tombstones apart) or
/// nothing at all (what it saw expired meanwhile: as for `nx`, the fetch's time bound keeps a
/// newer entry from having expired too), so a load that began before a concurrent write or
/// invalidation never overwrites it; `set`
/// unconditionally. A load (which passes marks; `insert` does not) is also refused when one of
/// its tags was invalidated since it began: each tag's mark must still be what the load read
/// before it ran. A write with a *fence* (`insert`, `invalidate`) lands only if the region's
/// generation is still the one its key was made for: a writer that has not yet heard of an
/// `invalidate_all` or `clear` must not write into the abandoned key space, where nobody would
/// see it, while an older value sits in the new one. Then records the key in each of its tags'
/// sets (raising a set's TTL to its longest member's, never lowering it).
///
/// A write with a *source version* (`insert_versioned`) is refused when the key holds an
/// envelope with a higher one (flag bit 4, the big-endian version right after the 64-byte
/// header, compared byte by byte): concurrent writers converge on the newest value whatever
/// order their writes arrive in.
///
/// KEYS: the data key, the `n` tag sets, the `m` tag marks (`m` is `n` or 0), then with a
/// fence the generation key. ARGV: the value, the TTL in ms, the mode, the expected prefix, the
/// expected length, `n`, `m`, the fence's generation (empty for none), the source version (8
/// bytes, or empty for none), then the `m` expected marks (empty for none). Returns 1
/// (written), 0 (refused: the key or a mark changed), -1 (fenced: the generation moved) or -2
/// (older: the key holds a higher source version).
const FILL: &str = "local n = tonumber(ARGV[6]) \
local m = tonumber(ARGV[7]) \
if ARGV[8] ~= '' and redis.call('GET', KEYS[2 + n + m]) ~= ARGV[8] then return -1 end \
for i = 1, m do \
  if (redis.call('GET', KEYS[1 + n + i]) or '') ~= ARGV[9 + i] then return 0 end \
end \
if ARGV[9] ~= '' then \
  local head = redis.pcall('GETRANGE', KEYS[1], 0, 71) \
  if type(head) == 'string' and #head == 72 and string.sub(head, 1, 4) == 'LCAC' \
    and bit.band(string.byte(head, 7), 16) ~= 0 then \
    local cur = string.sub(head, 65, 72) \
    for i = 1, 8 do \
      local a, b = string.byte(ARGV[9], i), string.byte(cur, i) \
      if a ~= b then if a < b then return -2 end break end \
    end \
  end \
end \
local ok \
if ARGV[3] == 'nx' then ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') \
elseif ARGV[3] == 'cas' then \
  local len = redis.call('STRLEN', KEYS[1]) \
  if len == 0 or (len == tonumber(ARGV[5]) \
    and redis.call('GETRANGE', KEYS[1], 0, #ARGV[4] - 1) == ARGV[4]) then \
    ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
  else ok = false end \
else ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end \
if not ok then return 0 end \
local ttl = tonumber(ARGV[2]) \
for i = 2, n + 1 do \
  redis.call('SADD', KEYS[i], KEYS[1]) \
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end \
end \
return 1";

/// Removes one page of a tag's members: deletes the data keys and takes them out of the set in
/// one atomic step, so a member written again meanwhile keeps its membership (deleting the
/// whole set at the end would lose it). KEYS: the tag set, then the members.
const DROP_TAG_PAGE: &str = "if #KEYS < 2 then return 0 end \
redis.call('UNLINK', unpack(KEYS, 2)) \
return redis.call('SREM', KEYS[1], unpack(KEYS, 2))";

/// How a write treats what is already at the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Overwrite (an explicit `insert`, or a foreign Redis type).
    Set,
    /// Only if absent.
    Nx,
    /// Only if the key still holds what was seen.
    Cas(Seen),
}

/// What a write must find in Redis to land (see [`FILL`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guard<'a> {
    /// How it treats what the key holds.
    pub(crate) mode: &'a Fill,
    /// A load's tags' marks as read before it ran (none for a write).
    pub(crate) marks: &'a [(String, Option<Vec<u8>>)],
    /// The region's generation the key was made for (writes), or none (loads).
    pub(crate) fence: Option<u64>,
    /// The source version of a versioned write: refused if the key holds a higher one.
    pub(crate) version: Option<u64>,
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    /// It landed.
    Written,
    /// Its condition failed (the key or one of its tags' marks changed): the newer state wins.
    Refused,
    /// The region's generation is no longer the one its key was made for.
    Fenced,
    /// The key holds a value with a higher source version.
    Older,
}

/// What a read saw at a key, enough to tell whether it is still there: its length and its
/// first [`HEADER_LEN`](crate::envelope::HEADER_LEN) bytes (for an envelope, the header, which
/// carries a CRC of the whole entry). The whole value need not travel back to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    prefix: Vec<u8>,
    len: usize,
}

impl Seen {
    /// Remembers `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        let n = bytes.len().min(crate::envelope::HEADER_LEN);
        Self {
            prefix: bytes[..n].to_vec(),
            len: bytes.len(),
        }
    }
}

impl Fill {
    /// The mode's name in the `FILL` script (and in spans).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Nx => "nx",
            Self::Cas(_) => "cas",
        }
    }
}

/// The `FILL` script's reply.
fn filled(reply: i64) -> Filled {
    match reply {
        1 => Filled::Written,
        -1 => Filled::Fenced,
        -2 => Filled::Older,
        _ => Filled::Refused,
    }
}

/// The keys and arguments of a `FILL` call (see the script for their order).
fn fill_command(
    key: &str,
    value: Vec<u8>,
    ttl_ms: u64,
    tags: Vec<String>,
    guard: Guard<'_>,
    generation_key: &str,
) -> (Vec<String>, Vec<Value>) {
    let Guard {
        mode,
        marks,
        fence,
        version,
    } = guard;
    let n = tags.len();
    let mut keys = Vec::with_capacity(2 + n + marks.len());
    keys.push(key.to_owned());
    keys.extend(tags);
    keys.extend(marks.iter().map(|(k, _)| k.clone()));
    if fence.is_some() {
        keys.push(generation_key.to_owned());
    }
    let (expected, len) = match mode {
        Fill::Set | Fill::Nx => (Vec::new(), 0),
        Fill::Cas(seen) => (seen.prefix.clone(), seen.len),
    };
    let mut args: Vec<Value> = vec![
        Value::Bytes(value.into()),
        Value::from(ttl_ms.to_string()),
        Value::from(mode.name()),
        Value::Bytes(expected.into()),
        Value::from(len.to_string()),
        Value::from(n.to_string()),
        Value::from(marks.len().to_string()),
        Value::from(fence.map_or_else(String::new, |g| g.to_string())),
        Value::Bytes(
            version
                .map_or_else(Vec::new, |v| v.to_be_bytes().to_vec())
                .into(),
        ),
    ];
    args.extend(
        marks
            .iter()
            .map(|(_, m)| Value::Bytes(m.clone().unwrap_or_default().into())),
    );
    (keys, args)
}

/// Polls a future once, so that a command it sends is handed to the client's connection now
/// (fred hands a command to its router on the first poll, synchronously), and returns it to be
/// awaited later. Used under the bus sequencer's lock: the order in which commands reach the
/// connection is then the order of their sequence numbers.
fn primed<F: std::future::Future>(future: F) -> Primed<F> {
    let mut future = Box::pin(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Primed::Done(Some(v)),
        std::task::Poll::Pending => Primed::Running(future),
    }
}

/// Queues a command in a pipeline: fred's pipeline methods complete on their first poll (the
/// command is buffered, not sent).
fn queue<F: std::future::Future<Output = Result<(), fred::error::Error>>>(
    future: F,
) -> Result<(), fred::error::Error> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => Err(unexpected("a queued command")),
    }
}

/// `EVAL` as a custom command, routed by the data key's hash slot.
fn eval_command(key: &str) -> fred::types::CustomCommand {
    fred::types::CustomCommand::new_static(
        "EVAL",
        fred::types::ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes())),
        false,
    )
}

/// `EVAL`'s arguments: the script, the key count, the keys, the arguments.
fn eval_args(keys: Vec<String>, args: Vec<Value>) -> Vec<Value> {
    let mut all = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(Value::from(FILL));
    all.push(Value::from(keys.len().to_string()));
    all.extend(keys.into_iter().map(Value::from));
    all.extend(args);
    all
}

/// A future polled once by [`primed`].
enum Primed<F: std::future::Future> {
    Done(Option<F::Output>),
    Running(std::pin::Pin<Box<F>>),
}

impl<F: std::future::Future> std::future::Future for Primed<F>
where
    F::Output: Unpin,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        match self.get_mut() {
            Self::Done(v) => match v.take() {
                Some(v) => std::task::Poll::Ready(v),
                None => std::task::Poll::Pending,
            },
            Self::Running(f) => f.as_mut().poll(cx),
        }
    }
}

fn unexpected(what: &str) -> fred::error::Error {
    fred::error::Error::new(
        fred::error::ErrorKind::Protocol,
        format!("unexpected pipeline reply to {what}"),
    )
}

/// How much later than fred's own command timeout our backstop timeout fires.
const BACKSTOP_GRACE: Duration = Duration::from_millis(50);

/// A connected Redis client.
#[derive(Clone)]
pub(crate) struct L2 {
    client: fred::prelude::Client,
    /// The client with the command timeout, failing at once while disconnected (instead of
    /// queueing for the reconnect: a write queued there would land long after its caller was
    /// told it failed).
    normal: WithOptions<fred::prelude::Client>,
    /// The same with the suspect timeout, for calls made while Redis is suspect.
    wary: WithOptions<fred::prelude::Client>,
    timeout: Duration,
    suspect_timeout: Duration,
    /// The last call failed with an outage error, and none has succeeded since.
    suspect: Arc<AtomicBool>,
    breaker: Arc<Breaker>,
    counters: Arc<Counters>,
    /// The client's connection task, awaited by [`quit`](Self::quit).
    task: Arc<Mutex<Option<ConnectHandle>>>,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2")
            .field("connected", &self.client.is_connected())
            .field("timeout", &self.timeout)
            .field("suspect_timeout", &self.suspect_timeout)
            .finish()
    }
}

/// Whether a fred error means Redis is unreachable or overloaded (as opposed to an error
/// reply, which proves it is there).
fn is_outage(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind as K;
    matches!(
        e.kind(),
        K::IO | K::Timeout | K::Canceled | K::Routing | K::Protocol | K::Backpressure
    )
}

/// Whether a Redis error is a `WRONGTYPE` reply: another Redis type sits at the key.
pub(crate) fn is_wrong_type(e: &Error) -> bool {
    e.to_string().contains("WRONGTYPE")
}

fn map_err(what: &'static str, e: fred::error::Error) -> Error {
    let kind = match e.kind() {
        fred::error::ErrorKind::Timeout => ErrorKind::Timeout,
        fred::error::ErrorKind::Canceled => ErrorKind::Closed,
        _ => ErrorKind::Redis,
    };
    Error::new(kind, what).with_source(e)
}

impl L2 {
    /// Connects, failing if the first connection cannot be made within `connect_timeout`
    /// (unless the start is degraded: then it keeps trying in the background).
    pub(crate) async fn connect(
        s: &L2Settings,
        breaker: Breaker,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let (client, task) = connect_client(s, None).await?;
        let suspect_timeout = s.suspect_timeout.min(s.command_timeout);
        let options = |timeout| Options {
            timeout: Some(timeout),
            fail_fast: true,
            ..Default::default()
        };
        Ok(Self {
            normal: client.with_options(&options(s.command_timeout)),
            wary: client.with_options(&options(suspect_timeout)),
            client,
            timeout: s.command_timeout,
            suspect_timeout,
            suspect: Arc::new(AtomicBool::new(false)),
            breaker: Arc::new(breaker),
            counters,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// Whether the client is connected right now.
    pub(crate) fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Whether the circuit breaker is open.
    pub(crate) fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs one command, bounded by a timeout, through the circuit breaker. While the
    /// connection is known to be down (fred is reconnecting) the command is not sent at all: it
    /// fails at once, costing the caller nothing, and without counting against the breaker
    /// (which is for a Redis that is connected but does not answer). After an outage error,
    /// and until a call succeeds, commands are bounded by the shorter suspect timeout, so the
    /// calls between the first failure and the breaker opening do not each pay the full one.
    async fn bounded<'s, T, F, Fut>(&'s self, what: &'static str, command: F) -> Result<T>
    where
        F: FnOnce(&'s WithOptions<fred::prelude::Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, fred::error::Error>>,
    {
        if !self.client.is_connected() {
            self.counters.l2_disconnected_skips.incr();
            return Err(Error::new(
                ErrorKind::Redis,
                format!("{what} skipped: redis is not connected (reconnecting)"),
            )
            .skipped());
        }
        let permit = self.breaker.permit();
        if permit.verdict() == Verdict::Reject {
            return Err(Error::new(
                ErrorKind::Redis,
                format!("{what} skipped: the redis circuit breaker is open"),
            )
            .skipped());
        }
        let (client, timeout) = if self.suspect.load(Ordering::Acquire) {
            (&self.wary, self.suspect_timeout)
        } else {
            (&self.normal, self.timeout)
        };
        // fred's own timeout (the same duration) must fire first: only then does fred mark the
        // command timed out and drop it from its reconnect queue. Dropping the future from out
        // here would leave it queued, to be sent after a reconnect — a write landing long after
        // its caller was told it failed. Ours is a backstop, a little later.
        let result = match tokio::time::timeout(timeout + BACKSTOP_GRACE, command(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let outage = is_outage(&e);
                self.suspect.store(outage, Ordering::Release);
                permit.record(outage);
                if e.kind() == &fred::error::ErrorKind::Timeout {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("{what} took longer than {timeout:?}"),
                    )
                    .with_source(e));
                }
                return Err(map_err(what, e));
            }
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{what} took longer than {timeout:?}"),
            )),
        };
        self.suspect.store(result.is_err(), Ordering::Release);
        permit.record(result.is_err());
        result
    }

    /// `GET key`.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let span = tracing::debug_span!(
            "layercache.l2.get",
            hit = tracing::field::Empty,
            bytes = tracing::field::Empty
        );
        async {
            let r: Option<Vec<u8>> = self.bounded("redis GET", |c| c.get(key)).await?;
            let span = tracing::Span::current();
            span.record("hit", r.is_some());
            if let Some(b) = &r {
                span.record("bytes", b.len());
            }
            Ok(r)
        }
        .instrument(span)
        .await
    }

    /// `SET key value PX ttl [NX]`; returns whether the value was written.
    pub(crate) async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: u64,
        nx: bool,
    ) -> Result<bool> {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let span = tracing::debug_span!("layercache.l2.set", bytes = value.len(), nx);
        let reply: Value = self
            .bounded("redis SET", |c| {
                c.set(
                    key,
                    value,
                    Some(Expiration::PX(px)),
                    nx.then_some(SetOptions::NX),
                    false,
                )
            })
            .instrument(span)
            .await?;
        Ok(!reply.is_null())
    }

    /// Writes with the `FILL` script as its [`Guard`] says: conditional on what the key holds,
    /// for a load on its tags' marks being what it read before it ran, and with a fence on the
    /// region's generation (read at `generation_key`); with tag bookkeeping.
    pub(crate) async fn fill(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: u64,
        tags: Vec<String>,
        guard: Guard<'_>,
        generation_key: &str,
    ) -> Result<Filled> {
        let (keys, args) = fill_command(key, value, ttl_ms, tags, guard, generation_key);
        let span = tracing::debug_span!(
            "layercache.l2.set",
            mode = guard.mode.name(),
            fenced = guard.fence.is_some(),
            announced = false
        );
        let written: i64 = self
            .bounded("redis EVAL (fill)", |c| c.eval(FILL, keys, args))
            .instrument(span)
            .await?;
        Ok(filled(written))
    }

    /// Reads tag marks (`MGET`): for each key, its value, or `None`.
    pub(crate) async fn marks(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        let n = keys.len();
        let reply: Value = self
            .bounded("redis MGET (tag marks)", |c| c.mget(keys))
            .await?;
        let values = match reply {
            Value::Array(values) => values,
            // One key: fred may hand back the single value itself.
            other if n == 1 => vec![other],
            _ => return Err(Error::new(ErrorKind::Redis, "unexpected MGET reply")),
        };
        if values.len() != n {
            return Err(Error::new(ErrorKind::Redis, "unexpected MGET reply length"));
        }
        Ok(values
            .into_iter()
            .map(|v| match v {
                Value::Null => None,
                v => v.as_bytes().map(<[u8]>::to_vec),
            })
            .collect())
    }

    /// Sets a tag's mark to a new random token (`SET … PX`).
    pub(crate) async fn set_mark(&self, key: &str, token: String, ttl_ms: u64) -> Result<()> {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let _: Value = self
            .bounded("redis SET (tag mark)", |c| {
                c.set(key, token, Some(Expiration::PX(px)), None, false)
            })
            .await?;
        Ok(())
    }

    /// Deletes a page of a tag's members and removes them from its set, atomically (see
    /// [`DROP_TAG_PAGE`]).
    pub(crate) async fn drop_tag_page(&self, set: &str, members: Vec<String>) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(1 + members.len());
        keys.push(set.to_owned());
        keys.extend(members);
        let _: i64 = self
            .bounded("redis EVAL (drop tag page)", |c| {
                c.eval(DROP_TAG_PAGE, keys, Vec::<Value>::new())
            })
            .await?;
        Ok(())
    }

    /// One page of `SSCAN key cursor COUNT count`: the next cursor and the members.
    pub(crate) async fn sscan_page(
        &self,
        key: &str,
        cursor: &str,
        count: u32,
    ) -> Result<(String, Vec<String>)> {
        let args: Vec<Value> = vec![
            Value::from(key),
            Value::from(cursor),
            Value::from("COUNT"),
            Value::from(count.to_string()),
        ];
        let reply: Value = self
            .bounded("redis SSCAN", |c| {
                c.custom(
                    fred::types::CustomCommand::new_static(
                        "SSCAN",
                        fred::types::ClusterHash::FirstKey,
                        false,
                    ),
                    args,
                )
            })
            .await?;
        parse_scan_reply(reply, "SSCAN")
    }

    /// `GETEX key PX ttl`: reads and extends in one command (sliding expiration).
    pub(crate) async fn getex(&self, key: &str, ttl_ms: u64) -> Result<Option<Vec<u8>>> {
        let span = tracing::debug_span!(
            "layercache.l2.get",
            hit = tracing::field::Empty,
            sliding = true
        );
        let args: Vec<Value> = vec![
            Value::from(key),
            Value::from("PX"),
            Value::from(ttl_ms.to_string()),
        ];
        let r: Option<Vec<u8>> = self
            .bounded("redis GETEX", |c| {
                c.custom(
                    fred::types::CustomCommand::new_static(
                        "GETEX",
                        fred::types::ClusterHash::FirstKey,
                        false,
                    ),
                    args,
                )
            })
            .instrument(span.clone())
            .await?;
        span.record("hit", r.is_some());
        Ok(r)
    }

    /// `PEXPIRE key ttl`.
    pub(crate) async fn pexpire(&self, key: &str, ttl_ms: u64) -> Result<()> {
        let ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let _: i64 = self
            .bounded("redis PEXPIRE", |c| c.pexpire(key, ms, None))
            .await?;
        Ok(())
    }

    /// Takes a lock: `SET key token NX PX ttl`; returns whether it was taken.
    pub(crate) async fn try_lock(&self, key: &str, token: &str, ttl_ms: u64) -> Result<bool> {
        self.set(key, token.as_bytes().to_vec(), ttl_ms, true).await
    }

    /// Extends a lock we hold; returns whether we still held it.
    pub(crate) async fn renew_lock(&self, key: &str, token: &str, ttl_ms: u64) -> Result<bool> {
        let n: i64 = self
            .bounded("redis EVAL (renew lock)", |c| {
                c.eval(RENEW_LOCK, key, vec![token.to_owned(), ttl_ms.to_string()])
            })
            .await?;
        Ok(n == 1)
    }

    /// Releases a lock if we still hold it.
    pub(crate) async fn release_lock(&self, key: &str, token: &str) -> Result<()> {
        let _: i64 = self
            .bounded("redis EVAL (release lock)", |c| {
                c.eval(RELEASE_LOCK, key, token.to_owned())
            })
            .await?;
        Ok(())
    }

    /// `PUBLISH` of a bus message numbered by `sequencer`: the number is taken and the command
    /// handed to the connection under the sequencer's lock, so messages reach Redis in number
    /// order. Returns the number (0 when the call was skipped before one was taken) and the
    /// outcome.
    pub(crate) async fn publish_sequenced(
        &self,
        sequencer: &Sequencer,
        message: impl FnOnce(u64) -> Vec<u8>,
    ) -> (u64, Result<()>) {
        let (taken, replies) = self
            .sequenced("redis PUBLISH", None, sequencer, message)
            .await;
        let result = replies.and_then(|mut r| match r.pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(map_err("redis PUBLISH", e)),
            None => Err(map_err("redis PUBLISH", unexpected("PUBLISH"))),
        });
        (taken, result)
    }

    /// A write (the `FILL` script, as [`fill`](Self::fill)) and its announcement on the bus in
    /// one round trip: `EVAL` and `PUBLISH` pipelined on the one connection, the message
    /// numbered under the sequencer's lock so the sender's messages still reach Redis in order
    /// (receivers detect gaps as before). Redis runs the `PUBLISH` right after the script, so a
    /// receiver drops its copy only once the write is visible; an announcement of a write that
    /// was fenced is spurious and harmless (it only drops a copy). Returns what became of the
    /// write and of the announcement (its sequence number; an error there is the
    /// announcement's alone: the write stands).
    #[expect(
        clippy::too_many_arguments,
        reason = "the fill's arguments and the announcement"
    )]
    pub(crate) async fn fill_announced(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: u64,
        tags: Vec<String>,
        guard: Guard<'_>,
        generation_key: &str,
        sequencer: &Sequencer,
        message: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<(Filled, Result<u64>)> {
        let (keys, args) = fill_command(key, value, ttl_ms, tags, guard, generation_key);
        let span = tracing::debug_span!(
            "layercache.l2.set",
            mode = guard.mode.name(),
            fenced = guard.fence.is_some(),
            announced = true
        );
        let script = (eval_command(key), eval_args(keys, args));
        let (taken, replies) = self
            .sequenced(
                "redis EVAL (fill) + PUBLISH",
                Some(script),
                sequencer,
                message,
            )
            .instrument(span)
            .await;
        let [written, published] = <[_; 2]>::try_from(replies?)
            .map_err(|_| map_err("redis EVAL (fill)", unexpected("EVAL + PUBLISH")))?;
        let written = match written {
            Ok(v) => filled(
                v.convert::<i64>()
                    .map_err(|e| map_err("redis EVAL (fill)", e))?,
            ),
            Err(e) => return Err(map_err("redis EVAL (fill)", e)),
        };
        let published = published
            .map(|_| taken)
            .map_err(|e| map_err("redis PUBLISH", e));
        Ok((written, published))
    }

    /// Sends `script` (if any) and a bus message in one pipeline, bounded like every call: the
    /// message's sequence number is taken, and the pipeline handed to the connection, under
    /// the sequencer's lock. Returns the number taken (0 when the call was skipped) and every
    /// reply, or the error that stood for all of them (a timeout, a lost connection).
    async fn sequenced(
        &self,
        what: &'static str,
        script: Option<(fred::types::CustomCommand, Vec<Value>)>,
        sequencer: &Sequencer,
        message: impl FnOnce(u64) -> Vec<u8>,
    ) -> (u64, Result<Vec<Result<Value, fred::error::Error>>>) {
        let expected = 1 + usize::from(script.is_some());
        let mut taken = 0;
        let replies = self
            .bounded(what, |c| {
                let pipeline = Pipeline::from(c.clone());
                let script = script.map(|(cmd, args)| queue(pipeline.custom::<(), _>(cmd, args)));
                sequencer.next(|seq| {
                    taken = seq;
                    let publish = queue(
                        pipeline.publish::<(), _, _>(sequencer.channel.as_str(), message(seq)),
                    );
                    primed(async move {
                        script.transpose()?;
                        publish?;
                        let mut replies = pipeline.try_all::<Value>().await;
                        if replies.len() == expected {
                            Ok(replies)
                        } else {
                            // One reply for all: the pipeline failed as a whole.
                            Err(replies
                                .pop()
                                .and_then(Result::err)
                                .unwrap_or_else(|| unexpected(what)))
                        }
                    })
                })
            })
            .await;
        if taken > 0 {
            sequencer.sent(taken);
        }
        (taken, replies)
    }

    async fn eval_u64(
        &self,
        what: &'static str,
        script: &str,
        key: &str,
        args: Vec<String>,
    ) -> Result<u64> {
        let reply: String = self.bounded(what, |c| c.eval(script, key, args)).await?;
        reply.parse::<u64>().map_err(|e| {
            Error::new(
                ErrorKind::Redis,
                format!("{what}: not a generation: {reply:?}"),
            )
            .with_source(e)
        })
    }

    /// Reads (or creates) a region's generation and refreshes its TTL.
    pub(crate) async fn load_generation(
        &self,
        key: &str,
        initial: u64,
        ttl: Duration,
    ) -> Result<u64> {
        self.eval_u64(
            "loading a region generation",
            LOAD_GENERATION,
            key,
            vec![initial.to_string(), ttl.as_millis().to_string()],
        )
        .await
    }

    /// Moves a region's generation past its current value and to at least `floor`.
    pub(crate) async fn bump_generation(
        &self,
        key: &str,
        floor: u64,
        ttl: Duration,
    ) -> Result<u64> {
        self.eval_u64(
            "bumping a region generation",
            BUMP_GENERATION,
            key,
            vec![floor.to_string(), ttl.as_millis().to_string()],
        )
        .await
    }

    /// One page of `SCAN cursor MATCH pattern COUNT count`: the next cursor and the keys.
    pub(crate) async fn scan_page(
        &self,
        cursor: &str,
        pattern: &str,
        count: u32,
    ) -> Result<(String, Vec<String>)> {
        let reply: Value = self
            .bounded("redis SCAN", |c| {
                c.scan_page(cursor.to_owned(), pattern.to_owned(), Some(count), None)
            })
            .await?;
        let bad = || Error::new(ErrorKind::Redis, "unexpected SCAN reply");
        let Value::Array(mut parts) = reply else {
            return Err(bad());
        };
        if parts.len() != 2 {
            return Err(bad());
        }
        let keys = match parts.pop() {
            Some(Value::Array(keys)) => keys.into_iter().filter_map(|k| k.into_string()).collect(),
            _ => return Err(bad()),
        };
        let next = parts.pop().and_then(|c| c.into_string()).ok_or_else(bad)?;
        Ok((next, keys))
    }

    /// `UNLINK` of several keys in one command.
    pub(crate) async fn unlink_many(&self, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let _: i64 = self.bounded("redis UNLINK", |c| c.unlink(keys)).await?;
        Ok(())
    }

    /// Closes the connection and waits (at most the command timeout, and a second at least)
    /// for the client's connection task to end.
    pub(crate) async fn quit(&self) {
        let within = self.timeout.max(Duration::from_secs(1));
        let _ = tokio::time::timeout(within, self.client.quit()).await;
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            end_task(task, within).await;
        }
    }
}

/// Waits for a client's connection task to end, aborting it after `within`.
pub(crate) async fn end_task(mut task: ConnectHandle, within: Duration) {
    if tokio::time::timeout(within, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

/// Parses a `SCAN`-family reply: `[cursor, [items]]`.
fn parse_scan_reply(reply: Value, what: &'static str) -> Result<(String, Vec<String>)> {
    let bad = || Error::new(ErrorKind::Redis, format!("unexpected {what} reply"));
    let Value::Array(mut parts) = reply else {
        return Err(bad());
    };
    if parts.len() != 2 {
        return Err(bad());
    }
    let items = match parts.pop() {
        Some(Value::Array(items)) => items.into_iter().filter_map(|k| k.into_string()).collect(),
        _ => return Err(bad()),
    };
    let next = parts.pop().and_then(|c| c.into_string()).ok_or_else(bad)?;
    Ok((next, items))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@host"), "redis://:***@host");
        assert!(!redact_url("rediss://a:b@c/d@e").contains(":b@"));
    }
}
