//! The embedded broker (rumqttd) for `mqtt.url = "embedded"` and `dingdong demo`: a gateway
//! with no mosquitto installed still works. It listens on loopback only.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Starts rumqttd on `addr` (port 0: a free port) in its own threads and waits until it
/// accepts connections. Returns the address it listens on. It lives until the process ends.
pub fn start_embedded(addr: SocketAddr) -> Result<SocketAddr, String> {
    let addr = if addr.port() == 0 {
        let l = TcpListener::bind(addr).map_err(|e| format!("embedded broker: cannot find a free port: {e}"))?;
        l.local_addr().map_err(|e| e.to_string())?
    } else {
        addr
    };
    let toml = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 65536
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&toml).map_err(|e| format!("embedded broker config: {e}"))?;
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| e.to_string())?;
    // Readiness: the broker binds on its own thread; poll until it accepts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(addr);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("embedded broker did not start listening on {addr}"))
}
