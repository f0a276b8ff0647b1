//! Server-assisted tracking of the store's main connection, reported to the bus subscriber
//! ([`LayerCacheBuilder::server_assisted_tracking`](crate::LayerCacheBuilder::server_assisted_tracking)):
//! turning it on, checking it is still on, and reading what Redis reports.
//!
//! On a Redis Cluster tracking is a node's: each primary reports the writes it runs, to a
//! connection of its own. So the store's connection to every primary is tracked, each
//! redirected to the subscriber's connection to the same primary (which subscribes to the
//! tracking channel there); a primary the store knows and the subscriber has no connection
//! to (yet) leaves tracking off (not intact: checked again every heartbeat tick).

use std::{collections::HashMap, time::Duration};

use fred::types::config::Server;

use fred::prelude::{ClientLike, ClusterInterface, EventInterface};
use tokio::sync::broadcast::{error::RecvError, Receiver};

use crate::{
    backplane::BusEvent,
    error::{Error, ErrorKind, Result},
};

/// The channel Redis reports tracked keys on to a RESP2 connection (`REDIRECT`).
pub(super) const TRACKING_CHANNEL: &str = "__redis__:invalidate";

/// Server-assisted tracking (`CLIENT TRACKING ON REDIRECT <this subscription> BCAST PREFIX
/// {cache}:f{format}: NOLOOP`) of the store's main connection: Redis reports every write of a
/// data key by any other connection to this subscription, as it runs the write, and none of
/// the main connection's own. Tracking is a connection's state: it is gone when the main
/// connection reconnects (its streams, taken here, say when), and it points at a connection id
/// that changes when this subscription's connection does.
pub(super) struct Tracker {
    /// The store's main connection.
    client: fred::prelude::Client,
    /// `{cache}:f{format}:`: every data key of the cache.
    prefix: String,
    pub(super) reconnects: Receiver<fred::types::config::Server>,
    pub(super) errors: Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
}

impl Tracker {
    /// Tracking of `client`'s writes of keys under `prefix`; takes the client's reconnection
    /// and error streams now.
    pub(super) fn new(client: fred::prelude::Client, prefix: String) -> Self {
        Self {
            reconnects: client.reconnect_rx(),
            errors: client.error_rx(),
            client,
            prefix,
        }
    }

    /// Turns tracking on, reported to `redirects` (the subscriber's connection id on each
    /// server), waiting at most `within` per command: on one server or Sentinel, the one
    /// connection; on a cluster, every primary's.
    pub(super) async fn track(
        &self,
        redirects: &HashMap<Server, i64>,
        within: Duration,
    ) -> Result<()> {
        for (node, redirect) in self.nodes(redirects)? {
            self.track_on(node, redirect, within).await?;
        }
        Ok(())
    }

    /// Whether tracking is on and reported to `redirects` on every node (`CLIENT
    /// TRACKINGINFO`).
    pub(super) async fn intact(
        &self,
        redirects: &HashMap<Server, i64>,
        within: Duration,
    ) -> Result<bool> {
        let Ok(nodes) = self.nodes(redirects) else {
            return Ok(false);
        };
        for (node, redirect) in nodes {
            if !self.intact_on(node, redirect, within).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The tracked connections (a primary on a cluster, `None`: the one connection) and the
    /// subscriber connection each is to report to.
    fn nodes(&self, redirects: &HashMap<Server, i64>) -> Result<Vec<(Option<Server>, i64)>> {
        let missing = || Error::new(ErrorKind::Closed, "the bus subscriber is not connected");
        if !self.client.is_clustered() {
            let id = redirects.values().next().copied().ok_or_else(missing)?;
            return Ok(vec![(None, id)]);
        }
        let primaries = self
            .client
            .cached_cluster_state()
            .map(|state| state.unique_primary_nodes())
            .unwrap_or_default();
        if primaries.is_empty() {
            return Err(missing());
        }
        primaries
            .into_iter()
            .map(|node| {
                let id = redirects.get(&node).copied().ok_or_else(missing)?;
                Ok((Some(node), id))
            })
            .collect()
    }

    /// Turns tracking on on one tracked connection (`node` on a cluster).
    async fn track_on(&self, node: Option<Server>, redirect: i64, within: Duration) -> Result<()> {
        let patient = self.within(node, within);
        let failed = |e: fred::error::Error| {
            Error::new(ErrorKind::Redis, "turning on server-assisted tracking").with_source(e)
        };
        // Tracking's options cannot be changed while it is on: off first (a no-op when off).
        patient
            .custom::<fred::types::Value, _>(client_command(), vec!["TRACKING", "OFF"])
            .await
            .map_err(failed)?;
        patient
            .custom::<fred::types::Value, _>(
                client_command(),
                vec![
                    fred::types::Value::from_static_str("TRACKING"),
                    fred::types::Value::from_static_str("ON"),
                    fred::types::Value::from_static_str("REDIRECT"),
                    fred::types::Value::from(redirect),
                    fred::types::Value::from_static_str("BCAST"),
                    fred::types::Value::from_static_str("PREFIX"),
                    fred::types::Value::from(self.prefix.as_str()),
                    fred::types::Value::from_static_str("NOLOOP"),
                ],
            )
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// The tracked connection (to `node` on a cluster), its commands bounded by `within` (not
    /// by the command timeout).
    fn within(
        &self,
        node: Option<Server>,
        within: Duration,
    ) -> fred::clients::WithOptions<fred::prelude::Client> {
        self.client.with_options(&fred::types::config::Options {
            timeout: Some(within),
            cluster_node: node,
            ..Default::default()
        })
    }

    /// Whether tracking is on and reported to connection `redirect` on one tracked connection.
    async fn intact_on(
        &self,
        node: Option<Server>,
        redirect: i64,
        within: Duration,
    ) -> Result<bool> {
        let info: fred::types::Value = self
            .within(node, within)
            .custom(client_command(), vec!["TRACKINGINFO"])
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Redis, "reading the tracking state").with_source(e)
            })?;
        Ok(tracking_on_towards(&info, redirect))
    }
}

