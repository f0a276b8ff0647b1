//! Redis pub/sub as the backplane's receiving half: the subscriber connection, its event
//! streams turned into [`BusEvent`]s, and where the listener runs (a task on the caller's
//! runtime, or a thread of its own with a current-thread runtime that also runs the
//! subscriber's connection, so that an invalidation is applied as soon as it arrives instead of
//! waiting its turn behind the service's tasks on a busy runtime:
//! [`LayerCacheBuilder::bus_thread`](crate::LayerCacheBuilder::bus_thread)).

use std::time::Duration;

use fred::prelude::{ClientInterface, ClientLike, EventInterface, PubsubInterface};
use tokio::sync::broadcast::{error::RecvError, Receiver};

use super::{
    connect::{connect_client, end_task, L2Settings},
    tracking::{invalidation, next_of, Tracker, TRACKING_CHANNEL},
};
use crate::{
    backplane::{BusEvent, ListenerHome, Subscriber},
    error::{Error, ErrorKind, Result},
    remote::BoxFuture,
};

/// The subscriber connection and its streams. The streams are taken when the client is made,
/// before the channel is subscribed: a broadcast receiver sees only what is sent after it
/// exists, and a message lost before the first one heard from its sender is not detectable as
/// a gap.
pub(crate) struct RedisSubscriber {
    client: fred::prelude::Client,
    channel: String,
    messages: Receiver<fred::types::Message>,
    reconnects: Receiver<fred::types::config::Server>,
    errors: Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
    /// Subscribe with `SSUBSCRIBE` (a cluster's sharded pub/sub).
    sharded: bool,
    /// Server-assisted tracking of the store's main connection, reported here.
    tracker: Option<Tracker>,
}

impl RedisSubscriber {
    /// Connects the subscriber (on its own thread if `own_thread`) for `channel`; returns it
    /// (not yet subscribed) once it is connected (or the start is degraded), and where its
    /// listener will run.
    pub(crate) async fn connect(
        settings: &L2Settings,
        buffer: usize,
        own_thread: bool,
        channel: String,
    ) -> Result<(Self, Box<dyn ListenerHome>)> {
        let (client, home): (_, Box<dyn ListenerHome>) = if own_thread {
            let (client, home) = OwnThread::start(settings, buffer).await?;
            (client, Box::new(home))
        } else {
            let (client, task) = connect_client(settings, Some(buffer)).await?;
            let within = settings.command_timeout.max(Duration::from_secs(1));
            (client, Box::new(OnTask { task, within }))
        };
        Ok((
            Self {
                messages: client.message_rx(),
                reconnects: client.reconnect_rx(),
                errors: client.error_rx(),
                sharded: settings.sharded_bus && client.is_clustered(),
                client,
                channel,
                tracker: None,
            },
            home,
        ))
    }

    /// Has Redis report the writes of `client` (the store's main connection) to this
    /// subscription: every key under `prefix` written by another connection. Takes the
    /// client's reconnection and error streams now; tracking itself is turned on by
    /// [`Subscriber::track`], once subscribed.
    pub(crate) fn track_writes_of(&mut self, client: fred::prelude::Client, prefix: String) {
        self.tracker = Some(Tracker::new(client, prefix));
    }

    /// This subscription's current connection ids, by server (fred reads them at every
    /// connection): one, or one per primary of a cluster.
    fn connection_ids(
        &self,
    ) -> Result<std::collections::HashMap<fred::types::config::Server, i64>> {
        let ids = self.client.connection_ids();
        if ids.is_empty() {
            return Err(Error::new(
                ErrorKind::Closed,
                "the bus subscriber is not connected",
            ));
        }
        Ok(ids)
    }

    /// On a cluster, subscribes to the tracking channel on the connection to every primary
    /// (a primary reports tracked keys to a connection on itself; fred sends a plain
    /// `SUBSCRIBE` to one node). Does nothing on one server.
    async fn subscribe_tracking_everywhere(&self, within: Duration) -> Result<()> {
        if !self.client.is_clustered() {
            return Ok(());
        }
        for node in self.connection_ids()?.into_keys() {
            let on_node = self.client.with_options(&fred::types::config::Options {
                timeout: Some(within),
                cluster_node: Some(node),
                ..Default::default()
            });
            on_node.subscribe(TRACKING_CHANNEL).await.map_err(|e| {
                Error::new(ErrorKind::Redis, "subscribing to the tracking channel").with_source(e)
            })?;
        }
        Ok(())
    }
}

