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
        _ => format!(
            "0x{}",
            key.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
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

pub(crate) async fn instances(cli: &Cli, out: &mut Out, seconds: f64) -> Result<(), Failure> {
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
    let rows: Vec<serde_json::Value> = heard
        .senders
        .iter()
        .map(|(id, s)| {
            json!({
                "instance": id.to_string(),
                "messages": s.messages,
                "heartbeats": s.heartbeats,
                "last_seq": s.last_seq,
                "lost": s.lost,
                "last_heard_ms_ago": s.last_heard.map(|t| now.duration_since(t).as_millis()),
            })
        })
        .collect();
    out.instances(&cli.cache, seconds, rows, heard.dropped);
    Ok(())
}
