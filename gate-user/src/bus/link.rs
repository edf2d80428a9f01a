//! The connection to the engine, kept up by a task of its own: connected
//! at start if the engine answers, else in the background, with backoff
//! (100 ms doubling to 10 s, with jitter), and again whenever a command
//! finds it broken. Whoever uses it never waits for a connection: it gets
//! the current one or none, so a login never blocks on an engine that is
//! down. The log says once per change that the bus is down or back.
//!
//! The engine's time (bus/clock.rs) is read when the link connects, on
//! the new connection before anyone else uses it, and every
//! [`clock::REFRESH`] on a connection of its own: on the shared one, an
//! agent's blocking read (up to 5 s) holds back every answer after it,
//! and a TIME answer that waited that long made the reading seconds off.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context, Result};
use log::{debug, info, warn};
use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    clock::{self, EngineClock},
    config::{BusKeys, BusUrl},
    follow::shorten,
};
use crate::keys::KeyError;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LONGEST_RETRY: Duration = Duration::from_secs(10);
/// The longest a blocking read (an agent's XREAD BLOCK) holds the shared
/// connection: what else is sent on it may wait that long more.
pub const LONGEST_BLOCK: Duration = Duration::from_secs(5);
/// The longest the link may take to connect, TLS and the client's
/// hello (AUTH) included, and to have its first PING and TIME answered:
/// an engine that drags its handshake or first answers out holds the
/// link, and what it sent, no longer (attack review: 5 s for the
/// connection alone, then each answer the response timeout). Far above
/// a handshake across a data centre.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest error text kept and logged: the engine's words (escaped,
/// follow.rs `shorten`), which it may make long.
pub const LONGEST_ERROR: usize = 300;

/// What the link needs: where, as whom, and how long a command may take
/// (a blocking read that much more than it blocks:
/// [`Link::for_blocking_read`]).
#[derive(Clone, Debug)]
pub struct LinkSettings {
    pub url: BusUrl,
    /// From `bus_password_file`; laid over the URL's.
    pub password: Option<String>,
    /// How long the engine may take to answer a command. The redis crate
    /// reads a reply whole, however long (it has no cap): this also
    /// bounds how long an engine can go on sending one, and so what it
    /// can make the process hold (the units' MemoryMax= bounds the rest).
    pub response_timeout: Duration,
    /// For the log: `serve` or `agent`.
    pub role: &'static str,
}

impl LinkSettings {
    /// The link's settings for `keys`: `None` without a bus. The password
    /// file is read now ([`BusKeys::read_password`]); its errors are a
    /// [`KeyError`] of `bus_password_file`. A command may take
    /// `response_timeout`.
    pub fn from_keys(
        keys: &BusKeys,
        response_timeout: Duration,
        role: &'static str,
    ) -> Result<Option<Self>, KeyError> {
        let Some(url) = &keys.bus else {
            return Ok(None);
        };
        Ok(Some(Self {
            url: url.clone(),
            password: keys.read_password()?,
            response_timeout,
            role,
        }))
    }
}

/// The engine's connection, shared.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    settings: LinkSettings,
    client: Client,
    current: Mutex<State>,
    /// Wakes the keeper: a command found the connection broken.
    broken: Notify,
    /// Wakes whoever waits for a connection.
    connected: Notify,
    /// The engine's time, read at each connect and every
    /// [`clock::REFRESH`].
    clock: EngineClock,
    /// Whether the clock's last reading failed, as logged.
    logged_clock_failure: Mutex<bool>,
}

struct State {
    connection: Option<MultiplexedConnection>,
    /// The last error, for the log (once per change) and for `stats`.
    last_error: Option<String>,
    /// Whether "up" or "down" was logged last (`None`: nothing yet).
    logged_up: Option<bool>,
    /// The engine refused TIME, and that was logged.
    logged_no_time: bool,
    /// No TIME round trip was quick enough, and that was logged.
    logged_slow_time: bool,
}

/// How long the clock's own connection may take to answer a TIME.
const CLOCK_TIMEOUT: Duration = Duration::from_secs(1);

