//! A real `redis-server` (Debian's) for one test: started on a free
//! loopback port in a private directory, ended by PID when dropped.
//! Standalone (std only) so the `sfu` tests include it with `#[path]`.

#![allow(dead_code)] // each test file uses a different part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    durable: bool,
    /// Arguments after the common ones (a replica's `--replicaof`), kept
    /// for a restart.
    extra: Vec<String>,
}

/// A port below the kernel's ephemeral range (which outgoing connections
/// draw from), picked at random; a taken one makes redis-server exit and we
/// try another.
fn candidate_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_start / 2);
    let span = u64::from(ephemeral_start - low);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ (u64::from(std::process::id()) << 20);
    low + (seed.wrapping_mul(6364136223846793005) >> 33).rem_euclid(span) as u16
}

impl RedisServer {
    /// In memory only: nothing is written to disk.
    pub fn start() -> RedisServer {
        Self::start_in(false)
    }

    /// With the append-only file and `appendfsync everysec`, the policy
    /// `deploy/README.md` documents: a restart after `kill -9` keeps what
    /// was written more than about a second before.
    pub fn start_durable() -> RedisServer {
        Self::start_in(true)
    }

    /// A replica of `primary`, in memory.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        Self::start_with(
            false,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
        )
    }

    /// With TLS on `tls_port` as well (`cert` and `key`: PEM files), no
    /// client certificates asked; the plain port stays for readiness.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> (RedisServer, u16) {
        // The TLS port is fixed before the retry loop: if it is taken the
        // server exits and the whole start is tried again.
        for _ in 0..5 {
            let tls_port = candidate_port();
            let extra = vec![
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ];
            if let Some(server) = Self::try_start_with(false, extra) {
                return (server, tls_port);
            }
        }
        panic!("redis-server with TLS did not start (is Debian's built with TLS?)");
    }

    fn start_in(durable: bool) -> RedisServer {
        Self::start_with(durable, Vec::new())
    }

    fn start_with(durable: bool, extra: Vec<String>) -> RedisServer {
        Self::try_start_with(durable, extra)
            .expect("redis-server did not start in 20 tries (is Debian's redis-server installed?)")
    }

    fn try_start_with(durable: bool, extra: Vec<String>) -> Option<RedisServer> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..20 {
            let port = candidate_port();
            let child = spawn(&dir, port, durable, &extra);
            let mut server = RedisServer {
                child,
                port,
                dir: dir.clone(),
                durable,
                extra: extra.clone(),
            };
            if server.wait_ready() {
                return Some(server);
            }
            // Port taken (or a slow start): end this one and try another.
            let _ = server.child.kill();
            let _ = server.child.wait();
            std::mem::forget(server);
        }
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no shutdown save, only what the AOF already holds.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same port and directory (after [`Self::kill9`]).
    pub fn restart(&mut self) {
        self.child = spawn(&self.dir, self.port, self.durable, &self.extra);
        assert!(self.wait_ready(), "redis-server did not restart");
    }

    /// True once it answers PING; false if it exited or took over 10 s.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // Ours, not another test's server that holds the port.
            if server_pid(self.port) == Some(self.child.id()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

fn spawn(dir: &std::path::Path, port: u16, durable: bool, extra: &[String]) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
        .args(["--loglevel", "warning"]);
    if durable {
        cmd.args(["--appendonly", "yes", "--appendfsync", "everysec"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (Debian package redis-server)")
}

/// A Redis Sentinel (`redis-server --sentinel`, Debian's) watching one
/// primary under `name`, alone (quorum 1) and quick to decide (down after
/// 1 s): a failover in seconds, for a test.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Sentinel {
    pub fn start(primary: &RedisServer, name: &str) -> Sentinel {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-sentinel-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..20 {
            let port = candidate_port();
            // Sentinel rewrites its config file as it learns: one of its own.
            let conf = dir.join("sentinel.conf");
            let text = format!(
                "bind 127.0.0.1\nport {port}\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n",
                dir.display(),
                primary.port
            );
            std::fs::write(&conf, text).unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .args(["--sentinel", "--daemonize", "no", "--loglevel", "warning"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs as a sentinel (Debian package redis-server)");
            let mut sentinel = Sentinel {
                child,
                port,
                dir: dir.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = sentinel.child.try_wait() {
                    break;
                }
                if server_pid(port) == Some(sentinel.child.id()) {
                    return sentinel;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = sentinel.child.kill();
            let _ = sentinel.child.wait();
            std::mem::forget(sentinel);
        }
        panic!("redis sentinel did not start in 20 tries");
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the redis-server on `port` says `role:<role>` (`INFO
/// replication`): `master` once a failover promoted it.
pub fn has_role(port: u16, role: &str) -> bool {
    info(port, "replication").is_some_and(|text| text.contains(&format!("role:{role}\r\n")))
}

/// The replication offset a replica on `port` has applied.
pub fn replica_offset(port: u16) -> Option<u64> {
    let text = info(port, "replication")?;
    let start = text.find("slave_repl_offset:")? + "slave_repl_offset:".len();
    let len = text[start..].find("\r\n")?;
    text[start..start + len].parse().ok()
}

/// The primary's replication offset.
pub fn primary_offset(port: u16) -> Option<u64> {
    let text = info(port, "replication")?;
    let start = text.find("master_repl_offset:")? + "master_repl_offset:".len();
    let len = text[start..].find("\r\n")?;
    text[start..start + len].parse().ok()
}

/// One `INFO <section>` reply's text (a bulk string: read to its length).
fn info(port: u16, section: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(format!("INFO {section}\r\n").as_bytes())
        .ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        // `$<len>\r\n<body>\r\n`
        let header_end = text.find("\r\n")?;
        let len: usize = text.get(1..header_end)?.parse().ok()?;
        if reply.len() >= header_end + 2 + len + 2 {
            return Some(text[header_end + 2..header_end + 2 + len].to_string());
        }
    }
    None
}

/// The PID of the redis-server answering on `port` (`INFO server`).
fn server_pid(port: u16) -> Option<u32> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        // Only a whole line: a read may end in the middle of the number.
        if let Some(start) = text.find("process_id:")
            && let Some(len) = text[start..].find("\r\n")
        {
            return text[start + "process_id:".len()..start + len].parse().ok();
        }
    }
    None
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
