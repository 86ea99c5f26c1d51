//! Work on several threads, outcomes handed on in input order: each item's outcome waits
//! until every earlier one has been handed on, then goes as soon as it is done. It knows
//! nothing of screening; it never reorders what it hands on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// Runs `work` on every item on up to `jobs` threads (`work` shared read-only) and hands each
/// outcome to `sink` in input order. `sink` returns `false` to stop early: no outcome is
/// handed on after that, and no new item is started.
pub fn for_each_in_order<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> R + Sync,
    mut sink: impl FnMut(&T, R) -> bool,
) {
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        for item in items {
            if !sink(item, work(item)) {
                return;
            }
        }
        return;
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (send, receive) = mpsc::sync_channel(2 * jobs);
    std::thread::scope(|scope| {
        // Owned by this closure, so that stopping early drops it before the scope joins the
        // workers: one blocked on a full channel then gets an error instead of waiting forever.
        let receive = receive;
        for _ in 0..jobs {
            let send = send.clone();
            let (next, stop, work) = (&next, &stop, &work);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() || stop.load(Ordering::Relaxed) {
                    break;
                }
                if send.send((i, work(&items[i]))).is_err() {
                    break;
                }
            });
        }
        drop(send);
        // Reorder: outcomes wait here until every earlier one has been handed on.
        let mut pending = BTreeMap::new();
        let mut emit = 0;
        for (i, outcome) in receive.iter() {
            pending.insert(i, outcome);
            while let Some(outcome) = pending.remove(&emit) {
                if !sink(&items[emit], outcome) {
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                emit += 1;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_come_in_input_order() {
        let items: Vec<u64> = (0..40).collect();
        for jobs in [1, 3, 8] {
            let mut seen = Vec::new();
            // Later items finish first: the slow ones are at the front.
            for_each_in_order(
                &items,
                jobs,
                |&i| {
                    std::thread::sleep(std::time::Duration::from_micros(400 - 10 * i));
                    i * i
                },
                |&i, square| {
                    seen.push((i, square));
                    true
                },
            );
            assert_eq!(seen, items.iter().map(|&i| (i, i * i)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn stopping_early_does_not_hang_on_workers_blocked_on_a_full_channel() {
        // Instant work fills the channel while the sink is slow: the workers block on send.
        let items: Vec<u64> = (0..200).collect();
        for jobs in [1, 2, 4] {
            let mut handed = 0;
            for_each_in_order(
                &items,
                jobs,
                |&i| i,
                |_, _| {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    handed += 1;
                    handed < 5
                },
            );
            assert_eq!(handed, 5, "jobs {jobs}");
        }
    }
}
