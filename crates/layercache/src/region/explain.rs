//! [`Region::explain`]: what one key looks like in each tier right now, and what a `get` would
//! do — the question operators ask when a user reports a stale value.

use std::{
    borrow::Borrow,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    codec::Codec,
    freshness::unix_millis,
    key::CacheKey,
    l1::{expired, guard_set, slid_out, L1Entry},
    region::Region,
};

/// What one key looks like right now, from [`Region::explain`]. `Debug` shows it all;
/// `Display` is a few readable lines.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The Redis key the region's current generation maps the key to, as Redis names it (on a
    /// cluster with its bucket's hash tag; `None`: no Redis tier, or the generation is not known
    /// yet).
    pub redis_key: Option<String>,
    /// The region's generation, as this instance knows it.
    pub generation: Option<u64>,
    /// What this instance's in-process tier holds.
    pub l1: Held,
    /// What Redis holds.
    pub l2: Held,
    /// A write of this key that Redis did not confirm waits for its repair: reads skip Redis
    /// until it has run.
    pub repair_pending: bool,
    /// A fetch or load of this key is running in this process.
    pub fetch_running: bool,
    /// What a `get` would do now.
    pub next_get: NextGet,
}

/// What one tier holds for a key.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    /// The tier was not looked at: why (no Redis tier, the generation is not known, Redis
    /// failed).
    NotChecked(String),
    /// Nothing.
    Nothing,
    /// A tombstone left by an invalidation (Redis only), and how old it is.
    Tombstone {
        /// Time since the invalidation.
        age: Duration,
    },
    /// Something that is not served: why (corrupt or foreign bytes, another Redis type, an L1
    /// entry of an older generation or with an invalidated tag).
    Unusable(String),
    /// An entry.
    Entry(EntryState),
}

/// An entry in one tier.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct EntryState {
    /// A cached "not found".
    pub negative: bool,
    /// Past its logical expiry: served only as a fail-safe fallback.
    pub stale: bool,
    /// Time since it was created (`None` when the tier does not record it: an L1 entry
    /// without early refresh or fail-safe, whose lifetime moka alone keeps).
    pub age: Option<Duration>,
    /// Time left to its logical expiry (`None`: past it, or not recorded).
    pub expires_in: Option<Duration>,
    /// Time left to its soft expiry, when it has one (zero: a refresh is due).
    pub refresh_in: Option<Duration>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its source version, if it was written with one.
    pub version: Option<u64>,
}

/// What a `get` of the key would do now.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextGet {
    /// Serve it from the in-process tier.
    FromL1,
    /// Serve it from the in-process tier, and (`get_or_load`) refresh it in the background.
    FromL1AndRefresh,
    /// Read it from Redis and put it in the in-process tier.
    FromRedis,
    /// Find nothing usable: `get` answers `None`, `get_or_load` runs its loader.
    Load,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self.redis_key.as_deref().unwrap_or("(no redis key)");
        writeln!(f, "{key} (generation {:?})", self.generation)?;
        writeln!(f, "  l1: {}", Shown(&self.l1))?;
        writeln!(f, "  l2: {}", Shown(&self.l2))?;
        if self.repair_pending {
            writeln!(f, "  a write Redis did not confirm waits for its repair")?;
        }
        if self.fetch_running {
            writeln!(f, "  a fetch is running")?;
        }
        write!(f, "  next get: {:?}", self.next_get)
    }
}

