//! For the tests: a listing command that leaves a long-lived grandchild
//! holding its output, and ways to see whether that grandchild and the
//! command itself are gone.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// Only a hang takes longer.
pub const BOUND: Duration = Duration::from_secs(20);

/// A directory of its own for one test, removed with it.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("smtp-gate-sessions-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `sh -c` starting `sleep 1000` in the background with the shell's
/// output, writing both pids to `dir`, then waiting: its output never
/// ends while the sleep lives.
pub fn command_leaving_a_grandchild(dir: &Path) -> Vec<String> {
    let d = dir.display();
    let script = format!(
        "sleep 1000 & echo $! > {d}/grandchild.new && mv {d}/grandchild.new {d}/grandchild; \
         echo $$ > {d}/leader.new && mv {d}/leader.new {d}/leader; wait"
    );
    ["sh", "-c", &script].map(String::from).to_vec()
}

/// The grandchild and the leader of [`command_leaving_a_grandchild`],
/// once both wrote their pids. The grandchild is killed when this is
/// dropped if the code under test left it running.
pub struct Started {
    pub grandchild: i32,
    pub leader: i32,
}

impl Started {
    /// Waits (up to [`BOUND`]) for the pid files in `dir`.
    pub fn wait_for(dir: &Path) -> Self {
        let read = |name: &str| {
            let path = dir.join(name);
            let deadline = Instant::now() + BOUND;
            loop {
                if let Ok(text) = fs::read_to_string(&path) {
                    return text.trim().parse::<i32>().expect("a pid");
                }
                assert!(
                    Instant::now() < deadline,
                    "the command never wrote {path:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        };
        let started = Self {
            grandchild: read("grandchild"),
            leader: read("leader"),
        };
        assert_eq!(
            fs::read_to_string(format!("/proc/{}/comm", started.grandchild))
                .unwrap()
                .trim(),
            "sleep"
        );
        started
    }

    /// Waits (up to [`BOUND`]) for the grandchild to be dead: gone, or a
    /// zombie its new parent has not reaped yet. False if it still runs.
    pub fn grandchild_ends(&self) -> bool {
        let deadline = Instant::now() + BOUND;
        while Instant::now() < deadline {
            if !is_running(self.grandchild) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// True if the leader was reaped: not even a zombie is left of it.
    pub fn leader_reaped(&self) -> bool {
        !Path::new(&format!("/proc/{}", self.leader)).exists()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if is_running(self.grandchild) {
            let _ = kill(Pid::from_raw(self.grandchild), Signal::SIGKILL);
        }
    }
}

fn is_running(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command's name, which may hold spaces and
    // parentheses: it is the field after the last `)`.
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !state.starts_with('Z') && !state.starts_with('X')
}
