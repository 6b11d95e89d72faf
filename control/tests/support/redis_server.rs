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

    fn start_in(durable: bool) -> RedisServer {
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
            let child = spawn(&dir, port, durable);
            let mut server = RedisServer {
                child,
                port,
                dir: dir.clone(),
                durable,
            };
            if server.wait_ready() {
                return server;
            }
            // Port taken (or a slow start): end this one and try another.
            let _ = server.child.kill();
            let _ = server.child.wait();
            std::mem::forget(server);
        }
        panic!("redis-server did not start in 20 tries (is Debian's redis-server installed?)");
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
        self.child = spawn(&self.dir, self.port, self.durable);
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

fn spawn(dir: &std::path::Path, port: u16, durable: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
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
