//! Starting and stopping one `redis-server`.

use std::{
    fmt,
    io::{self, BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::tls::Authority;

/// How to install Redis, printed when the binary is missing.
const INSTALL_HINT: &str = "redis-server was not found on PATH. Install it with \
`sudo apt-get update && sudo apt-get install -y redis-server` (Debian/Ubuntu), \
`brew install redis` (macOS), or set LAYERCACHE_REDIS_SERVER to the binary's path.";

/// Why a server could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The `redis-server` binary is not installed (the message says how to install it).
    NotInstalled(String),
    /// The process started but did not answer `PING` in time, or exited; carries its log.
    NotReady {
        /// What went wrong.
        reason: String,
        /// The server's log file contents.
        log: String,
    },
    /// Any other I/O error (temporary directory, free port, spawn).
    Io(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled(hint) => f.write_str(hint),
            Self::NotReady { reason, log } => {
                write!(
                    f,
                    "redis-server did not start: {reason}\n--- redis-server log ---\n{log}"
                )
            }
            Self::Io(e) => write!(f, "could not start redis-server: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Options for a [`RedisServer`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RedisServerBuilder {
    args: Vec<String>,
    binary: Option<String>,
    tls: Option<Tls>,
}

/// How a server serves TLS.
#[derive(Debug, Clone)]
struct Tls {
    /// The CA that signs its certificate (a new one when `None`).
    ca: Option<Authority>,
    /// Serve plain text on [`RedisServer::port`] too, TLS on [`RedisServer::tls_port`].
    keep_plain: bool,
}

impl RedisServerBuilder {
    /// Adds `--name value` to the command line (for example `("enable-debug-command",
    /// "local")` or `("requirepass", "secret")`).
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push(format!("--{name}"));
        self.args.push(value.to_owned());
        self
    }

    /// Serves TLS only (no plain port), with a certificate for `127.0.0.1` signed by a CA
    /// generated for this server ([`RedisServer::ca_pem`]); clients are not asked for
    /// certificates. [`RedisServer::url`] then starts with `rediss://`.
    pub fn tls(mut self) -> Self {
        self.tls = Some(Tls {
            ca: None,
            keep_plain: false,
        });
        self
    }

    /// Serves TLS on a second port ([`RedisServer::tls_port`]) with a certificate signed by
    /// `ca`, and plain text on [`RedisServer::port`] (for the kit's own admin commands).
    pub(crate) fn tls_beside_plain(mut self, ca: &Authority) -> Self {
        self.tls = Some(Tls {
            ca: Some(ca.clone()),
            keep_plain: true,
        });
        self
    }

    /// The `redis-server` binary to run.
    ///
    /// Default: `$LAYERCACHE_REDIS_SERVER`, else `redis-server` from `PATH`.
    pub fn binary(mut self, path: &str) -> Self {
        self.binary = Some(path.to_owned());
        self
    }

    /// Starts the server.
    ///
    /// # Errors
    ///
    /// See [`StartError`].
    pub fn start(self) -> Result<RedisServer, StartError> {
        // A port found free can be taken by another test before redis binds it: retry then.
        let mut last = None;
        for _ in 0..5 {
            let binary = self.binary.clone().unwrap_or_else(default_binary);
            match RedisServer::spawn(binary, &self.args, self.tls.as_ref()) {
                Ok(s) => return Ok(s),
                Err(StartError::NotReady { reason, log })
                    if log.contains("Address already in use") =>
                {
                    last = Some(StartError::NotReady { reason, log });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StartError::Io(io::Error::other("no free port"))))
    }
}

/// A running `redis-server`, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    binary: String,
    ca_pem: Option<String>,
    /// The TLS port, when the server serves TLS (the same as `port` when it serves only TLS).
    tls_port: Option<u16>,
}

fn default_binary() -> String {
    std::env::var("LAYERCACHE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn temp_dir() -> io::Result<PathBuf> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "layercache-redis-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl RedisServer {
    /// Starts a server with the default options.
    ///
    /// # Errors
    ///
    /// See [`StartError`].
    pub fn start() -> Result<Self, StartError> {
        Self::builder().start()
    }

    /// A builder for a server with extra options.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    fn spawn(binary: String, extra: &[String], tls: Option<&Tls>) -> Result<Self, StartError> {
        let port = free_port()?;
        let dir = temp_dir()?;
        let mut args = extra.to_vec();
        let mut ca_pem = None;
        let mut tls_port = None;
        if let Some(tls) = tls {
            let ca = match &tls.ca {
                Some(ca) => ca.clone(),
                None => Authority::generate()?,
            };
            ca_pem = Some(ca.pem());
            let mut options = ca.write_server_files(&dir)?;
            if tls.keep_plain {
                let other = free_port()?;
                tls_port = Some(other);
                options.push(("tls-port", other.to_string()));
            } else {
                tls_port = Some(port);
                options.push(("tls-port", port.to_string()));
                options.push(("port", "0".to_owned()));
            }
            for (k, v) in options {
                args.push(format!("--{k}"));
                args.push(v);
            }
        }
        let mut server = Self {
            child: None,
            port,
            dir,
            args,
            binary,
            ca_pem,
            tls_port,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<(), StartError> {
        let log = self.log_path();
        let child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    StartError::NotInstalled(INSTALL_HINT.to_owned())
                } else {
                    StartError::Io(e)
                }
            })?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10))
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), StartError> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut stderr = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut stderr);
                    }
                    self.child = None;
                    return Err(StartError::NotReady {
                        reason: format!("exited with {status}"),
                        log: format!("{}{stderr}", self.log()),
                    });
                }
            }
            if self.ping().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(StartError::NotReady {
                    reason: format!("no answer to PING within {within:?}"),
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `PING` and expects `PONG` (or `NOAUTH`: a password-protected server is up too).
    /// A TLS-only server cannot be pinged in plain text: its log saying it is ready counts.
    fn ping(&self) -> io::Result<()> {
        if self.tls_only() {
            return if self.log().contains("Ready to accept connections") {
                Ok(())
            } else {
                Err(io::Error::other("not ready"))
            };
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        if line.starts_with("+PONG") || line.starts_with("-NOAUTH") {
            Ok(())
        } else {
            Err(io::Error::other(format!("unexpected reply {line:?}")))
        }
    }

    /// The port the server listens on (127.0.0.1): its TLS port for a server started with
    /// [`RedisServerBuilder::tls`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port the server serves TLS on, if it does.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    fn tls_only(&self) -> bool {
        self.tls_port == Some(self.port)
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for a server started with
    /// [`RedisServerBuilder::tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls_only() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Sends one command (plain text: not to a TLS server) and returns its reply as text, as
    /// [`RedisCluster::command`](crate::RedisCluster::command) does.
    ///
    /// # Errors
    ///
    /// An I/O error, or the server's error reply.
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        crate::cluster::command(self.port, args)
    }

    /// The PEM of the CA that signed a TLS server's certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The directory holding the log (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL) and waits for it to exit. The port stays reserved for
    /// [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port (with no data:
    /// persistence is off).
    ///
    /// # Errors
    ///
    /// See [`StartError`].
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Err(StartError::NotReady { log, .. })
                    if log.contains("Address already in use") && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            if !log.is_empty() {
                // Not `eprintln!`: it panics when stderr is gone (a test's output piped into
                // `head`), and a panic while panicking aborts before the other servers of a
                // cluster are dropped — they were left running.
                let _ = writeln!(
                    std::io::stderr(),
                    "--- redis-server log (port {}) ---\n{log}",
                    self.port
                );
            }
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(port: u16, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(raw).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    #[test]
    fn starts_answers_and_is_killed_on_drop() {
        let server = RedisServer::start().expect("redis-server must be installed for tests");
        let port = server.port();
        assert!(server.url().ends_with(&port.to_string()));
        assert_eq!(command(port, b"*1\r\n$4\r\nPING\r\n"), "+PONG\r\n");
        // No persistence configured.
        assert!(
            command(port, b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$4\r\nsave\r\n").starts_with('*')
        );
        let dir = server.dir().to_path_buf();
        drop(server);
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "server still listening"
        );
        assert!(!dir.exists());
    }

    #[test]
    fn restart_keeps_the_port() {
        let mut server = RedisServer::start().unwrap();
        let port = server.port();
        let first = server.pid();
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert_ne!(server.pid(), first);
        assert_eq!(command(port, b"*1\r\n$4\r\nPING\r\n"), "+PONG\r\n");
    }

    #[test]
    fn a_missing_binary_says_how_to_install() {
        let err = RedisServer::builder()
            .binary("/nonexistent/redis-server-xyz")
            .start()
            .unwrap_err();
        assert!(
            err.to_string().contains("apt-get install -y redis-server"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_option_reports_the_log() {
        let err = RedisServer::builder()
            .arg("no-such-option", "1")
            .start()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("did not start"), "{text}");
        assert!(text.to_lowercase().contains("no-such-option"), "{text}");
    }
}
