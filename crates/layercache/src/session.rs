//! Sessions shared by every instance of a cache: [`LayerCache::sessions`], [`SessionStore`],
//! [`Session`].
//!
//! A session store is a cache region of its own (named as the store) holding each session
//! under an unguessable id (128 bits from the operating system's generator, as 32 hex
//! characters): a read is an L1 hit on an instance that has seen the session, and a destroyed
//! session disappears from every instance's L1 as any invalidation does (the bus, or
//! server-assisted tracking). Two lifetimes bound a session:
//!
//! - the **idle timeout**: each read extends the session to it again (sliding expiration: in L1
//!   on every read, in Redis at most once per tenth of it per instance);
//! - the **absolute timeout** from its creation, which reads never extend.
//!
//! A destroyed session cannot come back: [`destroy`](SessionStore::destroy) stores it revoked
//! with the highest source version (until its absolute timeout), which an
//! [`update`](SessionStore::update) racing it cannot overwrite. [`destroy_all_of`](SessionStore::destroy_all_of) revokes every session of
//! an owner created up to that moment (by the clocks of the instances that created them: keep
//! them in sync), through a marker per owner in a second region (`{name}.owners`), read with
//! each owned session (an L1 hit, "not revoked" included: it is cached as a miss and replaced
//! by the revocation on every instance).
//!
//! Other instances apply a `destroy`, `destroy_all_of` or `renew_id` within a bus round trip
//! (milliseconds); with [`ack_writes`](crate::LayerCacheBuilder::ack_writes) the call returns
//! only once every live instance has applied it, so a request on any replica right after a
//! sign-out finds no session.
//!
//! Like every write, one that Redis did not confirm (an outage) is journaled and repaired as
//! an invalidation: a session created during an outage is gone once Redis answers again (its
//! user signs in again), and a destroyed one stays destroyed.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    cache::LayerCache,
    error::{Error, ErrorKind, Result},
    options::EntryOptions,
    region::Region,
};

/// The longest session store name (its owners' region adds `.owners`).
const MAX_NAME: usize = 57;

/// What a session store keeps per session.
#[derive(Debug, Serialize, Deserialize)]
struct Record<V> {
    data: V,
    owner: Option<String>,
    /// Microseconds since the Unix epoch (compared with owners' revocations).
    created_us: u64,
    expires_ms: u64,
    /// Grows with every update; a revoked record has the highest there is.
    version: u64,
    revoked: bool,
}

/// Builds a [`SessionStore`]: from [`LayerCache::sessions`].
#[derive(Debug)]
#[must_use = "a session store builder does nothing until built"]
pub struct SessionStoreBuilder<'c, V> {
    cache: &'c LayerCache,
    name: String,
    idle: Duration,
    absolute: Duration,
    _value: std::marker::PhantomData<fn() -> V>,
}

impl LayerCache {
    /// A store of sessions holding a `V` each, named `name` (1 to 57 characters of
    /// `[A-Za-z0-9_.-]`), shared by every instance of this cache: see [`SessionStore`]. The
    /// store is the cache's regions `name` and `{name}.owners`: give no other region those
    /// names. [`LayerCache::clear`] ends every session, as it drops every region's entries.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// use std::time::Duration;
    ///
    /// let cache = layercache::LayerCache::builder("app").build().await?;
    /// let sessions = cache
    ///     .sessions::<String>("web")
    ///     .idle_timeout(Duration::from_secs(30 * 60))
    ///     .build()
    ///     .await?;
    /// let id = sessions.create_for("user:42", "cart: 3 items".to_owned()).await?; // the cookie
    /// assert_eq!(sessions.get(&id).await?.unwrap().data(), "cart: 3 items");
    /// sessions.destroy_all_of("user:42").await?; // "sign out everywhere"
    /// assert!(sessions.get(&id).await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn sessions<V>(&self, name: impl Into<String>) -> SessionStoreBuilder<'_, V>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        SessionStoreBuilder {
            cache: self,
            name: name.into(),
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(24 * 60 * 60),
            _value: std::marker::PhantomData,
        }
    }
}

