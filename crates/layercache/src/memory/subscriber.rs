//! The in-memory server's bus channel as the backplane's receiving half.

use std::time::Duration;

use tokio::sync::{broadcast, broadcast::error::RecvError, watch};

use super::MemoryServer;
use crate::{
    backplane::{BusEvent, Subscriber},
    error::Result,
    remote::BoxFuture,
};

/// A subscription to one channel of a [`MemoryServer`]; it sees the server go down (a failed
/// connection) and come back (a reconnection).
pub(crate) struct MemorySubscriber {
    server: MemoryServer,
    messages: broadcast::Receiver<Vec<u8>>,
    up: watch::Receiver<bool>,
    channel: String,
}

impl MemorySubscriber {
    pub(super) fn new(
        server: MemoryServer,
        messages: broadcast::Receiver<Vec<u8>>,
        channel: &str,
    ) -> Self {
        let mut up = server.up();
        up.mark_unchanged();
        Self {
            server,
            messages,
            up,
            channel: channel.to_owned(),
        }
    }
}

impl Subscriber for MemorySubscriber {
    fn next_event(&mut self) -> BoxFuture<'_, BusEvent> {
        Box::pin(async move {
            tokio::select! {
                biased;
                changed = self.up.changed() => match changed {
                    Ok(()) if *self.up.borrow_and_update() => BusEvent::Reconnected,
                    Ok(()) => BusEvent::Failed(format!(
                        "the memory server is unavailable (channel {})",
                        self.channel
                    )),
                    Err(_) => BusEvent::Closed,
                },
                m = self.messages.recv() => match m {
                    Ok(bytes) => BusEvent::Message(bytes),
                    Err(RecvError::Lagged(missed)) => BusEvent::Lagged(missed),
                    Err(RecvError::Closed) => BusEvent::Closed,
                },
            }
        })
    }

    fn subscribe(&self, _within: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(self.server.check("subscribe")))
    }

    fn is_connected(&self) -> bool {
        self.server.is_available()
    }

    fn close(&mut self, _within: Duration) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
