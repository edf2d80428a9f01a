//! The daemon's census of its grant and ban maps (gate/maps/census.rs),
//! kept a few seconds: Prometheus may scrape every 100 ms, and a walk over
//! 262,144 grants costs milliseconds of CPU. A scrape takes the last
//! census while it is younger than [`MAX_AGE`]; an older one is walked
//! anew, once for every scrape that asks meanwhile.
//!
//! The walk runs on a thread of its own at SCHED_IDLE: it takes only CPU
//! time nothing else wants, so it never delays a login, a grant or the
//! async threads. On a host kept busy it may not finish: a scrape waits
//! for it at most [`WAIT`], then is served the census it has (older, as
//! `smtp_gate_census_age_seconds` says), and the walk goes on. That
//! thread takes no lock: a thread at SCHED_IDLE preempted while holding
//! one would hold up whoever waits for it (an async thread serving POP3)
//! for as long as the host stays busy. The maps are handed to it, and it
//! hands them back with the census through a oneshot channel (atomics).

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use log::{info, warn};
use tokio::sync::{oneshot, Notify};

use crate::{
    gate::{maps::MapCensus, GateMaps},
    serve::watch::MapUser,
};

/// A census younger than this is served as it is.
pub const MAX_AGE: Duration = Duration::from_secs(5);
/// How long a scrape waits for a walk at most.
pub const WAIT: Duration = Duration::from_secs(2);

/// A census and when it was taken.
#[derive(Clone, Copy, Debug)]
pub struct CensusReading {
    pub census: MapCensus,
    /// When the walk ended.
    pub taken: Instant,
    /// How long it took.
    pub took: Duration,
}

/// The last census, and the walks that renew it.
pub struct CensusCache {
    inner: Arc<Inner>,
}

struct Inner {
    /// Locked briefly, and only by async code (scrapes, the task that
    /// takes a walk's end, the watch), never by the walking thread.
    state: Mutex<State>,
    /// Told when a walk ends.
    walked: Notify,
    /// The next walk panics (the tests').
    #[cfg(test)]
    panic_next_walk: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    last: Option<CensusReading>,
    /// The census's own handles on the maps; `None` while a walk has them.
    maps: Option<GateMaps>,
    /// Handles on a gate's new maps that came during a walk: used from
    /// its end on.
    newer_maps: Option<GateMaps>,
    /// The last failure logged, so that it is logged once.
    failure: Option<String>,
}

/// What a walking thread hands back.
type Walked = (GateMaps, Result<MapCensus>, Duration);

impl CensusCache {
    pub fn new(maps: GateMaps) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    maps: Some(maps),
                    ..State::default()
                }),
                walked: Notify::new(),
                #[cfg(test)]
                panic_next_walk: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// A census no older than [`MAX_AGE`], walked now if need be; within
    /// [`WAIT`], else the last one there is (`None` before the first).
    /// Call inside the runtime.
    pub async fn reading(&self) -> Option<CensusReading> {
        let walked = self.inner.walked.notified();
        tokio::pin!(walked);
        {
            let mut state = lock(&self.inner.state);
            if let Some(reading) = state.last.filter(|r| r.taken.elapsed() < MAX_AGE) {
                return Some(reading);
            }
            // Listening before the walk can end: its end is not missed.
            walked.as_mut().enable();
            // Without the maps a walk runs already.
            if let Some(maps) = state.maps.take() {
                state.maps = self.start_walk(maps);
            }
        }
        let _ = tokio::time::timeout(WAIT, walked).await;
        lock(&self.inner.state).last
    }

    /// Walks `maps` on a thread of its own; a task takes the census and
    /// the maps back. Gives the maps back if no thread could start.
    fn start_walk(&self, maps: GateMaps) -> Option<GateMaps> {
        let (done, walked) = oneshot::channel::<Walked>();
        #[cfg(test)]
        let panic_now = self
            .inner
            .panic_next_walk
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        // Taken by the thread while it still runs at normal priority; left
        // there if no thread starts.
        let handover = Arc::new(Mutex::new(Some(maps)));
        let spawned = std::thread::Builder::new()
            .name("smtp-gate-census".into())
            .spawn({
                let handover = Arc::clone(&handover);
                move || {
                    let Some(maps) = lock(&handover).take() else {
                        return;
                    };
                    idle_priority();
                    let started = Instant::now();
                    // A panic in the walk must not keep the maps: without
                    // them no later scrape could walk, and each would wait
                    // [`WAIT`] for nothing. It is a failure like another.
                    let census = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        #[cfg(test)]
                        assert!(!panic_now, "a panic injected into the walk");
                        maps.census()
                    }))
                    .unwrap_or_else(|panic| {
                        Err(anyhow!("the walk panicked: {}", panic_text(&*panic)))
                    });
                    let _ = done.send((maps, census, started.elapsed()));
                }
            });
        if let Err(e) = spawned {
            warn!("metrics: cannot start a thread to count the grant and ban maps: {e}");
            return lock(&handover).take();
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let Ok((maps, census, took)) = walked.await else {
                // The thread died with the maps (a panic is caught: this
                // should not be). Handles on new maps, if any came, are
                // used from now on; the scrapes waiting are let go.
                warn!("metrics: the thread counting the grant and ban maps ended without a word");
                inner.walk_lost();
                return;
            };
            inner.walk_ended(maps, census, took);
        });
        None
    }
}

