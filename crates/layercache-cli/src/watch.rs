//! `watch` and `instances`: the cache's bus, live.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use layercache::bus::{self, InstanceId, WireEntry, WireMessage};
use serde_json::json;

use crate::{
    output::{redact, Failure, Out},
    Cli,
};

/// How long to listen, and what to show.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Do not print heartbeats (messages with no entries); gaps in them are still reported.
    #[arg(long)]
    no_heartbeats: bool,
    /// On a Redis Cluster, the cache runs its bus on plain pub/sub (`ClusterBus::Plain`), not
    /// on sharded pub/sub (the default).
    #[arg(long)]
    plain: bool,
}

/// What one sender was seen doing.
#[derive(Debug, Default)]
struct Sender {
    messages: u64,
    heartbeats: u64,
    last_seq: u64,
    lost: u64,
    last_heard: Option<Instant>,
}

/// The bus heard so far.
#[derive(Debug, Default)]
struct Heard {
    senders: BTreeMap<InstanceId, Sender>,
    dropped: u64,
}

impl Heard {
    /// Records a message; returns how many of the sender's messages went missing before it,
    /// and how long since the sender was last heard.
    fn record(&mut self, m: &WireMessage, now: Instant) -> (u64, Option<Duration>) {
        let s = self.senders.entry(m.sender).or_default();
        let lost = if s.messages > 0 && m.seq > s.last_seq + 1 {
            m.seq - s.last_seq - 1
        } else {
            0
        };
        let since = s.last_heard.map(|t| now.duration_since(t));
        s.messages += 1;
        s.heartbeats += u64::from(m.entries.is_empty());
        s.lost += lost;
        s.last_seq = s.last_seq.max(m.seq);
        s.last_heard = Some(now);
        (lost, since)
    }
}

fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => format!("0x{}", crate::inspect::hex(key)),
    }
}

fn entry_text(e: &WireEntry) -> String {
    match e {
        WireEntry::Key { region, key } => format!("key {region}/{}", key_text(key)),
        WireEntry::Region {
            region,
            schema,
            generation,
        } => format!("region {region} (schema {schema}) to generation {generation}"),
        WireEntry::Tag(t) => format!("tag {t}"),
        WireEntry::All => "everything (clear)".to_owned(),
        WireEntry::Ack { to, seq } => format!("ack of {to}'s message {seq}"),
        WireEntry::AckRequested => "acknowledgement requested".to_owned(),
        _ => "an entry of a newer release".to_owned(),
    }
}

/// Subscribes to the cache's bus and calls `each` with every message (or undecodable bytes)
/// until `args`' limits are reached.
async fn listen(
    cli: &Cli,
    args: &Args,
    mut each: impl FnMut(Instant, Result<WireMessage, usize>),
) -> Result<(), Failure> {
    let client = crate::inspect::raw_client(cli).await?;
    let mut rx = client.message_rx();
    let channel = bus::channel(&cli.cache);
    let subscribed = if client.is_clustered() && !args.plain {
        client.ssubscribe(channel.as_str()).await
    } else {
        client.subscribe(channel.as_str()).await
    };
    subscribed.map_err(|e| {
        Failure::Redis(format!(
            "subscribing to {channel} at {}: {e}",
            redact(&cli.url)
        ))
    })?;
    crate::output::note(&format!("listening to {channel} at {}", redact(&cli.url)));
    let deadline = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok(),
                None => Some(rx.recv().await),
            }
        };
        let Some(received) = next.await else {
            break;
        };
        let Ok(message) = received else {
            break;
        };
        let now = Instant::now();
        let decoded = match message.value.as_bytes() {
            Some(bytes) => bus::read_message(bytes).map_err(|_| bytes.len()),
            None => Err(0),
        };
        seen += 1;
        each(now, decoded);
    }
    let _ = client.quit().await;
    Ok(())
}