impl<V> SessionStoreBuilder<'_, V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// How long a session lives without being read; each read extends it to this again.
    ///
    /// Default: 30 minutes.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// How long a session lives at most from its creation, however often it is read.
    ///
    /// Default: 24 hours.
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.absolute = absolute;
        self
    }

    /// Builds the store (two regions: `name` and `{name}.owners`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for an invalid name or a timeout under 10 ms (or above the
    /// [`MAX_LIFETIME`](crate::MAX_LIFETIME)); as [`RegionBuilder::build`](crate::RegionBuilder::build) otherwise.
    pub async fn build(self) -> Result<SessionStore<V>> {
        let Self {
            cache,
            name,
            idle,
            absolute,
            _value,
        } = self;
        if name.len() > MAX_NAME {
            return Err(Error::config(format!(
                "session store name of {} bytes is too long: at most {MAX_NAME}",
                name.len()
            )));
        }
        for (what, d) in [("idle", idle), ("absolute", absolute)] {
            if d < Duration::from_millis(10) {
                return Err(Error::config(format!(
                    "session {what} timeout {d:?} is too short: at least 10 ms"
                )));
            }
        }
        let sessions = EntryOptions::new()
            .ttl(idle)
            .sliding((idle / 10).max(Duration::from_millis(1)));
        let region = cache
            .region::<str, Record<V>>(name.clone())
            .entry_options(sessions)
            .build()
            .await?;
        let marks = EntryOptions::new().ttl(absolute).negative_ttl(absolute);
        let owners = cache
            .region::<str, u64>(format!("{name}.owners"))
            .entry_options(marks)
            .build()
            .await?;
        Ok(SessionStore {
            region,
            owners,
            marks,
            idle,
            absolute,
        })
    }
}

/// Sessions shared by every instance of a cache, from [`LayerCache::sessions`]: create one,
/// read it by its id (extending its idle timeout), update its data, destroy it or every
/// session of an owner. Cheap to clone. See the [module docs](crate::session).
pub struct SessionStore<V> {
    region: Region<str, Record<V>>,
    owners: Region<str, u64>,
    marks: EntryOptions,
    idle: Duration,
    absolute: Duration,
}

impl<V> Clone for SessionStore<V> {
    fn clone(&self) -> Self {
        Self {
            region: self.region.clone(),
            owners: self.owners.clone(),
            marks: self.marks,
            idle: self.idle,
            absolute: self.absolute,
        }
    }
}

impl<V> std::fmt::Debug for SessionStore<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("idle", &self.idle)
            .field("absolute", &self.absolute)
            .finish_non_exhaustive()
    }
}

/// A session read or created: its id, data and lifetimes.
pub struct Session<V> {
    id: String,
    record: Arc<Record<V>>,
}

impl<V: std::fmt::Debug> std::fmt::Debug for Session<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The id is a credential: never in logs.
        f.debug_struct("Session")
            .field("data", &self.record.data)
            .field("owner", &self.record.owner)
            .finish_non_exhaustive()
    }
}

impl<V> Session<V> {
    /// The session's id: what the client presents (a cookie's value). A credential: keep it out
    /// of logs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The session's data.
    pub fn data(&self) -> &V {
        &self.record.data
    }

    /// The owner given to [`SessionStore::create_for`], if any.
    pub fn owner(&self) -> Option<&str> {
        self.record.owner.as_deref()
    }

    /// When the session was created.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.record.created_us)
    }

    /// When the session ends at the latest (its absolute timeout), however often it is read.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.record.expires_ms)
    }
}

/// Microseconds since the Unix epoch, by this machine's clock.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> u64 {
    now_us() / 1000
}

