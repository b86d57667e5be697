//! The node's background work, bounded: every task the runtime starts
//! (dials, requests, DHT operations, swarm traffic) is in one set with a
//! ceiling, so a flood of peers or descriptors cannot make the node start
//! tasks without end. What does not fit is refused and counted.

use std::collections::BTreeMap;
use std::future::Future;

use tokio::task::JoinSet;

/// Tasks running, at most `max`.
pub(crate) struct Tasks {
    set: JoinSet<()>,
    max: usize,
    refused: BTreeMap<&'static str, u64>,
}

impl Tasks {
    /// An empty set for at most `max` tasks.
    pub(crate) fn new(max: usize) -> Self {
        Tasks {
            set: JoinSet::new(),
            max,
            refused: BTreeMap::new(),
        }
    }

    /// Starts `work` (a `kind` of task, for the count) unless `max` tasks
    /// are running; false if it was refused.
    pub(crate) fn spawn(
        &mut self,
        kind: &'static str,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> bool {
        // Finished tasks leave the set here (their results are ().
        while self.set.try_join_next().is_some() {}
        if self.set.len() >= self.max {
            *self.refused.entry(kind).or_default() += 1;
            tracing::warn!(
                kind,
                max = self.max,
                "too much background work; a task was refused"
            );
            return false;
        }
        self.set.spawn(work);
        true
    }

    /// Tasks running now.
    pub(crate) fn running(&self) -> usize {
        self.set.len()
    }

    /// Tasks refused since the start, by kind.
    pub(crate) fn refused(&self) -> &BTreeMap<&'static str, u64> {
        &self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_what_does_not_fit_and_makes_room_as_tasks_end() {
        let mut tasks = Tasks::new(2);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(tasks.spawn("wait", async move {
            let _ = rx.await;
        }));
        assert!(tasks.spawn("quick", async {}));
        assert!(!tasks.spawn("wait", async {}));
        assert_eq!(tasks.refused().get("wait"), Some(&1));
        // The quick task ends; the waiting one still holds its place.
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(tasks.spawn("quick", async {}));
        let _ = tx.send(());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(tasks.spawn("quick", async {}));
        assert!(tasks.running() <= 2);
    }
}