/// What a message on the tracking channel says: the keys written, or (a null) that the
/// database was emptied.
pub(super) fn invalidation(value: fred::types::Value) -> BusEvent {
    match value {
        fred::types::Value::Array(keys) => BusEvent::Invalidated(
            keys.into_iter()
                .filter_map(fred::types::Value::into_string)
                .collect(),
        ),
        fred::types::Value::Null => BusEvent::ServerFlushed,
        _ => BusEvent::Foreign,
    }
}

/// The next item of `rx`, or never without one.
pub(super) async fn next_of<T: Clone>(
    rx: Option<&mut Receiver<T>>,
) -> std::result::Result<T, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A `CLIENT …` command.
fn client_command() -> fred::types::CustomCommand {
    fred::types::CustomCommand::new_static("CLIENT", fred::types::ClusterHash::FirstKey, false)
}

/// Whether a `CLIENT TRACKINGINFO` reply shows tracking on and pointed at `redirect`.
fn tracking_on_towards(info: &fred::types::Value, redirect: i64) -> bool {
    let fred::types::Value::Array(fields) = info else {
        return false;
    };
    let mut on = false;
    let mut broken = false;
    let mut pointed = false;
    for pair in fields.chunks(2) {
        let [name, value] = pair else { break };
        match name.as_str().as_deref() {
            Some("flags") => {
                if let fred::types::Value::Array(flags) = value {
                    for flag in flags {
                        match flag.as_str().as_deref() {
                            Some("on") => on = true,
                            Some("broken_redirect") => broken = true,
                            _ => {}
                        }
                    }
                }
            }
            Some("redirect") => pointed = value.as_i64() == Some(redirect),
            _ => {}
        }
    }
    on && !broken && pointed
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::Value;

    fn info(flags: &[&'static str], redirect: i64) -> Value {
        Value::Array(vec![
            Value::from_static_str("flags"),
            Value::Array(flags.iter().map(|f| Value::from_static_str(f)).collect()),
            Value::from_static_str("redirect"),
            Value::Integer(redirect),
            Value::from_static_str("prefixes"),
            Value::Array(vec![Value::from_static_str("c:f2:")]),
        ])
    }

    #[test]
    fn tracking_counts_as_intact_only_when_on_and_pointed_here() {
        assert!(tracking_on_towards(&info(&["on", "bcast", "noloop"], 7), 7));
        assert!(
            !tracking_on_towards(&info(&["on", "bcast", "noloop"], 7), 8),
            "an old subscriber"
        );
        assert!(!tracking_on_towards(&info(&["off"], -1), 7));
        assert!(!tracking_on_towards(
            &info(&["on", "bcast", "broken_redirect"], 7),
            7
        ));
        assert!(!tracking_on_towards(&Value::Null, 7));
    }

    #[test]
    fn a_tracking_message_is_keys_or_a_flush() {
        let keys = Value::Array(vec![Value::from_static_str("c:f2:r:s1:g1:k")]);
        assert!(matches!(invalidation(keys), BusEvent::Invalidated(k) if k == ["c:f2:r:s1:g1:k"]));
        assert!(matches!(invalidation(Value::Null), BusEvent::ServerFlushed));
        assert!(matches!(invalidation(Value::Integer(1)), BusEvent::Foreign));
    }
}