impl Link {
    /// The link, not yet connected: [`Link::keep`] connects it.
    pub fn new(settings: LinkSettings) -> Result<Self> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(settings.url.secret_text())
            .with_context(|| format!("bus = {}", settings.url))?;
        if let Some(password) = &settings.password {
            info.redis.password = Some(password.clone());
        }
        let client = Client::open(info).with_context(|| format!("bus = {}", settings.url))?;
        let clock = EngineClock::for_role(settings.role);
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                client,
                current: Mutex::new(State {
                    connection: None,
                    last_error: None,
                    logged_up: None,
                    logged_no_time: false,
                    logged_slow_time: false,
                }),
                broken: Notify::new(),
                connected: Notify::new(),
                clock,
                logged_clock_failure: Mutex::new(false),
            }),
        })
    }

    /// The connection now, if there is one.
    pub fn connection(&self) -> Option<MultiplexedConnection> {
        self.state().connection.clone()
    }

    /// Waits until there is a connection (or `stop`).
    pub async fn wait_connected(&self, stop: &CancellationToken) -> Option<MultiplexedConnection> {
        loop {
            let woken = self.inner.connected.notified();
            if let Some(connection) = self.connection() {
                return Some(connection);
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = woken => {}
            }
        }
    }

    /// A command failed on the connection: unless the engine only refused
    /// the command, the connection is dropped and made anew.
    pub fn failed(&self, error: &redis::RedisError) {
        let broken = breaks_the_connection(error);
        let mut state = self.state();
        state.last_error = Some(shorten(&error.to_string(), LONGEST_ERROR));
        if broken {
            state.connection = None;
            drop(state);
            self.inner.broken.notify_one();
        }
    }

    /// The last error the link saw, if any.
    pub fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    /// True while connected.
    pub fn is_up(&self) -> bool {
        self.state().connection.is_some()
    }

    /// The engine's clock (bus/clock.rs): what grants are timed by.
    pub fn clock(&self) -> &EngineClock {
        &self.inner.clock
    }

    /// Keeps the link connected until `stop`: run it as a task.
    pub async fn keep(self, stop: CancellationToken) {
        let mut retry = FIRST_RETRY;
        loop {
            if self.connection().is_none() {
                match self.connect().await {
                    Ok(connection) => {
                        retry = FIRST_RETRY;
                        let mut state = self.state();
                        state.connection = Some(connection);
                        if state.logged_up != Some(true) {
                            info!(
                                "bus {}: connected to {}",
                                self.inner.settings.role, self.inner.settings.url
                            );
                            state.logged_up = Some(true);
                        }
                        drop(state);
                        self.inner.connected.notify_waiters();
                    }
                    Err(e) => {
                        self.unreachable(format!("{e:#}"));
                        let pause = with_jitter(retry);
                        retry = (retry * 2).min(LONGEST_RETRY);
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(pause) => continue,
                        }
                    }
                }
            }
            let broken = self.inner.broken.notified();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(clock::REFRESH) => self.refresh().await,
                () = broken => {
                    let mut state = self.state();
                    if state.logged_up == Some(true) && state.connection.is_none() {
                        warn!(
                            "bus {}: the connection to {} broke ({}); reconnecting",
                            self.inner.settings.role,
                            self.inner.settings.url,
                            state.last_error.as_deref().unwrap_or("no error given")
                        );
                        state.logged_up = Some(false);
                    }
                }
            }
        }
    }

    fn unreachable(&self, error: String) {
        let error = shorten(&error, LONGEST_ERROR);
        let mut state = self.state();
        if state.logged_up != Some(false) {
            warn!(
                "bus {}: the engine at {} cannot be reached: {error}; retrying in the background",
                self.inner.settings.role, self.inner.settings.url
            );
            state.logged_up = Some(false);
        }
        state.last_error = Some(error);
    }

    /// `connection` for one read that may wait `block` for the engine
    /// (XREAD BLOCK): its answer may take the response timeout after
    /// that, every other command's only the response timeout.
    pub fn for_blocking_read(
        &self,
        connection: &MultiplexedConnection,
        block: Duration,
    ) -> MultiplexedConnection {
        let mut reading = connection.clone();
        reading.set_response_timeout(block + self.inner.settings.response_timeout);
        reading
    }

    /// A new connection that carries nothing else, whose commands may
    /// take `response_timeout`; made within [`CONNECT_TIMEOUT`], closed
    /// when dropped. For a read that may take much longer than the
    /// response timeout (a huge entry over a slow link, follow.rs
    /// [`SLOW_READ`](super::follow::SLOW_READ)) without holding the shared
    /// connection, whose other answers would wait behind it and time out,
    /// which tears the link down.
    pub async fn connection_apart(
        &self,
        response_timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(response_timeout);
        let connecting = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config);
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection of its own within {CONNECT_TIMEOUT:?}"),
                )))
            })
    }

    /// Connects, within [`CONNECT_TIMEOUT`] in all.
    async fn connect(&self) -> Result<MultiplexedConnection> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_unbounded())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no connection with a PING and TIME answered within {CONNECT_TIMEOUT:?}"
                )
            })?
    }

    async fn connect_unbounded(&self) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(self.inner.settings.response_timeout);
        let mut connection = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // A connection is only up once the engine answers (and took the
        // password).
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        self.read_time(&mut connection).await?;
        Ok(connection)
    }

    /// Every [`clock::REFRESH`]: the engine's time is read on a
    /// connection of its own, and the shared connection is asked whether
    /// it still answers (PING: it may wait behind a blocking read, and is
    /// not timed).
    async fn refresh(&self) {
        self.read_time_apart().await;
        if let Some(connection) = self.connection() {
            // It may wait behind an agent's blocking read on this
            // connection, and a timeout breaks the connection.
            let mut connection = self.for_blocking_read(&connection, LONGEST_BLOCK);
            let ping = redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await;
            if let Err(e) = ping {
                self.failed(&e);
            }
        }
    }

    /// Reads the engine's time on a new connection that carries nothing
    /// else, closed afterwards. A failure leaves the clock as it is
    /// (carried forward on the boot clock), said once per change.
    async fn read_time_apart(&self) {
        let outcome = match self.connection_apart(CLOCK_TIMEOUT).await {
            Ok(mut connection) => self.read_time(&mut connection).await,
            Err(e) => Err(e),
        };
        let role = self.inner.settings.role;
        let mut logged = self
            .inner
            .logged_clock_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(()) if std::mem::take(&mut *logged) => {
                info!("bus {role}: the engine's time is read again");
            }
            Ok(()) => {}
            Err(e) if !std::mem::replace(&mut *logged, true) => warn!(
                "bus {role}: the engine's time cannot be read on a connection of its own \
                 ({e}); the last reading goes on, carried forward on this host's boot clock"
            ),
            Err(e) => debug!("bus {role}: reading the engine's time: {e}"),
        }
    }

    /// Reads the engine's time into the clock: [`clock::SAMPLES`] TIME
    /// round trips on `connection`, the shortest taken (bus/clock.rs).
    /// An engine that refuses TIME (an ACL without it) is said once and
    /// leaves the clock as it is; only a failed connection is an error.
    async fn read_time(&self, connection: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let mut samples = Vec::with_capacity(clock::SAMPLES);
        let mut refused = None;
        for _ in 0..clock::SAMPLES {
            let sent = clock::boot_ms();
            let reply = redis::cmd("TIME")
                .query_async::<redis::Value>(connection)
                .await;
            let received = clock::boot_ms();
            match reply.map(|reply| clock::parse_time(&reply)) {
                Ok(Ok(engine_ms)) => samples.push(clock::Sample {
                    engine_ms,
                    sent_boot_ms: sent,
                    received_boot_ms: received,
                }),
                Ok(Err(e)) => refused = Some(e.to_string()),
                Err(e) if breaks_the_connection(&e) => return Err(e),
                Err(e) => refused = Some(shorten(&e.to_string(), LONGEST_ERROR)),
            }
            if refused.is_some() {
                break;
            }
        }
        let role = self.inner.settings.role;
        let Some(refused) = refused else {
            let taken = self.inner.clock.record(&samples);
            let mut state = self.state();
            if !taken && !std::mem::replace(&mut state.logged_slow_time, true) {
                warn!(
                    "bus {role}: the engine's time is not taken: none of {} TIME round trips \
                     took {} ms or less; the last reading goes on",
                    samples.len(),
                    clock::LONGEST_ROUND_TRIP_MS
                );
            } else if taken && std::mem::take(&mut state.logged_slow_time) {
                info!("bus {role}: the engine's time is taken again");
            }
            return Ok(());
        };
        let mut state = self.state();
        if !std::mem::replace(&mut state.logged_no_time, true) {
            warn!(
                "bus {role}: the engine does not tell its time ({refused}); grants are timed \
                 by this host's clock, the stream's entry ids as a floor: allow +time \
                 (deploy/redis-acl.conf)"
            );
        }
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// `pause` give or take a quarter, so that many hosts that lost the engine
/// together do not all come back in the same millisecond.
fn with_jitter(pause: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let quarter = pause / 4;
    pause - quarter + quarter * 2 * (nanos % 1000) / 1000
}

/// True if `error` means the connection must be made anew. Besides a lost
/// or hung connection: a node that says it is not the primary (any more):
/// `READONLY` from a replica, `MASTERDOWN`. After a failover behind a DNS
/// name, a proxy or a moved address, only a new connection reaches the
/// new primary; kept, every publication failed until a restart (attack
/// review F8).
fn breaks_the_connection(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            redis::ErrorKind::ReadOnly | redis::ErrorKind::MasterDown
        )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use redis::{ErrorKind, RedisError};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::bus::{
        clock::wall_ms,
        fake_engine::{time_answer, Answer, FakeEngine},
    };

    /// The minutely PING on the shared connection waits behind an
    /// agent's blocking read: it must not time out (and a timeout breaks
    /// the connection) after the response timeout alone, or every edge
    /// would drop its link once a minute.
    #[tokio::test]
    async fn the_minutely_ping_may_wait_behind_a_blocking_read() {
        const HELD: Duration = Duration::from_millis(1500);
        let engine = FakeEngine::start(|command| match command[0].as_str() {
            "PING" => Answer::Now(b"+PONG\r\n".to_vec()),
            "CLIENT" => Answer::Now(b"+OK\r\n".to_vec()),
            "TIME" => Answer::Now(time_answer(wall_ms())),
            "XREAD" => Answer::After(HELD, b"*-1\r\n".to_vec()),
            _ => Answer::Now(b"-ERR unknown\r\n".to_vec()),
        })
        .await;
        let (link, stop, connection) = kept_link(engine.port, Duration::from_millis(300)).await;
        let read =
            blocking_read_sent(&engine, link.for_blocking_read(&connection, HELD), HELD).await;
        link.refresh().await;
        assert_eq!(link.last_error(), None);
        assert!(link.is_up() && link.connection().is_some());
        read.await.unwrap().expect("the read ends");
        stop.cancel();
    }

    #[tokio::test]
    async fn the_engines_time_is_read_apart_from_a_blocking_read() {
        // Attack review finding 8: the minutely TIME went out on the
        // connection an agent's XREAD BLOCK holds; its answer waited for
        // the read to end, and the reading was off by half the wait. The
        // fake engine's clock is an hour ahead; a blocking read holds
        // its connection 1.5 s.
        const AHEAD: u64 = 3_600_000;
        const HELD: Duration = Duration::from_millis(1500);
        let engine = FakeEngine::start(|command| match command[0].as_str() {
            "PING" => Answer::Now(b"+PONG\r\n".to_vec()),
            "CLIENT" => Answer::Now(b"+OK\r\n".to_vec()),
            "TIME" => Answer::Now(time_answer(wall_ms() + AHEAD)),
            "XREAD" => Answer::After(HELD, b"*-1\r\n".to_vec()),
            _ => Answer::Now(b"-ERR unknown\r\n".to_vec()),
        })
        .await;
        let (link, stop, connection) = kept_link(engine.port, Duration::from_secs(10)).await;
        let near = |skew: Option<i64>| skew.is_some_and(|s| s.abs_diff(AHEAD as i64) < 50);
        // Read at the connect, on the new connection before anyone used
        // it: the best of the samples.
        assert!(near(link.clock().skew_ms()), "{:?}", link.clock().skew_ms());

        let read = blocking_read_sent(&engine, connection, HELD).await;
        link.refresh().await;
        let skew = link.clock().skew_ms();
        assert!(near(skew), "the reading waited behind the read: {skew:?}");
        assert_eq!(
            engine
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
            2,
            "a connection of its own"
        );
        assert_eq!(
            engine.sent("TIME").len(),
            2 * clock::SAMPLES,
            "samples at the connect and at the refresh"
        );
        read.await.unwrap().expect("the read ends");
        stop.cancel();
    }

    /// A read on a connection apart may take its own, longer timeout;
    /// the shared connection goes on answering meanwhile and is not torn
    /// down (bus2 F3: a huge entry over a slow link).
    #[tokio::test]
    async fn a_connection_apart_waits_its_own_timeout_and_leaves_the_link_up() {
        const HELD: Duration = Duration::from_millis(1500);
        let engine = FakeEngine::start(|command| match command[0].as_str() {
            "PING" => Answer::Now(b"+PONG\r\n".to_vec()),
            "CLIENT" => Answer::Now(b"+OK\r\n".to_vec()),
            "TIME" => Answer::Now(time_answer(wall_ms())),
            "XREAD" => Answer::After(HELD, b"*-1\r\n".to_vec()),
            _ => Answer::Now(b"-ERR unknown\r\n".to_vec()),
        })
        .await;
        let link = link(engine.port, Duration::from_millis(300));
        let stop = CancellationToken::new();
        tokio::spawn(link.clone().keep(stop.clone()));
        let mut shared = tokio::time::timeout(Duration::from_secs(30), link.wait_connected(&stop))
            .await
            .expect("the link connects")
            .unwrap();
        let xread = || {
            redis::cmd("XREAD")
                .arg("STREAMS")
                .arg("s")
                .arg("0-0")
                .clone()
        };
        let mut apart = link.connection_apart(Duration::from_secs(5)).await.unwrap();
        let started = Instant::now();
        let reading = tokio::spawn(async move {
            let reply = xread().query_async::<redis::Value>(&mut apart).await;
            (reply, started.elapsed())
        });
        // Meanwhile the shared connection answers within its own timeout.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pong: String = redis::cmd("PING").query_async(&mut shared).await.unwrap();
        assert_eq!(pong, "PONG");
        let (reply, took) = reading.await.unwrap();
        assert_eq!(reply.unwrap(), redis::Value::Nil);
        assert!(took >= HELD && took < Duration::from_secs(4), "{took:?}");
        assert!(link.is_up());
        // The same read on the shared connection: its response timeout.
        let e = xread()
            .query_async::<redis::Value>(&mut shared)
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "the shared connection's timeout: {e}");
        assert_eq!(
            engine
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        stop.cancel();
    }

    /// A fake engine on loopback that answers the client's hello (CLIENT
    /// SETINFO) with OK, PING with PONG if `pong`, and nothing more, ever
    /// (TIME included); its port.
    async fn silent_engine(pong: bool) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut silent = false;
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        // The commands' names, in order (RESP: each word
                        // after its length line).
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        for word in text.split("\r\n") {
                            let answer: &[u8] = match word {
                                "CLIENT" => b"+OK\r\n",
                                "PING" if pong => b"+PONG\r\n",
                                "PING" | "TIME" | "XREAD" => {
                                    silent = true;
                                    continue;
                                }
                                _ => continue,
                            };
                            if !silent {
                                let _ = stream.write_all(answer).await;
                            }
                        }
                    }
                });
            }
        });
        port
    }

    /// An XREAD BLOCK of `held` on `connection`, once the engine has it.
    async fn blocking_read_sent(
        engine: &FakeEngine,
        mut connection: MultiplexedConnection,
        held: Duration,
    ) -> tokio::task::JoinHandle<redis::RedisResult<redis::Value>> {
        let read = tokio::spawn(async move {
            redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(held.as_millis() as u64)
                .arg("STREAMS")
                .arg("s")
                .arg("0-0")
                .query_async::<redis::Value>(&mut connection)
                .await
        });
        while engine.sent("XREAD").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        read
    }

    /// A link to the engine on `port`, kept up by its task until the
    /// token is cancelled, and its first connection.
    async fn kept_link(
        port: u16,
        response_timeout: Duration,
    ) -> (Link, CancellationToken, MultiplexedConnection) {
        let link = link(port, response_timeout);
        let stop = CancellationToken::new();
        tokio::spawn(link.clone().keep(stop.clone()));
        let connection = tokio::time::timeout(Duration::from_secs(30), link.wait_connected(&stop))
            .await
            .expect("the link connects")
            .unwrap();
        (link, stop, connection)
    }

    fn link(port: u16, response_timeout: Duration) -> Link {
        Link::new(LinkSettings {
            url: format!("redis://127.0.0.1:{port}").parse().unwrap(),
            password: None,
            response_timeout,
            role: "test",
        })
        .unwrap()
    }

    /// An engine that takes the connection and never answers (or answers
    /// PING, not TIME) holds the link for CONNECT_TIMEOUT in all, not for
    /// a response timeout per command.
    #[tokio::test]
    async fn a_connection_is_made_within_the_connect_timeout_or_not_at_all() {
        for answers in [false, true] {
            let link = link(silent_engine(answers).await, Duration::from_secs(60));
            let started = Instant::now();
            let Err(e) = link.connect().await else {
                panic!("a connection to an engine that does not answer");
            };
            let took = started.elapsed();
            assert!(
                took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + Duration::from_secs(2),
                "{took:?}: {e:#}"
            );
        }
    }

    /// Every command's answer may take the response timeout; a blocking
    /// read's, that and its block.
    #[tokio::test]
    async fn only_a_blocking_read_waits_longer_than_the_response_timeout() {
        let port = silent_engine(false).await;
        let link = link(port, Duration::from_millis(300));
        let config =
            AsyncConnectionConfig::new().set_response_timeout(link.inner.settings.response_timeout);
        let connection = link
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let waited = |mut connection: MultiplexedConnection| async move {
            let started = Instant::now();
            let e = redis::cmd("XREAD")
                .query_async::<redis::Value>(&mut connection)
                .await
                .unwrap_err();
            assert!(e.is_timeout(), "{e}");
            started.elapsed()
        };
        let plain = waited(connection.clone()).await;
        assert!(plain < Duration::from_millis(1000), "{plain:?}");
        let blocking = waited(link.for_blocking_read(&connection, Duration::from_secs(1))).await;
        assert!(
            blocking >= Duration::from_millis(1300) && blocking < Duration::from_secs(3),
            "{blocking:?}"
        );
    }

    #[test]
    fn a_node_that_is_not_the_primary_breaks_the_connection_a_refused_command_does_not() {
        let error = |kind, text: &'static str| RedisError::from((kind, text));
        for broken in [
            error(
                ErrorKind::ReadOnly,
                "You can't write against a read only replica.",
            ),
            error(ErrorKind::MasterDown, "Link with MASTER is down"),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            assert!(breaks_the_connection(&broken), "{broken}");
        }
        for refused in [
            error(ErrorKind::ResponseError, "ERR wrong number of arguments"),
            error(ErrorKind::TypeError, "WRONGTYPE"),
        ] {
            assert!(!breaks_the_connection(&refused), "{refused}");
        }
    }
}
