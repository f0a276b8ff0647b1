//! [`EntryRequest`]: one call on one key of a region, with this call's options and tags, ending
//! in a read-through or a write — so the variants compose instead of multiplying.

use std::{borrow::Borrow, future::Future, sync::Arc, time::Duration};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    codec::Codec,
    error::{BoxError, Error, ErrorKind, Result},
    key::CacheKey,
    options::EntryOptions,
};

use super::{boxed, Region};

/// What a loader given to [`EntryRequest::or_load_with_context`] may decide from what it
/// loaded. Cheap to clone.
///
/// Tags cannot be set here: a load's tags must be known before it runs (their marks are read
/// first, which is what makes a tag invalidation during the load win), so they are given with
/// [`EntryRequest::tags`].
#[derive(Debug, Clone, Default)]
pub struct LoadContext {
    ttl: Arc<std::sync::Mutex<Option<Duration>>>,
}

impl LoadContext {
    /// The lifetime of what this load stores (its logical TTL, in both tiers; for a "not
    /// found", its negative TTL), in place of the call's. Must satisfy the call's other
    /// options (e.g. stay above a soft TTL), or it is ignored with a warning.
    ///
    /// Default: the call's options.
    pub fn set_ttl(&self, ttl: Duration) {
        *self
            .ttl
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ttl);
    }

    pub(super) fn ttl(&self) -> Option<Duration> {
        *self
            .ttl
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One call on one key of a [`Region`], from [`Region::entry`]: set this call's
/// [`options`](Self::options) and [`tags`](Self::tags) (both optional), then end it with
/// [`or_load`](Self::or_load), [`or_load_optional`](Self::or_load_optional),
/// [`insert`](Self::insert) or [`insert_versioned`](Self::insert_versioned).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// use std::time::Duration;
/// use layercache::{EntryOptions, LayerCache};
///
/// let cache = LayerCache::builder("app").build().await?;
/// let users = cache.region::<u64, String>("users").build().await?;
/// let short = EntryOptions::new().ttl(Duration::from_secs(5));
///
/// // The loader gets the key.
/// let name = users
///     .entry(&7)
///     .options(&short)
///     .tags(&["team:1"])
///     .or_load(|id| async move { Ok::<_, std::io::Error>(format!("user {id}")) })
///     .await?;
/// assert_eq!(name.as_str(), "user 7");
///
/// // "Not found" is an answer too (cached for `negative_ttl`, when set).
/// let none = users
///     .entry(&8)
///     .or_load_optional(|_| async { Ok::<Option<String>, std::io::Error>(None) })
///     .await?;
/// assert!(none.is_none());
///
/// users.entry(&9).tags(&["team:1"]).insert("Ada".to_owned()).await?;
/// cache.invalidate_tag("team:1").await?;
/// assert!(users.get(&9).await?.is_none());
/// # Ok(())
/// # }
/// ```
#[must_use = "an entry request does nothing until it ends in or_load, insert, …"]
pub struct EntryRequest<'r, K: ?Sized, V, C, Q: ?Sized> {
    region: &'r Region<K, V, C>,
    key: &'r Q,
    options: Option<&'r EntryOptions>,
    tags: &'r [&'r str],
}

impl<K: ?Sized, V, C, Q: ?Sized + std::fmt::Debug> std::fmt::Debug
    for EntryRequest<'_, K, V, C, Q>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryRequest")
            .field("key", &self.key)
            .field("options", &self.options)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// A call on `key` with options or tags of its own: see [`EntryRequest`].
    pub fn entry<'r, Q>(&'r self, key: &'r Q) -> EntryRequest<'r, K, V, C, Q>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        EntryRequest {
            region: self,
            key,
            options: None,
            tags: &[],
        }
    }
}

