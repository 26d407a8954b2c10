//! Single-flight: one inference per key at a time; identical requests that come
//! while it runs are parked here, holding no thread, and are handed the
//! leader's outcome when it finishes.

use std::collections::HashMap;
use std::sync::Mutex;

use super::key::Key;

/// The keys being computed right now, each with the requests waiting for it.
pub struct Flights<T> {
    running: Mutex<HashMap<Key, Vec<T>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Flights<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<T>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `waiter` behind the inference running for `key`; gives it back when none runs.
    pub fn join(&self, key: &Key, waiter: T) -> Result<(), T> {
        match self.lock().get_mut(key) {
            Some(waiting) => {
                waiting.push(waiter);
                Ok(())
            }
            None => Err(waiter),
        }
    }

    /// Makes `waiter` the leader for `key` (it gets itself back, and must call
    /// [`Flights::land`]), or parks it behind the leader already running (`None`).
    pub fn lead_or_join(&self, key: &Key, waiter: T) -> Option<T> {
        let mut running = self.lock();
        match running.get_mut(key) {
            Some(waiting) => {
                waiting.push(waiter);
                None
            }
            None => {
                running.insert(*key, Vec::new());
                Some(waiter)
            }
        }
    }

    /// Leads `key` for a caller with no request of its own (a prefetch); false when one runs.
    pub fn lead(&self, key: &Key) -> bool {
        let mut running = self.lock();
        if running.contains_key(key) {
            return false;
        }
        running.insert(*key, Vec::new());
        true
    }

    /// Ends the flight for `key`: the requests that waited for it.
    pub fn land(&self, key: &Key) -> Vec<T> {
        self.lock().remove(key).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_and_its_followers() {
        let f: Flights<u32> = Flights::default();
        let (a, b) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]));
        assert_eq!(f.join(&a, 0), Err(0), "nothing to join yet");
        assert_eq!(f.lead_or_join(&a, 1), Some(1), "the first leads");
        assert_eq!(f.lead_or_join(&a, 2), None);
        assert_eq!(f.join(&a, 3), Ok(()));
        assert!(!f.lead(&a));
        assert!(f.lead(&b), "another key is another flight");
        assert_eq!(f.land(&a), vec![2, 3]);
        assert_eq!(f.land(&b), Vec::<u32>::new());
        assert_eq!(
            f.lead_or_join(&a, 4),
            Some(4),
            "after landing, the next one leads again"
        );
    }
}