pub(crate) async fn watch(cli: &Cli, out: &mut Out, args: &Args) -> Result<(), Failure> {
    let started = Instant::now();
    let mut heard = Heard::default();
    listen(cli, args, |now, decoded| {
        let t = now.duration_since(started).as_secs_f64();
        match decoded {
            Err(bytes) => {
                heard.dropped += 1;
                out.line(
                    &json!({ "t": t, "dropped": bytes }),
                    &format!("{t:>9.3}s dropped: {bytes} bytes that are not a bus message"),
                );
            }
            Ok(m) => {
                let (lost, since) = heard.record(&m, now);
                if m.entries.is_empty() && args.no_heartbeats && lost == 0 {
                    return;
                }
                let what: Vec<String> = m.entries.iter().map(entry_text).collect();
                let gap = if lost > 0 {
                    format!("  GAP: {lost} message(s) of this sender lost before this one")
                } else {
                    String::new()
                };
                out.line(
                    &json!({
                        "t": t,
                        "sender": m.sender.to_string(),
                        "seq": m.seq,
                        "heartbeat": m.entries.is_empty(),
                        "entries": what,
                        "lost_before": lost,
                        "since_last_ms": since.map(|d| d.as_millis()),
                    }),
                    &format!(
                        "{t:>9.3}s {} seq {:<6} {}{gap}",
                        &m.sender.to_string()[..8],
                        m.seq,
                        if what.is_empty() {
                            "heartbeat".to_owned()
                        } else {
                            what.join(", ")
                        }
                    ),
                );
            }
        }
    })
    .await
}

/// Milliseconds from `at` (Unix milliseconds) to now.
fn ms_ago(at: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now.saturating_sub(at)
}

/// Every instance of the cache: the presence records in Redis (version, start, last flush and
/// why), joined with what the bus carried while listening (who is alive, gaps).
pub(crate) async fn instances(cli: &Cli, out: &mut Out, seconds: f64) -> Result<(), Failure> {
    let cache = crate::connect(cli).await?;
    let me = cache.instance_id().map(|id| id.to_string());
    let records = cache
        .instances_in_redis()
        .await
        .map_err(|e| Failure::from_cache(&cli.url, &e));
    cache.shutdown().await;
    let records = records?;
    let args = Args {
        count: None,
        seconds: Some(seconds),
        no_heartbeats: true,
        plain: false,
    };
    let mut heard = Heard::default();
    listen(cli, &args, |now, decoded| {
        if let Ok(m) = decoded {
            heard.record(&m, now);
        } else {
            heard.dropped += 1;
        }
    })
    .await?;
    let now = Instant::now();
    let mut rows: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for r in records {
        if Some(&r.id) == me.as_ref() {
            continue;
        }
        rows.insert(
            r.id.clone(),
            json!({
                "instance": r.id,
                "version": r.version,
                "up_s": r.started_ms.map(|s| ms_ago(s) / 1000),
                "l1_entries": r.l1_entries,
                "flushes": r.flushes,
                "last_flush": r.last_flush.as_ref().map(|(reason, _)| reason.clone()),
                "last_flush_s_ago": r.last_flush.as_ref().map(|(_, at)| ms_ago(*at) / 1000),
                "regions": r.regions,
                "heard": false,
            }),
        );
    }
    for (id, s) in &heard.senders {
        let id = id.to_string();
        if Some(&id) == me.as_ref() {
            continue;
        }
        let row = rows
            .entry(id.clone())
            .or_insert_with(|| json!({ "instance": id, "version": null }));
        row["heard"] = json!(true);
        row["messages"] = json!(s.messages);
        row["heartbeats"] = json!(s.heartbeats);
        row["lost"] = json!(s.lost);
        row["last_heard_ms_ago"] = json!(s.last_heard.map(|t| now.duration_since(t).as_millis()));
    }
    out.instances(
        &cli.cache,
        seconds,
        rows.into_values().collect(),
        heard.dropped,
    );
    Ok(())
}
