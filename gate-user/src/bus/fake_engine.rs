//! A fake engine on loopback for the bus's unit tests: it reads the
//! commands in RESP's wire form and answers each as the test says, one
//! at a time per connection in order, as Redis does (an answer held back
//! holds back every later one on its connection, as a blocked XREAD
//! does). It records the commands it was sent.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// The commands in RESP's wire form (arrays of bulk strings), and how
/// many octets they took; a command cut short is left for later.
pub fn commands_of(wire: &[u8]) -> (Vec<Vec<String>>, usize) {
    fn line(wire: &[u8], at: usize) -> Option<(&str, usize)> {
        let end = at + wire.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((std::str::from_utf8(&wire[at..end]).ok()?, end + 2))
    }
    let mut commands = Vec::new();
    let mut at = 0;
    'commands: while at < wire.len() {
        let Some((count, mut next)) = line(wire, at) else {
            break;
        };
        let count: usize = count.strip_prefix('*').expect("an array").parse().unwrap();
        let mut words = Vec::new();
        for _ in 0..count {
            let Some((len, start)) = line(wire, next) else {
                break 'commands;
            };
            let len: usize = len
                .strip_prefix('$')
                .expect("a bulk string")
                .parse()
                .unwrap();
            let Some(word) = wire.get(start..start + len) else {
                break 'commands;
            };
            words.push(String::from_utf8(word.to_vec()).unwrap());
            next = start + len + 2;
        }
        if next > wire.len() {
            break;
        }
        commands.push(words);
        at = next;
    }
    (commands, at)
}

/// What the fake answers to one command.
pub enum Answer {
    /// These octets, at once.
    Now(Vec<u8>),
    /// These octets after a while; the connection's later answers wait.
    After(Duration, Vec<u8>),
    /// Nothing, ever (later commands are still answered).
    Nothing,
}

/// TIME's answer for `ms` since the Unix epoch.
pub fn time_answer(ms: u64) -> Vec<u8> {
    let (secs, micros) = ((ms / 1000).to_string(), ((ms % 1000) * 1000).to_string());
    format!(
        "*2\r\n${}\r\n{secs}\r\n${}\r\n{micros}\r\n",
        secs.len(),
        micros.len()
    )
    .into_bytes()
}

/// A fake engine that runs until the test's runtime ends.
pub struct FakeEngine {
    pub port: u16,
    /// Every command it was sent, in order.
    pub seen: Arc<Mutex<Vec<Vec<String>>>>,
    /// How many connections it took.
    pub connections: Arc<AtomicUsize>,
}

impl FakeEngine {
    /// Starts it; `answer` says what each command gets.
    pub async fn start(answer: impl Fn(&[String]) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let (record, count) = (Arc::clone(&seen), Arc::clone(&connections));
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let (record, answer) = (Arc::clone(&record), Arc::clone(&answer));
                tokio::spawn(async move {
                    let mut wire = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        wire.extend_from_slice(&buf[..n]);
                        let (commands, used) = commands_of(&wire);
                        wire.drain(..used);
                        for command in commands {
                            record.lock().unwrap().push(command.clone());
                            let octets = match answer(&command) {
                                Answer::Now(octets) => octets,
                                Answer::After(pause, octets) => {
                                    tokio::time::sleep(pause).await;
                                    octets
                                }
                                Answer::Nothing => continue,
                            };
                            if stream.write_all(&octets).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self {
            port,
            seen,
            connections,
        }
    }

    /// The commands named `name` it was sent.
    pub fn sent(&self, name: &str) -> Vec<Vec<String>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|command| command[0] == name)
            .cloned()
            .collect()
    }
}
