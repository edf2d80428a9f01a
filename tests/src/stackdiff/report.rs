//! Results of a differential run: per case, what each pass saw; per mode,
//! counts by category and shape, the failures, and every bypass with its
//! seed, description and frames in hex.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use super::{
    gen::{Case, Category, Recipe},
    raw::SynAck,
    runner::Mode,
};

/// A check of ordinary traffic.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }
}

/// Frames sent per pass.
#[derive(Clone, Debug, Default)]
pub struct Frames {
    pub drop: usize,
    pub monitor: usize,
    pub granted: usize,
    pub control: usize,
}

impl Frames {
    pub fn total(&self) -> usize {
        self.drop + self.monitor + self.granted + self.control
    }
}

/// What happened to one case.
#[derive(Clone, Debug)]
pub struct CaseOutcome {
    /// The instance sent in drop mode (its frames are the ones printed).
    pub case: Case,
    /// The SYN-ACK it got in drop mode with no grant: a bypass.
    pub bypass: Option<SynAck>,
    /// Answered in monitor mode.
    pub monitor: bool,
    /// Answered when granted (plausible cases answered in monitor mode).
    pub granted: Option<bool>,
    /// Answered on the non-gated port (likewise).
    pub control: Option<bool>,
}

/// How much of the bypasses and refused cases a report describes in full.
#[derive(Clone, Copy, Debug)]
pub struct Detail {
    /// Cases described per shape group.
    pub per_shape: usize,
    /// Cases described in all.
    pub total: usize,
    /// Octets of each frame shown in hex.
    pub hex_octets: usize,
}

impl Detail {
    /// Everything.
    pub const ALL: Self = Self {
        per_shape: usize::MAX,
        total: usize::MAX,
        hex_octets: usize::MAX,
    };

    /// A few of each shape, short frames in full: for a terminal.
    pub const BRIEF: Self = Self {
        per_shape: 2,
        total: 40,
        hex_octets: 400,
    };
}

/// How much the monitor pass must accept for the run to prove anything.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Share of all cases.
    pub monitor_share: f64,
    /// Share of each category's cases.
    pub category_share: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            monitor_share: 0.5,
            category_share: 0.3,
        }
    }
}

/// The results of one attach mode.
#[derive(Clone, Debug)]
pub struct ModeReport {
    pub mode: Mode,
    pub seed: u64,
    pub mtu: u32,
    pub max_frame: usize,
    pub outcomes: Vec<CaseOutcome>,
    pub frames: Frames,
    /// Connections the listeners accepted during drop passes.
    pub accepted_during_drop: usize,
    /// Case instances sent a second time in the granted and non-gated
    /// passes.
    pub retried: usize,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    /// Gate counters over the drop and monitor passes.
    pub drop_stats: Vec<(String, u64)>,
    pub monitor_stats: Vec<(String, u64)>,
    pub elapsed: Duration,
}

fn pct(part: usize, whole: usize) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.0}%", 100.0 * part as f64 / whole as f64)
    }
}

