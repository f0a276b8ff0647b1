//! The publisher task: batches queued announcements into one message per `PUBLISH`, numbers
//! the messages, and sends a heartbeat every interval.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::{
    message::{self, Entry},
    Outgoing, Sequencer,
};
use crate::{
    error::Result,
    remote::{Announcement, Remote},
    stats::Counters,
};

/// At most this many entries or encoded bytes go into one message.
const MAX_ENTRIES: usize = 1024;
const MAX_BYTES: usize = 64 << 10;

pub(crate) struct Publisher {
    pub(crate) store: Remote,
    pub(crate) sequencer: Arc<Sequencer>,
    pub(crate) rx: mpsc::Receiver<Outgoing>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) heartbeat: Duration,
    pub(crate) shutdown: watch::Receiver<()>,
    pub(crate) cache_name: String,
}

impl Publisher {
    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let warnings = crate::telemetry::WarnLimiter::default();
        loop {
            let first = tokio::select! {
                _ = self.shutdown.changed() => break,
                m = self.rx.recv() => match m {
                    Some(m) => Some(m),
                    None => break,
                },
                _ = tick.tick() => None,
            };
            let mut entries: Vec<Entry> = Vec::new();
            let mut acks: Vec<oneshot::Sender<Result<u64>>> = Vec::new();
            if let Some(first) = first {
                let mut bytes = message::entry_len(&first.entry);
                entries.push(first.entry);
                acks.push(first.ack);
                while entries.len() < MAX_ENTRIES && bytes < MAX_BYTES {
                    match self.rx.try_recv() {
                        Ok(m) => {
                            bytes += message::entry_len(&m.entry);
                            entries.push(m.entry);
                            acks.push(m.ack);
                        }
                        Err(_) => break,
                    }
                }
            }
            let span = tracing::debug_span!(
                "layercache.invalidation.publish",
                cache.name = %self.cache_name,
                instance.id = %self.sequencer.id,
                seq = tracing::field::Empty,
                entries = entries.len(),
            );
            let id = self.sequencer.id;
            let encode = |seq| message::encode(&id.0, seq, &entries);
            let announcement = Announcement {
                sequencer: &self.sequencer,
                message: &encode,
            };
            let (seq, result) = self
                .store
                .publish(announcement)
                .instrument(span.clone())
                .await;
            span.record("seq", seq);
            let result = result.map(|()| seq);
            match &result {
                Ok(_) => self.counters.bus_sent.incr(),
                Err(e) => {
                    self.counters.bus_publish_errors.incr();
                    if let Some(suppressed) = warnings.admit("publish") {
                        tracing::warn!(
                            cache.name = %self.cache_name,
                            seq,
                            entries = entries.len(),
                            error = %e,
                            suppressed,
                            "bus publish failed; receivers will see a sequence gap"
                        );
                    }
                }
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
    }
}
