//! [`ManyRequest`]: one batch call on a region with this call's options and tags, ending in a
//! batch write or a batch read-through — the batch form of [`EntryRequest`](crate::EntryRequest).

use std::{borrow::Borrow, future::Future, sync::Arc};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    codec::Codec,
    error::{BoxError, Result},
    key::CacheKey,
    options::EntryOptions,
};

use super::Region;

/// One batch call on a [`Region`], from [`Region::many`]: set this call's
/// [`options`](Self::options) and [`tags`](Self::tags) (both optional), then end it with
/// [`insert`](Self::insert), [`insert_versioned`](Self::insert_versioned) or
/// [`get_or_load`](Self::get_or_load). Without either, these are
/// [`Region::insert_many`] and [`Region::get_or_load_many`].
///
/// Tagged batches follow the single-key rules for tags (see
/// [`EntryRequest::tags`](crate::EntryRequest::tags)): every key is recorded in its tags' sets,
/// and a load's fills are refused when one of its tags is invalidated while it runs. A tagged
/// batch is still one script run per chunk of keys (the batch script records each key it
/// writes in the tags' sets and, for a load, compares the marks), and a tagged `insert` one bus
/// message per chunk; a tagged `get_or_load` reads its tags' marks before the loader runs (one
/// `MGET`, on a cluster one per bucket: one more round trip).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// use std::time::Duration;
/// use layercache::{EntryOptions, LayerCache};
///
/// let cache = LayerCache::builder("app").build().await?;
/// let users = cache.region::<u64, String>("users").build().await?;
/// let short = EntryOptions::new().ttl(Duration::from_secs(30));
/// let found = users
///     .many()
///     .options(&short)
///     .tags(&["team:1"])
///     .get_or_load(&[1, 2], |ids: Vec<u64>| async move {
///         let rows: Vec<(u64, String)> = ids.into_iter().map(|id| (id, format!("user {id}"))).collect();
///         Ok::<_, std::io::Error>(rows)
///     })
///     .await;
/// assert!(found.iter().all(|r| r.as_ref().is_ok_and(Option::is_some)));
/// cache.invalidate_tag("team:1").await?;
/// assert!(users.get(&1).await?.is_none());
/// # Ok(())
/// # }
/// ```
#[must_use = "a batch request does nothing until it ends in insert, insert_versioned or get_or_load"]
pub struct ManyRequest<'r, K: ?Sized, V, C> {
    region: &'r Region<K, V, C>,
    options: Option<&'r EntryOptions>,
    tags: &'r [&'r str],
}

impl<K: ?Sized, V, C> std::fmt::Debug for ManyRequest<'_, K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManyRequest")
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
    /// A batch call with options or tags of its own: see [`ManyRequest`].
    pub fn many(&self) -> ManyRequest<'_, K, V, C> {
        ManyRequest {
            region: self,
            options: None,
            tags: &[],
        }
    }
}

impl<'r, K, V, C> ManyRequest<'r, K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Entry options for this call (lifetimes, negative caching, fail-safe, the loader's
    /// timeouts, the load lock …).
    ///
    /// Default: the region's ([`Region::entry_options`]).
    pub fn options(mut self, options: &'r EntryOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Tags for every value this call writes or loads, so that
    /// [`LayerCache::invalidate_tag`](crate::LayerCache::invalidate_tag) removes them (on every
    /// instance). At most 32 tags of 1 to 128 bytes.
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

    /// Stores many values: [`Region::insert_many`] with this call's options and tags. One
    /// answer per item, in order; options or tags a call cannot use fail every item with
    /// [`ErrorKind::Config`](crate::ErrorKind::Config), and nothing is written.
    pub async fn insert<'k, Q, I>(self, items: I) -> Vec<Result<()>>
    where
        I: IntoIterator<Item = (&'k Q, V)>,
        K: Borrow<Q>,
        Q: CacheKey + ?Sized + 'k,
    {
        let options = self.entry_options();
        let items = items.into_iter().map(|(k, v)| (k, v, None));
        let done = self.region.insert_many_as(items, &options, self.tags).await;
        done.into_iter().map(|r| r.map(|_| ())).collect()
    }

    /// Stores many values, each with its source version, as
    /// [`Region::insert_versioned`] stores one: a value is refused where Redis holds a higher
    /// version of its key (its answer `Ok(false)`), so concurrent writers converge on the
    /// newest whatever order their batches arrive in. One answer per item, in order: whether it
    /// was written. Still one script run and one bus message per chunk of keys.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// # let cache = layercache::LayerCache::builder("app").build().await?;
    /// let stock = cache.region::<str, u32>("stock").build().await?;
    /// let done = stock.many().insert_versioned([("a", 5, 10), ("b", 7, 10)]).await;
    /// assert!(done.iter().all(|r| matches!(r, Ok(true))));
    /// // An older version of "a" (9 < 10) loses; a newer one of "b" wins.
    /// let done = stock.many().insert_versioned([("a", 4, 9), ("b", 6, 11)]).await;
    /// assert!(matches!(done[..], [Ok(false), Ok(true)]));
    /// assert_eq!(stock.get("a").await?.as_deref(), Some(&5));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn insert_versioned<'k, Q, I>(self, items: I) -> Vec<Result<bool>>
    where
        I: IntoIterator<Item = (&'k Q, V, u64)>,
        K: Borrow<Q>,
        Q: CacheKey + ?Sized + 'k,
    {
        let options = self.entry_options();
        let items = items
            .into_iter()
            .map(|(k, v, version)| (k, v, Some(version)));
        self.region.insert_many_as(items, &options, self.tags).await
    }

    /// Reads many keys, loading every key neither tier has with one call of `batch_loader`:
    /// [`Region::get_or_load_many`] with this call's options and tags. One answer per key, in
    /// order; options or tags a call cannot use fail every key with
    /// [`ErrorKind::Config`](crate::ErrorKind::Config), and nothing is read or loaded.
    pub async fn get_or_load<'k, Q, I, F, Fut, R, E>(
        self,
        keys: I,
        batch_loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        I: IntoIterator<Item = &'k Q>,
        K: Borrow<Q>,
        Q: CacheKey + ToOwned + ?Sized + 'k,
        Q::Owned: Send + 'static,
        F: FnMut(Vec<Q::Owned>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
        R: IntoIterator<Item = (Q::Owned, V)>,
        E: Into<BoxError> + Send + 'static,
    {
        let options = self.entry_options();
        self.region
            .get_or_load_many_as(keys, &options, self.tags, batch_loader)
            .await
    }
}
