//! A TCP proxy between a client and a server the test owns, for injecting network faults:
//! added latency, or a blackhole (the connection stays open but nothing gets through until the
//! network heals — then everything queued is delivered, in order, as TCP would after a
//! partition; no byte is ever dropped, which TCP never does without resetting).

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::Duration,
};

const PASS: u8 = 0;
const BLACKHOLE: u8 = 1;
const CUT: u8 = 2;

#[derive(Debug, Default)]
struct Control {
    mode: AtomicU8,
    latency_ms: AtomicU64,
    /// Latency for command connections only (those that never sent `SUBSCRIBE`).
    command_latency_ms: AtomicU64,
    /// Whether connections accepted now are *marked* (see [`Proxy::mark_new_connections`]).
    mark_new: AtomicBool,
    /// Latency for marked connections only.
    marked_latency_ms: AtomicU64,
    /// How many marked connections were accepted.
    marked: AtomicU64,
    /// Bumped by every cut: pumps of an older epoch close their connection.
    epoch: AtomicU64,
    /// Both ends of every open connection, for a cut to close at once.
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A running proxy from a free loopback port to `127.0.0.1:target`. Stopped on drop.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    control: Arc<Control>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:target`, passing traffic through unchanged.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub fn start(target: u16) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let control = Arc::new(Control::default());
        let c = control.clone();
        let acceptor = std::thread::spawn(move || accept_loop(&listener, target, &c));
        Ok(Self {
            port,
            control,
            acceptor: Some(acceptor),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Delays every chunk of data, both ways, by `latency` (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.control.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Stalls all data both ways (connections stay open, data queues) until
    /// [`pass`](Self::pass).
    pub fn blackhole(&self) {
        self.control.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Delays every chunk, both ways, on *command* connections only — those that have not sent
    /// `SUBSCRIBE` — while subscriber connections pass at once (zero: none). A client's
    /// commands then reach Redis late and their replies come back late, while the invalidations
    /// it receives arrive on time.
    pub fn set_command_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.control.command_latency_ms.store(ms, Ordering::SeqCst);
    }

    /// While `on`, every connection the proxy accepts is *marked* for good: it takes the
    /// latency set by [`set_marked_latency`](Self::set_marked_latency) on top of the others.
    /// Marking the connections one client opens (build it between `mark_new_connections(true)`
    /// and `(false)`) slows that client alone while others share the proxy — on a cluster whose
    /// nodes announce their proxies' ports, the only way to slow one client's every link.
    pub fn mark_new_connections(&self, on: bool) {
        self.control.mark_new.store(on, Ordering::SeqCst);
    }

    /// Delays every chunk, both ways, on marked connections (zero: none).
    pub fn set_marked_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.control.marked_latency_ms.store(ms, Ordering::SeqCst);
    }

    /// How many marked connections the proxy has accepted.
    pub fn marked_connections(&self) -> u64 {
        self.control.marked.load(Ordering::SeqCst)
    }

    /// Cuts the link: every open connection is closed (bytes in flight are lost, as when a
    /// network path fails and the connection resets) and new connections are closed at once,
    /// until [`pass`](Self::pass).
    pub fn cut(&self) {
        self.control.mode.store(CUT, Ordering::SeqCst);
        self.control.epoch.fetch_add(1, Ordering::SeqCst);
        let open: Vec<TcpStream> = self
            .control
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for stream in open {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets data through again (with the configured latency), after a blackhole or a cut.
    pub fn pass(&self) {
        self.control.mode.store(PASS, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, target: u16, control: &Arc<Control>) {
    while !control.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if control.mode.load(Ordering::SeqCst) == CUT {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut open = control.open.lock().unwrap_or_else(PoisonError::into_inner);
                    // Forget the ones already closed (a cut drains the rest).
                    open.retain(|s| s.peer_addr().is_ok());
                    for s in [&client, &server] {
                        if let Ok(s) = s.try_clone() {
                            open.push(s);
                        }
                    }
                }
                let marked = control.mark_new.load(Ordering::SeqCst);
                if marked {
                    control.marked.fetch_add(1, Ordering::SeqCst);
                }
                let link = Arc::new(Link {
                    epoch: control.epoch.load(Ordering::SeqCst),
                    subscriber: AtomicBool::new(false),
                    marked,
                });
                for (from, to, upstream) in [(&client, &server, true), (&server, &client, false)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let (c, link) = (control.clone(), link.clone());
                    std::thread::spawn(move || pump(from, to, &c, &link, upstream));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}

/// One proxied connection.
#[derive(Debug)]
struct Link {
    /// The cut epoch it was opened in.
    epoch: u64,
    /// Whether the client sent `SUBSCRIBE` on it.
    subscriber: AtomicBool,
    /// Whether it was accepted while new connections were marked.
    marked: bool,
}

fn contains_subscribe(chunk: &[u8]) -> bool {
    chunk
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
}

fn pump(mut from: TcpStream, mut to: TcpStream, control: &Control, link: &Link, upstream: bool) {
    let _ = from.set_nonblocking(false);
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    while !control.stop.load(Ordering::SeqCst) {
        if control.epoch.load(Ordering::SeqCst) != link.epoch {
            // Cut: close both ways, dropping whatever is in flight.
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
        if control.mode.load(Ordering::SeqCst) == BLACKHOLE {
            // Stall: leave the data in the socket buffers until the network heals.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        // Data read just before a blackhole began is held too: the blackhole is immediate.
        while control.mode.load(Ordering::SeqCst) == BLACKHOLE
            && !control.stop.load(Ordering::SeqCst)
            && control.epoch.load(Ordering::SeqCst) == link.epoch
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        if upstream && contains_subscribe(&buf[..n]) {
            link.subscriber.store(true, Ordering::SeqCst);
        }
        let mut latency = control.latency_ms.load(Ordering::SeqCst);
        if !link.subscriber.load(Ordering::SeqCst) {
            latency = latency.max(control.command_latency_ms.load(Ordering::SeqCst));
        }
        if link.marked {
            latency = latency.max(control.marked_latency_ms.load(Ordering::SeqCst));
        }
        if latency > 0 {
            std::thread::sleep(Duration::from_millis(latency));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;
    use std::io::{BufRead, BufReader};

    fn ping(port: u16, timeout: Duration) -> io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line)
    }

    #[test]
    fn passes_delays_and_stalls() {
        let server = RedisServer::start().unwrap();
        let proxy = Proxy::start(server.port()).unwrap();
        assert_eq!(
            ping(proxy.port(), Duration::from_secs(2)).unwrap(),
            "+PONG\r\n"
        );
        proxy.blackhole();
        assert!(ping(proxy.port(), Duration::from_millis(300)).is_err());
        // A request sent into the blackhole is answered once the network heals.
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        proxy.pass();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert_eq!(line, "+PONG\r\n");
        proxy.set_latency(Duration::from_millis(200));
        let start = std::time::Instant::now();
        assert_eq!(
            ping(proxy.port(), Duration::from_secs(5)).unwrap(),
            "+PONG\r\n"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "two delayed hops"
        );
    }

    #[test]
    fn a_cut_closes_connections_until_the_link_heals() {
        let server = RedisServer::start().unwrap();
        let proxy = Proxy::start(server.port()).unwrap();
        let mut open = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        open.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        let mut reply = [0u8; 7];
        open.read_exact(&mut reply).unwrap();
        proxy.cut();
        // The open connection is closed: a read sees the end (or a reset).
        let mut rest = [0u8; 1];
        assert!(matches!(open.read(&mut rest), Ok(0) | Err(_)));
        // A new connection is closed at once: no answer.
        assert!(
            !matches!(ping(proxy.port(), Duration::from_millis(300)), Ok(l) if l == "+PONG\r\n")
        );
        proxy.pass();
        assert_eq!(
            ping(proxy.port(), Duration::from_secs(2)).unwrap(),
            "+PONG\r\n"
        );
    }

    #[test]
    fn marked_latency_slows_only_the_connections_opened_while_marking() {
        let server = RedisServer::start().unwrap();
        let proxy = Proxy::start(server.port()).unwrap();
        proxy.mark_new_connections(true);
        let mut marked = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        marked
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // The connection is accepted (and marked) once the proxy answers on it.
        marked.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        let mut pong = [0u8; 7];
        marked.read_exact(&mut pong).unwrap();
        proxy.mark_new_connections(false);
        assert_eq!(proxy.marked_connections(), 1);
        assert_eq!(
            ping(proxy.port(), Duration::from_secs(5)).unwrap(),
            "+PONG\r\n"
        );
        assert_eq!(
            proxy.marked_connections(),
            1,
            "opened after marking stopped"
        );
        proxy.set_marked_latency(Duration::from_millis(300));
        let start = std::time::Instant::now();
        marked.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        marked.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"+PONG\r\n");
        assert!(
            start.elapsed() >= Duration::from_millis(600),
            "marked connection delayed both ways"
        );
    }

    #[test]
    fn command_latency_spares_subscriber_connections() {
        let server = RedisServer::start().unwrap();
        let proxy = Proxy::start(server.port()).unwrap();
        let mut sub = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sub.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n")
            .unwrap();
        let mut confirm = [0u8; 30];
        sub.read_exact(&mut confirm).unwrap();
        proxy.set_command_latency(Duration::from_millis(300));
        let start = std::time::Instant::now();
        assert_eq!(
            ping(proxy.port(), Duration::from_secs(5)).unwrap(),
            "+PONG\r\n"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(600),
            "command connection delayed"
        );
        // A message published directly reaches the subscriber through the proxy at once.
        let mut direct = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        let start = std::time::Instant::now();
        direct
            .write_all(b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$1\r\nm\r\n")
            .unwrap();
        let mut msg = [0u8; 30];
        sub.read_exact(&mut msg).unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "subscriber not delayed"
        );
    }
}
