//! `inspect`: one entry as Redis holds it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::{
    prelude::{Builder, Client, ClientLike, Config, KeysInterface},
    types::{ClusterHash, CustomCommand},
};
use layercache::envelope::{self, Inspection};
use serde_json::json;

use crate::{
    output::{redact, Failure, Out},
    Cli,
};

/// The largest payload the tool decompresses.
const MAX_RAW: usize = 64 << 20;
/// How much of the payload is shown as hex.
const SHOWN: usize = 64;

/// What to inspect: a region's key, or any Redis key as is.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The region's name (then KEY), or nothing with --redis-key.
    #[arg(required_unless_present = "redis_key")]
    region: Option<String>,
    /// The key, as the service's `CacheKey` writes it (strings and integers as text).
    #[arg(required_unless_present = "redis_key")]
    key: Option<String>,
    /// The key is hex (for binary keys).
    #[arg(long)]
    hex: bool,
    /// The region's schema version.
    #[arg(long, default_value_t = 1)]
    schema: u32,
    /// A Redis key to inspect as it is named in Redis.
    #[arg(long, conflicts_with_all = ["region", "key"])]
    redis_key: Option<String>,
}

/// The Redis key the arguments name.
async fn redis_key(cli: &Cli, args: &Args) -> Result<String, Failure> {
    if let Some(k) = &args.redis_key {
        return Ok(k.clone());
    }
    let (Some(name), Some(key)) = (&args.region, &args.key) else {
        return Err(Failure::Usage(
            "inspect needs REGION KEY or --redis-key".to_owned(),
        ));
    };
    let bytes = crate::key_bytes(key, args.hex)?;
    let cache = crate::connect(cli).await?;
    let region = crate::region(cli, &cache, name, args.schema).await?;
    let found = region.redis_key(bytes.as_slice());
    cache.shutdown().await;
    found.ok_or_else(|| {
        Failure::Redis(format!(
            "the generation of region {name:?} could not be read from Redis at {}",
            redact(&cli.url)
        ))
    })
}

/// A failed call to Redis, with the URL redacted.
fn unreachable(cli: &Cli, e: &fred::error::Error) -> Failure {
    Failure::Redis(format!("Redis at {}: {e}", redact(&cli.url)))
}

/// A plain fred client on the URL (clustered for a cluster URL), connected.
pub(crate) async fn raw_client(cli: &Cli) -> Result<Client, Failure> {
    let unreachable = |e| unreachable(cli, &e);
    let scheme = cli.url.split_once("://").map_or("", |(s, _)| s);
    if !matches!(
        scheme,
        "redis"
            | "rediss"
            | "redis-cluster"
            | "rediss-cluster"
            | "redis-sentinel"
            | "rediss-sentinel"
    ) {
        return Err(Failure::Usage(format!(
            "the URL {} is not a Redis URL: use redis://, rediss://, redis-cluster:// or \
             redis-sentinel://",
            redact(&cli.url)
        )));
    }
    let config = Config::from_url(&cli.url)
        .map_err(|e| Failure::Usage(format!("the URL {} is not valid: {e}", redact(&cli.url))))?;
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let client = Builder::from_config(config)
        .with_connection_config(|c| c.connection_timeout = timeout)
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .build()
        .map_err(unreachable)?;
    match tokio::time::timeout(timeout, client.init()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(unreachable(e)),
        Err(_) => {
            let _ = client.quit().await;
            Err(Failure::Redis(format!(
                "Redis at {} did not answer within {timeout:?}",
                redact(&cli.url)
            )))
        }
    }
}

pub(crate) async fn run(cli: &Cli, out: &mut Out, args: &Args) -> Result<(), Failure> {
    let key = redis_key(cli, args).await?;
    let unreachable = |e| unreachable(cli, &e);
    let client = raw_client(cli).await?;
    let kind: String = client
        .custom(
            CustomCommand::new_static("TYPE", ClusterHash::FirstKey, false),
            vec![key.clone()],
        )
        .await
        .map_err(unreachable)?;
    let found = match kind.as_str() {
        "none" => Err(Failure::NotFound(format!("no key {key:?} in Redis"))),
        "string" => Ok(()),
        other => Err(Failure::NotOurs(format!(
            "{key:?} holds a Redis {other}, not a layercache entry"
        ))),
    };
    if let Err(e) = found {
        let _ = client.quit().await;
        return Err(e);
    }
    let bytes: Option<Vec<u8>> = client.get(&key).await.map_err(unreachable)?;
    let pttl: i64 = client.pttl(&key).await.map_err(unreachable)?;
    let _ = client.quit().await;
    let Some(bytes) = bytes else {
        return Err(Failure::NotFound(format!("no key {key:?} in Redis")));
    };
    let inspection = envelope::inspect(&bytes, Some(key.as_bytes()), MAX_RAW).map_err(|_| {
        Failure::NotOurs(format!(
            "{key:?} is not a layercache entry ({} bytes, starting {})",
            bytes.len(),
            hex(&bytes[..bytes.len().min(16)])
        ))
    })?;
    let verdict = inspection.verdict;
    out.inspected(
        &as_json(&key, pttl, bytes.len(), &inspection),
        &as_text(&key, pttl, bytes.len(), &inspection),
    );
    verdict.map_err(|reason| {
        Failure::NotOurs(format!(
            "the entry under {key:?} is damaged: {reason} (a cache reads it as a miss)"
        ))
    })
}

