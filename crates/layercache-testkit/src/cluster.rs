//! A local Redis Cluster: six `redis-server` processes (three primaries, three replicas) on free
//! loopback ports, joined with `redis-cli --cluster create`.

use std::{
    io,
    process::Command,
    time::{Duration, Instant},
};

pub(crate) use crate::resp::command;
use crate::{
    server::{RedisServer, StartError},
    tls::Authority,
    Proxy,
};

/// How long a start or a recovery may take before it is reported as failed.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running Redis Cluster of six nodes (three primaries, each with one replica), torn down on
/// drop.
///
/// Nodes run with `cluster-node-timeout 1000` (a primary killed is failed over in about two
/// seconds) and `repl-diskless-sync-delay 0` (a replica syncs at once: the cluster is ready in
/// about two seconds instead of seven). Persistence is off, so a restarted node comes back empty
/// but with its cluster identity (`nodes.conf` stays in its directory). A primary emptied by
/// [`reshard`](RedisCluster::reshard) stays a primary (`cluster-allow-replica-migration no`).
///
/// ```no_run
/// let cluster = layercache_testkit::RedisCluster::start().expect("redis cluster");
/// println!("{}", cluster.url()); // redis-cluster://127.0.0.1:PORT?node=…
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// One per node when started with [`start_proxied`](RedisCluster::start_proxied): the node
    /// announces its proxy's port, so clients reach it only through the proxy.
    proxies: Vec<Proxy>,
    /// The CA of a TLS cluster ([`start_tls`](RedisCluster::start_tls)).
    tls: Option<Authority>,
}

/// The node options a cluster member runs with.
fn node_args() -> Vec<(&'static str, &'static str)> {
    vec![
        ("cluster-enabled", "yes"),
        ("cluster-config-file", "nodes.conf"),
        ("cluster-node-timeout", "1000"),
        ("repl-diskless-sync", "yes"),
        ("repl-diskless-sync-delay", "0"),
        // A replica may serve nothing but its primary's data, and a cluster missing a slot's
        // owner keeps serving the slots it still has (as managed services do).
        ("cluster-require-full-coverage", "no"),
        // A primary whose last slot is moved away stays an (empty) primary. With the default
        // (`yes`), Redis 7 turns it into a replica of the node that took its last slot, some
        // time after the reshard has returned: a second topology change, which a test of
        // resharding would count as errors "after the move". (It also stops replicas
        // migrating to orphaned primaries; with one replica per primary none ever would.)
        ("cluster-allow-replica-migration", "no"),
    ]
}

fn redis_cli() -> String {
    std::env::var("LAYERCACHE_REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_owned())
}

/// How a cluster is reached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Proxied,
    Tls,
}

impl RedisCluster {
    /// Starts six nodes, joins them into a cluster (three primaries with one replica each) and
    /// waits until every node reports `cluster_state:ok` and every replica is in sync.
    ///
    /// # Errors
    ///
    /// See [`StartError`]: also when `redis-cli` is missing or the join fails (the message
    /// carries `redis-cli`'s output).
    pub fn start() -> Result<Self, StartError> {
        Self::start_with(Kind::Plain)
    }

    /// As [`start`](Self::start), with a [`Proxy`] in front of every node: each node announces
    /// its proxy's port (`cluster-announce-port`; the cluster bus between nodes stays direct),
    /// so every client connection — seeds, redirections, subscribers — goes through a proxy,
    /// and a test can slow, stall or cut them ([`proxies`](Self::proxies)), all of them or
    /// only one client's ([`Proxy::mark_new_connections`]).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when a proxy cannot bind a port.
    pub fn start_proxied() -> Result<Self, StartError> {
        Self::start_with(Kind::Proxied)
    }

