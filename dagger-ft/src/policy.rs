//! The fault policy: what happens to the tasks of a lost worker (run again and watch, fail
//! as a poison task, fail because the loss budget is spent), and which workers are
//! excluded because tasks keep failing there and succeeding elsewhere.
//!
//! # Attribution of crashes
//!
//! When a worker crashes ([`LostReason::is_crash`]), which of the tasks dispatched to it
//! were running is known only for *watched* tasks, which report when they start. The
//! scheduler watches a task from its first run when it is expected to run long (or its
//! run time is not known yet), where one more small message per task costs nothing; short
//! tasks are not watched. A crash makes every unfinished task dispatched there a *suspect*,
//! and counts only against the watched ones that reported starting there (counting it
//! against every task dispatched there, as Dask does, poisons innocent tasks when unrelated
//! processes are killed). A suspect is *watched* when it runs again: the worker reports
//! [`ToDriver::Started`](dagger_core::wire::ToDriver::Started) before running it, and a
//! later crash counts against it only if that report came from the incarnation that
//! crashed. Suspects of one crash are queued again together and often land together
//! again, and a crash of a process running two of them says nothing about which one did
//! it (counting it against both poisons the innocent neighbour of a poison task): such a
//! crash counts against a task only once every other watched task running there has been
//! cleared (it succeeded since). [`PolicyConfig::poison_crashes`] counted crashes, each of another process, make
//! it a poison task: it fails with [`TaskError::Poisoned`] instead of killing more workers.
//!
//! # Worker exclusion
//!
//! A task attempt that failed on a worker (it panicked, or the worker could not run it)
//! and later succeeded on another worker gives the first one a *strike*; a task that fails
//! everywhere gives none (it is the task's bug, not the worker's).
//! [`PolicyConfig::exclusion_strikes`] strikes from distinct tasks within
//! [`PolicyConfig::strike_window`] exclude the worker: the driver declares it lost with
//! [`LostReason::Excluded`].
//!
//! Sans-I/O, like the rest of the crate: time is the owner's `now`.

use dagger_core::{Incarnation, LossVerdict, LostReason, LostTask, TaskError, TaskId, WorkerId};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// How many times a task runs again after the worker running it was lost, unless its
/// options say otherwise (`Options::loss_retries`): 3, so a task survives three lost
/// workers and fails with the fourth.
pub const DEFAULT_LOSS_RETRIES: u32 = 3;

/// Tunables of the [`FaultPolicy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Re-runs after a lost worker for a task whose options do not set
    /// `loss_retries`. Default [`DEFAULT_LOSS_RETRIES`].
    pub loss_retries: u32,
    /// Counted crashes (of distinct processes, while the task was known to run there)
    /// that make a task a poison task. Default 2; 0 turns the attribution off (no task
    /// is watched or poisoned).
    pub poison_crashes: u32,
    /// Strikes from distinct tasks within [`PolicyConfig::strike_window`] that exclude a
    /// worker. Default 3; 0 turns exclusion off.
    pub exclusion_strikes: u32,
    /// The window strikes are counted in. Default 60 s.
    pub strike_window: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            loss_retries: DEFAULT_LOSS_RETRIES,
            poison_crashes: 2,
            exclusion_strikes: 3,
            strike_window: Duration::from_secs(60),
        }
    }
}

/// A worker to declare lost with [`LostReason::Excluded`], from
/// [`FaultPolicy::attempt_succeeded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exclusion {
    /// The worker.
    pub worker: WorkerId,
    /// Its incarnation that earned the strikes.
    pub incarnation: Incarnation,
    /// Strikes within the window.
    pub strikes: u32,
}

/// A task suspected of crashing workers, or a watched task that reported starting (a task
/// expected to run long is watched from its first run, so a first crash can count).
#[derive(Debug, Default)]
struct Suspect {
    /// Whether a crash made it a suspect (rather than only its start being tracked).
    suspected: bool,
    /// The process that reported it started in its current attempt.
    started: Option<(WorkerId, Incarnation)>,
    /// Crashes of processes it had reported starting in.
    crashes: Vec<Crash>,
}

