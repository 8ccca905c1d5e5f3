//! Who runs the adapter's tasks: the one thing that differs between
//! async-std and smol. Everything else (sockets, timers) is async-io's,
//! whose reactor both of them drive.

use std::fmt;
use std::sync::Arc;

use teleport_peer::BoxFuture;

/// Starts a detached task: it runs to its end on its own.
///
/// Implemented for closures, so any executor fits in a line:
///
/// ```
/// use teleport_async_std::Executor;
///
/// // A thread per task, driving async-io's reactor while it waits.
/// let exec = Executor::custom(|fut| {
///     std::thread::spawn(move || async_io::block_on(fut));
/// });
/// # drop(exec);
/// ```
pub trait Spawn: Send + Sync + 'static {
    /// Runs `fut` in the background. It must not poll `fut` before
    /// returning: the caller may hold a lock the task's end takes.
    fn spawn(&self, fut: BoxFuture<()>);
}

impl<F> Spawn for F
where
    F: Fn(BoxFuture<()>) + Send + Sync + 'static,
{
    fn spawn(&self, fut: BoxFuture<()>) {
        self(fut)
    }
}

/// Where a peer's tasks run: one per connection (its handlers run inside
/// it) and one per listener.
#[derive(Clone)]
pub enum Executor {
    /// async-std's global executor (`async_std::task::spawn`).
    #[cfg(feature = "async-std")]
    AsyncStd,
    /// smol's global executor (`smol::spawn(..).detach()`).
    #[cfg(feature = "smol")]
    Smol,
    /// Any other executor.
    Custom(Arc<dyn Spawn>),
}

impl Executor {
    /// An executor of your own (see [`Spawn`]).
    pub fn custom(spawn: impl Spawn) -> Executor {
        Executor::Custom(Arc::new(spawn))
    }

    /// Runs `fut` in the background.
    pub fn spawn(&self, fut: BoxFuture<()>) {
        match self {
            #[cfg(feature = "async-std")]
            Executor::AsyncStd => {
                // Dropping the handle detaches the task.
                drop(::async_std::task::spawn(fut));
            }
            #[cfg(feature = "smol")]
            Executor::Smol => ::smol::spawn(fut).detach(),
            Executor::Custom(s) => s.spawn(fut),
        }
    }
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            #[cfg(feature = "async-std")]
            Executor::AsyncStd => "Executor::AsyncStd",
            #[cfg(feature = "smol")]
            Executor::Smol => "Executor::Smol",
            Executor::Custom(_) => "Executor::Custom",
        })
    }
}
