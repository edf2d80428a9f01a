//! The daemons' Prometheus page as the tests and the benchmark read it:
//! asked for over HTTP from inside a namespace (the daemons listen on
//! their namespace's loopback), checked by Prometheus's own `promtool`,
//! and read into samples.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    netns::in_netns,
    process::{describe, require_tool},
};

/// How long one request may take: only a hang takes longer.
const ANSWER_BOUND: Duration = Duration::from_secs(30);

/// Panics unless `promtool` runs (Debian's prometheus package, which
/// `cargo xtask setup` installs).
pub fn require_promtool() {
    require_tool("promtool", &["--version"], "prometheus");
}

/// An HTTP answer: its status, its head (status line and headers) and
/// its body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (lower case), if there is one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `method path` (HTTP/1.1, `Connection: close`, with `body` if
/// any) to `addr` from namespace `ns` and reads the answer to its end.
pub fn request(ns: &str, addr: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
    let text = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let bytes = in_netns(ns, || -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&addr, ANSWER_BOUND)?;
        stream.set_read_timeout(Some(ANSWER_BOUND))?;
        stream.set_write_timeout(Some(ANSWER_BOUND))?;
        stream.write_all(text.as_bytes())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer)
    })
    .unwrap_or_else(|e| panic!("{method} http://{addr}{path} from {ns}: {e}"));
    let answer = String::from_utf8(bytes)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: not UTF-8: {e}"));
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} http://{addr}{path}: no header end: {answer:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} http://{addr}{path}: no status line: {head:?}"));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `GET /metrics` from `ns`: the page, after checking that it came as
/// Prometheus's text format 0.0.4.
pub fn scrape(ns: &str, addr: SocketAddr) -> String {
    let answer = request(ns, addr, "GET", "/metrics", "");
    assert_eq!(
        answer.status, 200,
        "GET http://{addr}/metrics: {}\n{}",
        answer.head, answer.body
    );
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        answer.head
    );
    answer.body
}

/// Panics unless `promtool check metrics` takes `page` without a word
/// (no error, no lint problem); `what` names the page.
pub fn promtool_check(page: &str, what: &str) {
    let file = std::env::temp_dir().join(format!(
        "smtp-gate-metrics-{}-{:?}.prom",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&file, page).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let input = std::fs::File::open(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::from(input))
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool (Debian's prometheus): {e}"));
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics refuses {what}: {}\n--- the page ---\n{page}",
        describe(&out)
    );
}

/// A page's samples: `name{labels}` as written, and the value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub BTreeMap<String, f64>);

impl Samples {
    /// Reads the sample lines of a page (comments skipped).
    pub fn parse(page: &str) -> Self {
        Self(
            page.lines()
                .filter(|line| !line.starts_with('#') && !line.is_empty())
                .map(|line| {
                    let (series, value) = line
                        .rsplit_once(' ')
                        .unwrap_or_else(|| panic!("no value in {line:?}"));
                    let value = value
                        .parse()
                        .unwrap_or_else(|e| panic!("{line:?}: the value does not read: {e}"));
                    (series.to_owned(), value)
                })
                .collect(),
        )
    }

    /// The series `name` with `labels` in the order the page writes them.
    pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
        if labels.is_empty() {
            return name.to_owned();
        }
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", labels.join(","))
    }

    /// The value of a series, if the page has it.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(&Self::series(name, labels)).copied()
    }

    /// The value of a series; panics, showing the page's series, if it
    /// has none.
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "no series {} among {:#?}",
                Self::series(name, labels),
                self.0.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Whether any series of the family `name` is there.
    pub fn has_family(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|series| series == name || series.starts_with(&format!("{name}{{")))
    }
}