impl ModeReport {
    pub fn new(mode: Mode, seed: u64, mtu: u32, max_frame: usize) -> Self {
        Self {
            mode,
            seed,
            mtu,
            max_frame,
            outcomes: Vec::new(),
            frames: Frames::default(),
            accepted_during_drop: 0,
            retried: 0,
            checks: Vec::new(),
            notes: Vec::new(),
            drop_stats: Vec::new(),
            monitor_stats: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    pub fn bypass_count(&self) -> usize {
        self.outcomes.iter().filter(|o| o.bypass.is_some()).count()
    }

    pub fn monitor_count(&self) -> usize {
        self.outcomes.iter().filter(|o| o.monitor).count()
    }

    fn categories(&self) -> Vec<Category> {
        let mut c: Vec<Category> = self.outcomes.iter().map(|o| o.case.category).collect();
        c.sort();
        c.dedup();
        c
    }

    fn of(&self, category: Category) -> impl Iterator<Item = &CaseOutcome> {
        self.outcomes
            .iter()
            .filter(move |o| o.case.category == category)
    }

    /// Counts by category, counters, checks, notes.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let regressions = self
            .outcomes
            .iter()
            .filter(|o| matches!(o.case.recipe, Recipe::Regression(_)))
            .count();
        let _ = writeln!(
            s,
            "== stack differential, --mode {}, seed {:#x}: {} cases ({regressions} fixed \
             regression shapes), MTU {} ==",
            self.mode.arg(),
            self.seed,
            self.outcomes.len(),
            self.mtu
        );
        let _ = writeln!(
            s,
            "frames sent: {} in drop mode, {} in monitor mode, {} granted, {} to the non-gated \
             port ({} in all, {} case instances retried); {:.1?}",
            self.frames.drop,
            self.frames.monitor,
            self.frames.granted,
            self.frames.control,
            self.frames.total(),
            self.retried,
            self.elapsed
        );
        let _ = writeln!(
            s,
            "{:<11} {:>6} {:>17} {:>9} {:>13} {:>13}",
            "category", "cases", "monitor accepted", "BYPASSES", "granted ok", "non-gated ok"
        );
        let mut line = |name: &str, items: Vec<&CaseOutcome>| {
            let n = items.len();
            let m = items.iter().filter(|o| o.monitor).count();
            let b = items.iter().filter(|o| o.bypass.is_some()).count();
            let g: Vec<bool> = items.iter().filter_map(|o| o.granted).collect();
            let c: Vec<bool> = items.iter().filter_map(|o| o.control).collect();
            let _ = writeln!(
                s,
                "{:<11} {:>6} {:>11} {:>5} {:>9} {:>13} {:>13}",
                name,
                n,
                m,
                pct(m, n),
                b,
                format!("{}/{}", g.iter().filter(|x| **x).count(), g.len()),
                format!("{}/{}", c.iter().filter(|x| **x).count(), c.len()),
            );
        };
        for category in self.categories() {
            line(category.name(), self.of(category).collect());
        }
        line("all", self.outcomes.iter().collect());
        let show = |stats: &[(String, u64)]| -> String {
            stats
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "gate counters, drop passes: {}", show(&self.drop_stats));
        let _ = writeln!(
            s,
            "gate counters, monitor passes: {}",
            show(&self.monitor_stats)
        );
        let _ = writeln!(
            s,
            "listener accepts during drop passes: {}",
            self.accepted_during_drop
        );
        for check in &self.checks {
            let _ = writeln!(
                s,
                "[{}] {}: {}",
                if check.ok { "ok" } else { "FAIL" },
                check.name,
                check.detail
            );
        }
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        s
    }

    /// Everything that makes the run fail, one line each.
    pub fn failures(&self, t: &Thresholds) -> Vec<String> {
        let mut f = Vec::new();
        let mode = self.mode.arg();
        let bypasses = self.bypass_count();
        if bypasses > 0 {
            f.push(format!(
                "--mode {mode}: {bypasses} of {} cases got a SYN-ACK with no grant in drop mode \
                 (bypasses; listed below)",
                self.outcomes.len()
            ));
        }
        if self.accepted_during_drop > 0 {
            f.push(format!(
                "--mode {mode}: the listener accepted {} connections during the drop passes",
                self.accepted_during_drop
            ));
        }
        let n = self.outcomes.len();
        let m = self.monitor_count();
        if n == 0 || (m as f64) < t.monitor_share * n as f64 {
            f.push(format!(
                "--mode {mode}: only {m} of {n} cases were accepted by the stack in monitor mode \
                 (at least {:.0}% needed, or the test proves nothing)",
                100.0 * t.monitor_share
            ));
        }
        for category in Category::ALL {
            let items: Vec<&CaseOutcome> = self.of(category).collect();
            let expected = category != Category::Nonlinear || self.max_frame >= 4224;
            if items.is_empty() {
                if expected && t.category_share > 0.0 {
                    f.push(format!(
                        "--mode {mode}: no {} cases were sent",
                        category.name()
                    ));
                }
                continue;
            }
            let accepted = items.iter().filter(|o| o.monitor).count();
            if (accepted as f64) < t.category_share * items.len() as f64 {
                f.push(format!(
                    "--mode {mode}: only {accepted} of {} {} cases were accepted in monitor mode \
                     (at least {:.0}% needed)",
                    items.len(),
                    category.name(),
                    100.0 * t.category_share
                ));
            }
        }
        let refused = |pick: fn(&CaseOutcome) -> Option<bool>| {
            self.outcomes
                .iter()
                .filter(|o| pick(o) == Some(false))
                .count()
        };
        let g = refused(|o| o.granted);
        if g > 0 {
            f.push(format!(
                "--mode {mode}: {g} plausible SYNs the stack accepts were refused for a GRANTED \
                 client (listed below)"
            ));
        }
        let c = refused(|o| o.control);
        if c > 0 {
            f.push(format!(
                "--mode {mode}: {c} plausible SYNs to the non-gated port {} were refused \
                 (listed below)",
                super::runner::CONTROL_PORT
            ));
        }
        for check in self.checks.iter().filter(|c| !c.ok) {
            f.push(format!(
                "--mode {mode}: {} FAILED: {}",
                check.name, check.detail
            ));
        }
        f
    }

    /// Every bypass grouped by category and shape, with counts; as many
    /// described in full as `detail` says.
    pub fn bypass_report(&self, detail: Detail) -> String {
        let mut s = String::new();
        let bypasses: Vec<&CaseOutcome> = self
            .outcomes
            .iter()
            .filter(|o| o.bypass.is_some())
            .collect();
        if bypasses.is_empty() {
            return s;
        }
        let mut groups: BTreeMap<(Category, String), Vec<&CaseOutcome>> = BTreeMap::new();
        for o in &bypasses {
            groups
                .entry((o.case.category, o.case.shape_key()))
                .or_default()
                .push(o);
        }
        let _ = writeln!(
            s,
            "BYPASSES in --mode {} (seed {:#x}): {} — a SYN-ACK came back for each of these \
             with no grant and the gate in drop mode",
            self.mode.arg(),
            self.seed,
            bypasses.len()
        );
        for category in self.categories() {
            let total = self.of(category).count();
            let b = self.of(category).filter(|o| o.bypass.is_some()).count();
            if b == 0 {
                continue;
            }
            let _ = writeln!(
                s,
                "  {}: {b} of {total} cases ({} accepted in monitor mode)",
                category.name(),
                self.of(category).filter(|o| o.monitor).count()
            );
            for ((c, key), items) in &groups {
                if *c == category {
                    let _ = writeln!(s, "    {:>4} x [{key}]", items.len());
                }
            }
        }
        let mut budget = detail.total;
        for ((category, key), items) in &groups {
            let shown = detail.per_shape.min(items.len()).min(budget);
            budget -= shown;
            let _ = writeln!(
                s,
                "--- {} [{key}]: {} bypassed{} ---",
                category.name(),
                items.len(),
                if shown < items.len() {
                    format!(", {shown} shown")
                } else {
                    String::new()
                }
            );
            for o in items.iter().take(shown) {
                s.push_str(&self.describe_outcome(o, detail.hex_octets));
            }
        }
        s
    }

    fn describe_outcome(&self, o: &CaseOutcome, hex_octets: usize) -> String {
        let mut s = format!(
            "BYPASS --mode {} --seed {:#x}: {}",
            self.mode.arg(),
            self.seed,
            o.case.describe_within(Some(hex_octets))
        );
        if let Some(r) = &o.bypass {
            let matches = r.ack == o.case.seq.wrapping_add(1);
            let _ = writeln!(
                s,
                "    SYN-ACK {}:{} -> {}:{}, seq {:#010x}, ack {:#010x}{}",
                r.src,
                r.src_port,
                r.dst,
                r.dst_port,
                r.seq,
                r.ack,
                if matches {
                    " (acknowledges the case's SYN)"
                } else {
                    " (does NOT acknowledge this SYN's sequence number)"
                }
            );
        }
        s
    }

    /// Plausible cases refused when granted or on the non-gated port.
    pub fn refusal_report(&self, detail: Detail) -> String {
        let mut s = String::new();
        let refused: Vec<&CaseOutcome> = self
            .outcomes
            .iter()
            .filter(|o| o.granted == Some(false) || o.control == Some(false))
            .collect();
        if refused.is_empty() {
            return s;
        }
        let _ = writeln!(
            s,
            "LEGITIMATE SYNs REFUSED in --mode {}: {} (accepted in monitor mode, then not \
             answered when granted or on the non-gated port, twice)",
            self.mode.arg(),
            refused.len()
        );
        for o in refused.iter().take(detail.total) {
            let _ = write!(
                s,
                "REFUSED ({}{}) --seed {:#x}: {}",
                if o.granted == Some(false) {
                    "granted"
                } else {
                    ""
                },
                if o.control == Some(false) {
                    " non-gated port"
                } else {
                    ""
                },
                self.seed,
                o.case.describe_within(Some(detail.hex_octets))
            );
        }
        s
    }

    /// One line per case: what each pass saw, then the description (no
    /// hex), for looking through a whole run.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        let yn = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        for o in &self.outcomes {
            let _ = writeln!(
                s,
                "{:<10} drop {:<7} monitor {:<3} granted {:<3} non-gated {:<3} [{}] {}",
                o.case.category.name(),
                if o.bypass.is_some() { "BYPASS" } else { "-" },
                if o.monitor { "yes" } else { "no" },
                yn(o.granted),
                yn(o.control),
                o.case.shape.join(" "),
                o.case.label()
            );
            for line in &o.case.lines {
                let _ = writeln!(s, "        {line}");
            }
        }
        s
    }

    /// Summary, failures, bypasses and refusals.
    pub fn render(&self, t: &Thresholds, detail: Detail) -> String {
        let mut s = self.summary();
        let failures = self.failures(t);
        if !failures.is_empty() {
            let _ = writeln!(s, "FAILURES:");
            for f in &failures {
                let _ = writeln!(s, "  - {f}");
            }
        }
        s.push_str(&self.bypass_report(detail));
        s.push_str(&self.refusal_report(detail));
        s
    }
}
