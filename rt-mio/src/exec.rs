//! Running futures without a runtime: [`block_on`] for the blocking API,
//! and [`Task`], a handler's future driven by the worker pool or by the
//! poll loop itself, woken through [`std::task::Wake`].

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Instant;

use teleport_peer::adapter::{Done, HandlerCall};
use teleport_peer::BoxFuture;

use crate::event_loop::{LoopShared, Msg};

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    /// One waker per thread that blocks, made once.
    static THREAD_WAKER: Waker = Waker::from(Arc::new(Unpark(thread::current())));
    /// The peer whose poll loop runs on this thread (the address of its
    /// shared state), so a blocking call that would wait on this very loop
    /// fails instead of hanging.
    static ON_LOOP: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` to completion on this thread, parking between polls.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    match block_on_until(f, None) {
        Some(v) => v,
        None => unreachable!("no deadline"),
    }
}

/// [`block_on`], giving up at `deadline` (`None` then).
pub(crate) fn block_on_until<F: Future>(f: F, deadline: Option<Instant>) -> Option<F::Output> {
    let mut f = pin!(f);
    THREAD_WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return Some(v);
            }
            match deadline {
                None => thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    thread::park_timeout(d - now);
                }
            }
        }
    })
}

/// A future ready `d` from its first poll, for code run with [`block_on`]
/// (re-dial back-off): a short-lived thread wakes it, so whatever else the
/// waiting code selects on (a close) is seen meanwhile.
pub(crate) fn sleep(d: std::time::Duration) -> impl Future<Output = ()> {
    let mut until = None;
    std::future::poll_fn(move |cx| {
        let now = Instant::now();
        let at = *until.get_or_insert_with(|| {
            let waker = cx.waker().clone();
            let spawned = thread::Builder::new()
                .name("teleport-mio-timer".into())
                .spawn(move || {
                    thread::sleep(d);
                    waker.wake();
                });
            if spawned.is_err() {
                // No thread: wake at once, and poll again until due.
                cx.waker().wake_by_ref();
            }
            now + d
        });
        // A wake before the deadline (from what the code selects on as
        // well) just waits on.
        if now >= at {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// Marks this thread as running the poll loop of the peer whose shared
/// state is at `peer`.
pub(crate) fn set_on_loop(peer: usize) {
    ON_LOOP.with(|c| c.set(peer));
}

/// Whether this thread runs the poll loop of the peer at `peer`.
pub(crate) fn on_loop_of(peer: usize) -> bool {
    ON_LOOP.with(|c| c.get()) == peer
}

enum Slot {
    /// Not called yet (pool mode: the worker calls it).
    Call(HandlerCall),
    /// Called; waiting.
    Running(BoxFuture<Done>),
    /// Finished or cancelled.
    Empty,
}

/// Where a woken task goes to be polled again.
pub(crate) enum Home {
    /// The worker pool's queue.
    Pool(Weak<Pool>),
    /// The poll loop (inline mode).
    Loop(Weak<LoopShared>),
}

/// One handler call of one connection, until it is done.
pub(crate) struct Task {
    slot: Mutex<Slot>,
    /// The connection's slab key, its session id (to tell a reused key
    /// apart), and this task's key among the connection's tasks.
    pub(crate) conn: usize,
    pub(crate) session: u64,
    pub(crate) key: usize,
    home: Home,
}

impl Task {
    pub(crate) fn unstarted(
        call: HandlerCall,
        conn: usize,
        session: u64,
        key: usize,
        home: Home,
    ) -> Arc<Task> {
        Arc::new(Task {
            slot: Mutex::new(Slot::Call(call)),
            conn,
            session,
            key,
            home,
        })
    }

    pub(crate) fn running(
        fut: BoxFuture<Done>,
        conn: usize,
        session: u64,
        key: usize,
        home: Home,
    ) -> Arc<Task> {
        Arc::new(Task {
            slot: Mutex::new(Slot::Running(fut)),
            conn,
            session,
            key,
            home,
        })
    }

    /// Calls or polls the handler; `Some` once it is done. A wake during
    /// the poll queues the task again, and that run waits for this one.
    /// (Handler panics are caught inside the future: see
    /// [`HandlerCall::start`].)
    pub(crate) fn run(self: &Arc<Self>) -> Option<Done> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let mut fut = match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Call(call) => call.start(),
            Slot::Running(fut) => fut,
            Slot::Empty => return None,
        };
        let waker = Waker::from(self.clone());
        match fut.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(done) => Some(done),
            Poll::Pending => {
                *slot = Slot::Running(fut);
                None
            }
        }
    }

    /// Drops the handler's future (its connection is gone), unless it is
    /// being polled right now: then that poll's end keeps it, and the
    /// reply it may produce is dropped by the loop.
    pub(crate) fn cancel(&self) {
        if let Ok(mut slot) = self.slot.try_lock() {
            *slot = Slot::Empty;
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        match &self.home {
            Home::Pool(pool) => {
                if let Some(pool) = pool.upgrade() {
                    pool.submit(self.clone());
                }
            }
            Home::Loop(shared) => {
                if let Some(shared) = shared.upgrade() {
                    let _ = shared.post(Msg::Poll(self.clone()));
                }
            }
        }
    }
}

/// Worker threads that run handler tasks; finished ones go back to the
/// loop as [`Msg::Done`]. Dropping the pool (the loop ends) closes the
/// queue, and idle workers exit.
pub(crate) struct Pool {
    tx: Mutex<Option<mpsc::Sender<Arc<Task>>>>,
}

impl Pool {
    pub(crate) fn start(n: usize, shared: &Arc<LoopShared>) -> std::io::Result<Arc<Pool>> {
        let (tx, rx) = mpsc::channel::<Arc<Task>>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            let shared = Arc::downgrade(shared);
            thread::Builder::new()
                .name(format!("teleport-mio-worker-{i}"))
                .spawn(move || worker(&rx, &shared))?;
        }
        Ok(Arc::new(Pool {
            tx: Mutex::new(Some(tx)),
        }))
    }

    pub(crate) fn submit(&self, task: Arc<Task>) {
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(task);
        }
    }

    /// Closes the queue: workers exit once idle.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Arc<Task>>>, shared: &Weak<LoopShared>) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(task) = next else { return };
        if let Some(done) = task.run() {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let _ = shared.post(Msg::Done {
                conn: task.conn,
                session: task.session,
                task: task.key,
                done,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_waits_for_another_thread() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let t = thread::spawn(move || {
            let _ = tx.send(7);
        });
        assert_eq!(block_on(rx), Ok(7));
        t.join().unwrap();
    }

    #[test]
    fn block_on_until_gives_up_at_the_deadline() {
        let never = std::future::pending::<()>();
        let deadline = Instant::now() + std::time::Duration::from_millis(20);
        assert_eq!(block_on_until(never, Some(deadline)), None);
        assert!(Instant::now() >= deadline);
    }
}
