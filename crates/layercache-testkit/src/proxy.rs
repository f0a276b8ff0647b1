//! A TCP proxy between a client and a server the test owns, for injecting network faults:
//! added latency, or a blackhole (the connection stays open but nothing gets through until the
//! network heals — then everything queued is delivered, in order, as TCP would after a
//! partition; no byte is ever dropped, which TCP never does without resetting).

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

const PASS: u8 = 0;
const BLACKHOLE: u8 = 1;

#[derive(Debug, Default)]
struct Control {
    mode: AtomicU8,
    latency_ms: AtomicU64,
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

    /// Lets data through again (with the configured latency).
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
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let c = control.clone();
                    std::thread::spawn(move || pump(from, to, &c));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, control: &Control) {
    let _ = from.set_nonblocking(false);
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    while !control.stop.load(Ordering::SeqCst) {
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
        let latency = control.latency_ms.load(Ordering::SeqCst);
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
}
