//! Counted permits per platform and over all platforms: how many exchanges may be in flight
//! at once, and how many tokens may be claimed ahead of their exchange.

use std::collections::HashMap;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use crate::config::Settings;

/// Permits for each configured platform (its `concurrency`, times `depth`) and for all of
/// them together (`scheduler.concurrency`, times `depth`).
pub struct Slots {
    per_platform: HashMap<String, Semaphore>,
    shared: Semaphore,
    /// How many permits `shared` has in all.
    shared_permits: usize,
    /// Notified whenever a permit is given back.
    freed: Notify,
}

impl Slots {
    /// `depth` permits for each exchange `settings` allow at once.
    pub fn new(settings: &Settings, depth: usize) -> Self {
        let per_platform = settings
            .platforms
            .iter()
            .map(|(name, platform)| {
                let permits = platform.concurrency as usize * depth;
                (name.clone(), Semaphore::new(permits))
            })
            .collect();
        let shared_permits = settings.scheduler.concurrency as usize * depth;
        Slots {
            per_platform,
            shared: Semaphore::new(shared_permits),
            shared_permits,
            freed: Notify::new(),
        }
    }

    /// A permit for `platform`, if one is free now.
    pub fn try_take(&self, platform: &str) -> Option<Slot<'_>> {
        let platform = match self.per_platform.get(platform) {
            Some(limit) => Some(limit.try_acquire().ok()?),
            None => None,
        };
        let shared = self.shared.try_acquire().ok()?;
        Some(self.slot(platform, shared))
    }

    /// A permit for `platform`, once one is free: the platform's first, so that tokens of a
    /// busy platform never hold shared permits while they wait.
    pub async fn take(&self, platform: &str) -> Option<Slot<'_>> {
        let platform = match self.per_platform.get(platform) {
            Some(limit) => Some(limit.acquire().await.ok()?),
            None => None,
        };
        let shared = self.shared.acquire().await.ok()?;
        Some(self.slot(platform, shared))
    }

    /// Whether at least half of all permits are free.
    pub fn half_free(&self) -> bool {
        self.shared.available_permits() * 2 >= self.shared_permits
    }

    /// Resolves once a permit has been given back since the last call.
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    fn slot<'s>(
        &'s self,
        platform: Option<SemaphorePermit<'s>>,
        shared: SemaphorePermit<'s>,
    ) -> Slot<'s> {
        Slot {
            platform,
            shared: Some(shared),
            freed: &self.freed,
        }
    }
}

/// One permit of [`Slots`]; giving it back (dropping it) wakes whoever waits in
/// [`Slots::freed`].
pub struct Slot<'s> {
    platform: Option<SemaphorePermit<'s>>,
    shared: Option<SemaphorePermit<'s>>,
    freed: &'s Notify,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.platform.take();
        self.shared.take();
        self.freed.notify_one();
    }
}
