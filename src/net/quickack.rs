//! The daemon's TCP connection to a plain-TCP broker, owned by dingdong so that it
//! acknowledges what the broker sends at once.
//!
//! Why: after the broker acknowledges a message of ours (a ring's outcome), Linux delays our
//! TCP acknowledgement of that PUBACK by up to 40 ms, as we have nothing to send. A broker
//! with Nagle's algorithm on (mosquitto as Debian installs it) holds back the next small
//! message for us, a press, until that acknowledgement comes. TCP_QUICKACK, set again after
//! every read, sends it at once; rumqttc owns its socket and offers no way to set it, so it
//! talks to this relay over an abstract Unix socket (no file, this process only) and the
//! relay talks to the broker.
//!
//! Each connection rumqttc opens to the relay gets a TCP connection of its own; when either
//! side ends, both do. Why a broker could not be reached is kept for the MQTT client's log,
//! which otherwise would only see the relay close.

use socket2::SockRef;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// How long connecting to the broker may take (rumqttc gives up on its side after 5 s).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A running relay.
#[derive(Clone)]
pub struct Relay {
    /// What rumqttc connects to: the abstract socket's name, with its leading NUL.
    pub path: String,
    /// Why the last connection to the broker failed, until it is taken.
    failure: Arc<Mutex<Option<String>>>,
}

impl Relay {
    /// Listens on a fresh abstract Unix socket and relays every connection rumqttc makes to
    /// `host:port`, until `stop`.
    pub fn start(host: &str, port: u16, tracker: &TaskTracker, stop: CancellationToken) -> std::io::Result<Relay> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("dingdong-mqtt-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(std_listener)?;
        let relay = Relay { path: format!("\0{name}"), failure: Arc::new(Mutex::new(None)) };
        let (me, broker) = (relay.clone(), (host.to_string(), port));
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    // cancel-safe: a connection not yet accepted stays in the backlog
                    accepted = listener.accept() => match accepted {
                        Ok((unix, _)) => me.relay(unix, &broker).await,
                        Err(e) => debug!(error = %e, "MQTT relay: accept failed"),
                    },
                    _ = stop.cancelled() => return,
                }
            }
        });
        Ok(relay)
    }

    /// Why the last connection to the broker failed, if it did (taken: reported once).
    pub fn take_failure(&self) -> Option<String> {
        self.failure.lock().expect("relay lock").take()
    }

    /// Connects `unix` (our MQTT client) to the broker; a connection from another process is
    /// refused.
    async fn relay(&self, unix: UnixStream, (host, port): &(String, u16)) {
        let ours = unix.peer_cred().ok().and_then(|c| c.pid()) == Some(std::process::id() as i32);
        if !ours {
            debug!("MQTT relay: a connection from another process refused");
            return;
        }
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)));
        match connect.await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                *self.failure.lock().expect("relay lock") = None;
                tokio::spawn(pump(unix, tcp));
            }
            Err(e) => {
                // Kept before `unix` closes, so the client's error finds it.
                *self.failure.lock().expect("relay lock") = Some(format!("connect {host}:{port}: {e}"));
            }
        }
    }
}

/// Moves bytes both ways until either side ends; after every read from the broker, what was
/// read is acknowledged at once.
async fn pump(unix: UnixStream, tcp: TcpStream) {
    let (mut from_client, mut to_client) = unix.into_split();
    let (mut from_broker, mut to_broker) = tcp.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_broker).await;
        let _ = to_broker.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_broker.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Sends the delayed acknowledgement now, and the next ones at once.
            let _ = SockRef::from(from_broker.as_ref()).set_tcp_quickack(true);
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_client.shutdown().await;
    };
    // Either side ending ends both: the client reconnects through a fresh relay connection.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Bytes go both ways unchanged; a broker that cannot be reached ends the client's
    /// connection, and why is kept for the client's log.
    #[tokio::test]
    async fn bytes_go_both_ways_and_a_refused_broker_is_told() {
        let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = broker.local_addr().unwrap().port();
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let relay = Relay::start("127.0.0.1", port, &tracker, stop.clone()).unwrap();
        let mut client = UnixStream::connect(&relay.path).await.unwrap();
        let (mut server, _) = broker.accept().await.unwrap();
        client.write_all(b"CONNECT").await.unwrap();
        let mut got = [0u8; 7];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"CONNECT");
        server.write_all(b"CONNACK").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"CONNACK");
        // The broker goes away: the client sees the end.
        drop(server);
        assert_eq!(client.read(&mut got).await.unwrap(), 0);
        assert_eq!(relay.take_failure(), None);

        // Nothing listens any more: the client's connection ends and the reason is kept.
        drop(broker);
        let mut client = UnixStream::connect(&relay.path).await.unwrap();
        assert_eq!(client.read(&mut got).await.unwrap(), 0);
        let why = relay.take_failure().expect("the failure is kept");
        assert!(why.starts_with(&format!("connect 127.0.0.1:{port}:")), "{why}");
        assert_eq!(relay.take_failure(), None, "told once");
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
