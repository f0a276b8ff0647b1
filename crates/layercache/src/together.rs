//! Runs a group of futures of one task concurrently (no spawn: they may borrow), answering in
//! their order — for batch calls made of single-key steps (tagged batch writes and loads'
//! fills), which fred sends back to back as the futures are polled.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

/// How many futures [`together`] polls at once: every wake-up polls each unfinished one, so a
/// group is kept small enough for that to stay cheap, and a larger batch goes group by group.
pub(crate) const GROUP: usize = 256;

/// Awaits every future of `futures` concurrently, at most [`GROUP`] at a time; their outputs in
/// the order given.
pub(crate) async fn together<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futures.len());
    let mut futures = futures.into_iter().peekable();
    while futures.peek().is_some() {
        let group: Vec<Pin<Box<F>>> = futures.by_ref().take(GROUP).map(Box::pin).collect();
        out.extend(Group::new(group).await);
    }
    out
}

/// One group of [`together`].
struct Group<F: Future> {
    futures: Vec<Pin<Box<F>>>,
    outputs: Vec<Option<F::Output>>,
}

impl<F: Future> Group<F> {
    fn new(futures: Vec<Pin<Box<F>>>) -> Self {
        let outputs = futures.iter().map(|_| None).collect();
        Self { futures, outputs }
    }
}

// The futures are boxed and the outputs are never pinned: moving the group moves neither.
impl<F: Future> Unpin for Group<F> {}

impl<F: Future> Future for Group<F> {
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut pending = false;
        for (future, output) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.outputs.drain(..).flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_in_order_whatever_order_they_finish_in() {
        let delays: Vec<u64> = (0..600).map(|i| (i * 7919) % 5).collect();
        let futures = delays
            .iter()
            .enumerate()
            .map(|(i, d)| async move {
                for _ in 0..*d {
                    tokio::task::yield_now().await;
                }
                i
            })
            .collect();
        let out = together(futures).await;
        assert_eq!(out, (0..600).collect::<Vec<_>>());
    }
}
