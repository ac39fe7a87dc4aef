//! Reconciliation as a pure plan: what is on disk and what is known about each version in,
//! the actions to take out. No files, clocks, locks or threads here, so every hot-reload rule
//! of docs/hot-reload.md is a unit test below that runs in microseconds.
//!
//! A sync has two steps with the loads between them, because what the version policy may keep
//! depends on which loads succeed:
//! 1. [`plan_loads`]: which versions to load now, which are waiting for their files to settle,
//!    and what to remember of the files seen;
//! 2. [`plan_retirements`]: once the loads are done, which served versions to retire.
//!
//! The rules:
//! - a file is loaded only after it looked the same on two consecutive checks (unless the
//!   caller asks for an immediate load, e.g. at startup or through the repository API);
//! - a file that failed is not retried until it changes;
//! - the version policy is applied to what actually loaded, so a bad version never replaces a
//!   good one;
//! - an unreadable model directory (an NFS blip, a symlink swap in progress) changes nothing;
//! - a served version whose directory was deleted is retired only if another ready version
//!   remains;
//! - the stable version of a rollout (`protect`) is loaded and stays served beside the
//!   candidate;
//! - a version unloaded through the repository API (`held`) is neither loaded nor served until
//!   an explicit load, even if its directory goes away and comes back; a model unloaded as a
//!   whole (`disabled`) serves nothing.
//!
//! The plan is generic over the identity of a version's files (`I`): the repository uses the
//! identities of the weights file and its assets, the tests small integers.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::VersionPolicy;

/// How a sync treats files it has not seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Load what is there now (startup, explicit load requests).
    Immediate,
    /// Load a file only once it looked the same on two consecutive checks (the watcher).
    RequireStable,
}

/// What the model directory holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disk<I> {
    /// The directory could not be read: nothing can be concluded from it.
    Unreadable,
    /// Version directories by number; `None` while a directory has no complete set of files.
    Listed(BTreeMap<u64, Option<I>>),
}

/// What the repository knows about one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known<I> {
    /// The files of the copy being served, if it is served.
    pub served: Option<I>,
    /// Files that failed to load: not retried until they change.
    pub failed: Option<I>,
    /// The files seen at the previous check (stability).
    pub last_seen: Option<I>,
    /// Unloaded through the repository API.
    pub held: bool,
}

impl<I> Default for Known<I> {
    fn default() -> Self {
        Known {
            served: None,
            failed: None,
            last_seen: None,
            held: false,
        }
    }
}

/// Everything a plan depends on.
#[derive(Debug, Clone)]
pub struct Inputs<'a, I> {
    pub mode: SyncMode,
    pub policy: &'a VersionPolicy,
    /// The whole model was unloaded through the repository API.
    pub disabled: bool,
    pub disk: &'a Disk<I>,
    pub known: &'a BTreeMap<u64, Known<I>>,
    /// The stable version of a canary rollout: kept served whatever the version policy says,
    /// while its directory exists.
    pub protect: Option<u64>,
}

/// The first step's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan<I> {
    /// Versions to load, highest first, with the files to load.
    pub loads: Vec<(u64, I)>,
    /// Versions seen with new files that must look the same once more before loading.
    pub waiting: BTreeSet<u64>,
    /// The files seen now, to compare against at the next check (versions on disk only).
    pub seen: BTreeMap<u64, I>,
    /// Versions whose records can go: gone from disk and not served.
    pub forget: BTreeSet<u64>,
}

impl<I> Default for LoadPlan<I> {
    fn default() -> Self {
        LoadPlan {
            loads: Vec::new(),
            waiting: BTreeSet::new(),
            seen: BTreeMap::new(),
            forget: BTreeSet::new(),
        }
    }
}

/// Decides what to load.
pub fn plan_loads<I: Clone + Eq>(inputs: &Inputs<'_, I>) -> LoadPlan<I> {
    let Disk::Listed(on_disk) = inputs.disk else {
        return LoadPlan::default();
    };
    if inputs.disabled {
        return LoadPlan::default();
    }
    let mut plan = LoadPlan::default();
    for (version, known) in inputs.known {
        if !on_disk.contains_key(version) && known.served.is_none() && !known.held {
            plan.forget.insert(*version);
        }
    }
    let mut candidates: Vec<(u64, I)> = Vec::new();
    let mut loadable: Vec<u64> = Vec::new();
    for (&version, files) in on_disk {
        let Some(files) = files else { continue };
        plan.seen.insert(version, files.clone());
        let known = inputs.known.get(&version);
        if known.is_some_and(|k| k.held) {
            continue;
        }
        let served = known.and_then(|k| k.served.as_ref());
        if served == Some(files) {
            loadable.push(version);
            continue;
        }
        if known.and_then(|k| k.failed.as_ref()) == Some(files) {
            // A served version whose newer file failed stays a candidate as it is.
            if served.is_some() {
                loadable.push(version);
            }
            continue;
        }
        let stable = inputs.mode == SyncMode::Immediate
            || known.and_then(|k| k.last_seen.as_ref()) == Some(files);
        if !stable {
            if served.is_some() {
                loadable.push(version);
            } else {
                plan.waiting.insert(version);
            }
            continue;
        }
        loadable.push(version);
        candidates.push((version, files.clone()));
    }
    let mut wanted: BTreeSet<u64> = inputs.policy.select(&loadable).into_iter().collect();
    // A rollout's stable version is loaded too (a fresh slot taking over a rollout after a
    // config change), whatever the policy says.
    wanted.extend(inputs.protect.filter(|p| loadable.contains(p)));
    candidates.retain(|(v, _)| wanted.contains(v));
    candidates.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    plan.loads = candidates;
    plan
}