impl<'r, K, V, C, Q> EntryRequest<'r, K, V, C, Q>
where
    K: CacheKey + ?Sized + 'static + Borrow<Q>,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
    Q: CacheKey + ?Sized,
{
    /// Entry options for this call (lifetimes, early refresh, fail-safe, load lock …).
    ///
    /// Default: the region's ([`Region::entry_options`]).
    pub fn options(mut self, options: &'r EntryOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Tags for what this call writes or loads, so that
    /// [`LayerCache::invalidate_tag`](crate::LayerCache::invalidate_tag) removes it (on every
    /// instance). At most 32 tags of 1 to 128 bytes. A value found in Redis keeps the tags it
    /// was written with.
    ///
    /// Default: none.
    pub fn tags(mut self, tags: &'r [&'r str]) -> Self {
        self.tags = tags;
        self
    }

    fn entry_options(&self) -> EntryOptions {
        self.options
            .copied()
            .unwrap_or(self.region.shared.entry_options)
    }

    /// Reads the key, or runs `loader` with it to produce the value, stores it in both tiers
    /// and returns it: [`Region::get_or_load`] with this call's options and tags.
    ///
    /// # Errors
    ///
    /// As [`Region::get_or_load`]; [`ErrorKind::Config`] for invalid options or tags.
    pub async fn or_load<F, Fut, E>(self, loader: F) -> Result<Arc<V>>
    where
        Q: ToOwned,
        Q::Owned: Send + 'static,
        F: FnOnce(Q::Owned) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.or_load_with_context(|key, _| loader(key)).await
    }

    /// [`or_load`](Self::or_load) whose loader also gets a [`LoadContext`], to set the stored
    /// value's lifetime from what it loaded (a token's expiry, a row's cache hint).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// use std::time::Duration;
    /// # let cache = layercache::LayerCache::builder("app").build().await?;
    /// let tokens = cache.region::<str, String>("tokens").build().await?;
    /// let token = tokens
    ///     .entry("svc-a")
    ///     .or_load_with_context(|name, ctx| async move {
    ///         let (token, expires_in) = (format!("token for {name}"), Duration::from_secs(30));
    ///         ctx.set_ttl(expires_in); // cached no longer than the token is valid
    ///         Ok::<_, std::io::Error>(token)
    ///     })
    ///     .await?;
    /// # assert_eq!(token.as_str(), "token for svc-a");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`or_load`](Self::or_load).
    pub async fn or_load_with_context<F, Fut, E>(self, loader: F) -> Result<Arc<V>>
    where
        Q: ToOwned,
        Q::Owned: Send + 'static,
        F: FnOnce(Q::Owned, LoadContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let key = self.key;
        let make = move || {
            let owned = key.to_owned();
            let context = LoadContext::default();
            let given = context.clone();
            boxed(
                move || async move { loader(owned, given).await.map(Some) },
                Some(context),
            )
        };
        let options = self.entry_options();
        match self
            .region
            .read_through(key, &options, self.tags, make, false)
            .await?
        {
            Some(v) => Ok(v),
            None => Err(Error::new(ErrorKind::Loader, "the load produced no value")),
        }
    }

    /// Read-through for sources that may find nothing: `loader` returns `Ok(None)` for "not
    /// found", which is cached for [`EntryOptions::negative_ttl`] (in both tiers) when that is
    /// set, so the source is not asked again meanwhile. A cached "not found" answers `Ok(None)`.
    ///
    /// # Errors
    ///
    /// As [`or_load`](Self::or_load).
    pub async fn or_load_optional<F, Fut, E>(self, loader: F) -> Result<Option<Arc<V>>>
    where
        Q: ToOwned,
        Q::Owned: Send + 'static,
        F: FnOnce(Q::Owned) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let key = self.key;
        let make = move || {
            let owned = key.to_owned();
            boxed(move || loader(owned), None)
        };
        let options = self.entry_options();
        self.region
            .read_through(key, &options, self.tags, make, true)
            .await
    }

    /// Writes the value to both tiers and announces it: [`Region::insert`] with this call's
    /// options and tags.
    ///
    /// # Errors
    ///
    /// As [`Region::insert`]; [`ErrorKind::Config`] for invalid options or tags.
    pub async fn insert(self, value: V) -> Result<()> {
        let options = self.entry_options();
        self.region
            .write_value(self.key, value, &options, self.tags, None)
            .await
            .map(|_| ())
    }

    /// [`Region::insert_versioned`] with this call's options and tags: returns whether the
    /// value was written (`false`: Redis holds a higher source version).
    ///
    /// # Errors
    ///
    /// As [`Region::insert`]; [`ErrorKind::Config`] for invalid options or tags.
    pub async fn insert_versioned(self, value: V, version: u64) -> Result<bool> {
        let options = self.entry_options();
        self.region
            .write_value(self.key, value, &options, self.tags, Some(version))
            .await
    }
}