impl Subscriber for RedisSubscriber {
    fn next_event(&mut self) -> BoxFuture<'_, BusEvent> {
        Box::pin(async move {
            let tracking = self.tracker.is_some();
            let (mut tracker_reconnects, mut tracker_errors) = match &mut self.tracker {
                Some(t) => (Some(&mut t.reconnects), Some(&mut t.errors)),
                None => (None, None),
            };
            loop {
                tokio::select! {
                    biased;
                    m = self.messages.recv() => return match m {
                        Ok(msg) if tracking && msg.channel == TRACKING_CHANNEL => invalidation(msg.value),
                        Ok(msg) => match msg.value.as_bytes() {
                            Some(bytes) => BusEvent::Message(bytes.to_vec()),
                            None => BusEvent::Foreign,
                        },
                        Err(RecvError::Lagged(missed)) => BusEvent::Lagged(missed),
                        Err(RecvError::Closed) => BusEvent::Closed,
                    },
                    r = self.reconnects.recv() => return match r {
                        Err(RecvError::Closed) => BusEvent::Closed,
                        _ => BusEvent::Reconnected,
                    },
                    e = self.errors.recv() => match e {
                        Err(RecvError::Closed) => return BusEvent::Closed,
                        Err(RecvError::Lagged(_)) => {}
                        Ok((error, _)) => return BusEvent::Failed(error.to_string()),
                    },
                    r = next_of(tracker_reconnects.as_deref_mut()) => return match r {
                        Err(RecvError::Closed) => BusEvent::Closed,
                        _ => BusEvent::TrackerReconnected,
                    },
                    e = next_of(tracker_errors.as_deref_mut()) => match e {
                        Err(RecvError::Closed) => return BusEvent::Closed,
                        Err(RecvError::Lagged(_)) => {}
                        Ok((error, _)) => return BusEvent::TrackerFailed(error.to_string()),
                    },
                }
            }
        })
    }

    fn subscribe(&self, within: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // Bounded by `within`, not by the (maybe far shorter) command timeout that fred
            // would otherwise apply to it.
            let patient = self.client.with_options(&fred::types::config::Options {
                timeout: Some(within),
                ..Default::default()
            });
            let subscribed = async {
                if self.sharded {
                    patient.ssubscribe(self.channel.as_str()).await
                } else if self.tracker.is_some() {
                    patient
                        .subscribe(vec![self.channel.as_str(), TRACKING_CHANNEL])
                        .await
                } else {
                    patient.subscribe(self.channel.as_str()).await
                }
            };
            match tokio::time::timeout(within, subscribed).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(
                    Error::new(ErrorKind::Redis, "subscribing to the bus channel").with_source(e),
                ),
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    "subscribing to the bus channel",
                )),
            }
        })
    }

    fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    fn close(&mut self, within: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = tokio::time::timeout(within, self.client.quit()).await;
        })
    }

    fn tracks(&self) -> bool {
        self.tracker.is_some()
    }

    fn track(&self, within: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match &self.tracker {
                Some(tracker) => {
                    self.subscribe_tracking_everywhere(within).await?;
                    tracker.track(&self.connection_ids()?, within).await
                }
                None => Ok(()),
            }
        })
    }

    fn tracking_intact(&self, within: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            match &self.tracker {
                Some(tracker) => tracker.intact(&self.connection_ids()?, within).await,
                None => Ok(true),
            }
        })
    }
}

/// The listener as a task on the caller's runtime; the subscriber's connection task is
/// awaited when it ends.
struct OnTask {
    task: fred::types::ConnectHandle,
    within: Duration,
}

impl ListenerHome for OnTask {
    fn run(self: Box<Self>, listener: BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()> {
        let Self { task, within } = *self;
        tokio::spawn(async move {
            listener.await;
            end_task(task, within).await;
        })
    }
}

/// The listener on a thread of its own, which also runs the subscriber's connection.
struct OwnThread {
    listener: tokio::sync::oneshot::Sender<BoxFuture<'static, ()>>,
    thread: std::thread::JoinHandle<()>,
}

impl OwnThread {
    /// Starts the thread and connects the subscriber there; returns the client (usable from
    /// any runtime) once it is connected (or the start is degraded).
    async fn start(settings: &L2Settings, buffer: usize) -> Result<(fred::prelude::Client, Self)> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (listener_tx, listener_rx) = tokio::sync::oneshot::channel::<BoxFuture<'static, ()>>();
        let settings = settings.clone();
        let thread_failed = |e: std::io::Error| {
            Error::new(ErrorKind::Closed, "could not start the bus thread").with_source(e)
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(thread_failed)?;
        let thread = std::thread::Builder::new()
            .name("layercache-bus".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let (client, task) = match connect_client(&settings, Some(buffer)).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(client));
                    // Without a listener the build failed after connecting (and closed the
                    // client): only the connection task is left to end.
                    if let Ok(listener) = listener_rx.await {
                        listener.await;
                    }
                    let within = settings.command_timeout.max(Duration::from_secs(1));
                    end_task(task, within).await;
                });
            })
            .map_err(thread_failed)?;
        match ready_rx.await {
            Ok(Ok(client)) => Ok((
                client,
                Self {
                    listener: listener_tx,
                    thread,
                },
            )),
            Ok(Err(e)) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                Err(e)
            }
            Err(_) => Err(Error::new(
                ErrorKind::Closed,
                "the bus thread ended at start",
            )),
        }
    }
}

impl ListenerHome for OwnThread {
    fn run(self: Box<Self>, listener: BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()> {
        let Self {
            listener: tx,
            thread,
        } = *self;
        let _ = tx.send(listener);
        tokio::task::spawn_blocking(move || {
            let _ = thread.join();
        })
    }
}
