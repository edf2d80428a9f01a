//! How often the page is rendered, whatever the request rate: a scrape
//! storm (keep-alive or pipelined GETs back to back) would otherwise keep
//! the runtime that serves POP3 rendering pages. Renders are single-flight:
//! a request that comes while one runs is answered its page. And a render
//! starts no sooner than [`SPACING`] after the one before started: a
//! request that comes meanwhile waits for it. So at most about 100 renders
//! a second, and never a page older than the request: each is answered by
//! a render that was running or started after it came, never one that had
//! ended before (a sequential scraper sees its counters move).

use std::{
    future::Future,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use hyper::body::Bytes;
use tokio::time::Instant;

/// The least time from one render's start to the next's.
pub const SPACING: Duration = Duration::from_millis(10);

/// The renders of one page.
#[derive(Default)]
pub struct Renders {
    /// Held by the request that renders (or waits out [`SPACING`] to);
    /// the others queue on it, in order, and take its page.
    last: tokio::sync::Mutex<Last>,
    /// What a request sees as it comes, without waiting for `last`.
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Last {
    /// The number of the render that made `page` (0: none yet).
    number: u64,
    page: Bytes,
    /// When the last render started.
    started: Option<Instant>,
}

#[derive(Default, Clone, Copy)]
struct Progress {
    /// Renders started so far.
    started: u64,
    /// Whether the last one started still runs.
    running: bool,
}

impl Renders {
    /// The page from a render that runs now or starts from now on;
    /// `render` makes it if this request is the one to.
    pub async fn page<F, Fut>(&self, render: F) -> Bytes
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = String>,
    {
        let wanted = {
            let progress = *lock(&self.progress);
            if progress.running {
                progress.started
            } else {
                progress.started + 1
            }
        };
        let mut last = self.last.lock().await;
        if last.number >= wanted {
            return last.page.clone();
        }
        if let Some(started) = last.started {
            tokio::time::sleep_until(started + SPACING).await;
        }
        last.started = Some(Instant::now());
        let number = {
            let mut progress = lock(&self.progress);
            progress.started += 1;
            progress.running = true;
            progress.started
        };
        // Cleared however the render ends, also when this request is
        // dropped (its connection closed) in the middle of it: the next in
        // the queue renders then.
        let _running = Running(&self.progress);
        last.page = Bytes::from(render().await);
        last.number = number;
        last.page.clone()
    }
}

struct Running<'a>(&'a Mutex<Progress>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(self.0).running = false;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };

    use super::*;

    /// Renders that count themselves; each page is its render's number,
    /// and a render takes `takes`.
    struct Counted {
        renders: Renders,
        count: AtomicU64,
        takes: Duration,
    }

    impl Counted {
        fn new(takes: Duration) -> Arc<Self> {
            Arc::new(Self {
                renders: Renders::default(),
                count: AtomicU64::new(0),
                takes,
            })
        }

        /// The page's number, and when its render started.
        async fn page(&self) -> (u64, Instant) {
            let page = self
                .renders
                .page(|| async {
                    let started = Instant::now();
                    let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(self.takes).await;
                    format!("{n} {}", started.elapsed().as_nanos())
                })
                .await;
            let text = std::str::from_utf8(&page).unwrap();
            let (n, _) = text.split_once(' ').unwrap();
            (n.parse().unwrap(), Instant::now())
        }

        fn count(&self) -> u64 {
            self.count.load(Ordering::SeqCst)
        }
    }

    /// Many requests at once: one render, shared by all.
    #[tokio::test(start_paused = true)]
    async fn requests_at_once_share_one_render() {
        let counted = Counted::new(Duration::from_millis(3));
        let requests: Vec<_> = (0..64)
            .map(|_| {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move { counted.page().await.0 })
            })
            .collect();
        for request in requests {
            assert_eq!(request.await.unwrap(), 1);
        }
        assert_eq!(counted.count(), 1);
    }

    /// Requests back to back (a storm on kept-alive connections): renders
    /// at most one per [`SPACING`], and each request still gets a page
    /// rendered after the one it had before.
    #[tokio::test(start_paused = true)]
    async fn a_storm_renders_at_most_once_per_spacing_and_never_an_old_page() {
        let counted = Counted::new(Duration::from_micros(200));
        let start = Instant::now();
        let run_for = Duration::from_millis(200);
        let scrapers: Vec<_> = (0..8)
            .map(|_| {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut seen = 0;
                    let mut pages = 0u32;
                    while start.elapsed() < run_for {
                        let (n, _) = counted.page().await;
                        assert!(n > seen, "page {n} after page {seen}: an old one");
                        seen = n;
                        pages += 1;
                    }
                    pages
                })
            })
            .collect();
        let mut pages = 0;
        for scraper in scrapers {
            pages += scraper.await.unwrap();
        }
        let most = (run_for.as_millis() / SPACING.as_millis()) as u64 + 1;
        assert!(
            counted.count() <= most,
            "{} renders for {pages} requests in {run_for:?}",
            counted.count()
        );
        assert!(counted.count() >= most - 1, "{} renders", counted.count());
        assert!(u64::from(pages) > counted.count(), "renders were shared");
    }

    /// A sequential scraper is not served a page older than its request:
    /// after [`SPACING`], a new render.
    #[tokio::test(start_paused = true)]
    async fn one_request_after_another_each_gets_a_new_render() {
        let counted = Counted::new(Duration::ZERO);
        let before = Instant::now();
        for i in 1..=5 {
            assert_eq!(counted.page().await.0, i);
        }
        assert!(before.elapsed() >= SPACING * 4, "spaced");
        assert_eq!(counted.count(), 5);
    }

    /// A request dropped while it renders (its connection closed) leaves
    /// no render marked running: the next request renders.
    #[tokio::test(start_paused = true)]
    async fn a_render_dropped_midway_does_not_stop_the_next() {
        let counted = Counted::new(Duration::from_secs(1));
        let dropped = tokio::time::timeout(Duration::from_millis(100), counted.page()).await;
        assert!(dropped.is_err());
        assert!(!lock(&counted.renders.progress).running);
        let page = counted.renders.page(|| async { "2 0".to_owned() }).await;
        assert_eq!(&page[..], b"2 0");
    }
}