/// Why a served version stops being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireReason {
    /// Not selected by the version policy among the versions ready now.
    Policy,
    /// Unloaded through the repository API.
    Api,
}

/// Decides which served versions to retire, after the loads of [`plan_loads`] were done.
/// `inputs.known` must reflect their outcomes.
pub fn plan_retirements<I>(inputs: &Inputs<'_, I>) -> Vec<(u64, RetireReason)> {
    let served: Vec<u64> = inputs
        .known
        .iter()
        .filter(|(_, k)| k.served.is_some())
        .map(|(v, _)| *v)
        .collect();
    if inputs.disabled {
        return served.into_iter().map(|v| (v, RetireReason::Api)).collect();
    }
    let Disk::Listed(on_disk) = inputs.disk else {
        return Vec::new();
    };
    let held = |v: &u64| inputs.known.get(v).is_some_and(|k| k.held);
    let ready_on_disk: Vec<u64> = served
        .iter()
        .copied()
        .filter(|v| on_disk.contains_key(v) && !held(v))
        .collect();
    let mut keep: BTreeSet<u64> = inputs.policy.select(&ready_on_disk).into_iter().collect();
    keep.extend(inputs.protect.filter(|p| ready_on_disk.contains(p)));
    if keep.is_empty() {
        // Nothing the policy wants is ready: keep serving the best of what there is, so a
        // deleted directory or a pin to a version that fails never leaves the model empty.
        if let Some(v) = ready_on_disk.last().or(served.iter().rfind(|v| !held(v))) {
            keep.insert(*v);
        }
    }
    served
        .into_iter()
        .filter(|v| !keep.contains(v))
        .map(|v| {
            let reason = if held(&v) {
                RetireReason::Api
            } else {
                RetireReason::Policy
            };
            (v, reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository state built by the tests: identities are small integers (think "inode").
    struct World {
        policy: VersionPolicy,
        disk: Disk<u32>,
        known: BTreeMap<u64, Known<u32>>,
        disabled: bool,
        protect: Option<u64>,
    }

    impl World {
        fn new(policy: VersionPolicy, disk: &[(u64, u32)]) -> World {
            World {
                policy,
                disk: Disk::Listed(disk.iter().map(|(v, i)| (*v, Some(*i))).collect()),
                known: BTreeMap::new(),
                disabled: false,
                protect: None,
            }
        }

        fn serving(mut self, version: u64, files: u32) -> World {
            self.known.entry(version).or_default().served = Some(files);
            self
        }

        fn inputs(&self, mode: SyncMode) -> Inputs<'_, u32> {
            Inputs {
                mode,
                policy: &self.policy,
                disabled: self.disabled,
                disk: &self.disk,
                known: &self.known,
                protect: self.protect,
            }
        }

        /// One sync as the repository applies it: plan, "load" (succeeding unless the files
        /// are in `bad`), retire. Returns (loaded, failed, retired).
        fn sync(&mut self, mode: SyncMode, bad: &[u32]) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
            let plan = plan_loads(&self.inputs(mode));
            for v in &plan.forget {
                self.known.remove(v);
            }
            for (v, files) in &plan.seen {
                self.known.entry(*v).or_default().last_seen = Some(*files);
            }
            let (mut loaded, mut failed) = (Vec::new(), Vec::new());
            for (v, files) in plan.loads {
                let known = self.known.entry(v).or_default();
                if bad.contains(&files) {
                    known.failed = Some(files);
                    failed.push(v);
                } else {
                    known.served = Some(files);
                    loaded.push(v);
                }
            }
            let retired: Vec<u64> = plan_retirements(&self.inputs(mode))
                .into_iter()
                .map(|(v, _)| v)
                .collect();
            for v in &retired {
                if let Some(k) = self.known.get_mut(v) {
                    k.served = None;
                }
            }
            (loaded, failed, retired)
        }

        fn served(&self) -> Vec<u64> {
            self.known
                .iter()
                .filter(|(_, k)| k.served.is_some())
                .map(|(v, _)| *v)
                .collect()
        }

        fn put(&mut self, version: u64, files: u32) {
            if let Disk::Listed(d) = &mut self.disk {
                d.insert(version, Some(files));
            }
        }

        fn remove(&mut self, version: u64) {
            if let Disk::Listed(d) = &mut self.disk {
                d.remove(&version);
            }
        }
    }

    const STABLE: SyncMode = SyncMode::RequireStable;
    const NOW: SyncMode = SyncMode::Immediate;

    #[test]
    fn startup_loads_the_policy_s_versions_at_once() {
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10), (2, 20)]);
        assert_eq!(w.sync(NOW, &[]), (vec![2], vec![], vec![]));
        assert_eq!(w.served(), [2]);
        let mut w = World::new(VersionPolicy::All, &[(1, 10), (2, 20)]);
        assert_eq!(w.sync(NOW, &[]).0, [2, 1]);
    }

    #[test]
    fn a_new_file_loads_only_after_two_identical_checks() {
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10)]).serving(1, 10);
        w.put(2, 20);
        let plan = plan_loads(&w.inputs(STABLE));
        assert!(plan.loads.is_empty());
        assert_eq!(plan.waiting, BTreeSet::from([2]));
        w.sync(STABLE, &[]);
        // Still being written: the file changed between the checks.
        w.put(2, 21);
        assert_eq!(w.sync(STABLE, &[]), (vec![], vec![], vec![]));
        assert_eq!(w.sync(STABLE, &[]), (vec![2], vec![], vec![1]));
        assert_eq!(w.served(), [2]);
    }

    #[test]
    fn a_failed_version_never_replaces_a_good_one_and_is_not_retried() {
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10), (2, 20)]).serving(1, 10);
        w.sync(STABLE, &[20]);
        assert_eq!(w.sync(STABLE, &[20]), (vec![], vec![2], vec![]));
        assert_eq!(w.served(), [1]);
        // The same file again: not retried, whatever the mode.
        assert_eq!(w.sync(STABLE, &[20]), (vec![], vec![], vec![]));
        assert_eq!(w.sync(NOW, &[20]), (vec![], vec![], vec![]));
        // A new file for the version is.
        w.put(2, 22);
        w.sync(STABLE, &[20]);
        assert_eq!(w.sync(STABLE, &[20]), (vec![2], vec![], vec![1]));
    }

    #[test]
    fn a_refused_newer_file_keeps_the_served_copy_of_the_same_version() {
        let mut w = World::new(VersionPolicy::Latest(1), &[(2, 20)]).serving(2, 20);
        w.put(2, 21);
        assert_eq!(w.sync(NOW, &[21]), (vec![], vec![2], vec![]));
        assert_eq!(w.served(), [2]);
        assert_eq!(w.known[&2].served, Some(20));
    }

    #[test]
    fn an_unreadable_directory_changes_nothing() {
        let mut w = World::new(VersionPolicy::Latest(1), &[]).serving(3, 30);
        w.disk = Disk::Unreadable;
        assert_eq!(plan_loads(&w.inputs(NOW)), LoadPlan::default());
        assert!(plan_retirements(&w.inputs(NOW)).is_empty());
        assert_eq!(w.served(), [3]);
    }

    #[test]
    fn a_deleted_version_goes_only_when_another_is_ready() {
        // Its directory is deleted and nothing else exists: it keeps serving.
        let mut w = World::new(VersionPolicy::Latest(1), &[]).serving(2, 20);
        assert_eq!(w.sync(STABLE, &[]), (vec![], vec![], vec![]));
        assert_eq!(w.served(), [2]);
        // An older version on disk is loaded first, then the deleted one retires.
        w.put(1, 10);
        assert_eq!(w.sync(NOW, &[]), (vec![1], vec![], vec![2]));
        assert_eq!(w.served(), [1]);
        // If the replacement fails, the deleted version keeps serving.
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10)]).serving(2, 20);
        assert_eq!(w.sync(NOW, &[10]), (vec![], vec![1], vec![]));
        assert_eq!(w.served(), [2]);
    }

    #[test]
    fn versions_gone_from_disk_are_forgotten_unless_served() {
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10), (2, 20)]).serving(2, 20);
        w.sync(STABLE, &[]);
        w.remove(1);
        let plan = plan_loads(&w.inputs(STABLE));
        assert_eq!(plan.forget, BTreeSet::from([1]));
        w.remove(2);
        let plan = plan_loads(&w.inputs(STABLE));
        assert!(!plan.forget.contains(&2), "served versions are remembered");
    }

    #[test]
    fn held_versions_are_neither_loaded_nor_served() {
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10), (2, 20)]).serving(2, 20);
        w.known.get_mut(&2).unwrap().held = true;
        // Rollback: the next version the policy picks is loaded before the held one retires.
        assert_eq!(w.sync(NOW, &[]), (vec![1], vec![], vec![2]));
        assert_eq!(
            plan_retirements(&w.clone_with_served(2).inputs(NOW)),
            [(2, RetireReason::Api)]
        );
        assert_eq!(w.sync(NOW, &[]), (vec![], vec![], vec![]));
        assert_eq!(w.served(), [1]);
    }

    #[test]
    fn a_disabled_model_retires_everything_and_loads_nothing() {
        let mut w = World::new(VersionPolicy::All, &[(1, 10), (2, 20)])
            .serving(1, 10)
            .serving(2, 20);
        w.disabled = true;
        assert!(plan_loads(&w.inputs(NOW)).loads.is_empty());
        assert_eq!(
            plan_retirements(&w.inputs(NOW)),
            [(1, RetireReason::Api), (2, RetireReason::Api)]
        );
    }

    #[test]
    fn policies_select_among_loadable_versions() {
        let disk = [(1, 10), (2, 20), (3, 30)];
        let mut w = World::new(VersionPolicy::Latest(2), &disk);
        assert_eq!(w.sync(NOW, &[]).0, [3, 2]);
        let mut w = World::new(VersionPolicy::Specific(vec![1, 3]), &disk);
        assert_eq!(w.sync(NOW, &[]).0, [3, 1]);
        // A pin to a version that is not on disk keeps what serves.
        let mut w = World::new(VersionPolicy::Specific(vec![7]), &disk).serving(3, 30);
        assert_eq!(w.sync(NOW, &[]), (vec![], vec![], vec![]));
        assert_eq!(w.served(), [3]);
    }

    #[test]
    fn a_config_reload_s_new_policy_swaps_versions() {
        let disk = [(1, 10), (2, 20)];
        let mut w = World::new(VersionPolicy::Latest(1), &disk).serving(2, 20);
        w.sync(STABLE, &[]);
        w.policy = VersionPolicy::Specific(vec![1]);
        assert_eq!(w.sync(NOW, &[]), (vec![1], vec![], vec![2]));
        w.policy = VersionPolicy::All;
        assert_eq!(w.sync(NOW, &[]), (vec![2], vec![], vec![]));
        assert_eq!(w.served(), [1, 2]);
    }

    #[test]
    fn incomplete_directories_are_ignored_until_their_files_appear() {
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10)]).serving(1, 10);
        if let Disk::Listed(d) = &mut w.disk {
            d.insert(2, None);
        }
        let plan = plan_loads(&w.inputs(NOW));
        assert!(plan.loads.is_empty() && plan.waiting.is_empty());
        assert!(!plan.seen.contains_key(&2));
    }

    impl World {
        fn clone_with_served(&self, version: u64) -> World {
            let mut known = self.known.clone();
            known.entry(version).or_default().served = Some(0);
            World {
                policy: self.policy.clone(),
                disk: self.disk.clone(),
                known,
                disabled: self.disabled,
                protect: self.protect,
            }
        }
    }

    #[test]
    fn the_stable_version_of_a_canary_stays_served_until_promotion() {
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10), (2, 20)])
            .serving(1, 10)
            .serving(2, 20);
        w.protect = Some(1);
        assert!(plan_retirements(&w.inputs(NOW)).is_empty());
        // Promotion lifts the protection: the policy retires the old version.
        w.protect = None;
        assert_eq!(
            plan_retirements(&w.inputs(NOW)),
            vec![(1, RetireReason::Policy)]
        );
        // A protected version whose directory is gone is not kept.
        w.protect = Some(1);
        if let Disk::Listed(d) = &mut w.disk {
            d.remove(&1);
        }
        assert_eq!(
            plan_retirements(&w.inputs(NOW)),
            vec![(1, RetireReason::Policy)]
        );
    }

    #[test]
    fn a_fresh_slot_taking_over_a_rollout_loads_its_stable_version_too() {
        // After a config change rebuilds the model: nothing served yet, the rollout carried.
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10), (2, 20)]);
        w.protect = Some(1);
        assert_eq!(w.sync(NOW, &[]), (vec![2, 1], vec![], vec![]));
        // A rolled-back version (its files failed) stays out; the stable one alone serves.
        let mut w = World::new(VersionPolicy::Latest(1), &[(1, 10), (2, 20)]);
        w.known.entry(2).or_default().failed = Some(20);
        assert_eq!(w.sync(NOW, &[]), (vec![1], vec![], vec![]));
    }
}
