//! Where the store's connections come from: one Redis named by a
//! `redis://` URL, or the primary that Redis Sentinel names
//! (`redis+sentinel://`). Sentinel is asked again for every new connection,
//! so after a failover the pool refills from the new primary; a pooled
//! connection still open to the old one (demoted to a replica, it answers
//! writes with `READONLY`) is dropped from the pool on that answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, ConnectionLike, IntoConnectionInfo, RedisResult, Value};

/// Sentinel's default port, for an address given without one.
const SENTINEL_PORT: u16 = 26379;

#[derive(Clone)]
pub(super) enum Source {
    Direct(Arc<redis::Client>),
    /// Locked: a lookup takes `&mut` (it caches its sentinel connections).
    Sentinel(Arc<Mutex<SentinelClient>>),
}

impl Source {
    /// `redis://[:password@]host:port[/db]` (`rediss://` for TLS, trusting
    /// `roots`, PEM, or else the system's), or
    /// `redis+sentinel://[:password@]host:port[,host:port...]/primary-name[/db]`
    /// (the password and db are the primary's; the sentinels' addresses
    /// default to port 26379).
    pub(super) fn parse(url: &str, roots: Option<&[u8]>) -> Result<Source, String> {
        // Without TCP_NODELAY a request written in two segments can wait for
        // the delayed ACK: a call setup (create, accept, end) took 2.8 ms
        // with Nagle's algorithm on, 1.9 ms with it off.
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            let info = url
                .into_connection_info()
                .map_err(|e| e.to_string())?
                .set_tcp_settings(tcp);
            let client = match roots {
                Some(roots) => redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(roots.to_vec()),
                    },
                ),
                None => redis::Client::open(info),
            };
            return client
                .map(|c| Source::Direct(Arc::new(c)))
                .map_err(|e| e.to_string());
        };
        if roots.is_some() {
            return Err("redis+sentinel:// is plain TCP: a CA file is for rediss://".into());
        }
        let (password, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => {
                let password = auth.strip_prefix(':').unwrap_or(auth);
                (Some(percent_decoded(password)?), rest)
            }
            None => (None, rest),
        };
        let (hosts, path) = rest
            .split_once('/')
            .ok_or("redis+sentinel:// needs /<primary name> after the sentinels")?;
        let (name, db) = match path.split_once('/') {
            Some((name, db)) if !db.is_empty() => (
                name,
                Some(
                    db.parse::<i64>()
                        .map_err(|_| format!("db {db:?} is not a number"))?,
                ),
            ),
            Some((name, _)) => (name, None),
            None => (path, None),
        };
        if name.is_empty() {
            return Err("redis+sentinel:// names no primary".into());
        }
        let sentinels = hosts
            .split(',')
            .map(sentinel_address)
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = SentinelClientBuilder::new(sentinels, name, SentinelServerType::Master)
            .map_err(|e| e.to_string())?
            .set_client_to_redis_tcp_settings(tcp.clone())
            .set_client_to_sentinel_tcp_settings(tcp);
        if let Some(password) = password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(db) = db {
            builder = builder.set_client_to_redis_db(db);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        Ok(Source::Sentinel(Arc::new(Mutex::new(client))))
    }

    /// A new connection, made within `connect_timeout`, whose commands time
    /// out after `command_timeout` (a Redis that stops answering must fail
    /// a request, not hang it).
    pub(super) fn connect(
        &self,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> RedisResult<redis::Connection> {
        let conn = match self {
            Source::Direct(client) => client.get_connection_with_timeout(connect_timeout)?,
            Source::Sentinel(sentinel) => {
                // The lookup under the lock; the connection outside it.
                let primary = sentinel
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_client()?;
                primary.get_connection_with_timeout(connect_timeout)?
            }
        };
        conn.set_read_timeout(Some(command_timeout))?;
        conn.set_write_timeout(Some(command_timeout))?;
        Ok(conn)
    }
}

fn sentinel_address(host_port: &str) -> Result<ConnectionAddr, String> {
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("sentinel {host_port:?}: bad port"))?,
        ),
        None => (host_port, SENTINEL_PORT),
    };
    if host.is_empty() {
        return Err(format!("sentinel {host_port:?}: no host"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(ConnectionAddr::Tcp(host.to_string(), port))
}

fn percent_decoded(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "the password is not UTF-8".into())
}

/// The store's connections in the pool: the pool made by [`Source`].
pub(super) struct Pooled {
    source: Source,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl Pooled {
    pub(super) fn new(
        source: Source,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Pooled {
        Pooled {
            source,
            connect_timeout,
            command_timeout,
        }
    }
}

/// A pooled connection that remembers being answered `READONLY`: the
/// primary it was opened to is a replica now, so it must not go back.
pub(super) struct Conn {
    inner: redis::Connection,
    demoted: bool,
}

impl Conn {
    fn notice(&mut self, value: &Value) {
        if let Value::ServerError(e) = value
            && e.code() == "READONLY"
        {
            self.demoted = true;
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        let answer = self.inner.req_packed_command(cmd);
        if let Ok(value) = &answer {
            self.notice(value);
        }
        answer
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let answers = self.inner.req_packed_commands(cmd, offset, count);
        match &answers {
            Ok(values) => values.iter().for_each(|v| self.notice(v)),
            Err(e) if e.code() == Some("READONLY") => self.demoted = true,
            Err(_) => {}
        }
        answers
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }

    fn check_connection(&mut self) -> bool {
        self.inner.check_connection()
    }

    fn is_open(&self) -> bool {
        self.inner.is_open()
    }
}

impl r2d2::ManageConnection for Pooled {
    type Connection = Conn;
    type Error = redis::RedisError;

    fn connect(&self) -> RedisResult<Conn> {
        Ok(Conn {
            inner: self
                .source
                .connect(self.connect_timeout, self.command_timeout)?,
            demoted: false,
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> RedisResult<()> {
        redis::cmd("PING").query::<String>(conn).map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.demoted || !conn.inner.is_open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_primary_and_its_db() {
        assert!(matches!(
            Source::parse("redis://127.0.0.1:6379/0", None),
            Ok(Source::Direct(_))
        ));
        for url in [
            "redis+sentinel://10.0.0.1:26380,10.0.0.2/calls",
            "redis+sentinel://:p%40ss@s1:26379,s2:26379/calls/2",
            "redis+sentinel://[::1]:26379/calls/",
        ] {
            assert!(
                matches!(Source::parse(url, None), Ok(Source::Sentinel(_))),
                "{url}"
            );
        }
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+sentinel://s1:port/calls",
            "redis+sentinel://:26379/calls",
            "redis+sentinel://s1/calls/zero",
        ] {
            assert!(Source::parse(bad, None).is_err(), "{bad}");
        }
        assert_eq!(
            sentinel_address("10.0.0.2").unwrap(),
            ConnectionAddr::Tcp("10.0.0.2".into(), SENTINEL_PORT)
        );
        assert_eq!(percent_decoded("p%40ss").unwrap(), "p@ss");
    }
}
