//! Where the bus listener runs: a task on the caller's runtime, or a thread of its own.

use std::time::Duration;

use super::listener::Listener;
use crate::{
    error::{Error, ErrorKind, Result},
    l2::{connect_client, L2Settings},
};

/// Where the bus listener runs: on the caller's runtime (a task), or on a thread of its own
/// with a current-thread runtime that also runs the subscriber's connection, so that an
/// invalidation is applied as soon as it arrives instead of waiting its turn behind the
/// service's tasks on a busy runtime ([`LayerCacheBuilder::bus_thread`](crate::LayerCacheBuilder::bus_thread)).
pub(crate) enum BusThread {
    Task(fred::types::ConnectHandle),
    Thread {
        listener: tokio::sync::oneshot::Sender<Listener>,
        thread: std::thread::JoinHandle<()>,
    },
}

impl BusThread {
    /// Connects the subscriber (on its own thread if `own_thread`); returns the client (usable
    /// from any runtime) once it is connected (or the start is degraded).
    pub(crate) async fn start(
        settings: &L2Settings,
        buffer: usize,
        own_thread: bool,
    ) -> Result<(fred::prelude::Client, Self)> {
        if !own_thread {
            let (client, task) = connect_client(settings, Some(buffer)).await?;
            return Ok((client, Self::Task(task)));
        }
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (listener_tx, listener_rx) = tokio::sync::oneshot::channel::<Listener>();
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
                    match listener_rx.await {
                        Ok(mut listener) => {
                            listener.subscriber_task = Some(task);
                            listener.run().await;
                        }
                        // The build failed after connecting (and closed the client).
                        Err(_) => {
                            let within = settings.command_timeout.max(Duration::from_secs(1));
                            crate::l2::end_task(task, within).await;
                        }
                    }
                });
            })
            .map_err(thread_failed)?;
        match ready_rx.await {
            Ok(Ok(client)) => Ok((
                client,
                Self::Thread {
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

    /// Runs the listener; the returned task ends when it does.
    pub(crate) fn run(self, mut listener: Listener) -> tokio::task::JoinHandle<()> {
        match self {
            Self::Task(task) => {
                listener.subscriber_task = Some(task);
                tokio::spawn(listener.run())
            }
            Self::Thread {
                listener: tx,
                thread,
            } => {
                let _ = tx.send(listener);
                tokio::task::spawn_blocking(move || {
                    let _ = thread.join();
                })
            }
        }
    }
}
