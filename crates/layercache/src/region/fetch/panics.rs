//! A loader run in the fetch's own task, its panics caught (see `Region::run_loader`).

/// How a loader ended without an answer.
pub(super) enum LoadAborted {
    Panicked,
    /// Its task was cancelled (the runtime is shutting down).
    Cancelled,
}

/// A loader's future, its panics caught: what a task of its own would give, without the task.
pub(super) struct CatchPanic<F>(pub(super) F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchPanic<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        // A panicking loader leaves nothing of ours half-updated: its future is dropped with
        // the fetch's answer (an error), never polled again.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        })) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}
