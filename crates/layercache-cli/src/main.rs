//! `layercache-cli`: an operator's tool for a cache in Redis.
//!
//! It talks to Redis directly and to running instances through the cache's own protocol: it
//! joins the cache as one more (short-lived) instance, so an `invalidate` writes the same
//! tombstones, generation moves and tag marks a service would, and announces them on the bus
//! for running instances to apply at once.
//!
//! ```text
//! layercache-cli --url redis://127.0.0.1:6379 --cache shop regions
//! layercache-cli --cache shop inspect users 42
//! layercache-cli --cache shop invalidate key users 42
//! layercache-cli --cache shop invalidate tag team:7
//! layercache-cli --cache shop invalidate region users
//! layercache-cli --cache shop invalidate sessions web user:42
//! layercache-cli --cache shop invalidate rate login user:42
//! layercache-cli --cache shop invalidate lock nightly-report --yes
//! layercache-cli --cache shop invalidate all --yes
//! layercache-cli --cache shop watch --no-heartbeats
//! layercache-cli --cache shop instances
//! ```
//!
//! `--json` prints one JSON object. Exit codes: 0 done; 1 Redis unreachable, refused or
//! failing; 2 bad usage (including `invalidate all` and `invalidate lock` without `--yes`);
//! 3 no such key or region; 4 the key holds something that is not a sound layercache entry.
//! Every message names the URL with its password hidden.

mod inspect;
mod output;
mod watch;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use layercache::{LayerCache, Region};
use output::{Failure, Out};
use serde::{Deserialize, Serialize};

/// An operator's tool for layercache: inspect entries in Redis, list regions, invalidate
/// through the cache's own protocol.
#[derive(Debug, Parser)]
#[command(name = "layercache-cli", version)]
struct Cli {
    /// The Redis URL: redis://, redis-cluster://, redis-sentinel:// (as the service uses).
    #[arg(long, env = "LAYERCACHE_URL", default_value = "redis://127.0.0.1:6379")]
    url: String,
    /// The cache's name, as the service gives it to `LayerCache::builder`.
    #[arg(long, env = "LAYERCACHE_CACHE")]
    cache: String,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Progress of long walks (key counts, tag invalidations) on stderr: a bar on a terminal
    /// (`auto`), also plain lines elsewhere (`always`), or none.
    #[arg(long, value_enum, global = true, default_value = "auto")]
    progress: output::ShowProgress,
    /// How long to wait for Redis (connecting, and each command), in seconds.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show one entry: the envelope header, TTL, tags, checksum verdict and payload.
    Inspect(inspect::Args),
    /// List every region of the cache found in Redis, with its generation and key count.
    #[command(alias = "generations")]
    Regions {
        /// Skip the key counts (each is a walk of the keyspace).
        #[arg(long)]
        no_count: bool,
    },
    /// Print the cache's bus live: senders, sequence numbers, gaps, heartbeats.
    Watch(watch::Args),
    /// List the instances heard on the bus (each sends a heartbeat every second by default).
    Instances {
        /// How long to listen, in seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Invalidate through the cache's protocol, announced to running instances.
    Invalidate {
        #[command(subcommand)]
        what: Target,
    },
}

#[derive(Debug, Subcommand)]
enum Target {
    /// One key of a region (a tombstone in Redis; instances drop it from L1).
    Key {
        /// The region's name.
        region: String,
        /// The key, as the service's `CacheKey` writes it (strings and integers as text).
        key: String,
        /// The key is hex (for binary keys).
        #[arg(long)]
        hex: bool,
        /// The region's schema version.
        #[arg(long, default_value_t = 1)]
        schema: u32,
    },
    /// Every entry carrying a tag, in every region.
    Tag {
        /// The tag.
        tag: String,
    },
    /// A whole region (its generation moves forward).
    Region {
        /// The region's name.
        region: String,
        /// The region's schema version.
        #[arg(long, default_value_t = 1)]
        schema: u32,
    },
    /// Every session of one owner in a session store ("sign out everywhere").
    Sessions {
        /// The session store's name (`LayerCache::sessions`).
        store: String,
        /// The owner (as given to `SessionStore::create_for`).
        owner: String,
    },
    /// What a rate limiter counted for one key (its next check starts afresh).
    Rate {
        /// The rate limiter's name (`LayerCache::rate_limiter`).
        limiter: String,
        /// The limited key, as the service's `CacheKey` writes it.
        key: String,
        /// The key is hex (for binary keys).
        #[arg(long)]
        hex: bool,
    },
    /// A distributed lock, whoever holds it (a holder still alive finds it lost; fences keep
    /// rising).
    Lock {
        /// The lock's name (`LayerCache::lock`).
        name: String,
        /// Required: this lets another instance take a lock that may still be in use.
        #[arg(long)]
        yes: bool,
    },
    /// Everything in the cache, on every instance.
    All {
        /// Required: this empties the cache for every instance of the service.
        #[arg(long)]
        yes: bool,
    },
}

/// The value type of the regions the tool opens: it never decodes a value (tombstones carry no
/// type fingerprint, and inspection reads raw bytes).
#[derive(Debug, Serialize, Deserialize)]
struct Opaque;

/// The key's bytes, as given.
fn key_bytes(key: &str, hex: bool) -> Result<Vec<u8>, Failure> {
    if !hex {
        return Ok(key.as_bytes().to_vec());
    }
    let digits = key.as_bytes();
    if digits.len() % 2 != 0 {
        return Err(Failure::Usage(format!(
            "--hex key {key:?} has an odd number of digits"
        )));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| Failure::Usage(format!("--hex key {key:?} is not hexadecimal")))
        })
        .collect()
}