/// A crash of a process a watched task was running in.
#[derive(Debug)]
struct Crash {
    worker: WorkerId,
    incarnation: Incarnation,
    reason: LostReason,
    /// The other watched tasks running there: the crash counts once all are cleared.
    others: Vec<TaskId>,
}

/// One failed attempt of a task.
#[derive(Clone, Copy, Debug)]
struct Failed {
    worker: WorkerId,
    incarnation: Incarnation,
    at: Duration,
}

/// The driver's fault policy: attribution of crashes to tasks, loss budgets, strikes and
/// exclusion of workers. Pure: the driver core feeds it what happened and carries out its
/// verdicts. It keeps state only for suspects, tasks with failed attempts and workers with
/// strikes, so the common path (no fault) costs a lookup in an empty map.
#[derive(Debug, Default)]
pub struct FaultPolicy {
    config: PolicyConfig,
    suspects: HashMap<TaskId, Suspect>,
    failed: HashMap<TaskId, Vec<Failed>>,
    /// `failed` is pruned of attempts older than the window when it grows past this.
    prune_at: usize,
    /// Former suspects that succeeded since (kept while any suspect remains).
    cleared: std::collections::HashSet<TaskId>,
    /// How many entries of `suspects` a crash made suspects.
    suspected: usize,
    /// Per process: the watched tasks that reported starting there and have not ended.
    running_watched: BTreeMap<(WorkerId, Incarnation), Vec<TaskId>>,
    /// Strikes per process: when the failure was, and which task.
    strikes: BTreeMap<(WorkerId, Incarnation), VecDeque<(Duration, TaskId)>>,
}