impl Inner {
    fn walk_ended(&self, maps: GateMaps, census: Result<MapCensus>, took: Duration) {
        {
            let mut state = lock(&self.state);
            state.maps = Some(state.newer_maps.take().unwrap_or(maps));
            match census {
                Ok(census) => {
                    state.last = Some(CensusReading {
                        census,
                        taken: Instant::now(),
                        took,
                    });
                    if state.failure.take().is_some() {
                        info!("metrics: the grant and ban maps are counted again");
                    }
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    if state.failure.as_deref() != Some(&text) {
                        warn!("metrics: cannot count the grant and ban maps: {text}");
                        state.failure = Some(text);
                    }
                }
            }
        }
        self.walked.notify_waiters();
    }
}

impl Inner {
    fn walk_lost(&self) {
        {
            let mut state = lock(&self.state);
            state.maps = state.newer_maps.take();
        }
        self.walked.notify_waiters();
    }
}

/// A panic's message, where it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

impl MapUser for CensusCache {
    fn replace_maps(&self, maps: GateMaps) {
        let mut state = lock(&self.inner.state);
        if state.maps.is_some() {
            state.maps = Some(maps);
        } else {
            state.newer_maps = Some(maps);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Puts the calling thread in SCHED_IDLE: it runs only when a CPU has
/// nothing else to do. Where that is refused, at the lowest nice.
pub fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    // SAFETY: setpriority on the calling thread (its tid); no memory.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::gate::{object, privilege, settings::default_settings};

    /// A cache over the maps of a freshly loaded object; the object is
    /// returned to keep the maps.
    fn cache() -> (aya::Ebpf, CensusCache) {
        privilege::require("the census cache's test", privilege::READ_CLOCK)
            .expect("this test must run as root; it does not skip");
        let mut ebpf = object::load_unpinned(1024).expect("loading the gate's object");
        let mut maps = GateMaps::from_ebpf(&mut ebpf).expect("its maps");
        maps.set_settings(&default_settings()).unwrap();
        (ebpf, CensusCache::new(maps))
    }

    fn grant(cache: &CensusCache, i: u32) {
        let addr = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
        let mut state = lock(&cache.inner.state);
        let maps = state.maps.as_mut().expect("no walk has the maps");
        maps.grant(addr, None).unwrap();
    }

    /// Makes the last census look `MAX_AGE` old.
    fn age(cache: &CensusCache) {
        let mut state = lock(&cache.inner.state);
        let reading = state.last.as_mut().expect("a census");
        reading.taken -= MAX_AGE;
    }

    /// A census is served as it is while it is young, walked anew once it
    /// is old, and once for all the scrapes that ask at the same time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_census_is_kept_while_young_and_walked_once_for_many() {
        let (_ebpf, cache) = cache();
        for i in 0..3 {
            grant(&cache, i);
        }
        let first = cache.reading().await.expect("a census");
        assert_eq!(first.census.grants_v4.live, 3);
        grant(&cache, 3);
        grant(&cache, 4);
        let young = cache.reading().await.expect("a census");
        assert_eq!(young.taken, first.taken, "served as it was");
        assert_eq!(young.census.grants_v4.live, 3);
        age(&cache);
        let renewed = cache.reading().await.expect("a census");
        assert_eq!(renewed.census.grants_v4.live, 5);
        assert!(renewed.taken > first.taken);
        age(&cache);
        let cache = Arc::new(cache);
        let scrapes: Vec<_> = (0..8)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.reading().await.expect("a census").taken })
            })
            .collect();
        let mut taken = Vec::new();
        for scrape in scrapes {
            taken.push(scrape.await.unwrap());
        }
        assert!(taken.iter().all(|t| *t == taken[0]), "one walk: {taken:?}");
        assert!(taken[0] > renewed.taken);
    }

    /// A walk that panics gives the maps back, as a failure: the scrape is
    /// answered at once with the census there was, and the next one walks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_walk_that_panics_gives_the_maps_back() {
        let (_ebpf, cache) = cache();
        grant(&cache, 0);
        let first = cache.reading().await.expect("a census");
        age(&cache);
        let aged = lock(&cache.inner.state).last.expect("a census").taken;
        cache
            .inner
            .panic_next_walk
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let asked = Instant::now();
        let after_panic = cache.reading().await.expect("the census there was");
        assert!(
            asked.elapsed() < WAIT,
            "not left waiting: {:?}",
            asked.elapsed()
        );
        assert_eq!(after_panic.taken, aged, "the census there was");
        {
            let state = lock(&cache.inner.state);
            assert!(state.maps.is_some(), "the maps are back");
            let failure = state.failure.as_deref().expect("the failure, logged");
            assert!(failure.contains("panicked"), "{failure}");
        }
        grant(&cache, 1);
        let renewed = cache.reading().await.expect("a census");
        assert!(renewed.taken > first.taken, "walked again");
        assert_eq!(renewed.census.grants_v4.live, 2);
        assert!(lock(&cache.inner.state).failure.is_none());
    }

    /// The walking thread is at SCHED_IDLE: it takes only idle CPU.
    #[test]
    fn the_walk_runs_at_idle_priority() {
        let policy = std::thread::spawn(|| {
            idle_priority();
            // SAFETY: the calling thread's policy; no memory.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // SAFETY: as above, on the test's own thread, left as it was.
        assert_ne!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
    }
}
