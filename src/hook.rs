//! Points in the middle of an operation where a test can run code of its own, to make a
//! race with another process or store handle happen at one exact step. A hook is set per
//! thread and sees only that thread's operations; with none set a point costs one
//! thread-local read.

use std::cell::RefCell;

/// What a test runs at each point, given the point's name.
pub type Hook = Box<dyn FnMut(&str)>;

thread_local! {
    static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
}

/// Sets (or with `None` clears) the calling thread's hook.
pub fn set(hook: Option<Hook>) {
    HOOK.with(|h| *h.borrow_mut() = hook);
}

/// Runs the calling thread's hook, if any, at `point`. The hook is not run again for points
/// reached from inside it.
pub(crate) fn at(point: &str) {
    let Some(mut f) = HOOK.with(|h| h.borrow_mut().take()) else {
        return;
    };
    f(point);
    HOOK.with(|h| {
        let mut slot = h.borrow_mut();
        if slot.is_none() {
            *slot = Some(f);
        }
    });
}