/// Joins the cache as a short-lived instance.
async fn connect(cli: &Cli) -> Result<LayerCache, Failure> {
    let timeout = Duration::from_secs(cli.timeout.max(1));
    LayerCache::builder(cli.cache.clone())
        .redis_url(cli.url.clone())
        .l2_connect_timeout(timeout)
        .l2_command_timeout(timeout)
        .l2_error_policy(layercache::L2ErrorPolicy::Propagate)
        .build()
        .await
        .map_err(|e| Failure::from_cache(&cli.url, &e))
}

/// Opens a region known to Redis (so the tool never creates one that is not there).
async fn region(
    cli: &Cli,
    cache: &LayerCache,
    name: &str,
    schema: u32,
) -> Result<Region<[u8], Opaque>, Failure> {
    let known = cache
        .regions_in_redis()
        .await
        .map_err(|e| Failure::from_cache(&cli.url, &e))?;
    if !known.iter().any(|r| r.name == name && r.schema == schema) {
        let others: Vec<String> = known
            .iter()
            .map(|r| format!("{} (schema {})", r.name, r.schema))
            .collect();
        return Err(Failure::NotFound(format!(
            "cache {:?} has no region {name:?} with schema {schema} in Redis at {}; regions there: {}",
            cli.cache,
            output::redact(&cli.url),
            if others.is_empty() { "none".to_owned() } else { others.join(", ") }
        )));
    }
    cache
        .region::<[u8], Opaque>(name)
        .schema_version(schema)
        .build()
        .await
        .map_err(|e| Failure::from_cache(&cli.url, &e))
}

async fn regions(cli: &Cli, out: &mut Out, count: bool) -> Result<(), Failure> {
    let cache = connect(cli).await?;
    let found = cache
        .regions_in_redis()
        .await
        .map_err(|e| Failure::from_cache(&cli.url, &e))?;
    let mut rows = Vec::new();
    for r in &found {
        let keys = match (count, r.generation) {
            (true, Some(g)) => {
                let mut bar = out.progress(&format!("counting keys of {}", r.name));
                let n = cache
                    .count_region_keys(&r.name, r.schema, g, |n| bar.set(n))
                    .await
                    .map_err(|e| Failure::from_cache(&cli.url, &e))?;
                bar.finish();
                Some(n)
            }
            _ => None,
        };
        rows.push(serde_json::json!({
            "region": r.name,
            "schema": r.schema,
            "generation": r.generation,
            "keys": keys,
        }));
    }
    cache.shutdown().await;
    out.regions(&cli.cache, rows);
    Ok(())
}