/// Bytes as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_millis()).unwrap_or(i128::MAX))
}

/// `at` relative to now, for a person: "in 3.2 s", "5.0 s ago", "never".
fn relative(at: u64) -> String {
    if at == u64::MAX {
        return "never".to_owned();
    }
    let secs = (i128::from(at) - now_ms()) as f64 / 1000.0;
    if secs >= 0.0 {
        format!("in {secs:.1} s")
    } else {
        format!("{:.1} s ago", -secs)
    }
}

fn codec(id: u8) -> &'static str {
    match id {
        1 => "bincode",
        2 => "postcard",
        _ => "a custom codec",
    }
}

fn as_json(key: &str, pttl: i64, total: usize, i: &Inspection) -> serde_json::Value {
    json!({
        "redis_key": key,
        "ttl_ms": (pttl >= 0).then_some(pttl),
        "format": i.format,
        "codec_id": i.codec_id,
        "codec": codec(i.codec_id),
        "flags": i.flags,
        "compressed": i.compressed,
        "negative": i.negative,
        "tombstone": i.tombstone,
        "created_at_ms": i.created_at_ms,
        "expires_at_ms": i.expires_at_ms,
        "refresh_at_ms": (!i.tombstone).then_some(i.refresh_at_ms),
        "load_us": i.load_us,
        "raw_len": i.raw_len,
        "stored_len": i.stored_len,
        "envelope_len": total,
        "key_matches": i.key_matches,
        "type_fingerprint": format!("{:016x}", i.type_fingerprint),
        "version": i.version,
        "tags": i.tags,
        "verdict": match i.verdict { Ok(()) => "ok".to_owned(), Err(c) => c.to_string() },
        "payload_hex": hex(&i.payload),
    })
}

fn as_text(key: &str, pttl: i64, total: usize, i: &Inspection) -> String {
    let kind = if i.tombstone {
        "tombstone (left by an invalidation)"
    } else if i.negative {
        "not found (cached)"
    } else {
        "value"
    };
    let ttl = if pttl >= 0 {
        let s = pttl as f64 / 1000.0;
        format!("{s:.1} s")
    } else {
        "none".to_owned()
    };
    let ratio = if i.raw_len > 0 {
        format!(
            " ({:.1} % of raw)",
            f64::from(i.stored_len) * 100.0 / f64::from(i.raw_len)
        )
    } else {
        String::new()
    };
    let mut lines = vec![
        format!("redis key   {key}"),
        format!("kind        {kind}"),
        format!("ttl         {ttl}"),
        format!(
            "format      {}, codec {} ({}), flags {:#04x}{}",
            i.format,
            codec(i.codec_id),
            i.codec_id,
            i.flags,
            if i.compressed { " lz4" } else { "" }
        ),
        format!(
            "created     {} ({})",
            i.created_at_ms,
            relative(i.created_at_ms)
        ),
        format!("expires     {}", relative(i.expires_at_ms)),
    ];
    if !i.tombstone {
        lines.push(format!("refresh at  {}", relative(i.refresh_at_ms)));
    }
    let load_ms = f64::from(i.load_us) / 1000.0;
    lines.extend([
        format!("load time   {load_ms:.3} ms"),
        format!(
            "sizes       raw {} B, stored {} B{ratio}, envelope {total} B",
            i.raw_len, i.stored_len
        ),
        format!(
            "tags        {}",
            if i.tags.is_empty() {
                "-".to_owned()
            } else {
                i.tags.join(", ")
            }
        ),
        format!(
            "version     {}",
            i.version.map_or_else(|| "-".to_owned(), |v| v.to_string())
        ),
        format!("type        {:016x}", i.type_fingerprint),
        format!(
            "checks      {}",
            match i.verdict {
                Ok(()) => "ok (lengths, checksum, key)".to_owned(),
                Err(reason) => format!("FAILED: {reason}"),
            }
        ),
    ]);
    if !i.payload.is_empty() {
        let shown = &i.payload[..i.payload.len().min(SHOWN)];
        lines.push(format!(
            "payload     {}{} ({} is not self-describing: shown as hex)",
            hex(shown),
            if i.payload.len() > SHOWN { "…" } else { "" },
            codec(i.codec_id)
        ));
    }
    lines.join("\n")
}