/// A new session id: 128 bits from the operating system's generator, as hex.
fn new_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("no randomness for a session id: {e}"),
        )
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `id` could be one this store handed out (32 lowercase hex characters): anything
/// else a client presents is no session, answered without asking Redis.
fn well_formed(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl<V> SessionStore<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Creates a session holding `data`; returns its new id (what the client presents: a
    /// cookie's value — a credential, keep it out of logs).
    ///
    /// # Errors
    ///
    /// As [`Region::insert`] (a Redis failure only under
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate)).
    pub async fn create(&self, data: V) -> Result<String> {
        self.create_as(None, data).await
    }

    /// Creates a session holding `data` for `owner` (a user id, say), so that
    /// [`destroy_all_of`](Self::destroy_all_of) can end it with the owner's other sessions;
    /// returns its new id.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub async fn create_for(&self, owner: &str, data: V) -> Result<String> {
        self.create_as(Some(owner.to_owned()), data).await
    }

    async fn create_as(&self, owner: Option<String>, data: V) -> Result<String> {
        let id = new_id()?;
        let now = now_us();
        let record = Record {
            data,
            owner,
            created_us: now,
            expires_ms: (now / 1000).saturating_add(millis(self.absolute)),
            version: 1,
            revoked: false,
        };
        self.write(&id, record).await?;
        Ok(id)
    }

    /// Writes `record` under `id` with its version, for what is left of its lifetimes: whether
    /// it was written (not refused by a higher version).
    async fn write(&self, id: &str, record: Record<V>) -> Result<bool> {
        let left = Duration::from_millis(record.expires_ms.saturating_sub(now_ms()));
        let ttl = self.idle.min(left).max(Duration::from_millis(1));
        let options = self.region.entry_options().ttl(ttl);
        let version = record.version;
        self.region
            .entry(id)
            .options(&options)
            .insert_versioned(record, version)
            .await
    }

    /// The session `id`, extending its idle timeout: `None` when there is none — never created,
    /// timed out, destroyed, or revoked with its owner's — and for an id this store could not
    /// have made (not 32 lowercase hex characters), without asking Redis.
    ///
    /// # Errors
    ///
    /// As [`Region::get`].
    pub async fn get(&self, id: &str) -> Result<Option<Session<V>>> {
        if !well_formed(id) {
            return Ok(None);
        }
        let Some(record) = self.region.get(id).await? else {
            return Ok(None);
        };
        if !self.live(&record).await? {
            return Ok(None);
        }
        Ok(Some(Session {
            id: id.to_owned(),
            record,
        }))
    }

    /// Whether a stored record is a live session: not revoked, not past its absolute timeout,
    /// and created after its owner's last revocation.
    async fn live(&self, record: &Record<V>) -> Result<bool> {
        if record.revoked || now_ms() >= record.expires_ms {
            return Ok(false);
        }
        let Some(owner) = &record.owner else {
            return Ok(true);
        };
        let revoked = self
            .owners
            .entry(owner.as_str())
            .options(&self.marks)
            .or_load_optional(|_| async { Ok::<_, std::convert::Infallible>(None) })
            .await?;
        Ok(revoked.is_none_or(|at| record.created_us > *at))
    }

    /// Replaces the data of the session `id` (keeping its owner and lifetimes); returns whether
    /// it did: `false` when there is no live session `id`, or it was destroyed meanwhile.
    ///
    /// # Errors
    ///
    /// As [`Region::insert_versioned`].
    pub async fn update(&self, id: &str, data: V) -> Result<bool> {
        if !well_formed(id) {
            return Ok(false);
        }
        let Some(current) = self.region.get(id).await? else {
            return Ok(false);
        };
        if !self.live(&current).await? {
            return Ok(false);
        }
        let record = Record {
            data,
            owner: current.owner.clone(),
            created_us: current.created_us,
            expires_ms: current.expires_ms,
            version: current.version.saturating_add(1).min(u64::MAX - 1),
            revoked: false,
        };
        self.write(id, record).await
    }

    /// Ends the session `id` on every instance; it cannot be brought back by an
    /// [`update`](Self::update) racing this call.
    ///
    /// # Errors
    ///
    /// As [`Region::insert_versioned`].
    pub async fn destroy(&self, id: &str) -> Result<()>
    where
        V: Clone,
    {
        if !well_formed(id) {
            return Ok(());
        }
        let Some(current) = self.region.get(id).await? else {
            // Nothing to revoke (an update needs a live session, so none can bring it back);
            // a copy another instance may still hold is dropped.
            return self.region.invalidate(id).await;
        };
        let revoked = Record {
            data: current.data.clone(),
            owner: current.owner.clone(),
            created_us: current.created_us,
            expires_ms: current.expires_ms,
            version: u64::MAX,
            revoked: true,
        };
        self.write(id, revoked).await.map(|_| ())
    }

    /// Moves the live session `id` to a new id (same data, owner and lifetimes) and ends the
    /// old one, on every instance; returns the new id, or `None` when there is no live session
    /// `id`. Call it when a session's privileges change (a sign-in): an id an attacker planted
    /// before it (session fixation) is worth nothing after.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create); when the old id could not be ended, the error (the new
    /// session exists, and its id is not returned: it is ended too, best effort).
    pub async fn renew_id(&self, id: &str) -> Result<Option<String>>
    where
        V: Clone,
    {
        if !well_formed(id) {
            return Ok(None);
        }
        let Some(current) = self.region.get(id).await? else {
            return Ok(None);
        };
        if !self.live(&current).await? {
            return Ok(None);
        }
        let new_id = new_id()?;
        let moved = Record {
            data: current.data.clone(),
            owner: current.owner.clone(),
            created_us: current.created_us,
            expires_ms: current.expires_ms,
            version: 1,
            revoked: false,
        };
        self.write(&new_id, moved).await?;
        if let Err(e) = self.destroy(id).await {
            let _ = self.destroy(&new_id).await;
            return Err(e);
        }
        Ok(Some(new_id))
    }

    /// Ends every session of `owner` created up to now, on every instance (sessions created
    /// afterwards are not affected): "sign out everywhere".
    ///
    /// # Errors
    ///
    /// As [`Region::insert_versioned`].
    pub async fn destroy_all_of(&self, owner: &str) -> Result<()> {
        let now = now_us();
        self.owners
            .entry(owner)
            .options(&self.marks)
            .insert_versioned(now, now)
            .await
            .map(|_| ())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