async fn invalidate(cli: &Cli, out: &mut Out, what: &Target) -> Result<(), Failure> {
    if let Target::All { yes: false } = what {
        return Err(Failure::Usage(format!(
            "invalidate all empties cache {:?} for every instance: add --yes to do it",
            cli.cache
        )));
    }
    if let Target::Lock { name, yes: false } = what {
        return Err(Failure::Usage(format!(
            "invalidate lock {name:?} lets another instance take it while its holder may still run: add --yes to do it"
        )));
    }
    let cache = connect(cli).await?;
    let fail = |e: layercache::Error| Failure::from_cache(&cli.url, &e);
    let done = match what {
        Target::Key {
            region: name,
            key,
            hex,
            schema,
        } => {
            let bytes = key_bytes(key, *hex)?;
            let r = region(cli, &cache, name, *schema).await?;
            r.invalidate(bytes.as_slice()).await.map_err(fail)?;
            format!("key {key:?} of region {name:?}")
        }
        Target::Tag { tag } => {
            let mut bar = out.progress(&format!("tag {tag}: entries deleted"));
            cache
                .invalidate_tag_with_progress(tag, |n| bar.set(n))
                .await
                .map_err(fail)?;
            bar.finish();
            format!("tag {tag:?}")
        }
        Target::Region {
            region: name,
            schema,
        } => {
            let r = region(cli, &cache, name, *schema).await?;
            r.invalidate_all().await.map_err(fail)?;
            format!("region {name:?}")
        }
        Target::Sessions { store, owner } => {
            let sessions = cache
                .sessions::<Opaque>(store.as_str())
                .build()
                .await
                .map_err(fail)?;
            sessions.destroy_all_of(owner).await.map_err(fail)?;
            format!("the sessions of {owner:?} in store {store:?}")
        }
        Target::Rate { limiter, key, hex } => {
            let bytes = key_bytes(key, *hex)?;
            // The limit is not needed to forget a key's count.
            let any = layercache::RateLimit::fixed_window(1, Duration::from_secs(1));
            let l = cache.rate_limiter(limiter, any).map_err(fail)?;
            l.reset(bytes.as_slice()).await.map_err(fail)?;
            format!("the count of {key:?} in rate limiter {limiter:?}")
        }
        Target::Lock { name, .. } => {
            cache.break_lock(name).await.map_err(fail)?;
            format!("lock {name:?}")
        }
        Target::All { .. } => {
            let mut bar = out.progress("clear: outdated keys deleted");
            cache
                .clear_with_progress(|n| bar.set(n))
                .await
                .map_err(fail)?;
            bar.finish();
            "every entry".to_owned()
        }
    };
    // A rate limiter's count and a lock are not held in any L1: nothing is announced.
    let announced = !matches!(what, Target::Rate { .. } | Target::Lock { .. });
    let status = cache.bus_status().filter(|_| announced);
    cache.shutdown().await;
    out.invalidated(&done, status.as_ref());
    Ok(())
}

async fn run(cli: &Cli, out: &mut Out) -> Result<(), Failure> {
    match &cli.command {
        Command::Inspect(args) => inspect::run(cli, out, args).await,
        Command::Regions { no_count } => regions(cli, out, !no_count).await,
        Command::Watch(args) => watch::watch(cli, out, args).await,
        Command::Instances { seconds } => watch::instances(cli, out, *seconds).await,
        Command::Invalidate { what } => invalidate(cli, out, what).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = Out::new(cli.json, cli.progress);
    match run(&cli, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => out.fail(&failure),
    }
}