struct Shown<'a>(&'a Held);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Held::NotChecked(why) => write!(f, "not checked ({why})"),
            Held::Nothing => write!(f, "nothing"),
            Held::Tombstone { age } => write!(f, "tombstone, invalidated {age:?} ago"),
            Held::Unusable(why) => write!(f, "unusable ({why})"),
            Held::Entry(e) => {
                write!(f, "{}", if e.negative { "not found" } else { "value" })?;
                if e.stale {
                    write!(f, ", stale")?;
                }
                if let Some(age) = e.age {
                    write!(f, ", age {age:?}")?;
                }
                if let Some(left) = e.expires_in {
                    write!(f, ", expires in {left:?}")?;
                }
                if let Some(r) = e.refresh_in {
                    write!(f, ", refresh in {r:?}")?;
                }
                if !e.tags.is_empty() {
                    write!(f, ", tags {:?}", e.tags)?;
                }
                if let Some(v) = e.version {
                    write!(f, ", version {v}")?;
                }
                Ok(())
            }
        }
    }
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// What `key` looks like in each tier right now, and what a `get` would do: for a person
    /// looking into a report of a stale value. Reads Redis once (with a plain `GET`); touches
    /// no counter and changes nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// use layercache::NextGet;
    /// # let cache = layercache::LayerCache::builder("app").build().await?;
    /// let users = cache.region::<u64, String>("users").build().await?;
    /// users.insert(&1, "Ada".to_owned()).await?;
    /// let why = users.explain(&1).await;
    /// assert_eq!(why.next_get, NextGet::FromL1);
    /// println!("{why}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn explain<Q>(&self, key: &Q) -> Explanation
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let k = self.l1_key(key);
        let cache = &self.cache;
        let state = &self.shared.state;
        let generation = state.generation();
        // The key in the engine's terms (what entries are made for and checked against), and
        // as Redis names it (on a cluster, with its bucket's hash tag) for the operator.
        let logical = match (&cache.l2, generation) {
            (Some(_), Some(g)) => Some(state.data_key(g, &k[4..])),
            _ => None,
        };
        let redis_key = match (&cache.l2, &logical) {
            (Some(l2), Some(rk)) => Some(l2.locate(rk)),
            _ => None,
        };
        let l1 = match cache.l1.get_any(&k) {
            // An entry whose own (or sliding) lifetime ended is gone for every read (moka frees
            // it later).
            None => Held::Nothing,
            Some(e) if expired(&e) || slid_out(&e) => Held::Nothing,
            Some(e) if e.generation != state.generation_raw() => {
                Held::Unusable("filled under an older generation of the region".to_owned())
            }
            Some(e) if guard_set(&e) => Held::Unusable(
                "a write or invalidation overtook the read that put it in".to_owned(),
            ),
            Some(e) if !cache.l1.usable(&e) => {
                Held::Unusable("one of its tags was invalidated since".to_owned())
            }
            Some(e) => Held::Entry(l1_state(&e)),
        };
        let l2 = match (&cache.l2, &logical) {
            (None, _) => Held::NotChecked("no redis tier".to_owned()),
            (Some(_), None) => {
                Held::NotChecked("the region's generation is not known yet".to_owned())
            }
            (Some(l2), Some(rk)) => match l2.get(rk).await {
                Ok(None) => Held::Nothing,
                Ok(Some(bytes)) => match self.decode(&bytes, rk) {
                    Err(reason) => Held::Unusable(reason.to_string()),
                    Ok(d) if d.meta.tombstone => Held::Tombstone {
                        age: Duration::from_millis(
                            unix_millis().saturating_sub(d.meta.created_at_ms),
                        ),
                    },
                    Ok(d) => {
                        let now = unix_millis();
                        let left = |at: u64| Duration::from_millis(at.saturating_sub(now));
                        let stale = now >= d.meta.expires_at_ms;
                        Held::Entry(EntryState {
                            negative: d.meta.negative,
                            stale,
                            age: Some(Duration::from_millis(
                                now.saturating_sub(d.meta.created_at_ms),
                            )),
                            expires_in: (!stale).then(|| left(d.meta.expires_at_ms)),
                            refresh_in: (d.meta.refresh_at_ms < d.meta.expires_at_ms)
                                .then(|| left(d.meta.refresh_at_ms)),
                            tags: d
                                .tags
                                .as_deref()
                                .map(<[String]>::to_vec)
                                .unwrap_or_default(),
                            version: d.meta.version,
                        })
                    }
                },
                Err(e) if e.is_wrong_type() => Held::Unusable("another Redis type".to_owned()),
                Err(e) => Held::NotChecked(format!("redis failed: {e}")),
            },
        };
        let repair_pending = cache.journal.blocks(&k);
        let fresh = |h: &Held| matches!(h, Held::Entry(e) if !e.stale);
        let next_get = match &l1 {
            Held::Entry(e) if !e.stale => {
                if e.refresh_in == Some(Duration::ZERO) {
                    NextGet::FromL1AndRefresh
                } else {
                    NextGet::FromL1
                }
            }
            _ if !repair_pending && fresh(&l2) => NextGet::FromRedis,
            _ => NextGet::Load,
        };
        Explanation {
            redis_key,
            generation,
            l1,
            l2,
            repair_pending,
            fetch_running: cache.flights.is_running(&k),
            next_get,
        }
    }
}

/// What an L1 entry says of itself.
fn l1_state(e: &L1Entry) -> EntryState {
    let extra = e.extra.as_deref();
    let fresh = extra.and_then(|x| x.fresh.as_ref());
    let now = Instant::now();
    let stale = fresh.is_some_and(|f| now >= f.expires);
    EntryState {
        negative: e.negative,
        stale,
        age: fresh.map(|f| Duration::from_millis(unix_millis().saturating_sub(f.created_ms))),
        expires_in: fresh.filter(|_| !stale).map(|f| f.expires - now),
        refresh_in: fresh
            .and_then(|f| f.refresh_at)
            .map(|r| r.saturating_duration_since(now)),
        tags: extra
            .and_then(|x| x.tags.as_deref())
            .map(<[String]>::to_vec)
            .unwrap_or_default(),
        version: e.version,
    }
}
