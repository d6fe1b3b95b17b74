//! The shutdown protocol's parts: waiting for the signals that start it (SIGTERM, SIGINT),
//! and [`Stage`], a group of tasks stopped together within a deadline.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        _ = term => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}

/// One stage of the shutdown protocol: the tasks it tracks and the token that tells them to
/// stop. `App::shutdown` stops its stages in the order ARCHITECTURE.md gives.
#[derive(Clone, Default)]
pub struct Stage {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Stage {
    pub fn new() -> Stage {
        Stage::default()
    }

    /// The token the stage's tasks watch; cancelled when the stage stops.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The tracker the stage's tasks are spawned on.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Tells the stage's tasks to stop and waits until they have, or until `deadline`.
    /// Returns whether they all finished in time.
    pub async fn stop_within(&self, deadline: Instant) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tells the stage's tasks to stop and waits until they have.
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stage_waits_for_its_tasks_to_stop_until_the_deadline() {
        let stage = Stage::new();
        let token = stage.token();
        stage.tracker().spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(stage.stop_within(deadline).await);

        let stuck = Stage::new();
        stuck.tracker().spawn(std::future::pending::<()>());
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(!stuck.stop_within(deadline).await);
        assert!(Instant::now() >= deadline);
    }
}
