//! A table of plug-ins keyed by their one-byte wire id, shared by the codec
//! and the transfer-filter registries.

use std::sync::Arc;

/// Up to 256 entries, one per id byte, each also known by name.
pub(crate) struct IdTable<T: ?Sized> {
    by_id: Vec<Option<Arc<T>>>,
}

impl<T: ?Sized> IdTable<T> {
    pub(crate) fn new() -> Self {
        IdTable {
            by_id: vec![None; 256],
        }
    }

    /// Inserts, replacing an entry with the same id; returns the old one.
    pub(crate) fn insert(&mut self, id: u8, item: Arc<T>) -> Option<Arc<T>> {
        self.by_id
            .get_mut(usize::from(id))
            .and_then(|slot| slot.replace(item))
    }

    pub(crate) fn get(&self, id: u8) -> Option<&Arc<T>> {
        self.by_id.get(usize::from(id)).and_then(Option::as_ref)
    }

    pub(crate) fn find(&self, mut pred: impl FnMut(&T) -> bool) -> Option<&Arc<T>> {
        self.by_id.iter().flatten().find(|t| pred(t))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        self.by_id.iter().flatten()
    }
}

impl<T: ?Sized> Clone for IdTable<T> {
    fn clone(&self) -> Self {
        IdTable {
            by_id: self.by_id.clone(),
        }
    }
}