    /// As [`start`](Self::start), serving clients over TLS: every node has a certificate for
    /// `127.0.0.1` signed by one CA ([`ca_pem`](Self::ca_pem)), the cluster bus and
    /// replication run over TLS too (`tls-cluster yes`, `tls-replication yes`), and
    /// [`url`](Self::url) is `rediss-cluster://…` naming the TLS ports. Each node also keeps a
    /// plain-text port for the kit's own admin commands ([`command`](Self::command)); clients
    /// connected over TLS are told only the TLS ports (in `CLUSTER SLOTS` and redirections).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_tls() -> Result<Self, StartError> {
        Self::start_with(Kind::Tls)
    }

    fn start_with(kind: Kind) -> Result<Self, StartError> {
        let tls = match kind {
            Kind::Tls => Some(Authority::generate()?),
            Kind::Plain | Kind::Proxied => None,
        };
        let mut nodes = Vec::with_capacity(6);
        for _ in 0..6 {
            let mut b = RedisServer::builder();
            for (k, v) in node_args() {
                b = b.arg(k, v);
            }
            if let Some(ca) = &tls {
                b = b
                    .tls_beside_plain(ca)
                    .arg("tls-cluster", "yes")
                    .arg("tls-replication", "yes");
            }
            nodes.push(b.start()?);
        }
        let mut proxies = Vec::new();
        if kind == Kind::Proxied {
            for n in &nodes {
                proxies.push(Proxy::start(n.port()).map_err(StartError::Io)?);
            }
        }
        let cluster = Self {
            nodes,
            proxies,
            tls,
        };
        for i in 0..cluster.proxies.len() {
            cluster.announce(i).map_err(StartError::Io)?;
        }
        let mut create = cluster.cli();
        create.arg("--cluster").arg("create");
        for i in 0..cluster.nodes.len() {
            create.arg(format!("127.0.0.1:{}", cluster.direct_port(i)));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create.output().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StartError::NotInstalled(
                    "redis-cli was not found on PATH (it comes with redis-server: \
                     `apt-get install -y redis-server`), or set LAYERCACHE_REDIS_CLI"
                        .to_owned(),
                )
            } else {
                StartError::Io(e)
            }
        })?;
        if !out.status.success() {
            return Err(StartError::NotReady {
                reason: "redis-cli --cluster create failed".to_owned(),
                log: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        cluster.wait_ok(READY_WITHIN)?;
        Ok(cluster)
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&…`, naming every node as a seed (by
    /// its proxy on a proxied cluster).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss-cluster"
        } else {
            "redis-cluster"
        };
        let mut url = format!("{scheme}://127.0.0.1:{}", self.announced_port(0));
        for i in 1..self.nodes.len() {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", self.announced_port(i)));
        }
        url
    }

    /// The proxies in front of the nodes, by node index (empty unless started with
    /// [`start_proxied`](Self::start_proxied)).
    pub fn proxies(&self) -> &[Proxy] {
        &self.proxies
    }

    /// The PEM of the CA that signed every node's certificate, on a TLS cluster.
    pub fn ca_pem(&self) -> Option<String> {
        self.tls.as_ref().map(Authority::pem)
    }

    /// The port clients reach node `index` on: its proxy's on a proxied cluster.
    fn announced_port(&self, index: usize) -> u16 {
        self.proxies
            .get(index)
            .map_or_else(|| self.direct_port(index), Proxy::port)
    }

    /// The port node `index` serves clients on: its TLS port on a TLS cluster.
    fn direct_port(&self, index: usize) -> u16 {
        let node = &self.nodes[index];
        node.tls_port().unwrap_or_else(|| node.port())
    }

    /// `redis-cli`, with `--tls --cacert` on a TLS cluster.
    fn cli(&self) -> Command {
        let mut cli = Command::new(redis_cli());
        if self.tls.is_some() {
            cli.arg("--tls")
                .arg("--cacert")
                .arg(self.nodes[0].dir().join("ca.crt"));
        }
        cli
    }

    /// Makes node `index` announce its proxy's port to clients (its bus port stays its own).
    fn announce(&self, index: usize) -> io::Result<()> {
        let port = self.nodes[index].port();
        let bus = (u32::from(port) + 10_000).to_string();
        let proxy = self.announced_port(index).to_string();
        self.command(index, &["CONFIG", "SET", "cluster-announce-bus-port", &bus])?;
        self.command(index, &["CONFIG", "SET", "cluster-announce-port", &proxy])?;
        Ok(())
    }

    /// The nodes' (plain-text) ports, by index (0 to 5).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The node at `index` (0 to 5).
    ///
    /// # Panics
    ///
    /// When `index` is out of range.
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// The indexes of the nodes that are primaries now (by `ROLE`), in index order.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].pid().is_some()
                    && self
                        .command(i, &["ROLE"])
                        .is_ok_and(|r| r.starts_with("master"))
            })
            .collect()
    }

    /// Sends one command to the node at `index` and returns its reply as text: a simple or bulk
    /// string as is, an integer in decimal, an array's elements one per line, a nil as an empty
    /// string.
    ///
    /// # Errors
    ///
    /// An I/O error, or the node's error reply (`ErrorKind::Other`, its message).
    pub fn command(&self, index: usize, args: &[&str]) -> io::Result<String> {
        command(self.nodes[index].port(), args)
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    ///
    /// # Errors
    ///
    /// As [`command`](Self::command).
    pub fn keyslot(&self, key: &str) -> io::Result<u16> {
        let primary = self.primaries().first().copied().unwrap_or(0);
        self.command(primary, &["CLUSTER", "KEYSLOT", key])?
            .parse()
            .map_err(io::Error::other)
    }

    /// How many keys each primary holds (`DBSIZE`), as `(node index, count)`.
    ///
    /// # Errors
    ///
    /// As [`command`](Self::command).
    pub fn keys_per_primary(&self) -> io::Result<Vec<(usize, u64)>> {
        self.primaries()
            .into_iter()
            .map(|i| {
                let n = self.command(i, &["DBSIZE"])?;
                Ok((i, n.parse().map_err(io::Error::other)?))
            })
            .collect()
    }

    /// The cluster node id of the node at `index` (`CLUSTER MYID`).
    ///
    /// # Errors
    ///
    /// As [`command`](Self::command).
    pub fn node_id(&self, index: usize) -> io::Result<String> {
        self.command(index, &["CLUSTER", "MYID"])
    }

    /// Moves `slots` hash slots (with their keys) from the primary at `from` to the primary at
    /// `to`, with `redis-cli --cluster reshard` (keys are migrated in batches of 10 while the
    /// cluster serves: clients see `ASK` and `TRYAGAIN` meanwhile). Blocks until it is done.
    ///
    /// # Errors
    ///
    /// An I/O error, or `redis-cli`'s output when it fails.
    pub fn reshard(&self, from: usize, to: usize, slots: u32) -> io::Result<()> {
        let out = self
            .cli()
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{}", self.direct_port(from)))
            .args(["--cluster-from", &self.node_id(from)?])
            .args(["--cluster-to", &self.node_id(to)?])
            .args(["--cluster-slots", &slots.to_string()])
            .args(["--cluster-pipeline", "10", "--cluster-yes"])
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "redis-cli --cluster reshard failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Kills the node at `index` (SIGKILL). Its replica is promoted after about two seconds
    /// (`cluster-node-timeout`): wait with [`wait_ok`](Self::wait_ok).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts the node at `index` again on its port, empty but with its cluster identity: it
    /// rejoins (as a replica if its replica was promoted meanwhile).
    ///
    /// # Errors
    ///
    /// See [`StartError`].
    pub fn restart(&mut self, index: usize) -> Result<(), StartError> {
        self.nodes[index].restart()?;
        if index < self.proxies.len() {
            self.announce(index).map_err(StartError::Io)?;
        }
        Ok(())
    }

    /// Waits until every running node reports `cluster_state:ok`, the running primaries cover
    /// all 16,384 slots, and every running replica has finished its sync.
    ///
    /// # Errors
    ///
    /// `StartError::NotReady` after `within`, with what was last seen.
    pub fn wait_ok(&self, within: Duration) -> Result<(), StartError> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.health();
            match &seen {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(why) => {
                    return Err(StartError::NotReady {
                        reason: format!("the cluster was not ok within {within:?}: {why}"),
                        log: self
                            .nodes
                            .iter()
                            .map(|n| format!("--- node {} ---\n{}", n.port(), n.log()))
                            .collect(),
                    })
                }
            }
        }
    }

    fn health(&self) -> Result<(), String> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.pid().is_none() {
                continue;
            }
            let info = self
                .command(i, &["CLUSTER", "INFO"])
                .map_err(|e| format!("node {i}: {e}"))?;
            if !info.contains("cluster_state:ok") {
                return Err(format!("node {i} is not ok"));
            }
            let role = self
                .command(i, &["ROLE"])
                .map_err(|e| format!("node {i}: {e}"))?;
            if role.starts_with("slave") && !role.contains("connected") {
                return Err(format!("replica {i} is not in sync: {role:?}"));
            }
        }
        // Every slot is owned by a running node (a killed primary's slots move to its replica).
        // `CLUSTER NODES` asked in plain text names a TLS node by its plain-text port.
        let running: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].pid().is_some())
            .map(|i| {
                let port = self
                    .proxies
                    .get(i)
                    .map_or_else(|| self.nodes[i].port(), Proxy::port);
                format!("127.0.0.1:{port}")
            })
            .collect();
        let first = self
            .nodes
            .iter()
            .position(|n| n.pid().is_some())
            .ok_or("no node runs")?;
        let nodes = self
            .command(first, &["CLUSTER", "NODES"])
            .map_err(|e| format!("CLUSTER NODES: {e}"))?;
        let mut covered = 0u32;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let addr = fields[1].split('@').next().unwrap_or("");
            if !running.iter().any(|r| r == addr) {
                continue;
            }
            for range in &fields[8..] {
                if range.starts_with('[') {
                    continue;
                }
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    covered += b - a + 1;
                }
            }
        }
        if covered != 16384 {
            return Err(format!("running primaries cover {covered} of 16384 slots"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    #[test]
    fn a_cluster_starts_with_three_primaries_and_fails_over() {
        let mut cluster = RedisCluster::start().expect("redis cluster");
        let primaries = cluster.primaries();
        assert_eq!(primaries.len(), 3, "{primaries:?}");
        assert!(cluster.url().starts_with("redis-cluster://127.0.0.1:"));
        assert_eq!(cluster.keyslot("foo").unwrap(), 12182);
        let victim = primaries[0];
        cluster.kill(victim);
        cluster.wait_ok(READY_WITHIN).expect("a replica takes over");
        let now = cluster.primaries();
        assert_eq!(now.len(), 3, "{now:?}");
        assert!(!now.contains(&victim));
        cluster.restart(victim).unwrap();
        cluster
            .wait_ok(READY_WITHIN)
            .expect("the old primary rejoins");
        assert_eq!(cluster.primaries().len(), 3);
        let ports = cluster.ports();
        drop(cluster);
        for p in ports {
            assert!(TcpStream::connect(("127.0.0.1", p)).is_err(), "{p} listens");
        }
    }

    #[test]
    fn a_proxied_cluster_announces_its_proxies_and_serves_through_them() {
        let cluster = RedisCluster::start_proxied().expect("proxied redis cluster");
        let proxy_ports: Vec<u16> = cluster.proxies().iter().map(Proxy::port).collect();
        assert_eq!(proxy_ports.len(), 6);
        let slots = cluster.command(0, &["CLUSTER", "NODES"]).unwrap();
        for p in &proxy_ports {
            assert!(
                slots.contains(&format!("127.0.0.1:{p}@")),
                "{p} not in {slots}"
            );
        }
        for p in cluster.ports() {
            assert!(!slots.contains(&format!("127.0.0.1:{p}@")), "{p} announced");
        }
        assert!(cluster.url().contains(&proxy_ports[5].to_string()));
        // A redirection names the proxy.
        let moved = (0..6)
            .map(|i| command(proxy_ports[i], &["GET", "foo"]))
            .find_map(|r| r.err())
            .expect("one node redirects");
        assert!(
            moved.to_string().starts_with("MOVED 12182 127.0.0.1:"),
            "{moved}"
        );
        let target: u16 = moved
            .to_string()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(proxy_ports.contains(&target), "{moved}");
    }

    #[test]
    fn a_whole_cluster_killed_and_restarted_comes_back_empty_and_ok() {
        let mut cluster = RedisCluster::start_proxied().expect("redis cluster");
        let primary = cluster.primaries()[0];
        cluster.command(primary, &["SET", "x{a}", "1"]).ok();
        for i in 0..6 {
            cluster.kill(i);
        }
        for i in 0..6 {
            cluster.restart(i).unwrap();
        }
        cluster.wait_ok(READY_WITHIN).expect("the cluster re-forms");
        assert_eq!(cluster.primaries().len(), 3);
        let keys: u64 = cluster
            .keys_per_primary()
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(keys, 0);
    }

    #[test]
    fn a_tls_cluster_serves_clients_over_tls_and_the_kit_in_plain_text() {
        let cluster = RedisCluster::start_tls().expect("tls redis cluster");
        assert_eq!(cluster.primaries().len(), 3);
        let url = cluster.url();
        assert!(url.starts_with("rediss-cluster://127.0.0.1:"), "{url}");
        assert!(cluster.ca_pem().unwrap().contains("BEGIN CERTIFICATE"));
        let tls_ports: Vec<u16> = (0..6).map(|i| cluster.direct_port(i)).collect();
        for (i, p) in tls_ports.iter().enumerate() {
            assert_ne!(*p, cluster.ports()[i]);
            assert!(url.contains(&format!(":{p}")), "{p} not in {url}");
        }
        // The bus between nodes runs over TLS; TLS clients are told the TLS ports.
        assert_eq!(
            cluster
                .command(0, &["CONFIG", "GET", "tls-cluster"])
                .unwrap(),
            "tls-cluster\nyes"
        );
        let out = cluster
            .cli()
            .args(["-p", &tls_ports[0].to_string(), "CLUSTER", "SLOTS"])
            .output()
            .unwrap();
        let slots = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{slots}");
        let lines: Vec<&str> = slots.lines().collect();
        let named: Vec<u16> = lines
            .windows(2)
            .filter(|w| w[0] == "127.0.0.1")
            .map(|w| w[1].parse().unwrap())
            .collect();
        assert!(named.len() >= 3, "{slots}");
        for p in named {
            assert!(tls_ports.contains(&p), "{p} is not a TLS port: {slots}");
        }
        // A plain-text client on a TLS port gets no answer.
        assert!(command(tls_ports[0], &["PING"]).is_err());
    }
}
