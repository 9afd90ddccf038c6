//! The server's queue: members' requests first, and never every worker busy with non-members,
//! so a member's request waits at most for the one it queued behind, not for a crowd's.
//!
//! Blocking (a mutex and a condition variable): its consumers are plain threads that read the
//! store, never tasks of the async runtime.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::budget::Class;

struct State<T> {
    members: VecDeque<T>,
    non_members: VecDeque<T>,
    /// Non-member jobs taken and not done.
    running_non_members: usize,
    /// Whether workers are running (pushes are refused otherwise).
    open: bool,
}

/// A bounded two-class queue between the network task and the server's workers.
pub(crate) struct Mailbox<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    /// Jobs queued at most (both classes together).
    capacity: usize,
    /// Workers that may be busy with non-members' jobs at once.
    non_member_workers: usize,
}

impl<T> Mailbox<T> {
    /// A closed mailbox of `capacity` jobs whose non-member jobs may occupy at most
    /// `non_member_workers` workers at a time (at least one).
    pub(crate) fn new(capacity: usize, non_member_workers: usize) -> Self {
        Self {
            state: Mutex::new(State {
                members: VecDeque::new(),
                non_members: VecDeque::new(),
                running_non_members: 0,
                open: false,
            }),
            ready: Condvar::new(),
            capacity,
            non_member_workers: non_member_workers.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a job, or gives it back when the queue is full or no worker runs.
    pub(crate) fn push(&self, job: T, class: Class) -> Result<(), T> {
        let mut s = self.lock();
        if !s.open || s.members.len() + s.non_members.len() >= self.capacity {
            return Err(job);
        }
        match class {
            Class::Member => s.members.push_back(job),
            Class::NonMember => s.non_members.push_back(job),
        }
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job a worker may take (members' first), waiting for one; `None` once closed.
    /// A non-member job must be handed back with [`Mailbox::done`].
    pub(crate) fn pop(&self) -> Option<(T, Class)> {
        let mut s = self.lock();
        loop {
            if !s.open {
                return None;
            }
            if let Some(job) = s.members.pop_front() {
                return Some((job, Class::Member));
            }
            if s.running_non_members < self.non_member_workers
                && let Some(job) = s.non_members.pop_front()
            {
                s.running_non_members += 1;
                return Some((job, Class::NonMember));
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A worker finished a job of `class`.
    pub(crate) fn done(&self, class: Class) {
        if class == Class::NonMember {
            let mut s = self.lock();
            s.running_non_members = s.running_non_members.saturating_sub(1);
            drop(s);
            // A worker may be waiting for that slot.
            self.ready.notify_all();
        }
    }

    /// Starts accepting jobs.
    pub(crate) fn open(&self) {
        self.lock().open = true;
    }

    /// Stops accepting jobs, drops the queued ones (their requesters get no answer; their
    /// budgets are released as they drop) and wakes every worker so it exits.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.open = false;
        let members = std::mem::take(&mut s.members);
        let non_members = std::mem::take(&mut s.non_members);
        drop(s);
        // Dropped outside the lock: a job's permit takes the budgets' lock as it drops.
        drop((members, non_members));
        self.ready.notify_all();
    }

    /// Jobs waiting (diagnostics and tests).
    pub(crate) fn queued(&self) -> usize {
        let s = self.lock();
        s.members.len() + s.non_members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_go_first_and_non_members_never_take_every_worker() {
        let m = Mailbox::new(8, 1);
        assert_eq!(m.push(1, Class::NonMember), Err(1), "closed until opened");
        m.open();
        m.push(1, Class::NonMember).expect("queued");
        m.push(2, Class::NonMember).expect("queued");
        m.push(10, Class::Member).expect("queued");
        assert_eq!(m.pop(), Some((10, Class::Member)));
        assert_eq!(m.pop(), Some((1, Class::NonMember)));
        // The one non-member slot is taken: a member's job still gets through, the next
        // non-member's waits.
        m.push(11, Class::Member).expect("queued");
        assert_eq!(m.pop(), Some((11, Class::Member)));
        assert_eq!(m.queued(), 1);
        m.done(Class::NonMember);
        assert_eq!(m.pop(), Some((2, Class::NonMember)));
    }

    #[test]
    fn a_full_queue_gives_the_job_back_and_close_wakes_workers() {
        let m = std::sync::Arc::new(Mailbox::new(2, 1));
        m.open();
        m.push(1, Class::Member).expect("queued");
        m.push(2, Class::NonMember).expect("queued");
        assert_eq!(m.push(3, Class::Member), Err(3));
        assert_eq!(m.pop(), Some((1, Class::Member)));
        assert_eq!(m.pop(), Some((2, Class::NonMember)));
        let waiting = {
            let m = m.clone();
            std::thread::spawn(move || m.pop())
        };
        m.close();
        assert_eq!(waiting.join().expect("worker"), None);
        assert_eq!(m.push(4, Class::Member), Err(4));
    }
}