impl FaultPolicy {
    /// A policy with no history.
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            prune_at: 1024,
            ..Self::default()
        }
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The loss budget of a task: its own, or the policy's default.
    pub fn loss_budget(&self, loss_retries: Option<u32>) -> u32 {
        loss_retries.unwrap_or(self.config.loss_retries)
    }

    /// `worker` (in `incarnation`) was lost for `reason` while `task` was dispatched there
    /// and unfinished: run it again (watched if it is a suspect), fail it as a poison task,
    /// or fail it because its loss budget is spent. Poison is judged first: a task that
    /// keeps crashing workers is reported as such even when its budget ends at the same
    /// time. O(1).
    pub fn on_lost(
        &mut self,
        worker: WorkerId,
        incarnation: Incarnation,
        reason: &LostReason,
        task: &LostTask<'_>,
    ) -> LossVerdict {
        let attributing = self.config.poison_crashes > 0;
        let mut watch = false;
        if attributing && reason.is_crash() {
            match self.suspects.entry(task.task) {
                Entry::Vacant(v) => {
                    // Not known to have started there: imprecise, counts against nobody.
                    v.insert(Suspect {
                        suspected: true,
                        ..Suspect::default()
                    });
                    self.suspected += 1;
                }
                Entry::Occupied(mut o) => {
                    let s = o.get_mut();
                    if !s.suspected {
                        s.suspected = true;
                        self.suspected += 1;
                    }
                    let ran_here = s.started == Some((worker, incarnation));
                    if ran_here
                        && !s
                            .crashes
                            .iter()
                            .any(|c| c.worker == worker && c.incarnation == incarnation)
                    {
                        let others = self
                            .running_watched
                            .get(&(worker, incarnation))
                            .map(|v| v.iter().copied().filter(|&t| t != task.task).collect())
                            .unwrap_or_default();
                        s.crashes.push(Crash {
                            worker,
                            incarnation,
                            reason: reason.clone(),
                            others,
                        });
                    }
                    s.started = None;
                    let cleared = &self.cleared;
                    let counted = |c: &Crash| c.others.iter().all(|o| cleared.contains(o));
                    let n = s.crashes.iter().filter(|c| counted(c)).count();
                    if n >= self.config.poison_crashes as usize {
                        let s = o.remove();
                        self.suspected -= 1;
                        let crashes = s
                            .crashes
                            .into_iter()
                            .filter(|c| counted(c))
                            .map(|c| (c.worker, c.reason))
                            .collect();
                        return LossVerdict::Fail(TaskError::Poisoned {
                            task: task.task,
                            func: task.func.to_string(),
                            crashes,
                        });
                    }
                }
            }
            watch = true;
        } else if let Some(s) = self.suspects.get_mut(&task.task) {
            s.started = None;
            watch = true;
        }
        if task.loss_reruns >= self.loss_budget(task.loss_retries) {
            self.remove_suspect(task.task);
            return LossVerdict::Fail(TaskError::WorkerLost {
                task: task.task,
                worker,
                reason: reason.clone(),
            });
        }
        LossVerdict::Retry { watch }
    }

    /// `worker` (in `incarnation`) reported that watched `task` starts. Ignored for a task
    /// that is not a suspect. O(1).
    pub fn started(&mut self, task: TaskId, worker: WorkerId, incarnation: Incarnation) {
        if self.config.poison_crashes == 0 {
            return;
        }
        {
            let s = self.suspects.entry(task).or_default();
            if let Some(old) = s.started.replace((worker, incarnation)) {
                Self::unlist(&mut self.running_watched, old, task);
            }
            let list = self
                .running_watched
                .entry((worker, incarnation))
                .or_default();
            if !list.contains(&task) {
                list.push(task);
            }
        }
    }

    fn unlist(
        running: &mut BTreeMap<(WorkerId, Incarnation), Vec<TaskId>>,
        process: (WorkerId, Incarnation),
        task: TaskId,
    ) {
        if let Some(v) = running.get_mut(&process) {
            v.retain(|&t| t != task);
            if v.is_empty() {
                running.remove(&process);
            }
        }
    }

    /// Whether `task` is a suspect (its next runs are watched).
    pub fn is_suspect(&self, task: TaskId) -> bool {
        self.suspects.get(&task).is_some_and(|s| s.suspected)
    }

    /// Drops what is known of `task` as a suspect or a watched task, keeping the count of
    /// suspects right.
    fn remove_suspect(&mut self, task: TaskId) -> Option<Suspect> {
        let s = self.suspects.remove(&task)?;
        if s.suspected {
            self.suspected -= 1;
        }
        Some(s)
    }

    /// An attempt of `task` on `worker` failed with `error` at `now`. A failure the worker
    /// may be to blame for (a panic, an unknown function, undecodable arguments; not a
    /// failed move, which is about other workers) is remembered: if the task later
    /// succeeds on another worker, this one gets a strike. O(1) amortized.
    pub fn attempt_failed(
        &mut self,
        now: Duration,
        task: TaskId,
        worker: WorkerId,
        incarnation: Incarnation,
        error: &TaskError,
    ) {
        self.attempt_ended(task, worker, incarnation);
        let blamable = matches!(
            error,
            TaskError::Panicked { .. }
                | TaskError::UnknownFunction { .. }
                | TaskError::BadArguments { .. }
        );
        if !blamable || self.config.exclusion_strikes == 0 {
            return;
        }
        self.failed.entry(task).or_default().push(Failed {
            worker,
            incarnation,
            at: now,
        });
        if self.failed.len() > self.prune_at {
            let window = self.config.strike_window;
            self.failed.retain(|_, v| {
                v.retain(|f| now.saturating_sub(f.at) < window);
                !v.is_empty()
            });
            self.prune_at = (self.failed.len() * 2).max(1024);
        }
    }

    /// `task` succeeded on `worker` at `now`: it is no longer a suspect, and every other
    /// worker where an attempt of it failed within the window gets a strike. Returns the
    /// workers whose strikes reached [`PolicyConfig::exclusion_strikes`] (each once; its
    /// strikes are then forgotten). O(failed attempts of the task + strikes of the
    /// workers blamed).
    pub fn attempt_succeeded(
        &mut self,
        now: Duration,
        task: TaskId,
        worker: WorkerId,
        incarnation: Incarnation,
    ) -> Vec<Exclusion> {
        if self.suspects.is_empty() && self.failed.is_empty() {
            return Vec::new();
        }
        if let Some(s) = self.remove_suspect(task) {
            if let Some(process) = s.started {
                Self::unlist(&mut self.running_watched, process, task);
            }
            // It ran to the end: crashes it shared with other suspects were theirs.
            if s.suspected {
                self.cleared.insert(task);
            }
        }
        if self.suspected == 0 {
            self.cleared.clear();
        }
        let _ = incarnation;
        let Some(failures) = self.failed.remove(&task) else {
            return Vec::new();
        };
        let window = self.config.strike_window;
        let need = self.config.exclusion_strikes as usize;
        let mut out = Vec::new();
        for f in failures {
            if f.worker == worker || now.saturating_sub(f.at) >= window {
                continue;
            }
            let key = (f.worker, f.incarnation);
            let list = self.strikes.entry(key).or_default();
            while list
                .front()
                .is_some_and(|&(at, _)| now.saturating_sub(at) >= window)
            {
                list.pop_front();
            }
            if !list.iter().any(|&(_, t)| t == task) {
                list.push_back((f.at, task));
            }
            if list.len() >= need {
                let strikes = list.len() as u32;
                self.strikes.remove(&key);
                out.push(Exclusion {
                    worker: f.worker,
                    incarnation: f.incarnation,
                    strikes,
                });
            }
        }
        out
    }

    /// An attempt of `task` on `worker` ended (finished, failed, or its report came): a
    /// later crash of that process no longer counts against it.
    pub fn attempt_ended(&mut self, task: TaskId, worker: WorkerId, incarnation: Incarnation) {
        if let Some(s) = self.suspects.get_mut(&task) {
            if s.started == Some((worker, incarnation)) {
                s.started = None;
                Self::unlist(&mut self.running_watched, (worker, incarnation), task);
            }
        }
    }

    /// The strikes `worker` (in `incarnation`) has within the window ending at `now`.
    pub fn strikes(&self, now: Duration, worker: WorkerId, incarnation: Incarnation) -> u32 {
        let window = self.config.strike_window;
        self.strikes.get(&(worker, incarnation)).map_or(0, |l| {
            l.iter()
                .filter(|&&(at, _)| now.saturating_sub(at) < window)
                .count() as u32
        })
    }

    /// `task` ended for good (it failed, or the client's interest in it ended): what the
    /// policy remembers of it is dropped.
    pub fn forget_task(&mut self, task: TaskId) {
        if self.suspects.is_empty() && self.failed.is_empty() {
            return;
        }
        if let Some(s) = self.remove_suspect(task) {
            if let Some(process) = s.started {
                Self::unlist(&mut self.running_watched, process, task);
            }
        }
        self.failed.remove(&task);
    }

    /// `worker` (in `incarnation`) left and its tasks were judged
    /// ([`FaultPolicy::on_lost`]): its strikes and the watched tasks started there are
    /// dropped.
    pub fn forget_worker(&mut self, worker: WorkerId, incarnation: Incarnation) {
        self.strikes.remove(&(worker, incarnation));
        self.running_watched.remove(&(worker, incarnation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dagger_core::ExitCause;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }
    fn w(n: u32) -> WorkerId {
        WorkerId(n)
    }
    fn inc(n: u32) -> Incarnation {
        Incarnation(n)
    }
    fn t(n: u64) -> TaskId {
        TaskId(n)
    }
    fn exited() -> LostReason {
        LostReason::ProcessExited {
            pid: 7,
            exit: ExitCause::Signal(9),
        }
    }
    fn closed() -> LostReason {
        LostReason::LinkClosed {
            detail: "reset".into(),
        }
    }
    fn lost(task: u64, reruns: u32) -> LostTask<'static> {
        LostTask {
            task: t(task),
            func: "f",
            loss_reruns: reruns,
            loss_retries: None,
        }
    }
    fn panicked(task: u64) -> TaskError {
        TaskError::Panicked {
            task: t(task),
            func: "f".into(),
            message: "boom".into(),
        }
    }
    const RETRY_WATCHED: LossVerdict = LossVerdict::Retry { watch: true };
    const RETRY: LossVerdict = LossVerdict::Retry { watch: false };

    #[test]
    fn a_task_started_in_two_crashed_processes_after_the_first_crash_is_poisoned() {
        let mut p = FaultPolicy::new(PolicyConfig::default());
        // Crash 1: imprecise, only a suspect.
        assert_eq!(
            p.on_lost(w(1), inc(1), &exited(), &lost(5, 0)),
            RETRY_WATCHED
        );
        assert!(p.is_suspect(t(5)));
        // Crash 2 while it ran there (its Started came from that incarnation): counted.
        p.started(t(5), w(2), inc(2));
        assert_eq!(
            p.on_lost(w(2), inc(2), &closed(), &lost(5, 1)),
            RETRY_WATCHED
        );
        // Crash 3, counted: two counted crashes of distinct processes.
        p.started(t(5), w(3), inc(3));
        let v = p.on_lost(w(3), inc(3), &exited(), &lost(5, 2));
        assert_eq!(
            v,
            LossVerdict::Fail(TaskError::Poisoned {
                task: t(5),
                func: "f".into(),
                crashes: vec![(w(2), closed()), (w(3), exited())],
            })
        );
        assert!(!p.is_suspect(t(5)), "forgotten once failed");
    }

    #[test]
    fn a_queued_task_is_never_poisoned_by_crashes_unless_its_started_came() {
        let mut p = FaultPolicy::new(PolicyConfig::default());
        assert_eq!(
            p.on_lost(w(1), inc(1), &exited(), &lost(5, 0)),
            RETRY_WATCHED
        );
        // Queued (never started) on the next crashed workers: nothing counts.
        for k in 2..6 {
            let v = p.on_lost(w(k), inc(k), &exited(), &lost(5, 0));
            assert_eq!(v, RETRY_WATCHED, "crash {k}");
        }
        // A Started from another process, or from an older incarnation of the worker that
        // crashed, does not count either.
        p.started(t(5), w(9), inc(9));
        assert_eq!(
            p.on_lost(w(6), inc(6), &exited(), &lost(5, 0)),
            RETRY_WATCHED
        );
        p.started(t(5), w(7), inc(7));
        assert_eq!(
            p.on_lost(w(7), inc(8), &exited(), &lost(5, 0)),
            RETRY_WATCHED
        );
        // An attempt that ended (it finished or failed there) before the crash does not
        // count.
        p.started(t(5), w(10), inc(10));
        p.attempt_ended(t(5), w(10), inc(10));
        assert_eq!(
            p.on_lost(w(10), inc(10), &exited(), &lost(5, 0)),
            RETRY_WATCHED
        );
        p.started(t(5), w(11), inc(11));
        assert_eq!(
            p.on_lost(w(11), inc(11), &exited(), &lost(5, 0)),
            RETRY_WATCHED
        );
        assert!(p.is_suspect(t(5)), "one counted crash is not enough");
    }

    #[test]
    fn a_crash_of_a_process_running_two_watched_tasks_counts_against_neither() {
        let mut p = FaultPolicy::new(PolicyConfig::default());
        for task in [5, 6] {
            assert_eq!(
                p.on_lost(w(1), inc(1), &exited(), &lost(task, 0)),
                RETRY_WATCHED
            );
        }
        // Both land together, twice, and start: ambiguous, nobody is poisoned.
        for k in 2..4u32 {
            p.started(t(5), w(k), inc(k));
            p.started(t(6), w(k), inc(k));
            for task in [5, 6] {
                let v = p.on_lost(w(k), inc(k), &exited(), &lost(task, 0));
                assert_eq!(v, RETRY_WATCHED, "crash {k}, task {task}");
            }
            p.forget_worker(w(k), inc(k));
        }
        // Task 6 then succeeds elsewhere: the crashes it shared were task 5's, which is
        // poisoned at its next crash.
        p.started(t(6), w(9), inc(9));
        assert!(p.attempt_succeeded(s(1), t(6), w(9), inc(9)).is_empty());
        p.started(t(5), w(4), inc(4));
        let v = p.on_lost(w(4), inc(4), &exited(), &lost(5, 0));
        let LossVerdict::Fail(TaskError::Poisoned { crashes, .. }) = v else {
            panic!("{v:?}");
        };
        let workers: Vec<WorkerId> = crashes.iter().map(|c| c.0).collect();
        assert_eq!(workers, vec![w(2), w(3), w(4)]);
    }

    #[test]
    fn silent_fenced_and_protocol_losses_are_not_crashes() {
        let mut p = FaultPolicy::new(PolicyConfig::default());
        let not_crashes = [
            LostReason::Silent { timeout: s(1) },
            LostReason::Fenced { by: inc(9) },
            LostReason::MalformedFrame { detail: "x".into() },
            LostReason::ProtocolViolation { detail: "x".into() },
            LostReason::Excluded { strikes: 3 },
        ];
        for (k, r) in not_crashes.iter().enumerate() {
            let k = k as u32 + 1;
            assert_eq!(p.on_lost(w(k), inc(k), r, &lost(5, 0)), RETRY, "{r:?}");
        }
        assert!(!p.is_suspect(t(5)));
        // A suspect stays watched across a non-crash loss, and the silent process (a
        // paused one) does not count against it even when it had started there.
        assert_eq!(
            p.on_lost(w(1), inc(1), &exited(), &lost(5, 0)),
            RETRY_WATCHED
        );
        for k in 20..25 {
            p.started(t(5), w(k), inc(k));
            let r = LostReason::Silent { timeout: s(1) };
            assert_eq!(p.on_lost(w(k), inc(k), &r, &lost(5, 0)), RETRY_WATCHED);
        }
        p.started(t(5), w(30), inc(30));
        assert_eq!(
            p.on_lost(w(30), inc(30), &exited(), &lost(5, 0)),
            RETRY_WATCHED
        );
    }

    #[test]
    fn loss_budgets_come_from_the_options_or_the_default() {
        let mut p = FaultPolicy::new(PolicyConfig::default());
        let silent = LostReason::Silent { timeout: s(1) };
        // The default: three re-runs, the fourth loss fails.
        for reruns in 0..DEFAULT_LOSS_RETRIES {
            assert_eq!(p.on_lost(w(1), inc(1), &silent, &lost(5, reruns)), RETRY);
        }
        let spent = p.on_lost(w(1), inc(1), &silent, &lost(5, DEFAULT_LOSS_RETRIES));
        assert_eq!(
            spent,
            LossVerdict::Fail(TaskError::WorkerLost {
                task: t(5),
                worker: w(1),
                reason: silent.clone(),
            })
        );
        // The task's own budget wins, in both directions.
        let own = |reruns, budget| LostTask {
            loss_retries: Some(budget),
            ..lost(6, reruns)
        };
        assert!(matches!(
            p.on_lost(w(1), inc(1), &silent, &own(0, 0)),
            LossVerdict::Fail(TaskError::WorkerLost { .. })
        ));
        assert_eq!(p.on_lost(w(1), inc(1), &silent, &own(5, 10)), RETRY);
        // And the configured default replaces the constant.
        let mut p = FaultPolicy::new(PolicyConfig {
            loss_retries: 1,
            ..PolicyConfig::default()
        });
        assert_eq!(p.on_lost(w(1), inc(1), &silent, &lost(5, 0)), RETRY);
        assert!(matches!(
            p.on_lost(w(1), inc(1), &silent, &lost(5, 1)),
            LossVerdict::Fail(TaskError::WorkerLost { .. })
        ));
    }

    #[test]
    fn attribution_can_be_turned_off() {
        let mut p = FaultPolicy::new(PolicyConfig {
            poison_crashes: 0,
            loss_retries: 100,
            ..PolicyConfig::default()
        });
        for k in 1..10 {
            p.started(t(5), w(k), inc(k));
            assert_eq!(p.on_lost(w(k), inc(k), &exited(), &lost(5, 0)), RETRY);
        }
    }

    #[test]
    fn strikes_need_a_success_elsewhere_and_distinct_tasks() {
        let mut p = FaultPolicy::new(PolicyConfig::default());
        let (bad, good) = ((w(1), inc(1)), (w(2), inc(2)));
        // The same task failing on `bad` three times, then succeeding: one strike.
        for _ in 0..3 {
            p.attempt_failed(s(1), t(1), bad.0, bad.1, &panicked(1));
        }
        assert!(p.attempt_succeeded(s(2), t(1), good.0, good.1).is_empty());
        assert_eq!(p.strikes(s(2), bad.0, bad.1), 1);
        // A second task: two strikes.
        p.attempt_failed(s(3), t(2), bad.0, bad.1, &panicked(2));
        assert!(p.attempt_succeeded(s(4), t(2), good.0, good.1).is_empty());
        // A failed move is not the worker's fault; a success on the same worker is no
        // evidence against it.
        let moved = TaskError::MoveFailed {
            task: t(3),
            cause: dagger_core::MoveFailure::NoHolder,
        };
        p.attempt_failed(s(5), t(3), bad.0, bad.1, &moved);
        assert!(p.attempt_succeeded(s(5), t(3), good.0, good.1).is_empty());
        p.attempt_failed(s(5), t(4), bad.0, bad.1, &panicked(4));
        assert!(p.attempt_succeeded(s(5), t(4), bad.0, bad.1).is_empty());
        assert_eq!(p.strikes(s(5), bad.0, bad.1), 2);
        // A third distinct task: excluded, once.
        p.attempt_failed(s(6), t(5), bad.0, bad.1, &panicked(5));
        assert_eq!(
            p.attempt_succeeded(s(7), t(5), good.0, good.1),
            vec![Exclusion {
                worker: bad.0,
                incarnation: bad.1,
                strikes: 3
            }]
        );
        assert_eq!(p.strikes(s(7), bad.0, bad.1), 0);
    }

    #[test]
    fn a_task_failing_everywhere_gives_no_strikes() {
        let mut p = FaultPolicy::new(PolicyConfig::default());
        for task in 1..10 {
            for k in 1..4 {
                p.attempt_failed(s(1), t(task), w(k), inc(k), &panicked(task));
            }
            // It never succeeds: it fails for good and is forgotten.
            p.forget_task(t(task));
        }
        for k in 1..4 {
            assert_eq!(p.strikes(s(1), w(k), inc(k)), 0);
        }
    }

    #[test]
    fn strikes_outside_the_window_do_not_add_up() {
        let mut p = FaultPolicy::new(PolicyConfig {
            strike_window: s(10),
            ..PolicyConfig::default()
        });
        let (bad, good) = ((w(1), inc(1)), (w(2), inc(2)));
        for (task, at) in [(1, 0), (2, 8), (3, 15)] {
            p.attempt_failed(s(at), t(task), bad.0, bad.1, &panicked(task));
            let ex = p.attempt_succeeded(s(at + 1), t(task), good.0, good.1);
            assert!(ex.is_empty(), "task {task}: {ex:?}");
        }
        assert_eq!(p.strikes(s(16), bad.0, bad.1), 2);
        // A failure older than the window when the success comes gives no strike.
        p.attempt_failed(s(20), t(4), bad.0, bad.1, &panicked(4));
        assert!(p.attempt_succeeded(s(40), t(4), good.0, good.1).is_empty());
        assert_eq!(p.strikes(s(40), bad.0, bad.1), 0);
        // Exclusion off.
        let mut p = FaultPolicy::new(PolicyConfig {
            exclusion_strikes: 0,
            ..PolicyConfig::default()
        });
        for task in 1..10 {
            p.attempt_failed(s(1), t(task), bad.0, bad.1, &panicked(task));
            assert!(p
                .attempt_succeeded(s(1), t(task), good.0, good.1)
                .is_empty());
        }
    }
}
