//! A local Redis Sentinel setup: one primary, one replica and three sentinels, on free loopback
//! ports.

use std::{
    io,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::server::{RedisServer, StartError};

/// The name the sentinels know the primary by.
pub(crate) const SERVICE: &str = "mymaster";

/// One sentinel process, killed on drop.
#[derive(Debug)]
struct Sentinel {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary, its replica and three sentinels watching them (quorum 2,
/// `down-after-milliseconds 1000`: a killed primary is replaced in a few seconds). Everything is
/// killed on drop.
///
/// ```no_run
/// let s = layercache_testkit::RedisSentinel::start().expect("redis sentinel");
/// println!("{}", s.url()); // redis-sentinel://127.0.0.1:PORT?sentinelServiceName=mymaster&node=…
/// ```
#[derive(Debug)]
pub struct RedisSentinel {
    sentinels: Vec<Sentinel>,
    servers: Vec<RedisServer>,
}

impl RedisSentinel {
    /// Starts the primary, the replica (in sync before this returns) and the sentinels (each
    /// seeing the primary, the replica and the other two before this returns).
    ///
    /// # Errors
    ///
    /// See [`StartError`].
    pub fn start() -> Result<Self, StartError> {
        let primary = RedisServer::builder().start()?;
        let replica = RedisServer::builder()
            .arg("replicaof", &format!("127.0.0.1 {}", primary.port()))
            .arg("repl-diskless-sync", "yes")
            .arg("repl-diskless-sync-delay", "0")
            .start()?;
        let mut s = Self {
            sentinels: Vec::new(),
            servers: vec![primary, replica],
        };
        s.wait(|s| {
            let role = s.servers[1].command(&["ROLE"]).unwrap_or_default();
            role.starts_with("slave") && role.contains("connected")
        })?;
        let primary_port = s.servers[0].port();
        for _ in 0..3 {
            s.sentinels.push(spawn_sentinel(primary_port)?);
        }
        s.wait(|s| {
            s.sentinels.iter().all(|t| {
                let info =
                    crate::cluster::command(t.port, &["INFO", "sentinel"]).unwrap_or_default();
                info.contains("slaves=1") && info.contains("sentinels=3")
            })
        })?;
        Ok(s)
    }

    fn wait(&self, ready: impl Fn(&Self) -> bool) -> Result<(), StartError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(self) {
            if Instant::now() > deadline {
                return Err(StartError::NotReady {
                    reason: "the sentinel setup was not ready within 30 s".to_owned(),
                    log: self
                        .sentinels
                        .iter()
                        .map(|t| {
                            let log = std::fs::read_to_string(t.dir.join("sentinel.log"))
                                .unwrap_or_default();
                            format!("--- sentinel {} ---\n{log}", t.port)
                        })
                        .collect(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `redis-sentinel://127.0.0.1:S1?sentinelServiceName=mymaster&node=127.0.0.1:S2&…`.
    pub fn url(&self) -> String {
        let mut url = format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SERVICE}",
            self.sentinels[0].port
        );
        for t in &self.sentinels[1..] {
            url.push_str(&format!("&node=127.0.0.1:{}", t.port));
        }
        url
    }

    /// The data servers: 0 started as the primary, 1 as its replica.
    pub fn server(&self, index: usize) -> &RedisServer {
        &self.servers[index]
    }

    /// The port of the primary the sentinels name now (`SENTINEL get-master-addr-by-name`).
    ///
    /// # Errors
    ///
    /// An I/O error, or an unexpected reply.
    pub fn primary_port(&self) -> io::Result<u16> {
        let reply = crate::cluster::command(
            self.sentinels[0].port,
            &["SENTINEL", "get-master-addr-by-name", SERVICE],
        )?;
        reply
            .lines()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected reply {reply:?}")))
    }

    /// Kills the data server at `index` (SIGKILL).
    pub fn kill(&mut self, index: usize) {
        self.servers[index].kill();
    }

    /// Waits until the sentinels name a primary other than `old_port` and it answers as a
    /// primary.
    ///
    /// # Errors
    ///
    /// `StartError::NotReady` after `within`.
    pub fn wait_failover(&self, old_port: u16, within: Duration) -> Result<u16, StartError> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(p) = self.primary_port() {
                let role = crate::cluster::command(p, &["ROLE"]).unwrap_or_default();
                if p != old_port && role.starts_with("master") {
                    return Ok(p);
                }
            }
            if Instant::now() > deadline {
                return Err(StartError::NotReady {
                    reason: format!("no failover within {within:?}"),
                    log: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spawn_sentinel(primary_port: u16) -> Result<Sentinel, StartError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir =
        std::env::temp_dir().join(format!("layercache-sentinel-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
             sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 3000\n\
             sentinel parallel-syncs {SERVICE} 1\n",
            dir.display(),
            dir.join("sentinel.log").display()
        ),
    )?;
    let child = Command::new(
        std::env::var("LAYERCACHE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned()),
    )
    .arg(&conf)
    .arg("--sentinel")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()?;
    let sentinel = Sentinel {
        child: Some(child),
        port,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::cluster::command(port, &["PING"]).is_err() {
        if Instant::now() > deadline {
            return Err(StartError::NotReady {
                reason: format!("sentinel on {port} did not answer PING"),
                log: std::fs::read_to_string(sentinel.dir.join("sentinel.log")).unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(sentinel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_fail_over_to_the_replica() {
        let mut s = RedisSentinel::start().expect("redis sentinel");
        let old = s.primary_port().unwrap();
        assert_eq!(old, s.server(0).port());
        assert!(s.url().starts_with("redis-sentinel://127.0.0.1:"));
        s.kill(0);
        let new = s.wait_failover(old, Duration::from_secs(30)).unwrap();
        assert_eq!(new, s.server(1).port());
    }
}
