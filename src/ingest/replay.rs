//! Replay protection for signed deliveries: the delivery ids a pipeline accepted recently,
//! so a replayed (or retried) delivery is answered like the first one without queuing its
//! rows again.
//!
//! Ids are kept as SHA-256 digests, so an id costs the same few bytes however long the sender
//! made it. Each is remembered for twice the sender check's tolerance after it was accepted,
//! which outlasts every timestamp the tolerance admits, and at most [`MAX_REMEMBERED`] are
//! kept per pipeline (the oldest go first).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, AuthMethod, HmacPreset};
use crate::sync::lock;

/// Ids remembered per pipeline at most.
pub const MAX_REMEMBERED: usize = 100_000;

type Id = [u8; 32];

/// The replay memory for a pipeline whose sender names each delivery: the Standard
/// Webhooks, Stripe, GitHub and Shopify presets.
pub fn for_auth(auth: &AuthConfig) -> Option<Arc<Replays>> {
    let AuthMethod::Hmac(h) = &auth.method else {
        return None;
    };
    match h.preset {
        HmacPreset::StandardWebhooks
        | HmacPreset::Stripe
        | HmacPreset::Github
        | HmacPreset::Shopify => Some(Replays::new(
            h.tolerance.as_secs().saturating_mul(2),
            MAX_REMEMBERED,
        )),
        HmacPreset::Custom => None,
    }
}

/// The id of a delivery whose signature was checked: `webhook-id` (or `svix-id`), the Stripe
/// event's `id` from the body (its `Stripe-Signature` when the body has none),
/// `X-GitHub-Delivery` or `X-Shopify-Webhook-Id`. None when the sender sent none.
pub fn delivery_id(auth: &AuthConfig, headers: &HeaderMap, body: &[u8]) -> Option<Vec<u8>> {
    let AuthMethod::Hmac(h) = &auth.method else {
        return None;
    };
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes().to_vec());
    match h.preset {
        HmacPreset::StandardWebhooks => header("webhook-id").or_else(|| header("svix-id")),
        HmacPreset::Stripe => {
            #[derive(serde::Deserialize)]
            struct Event<'a> {
                #[serde(borrow)]
                id: Option<Cow<'a, str>>,
            }
            match serde_json::from_slice::<Event>(body) {
                Ok(Event { id: Some(id) }) => Some([b"event ", id.as_bytes()].concat()),
                _ => header(&h.header).map(|s| [&b"signature "[..], &s].concat()),
            }
        }
        HmacPreset::Github => header("x-github-delivery"),
        HmacPreset::Shopify => header("x-shopify-webhook-id"),
        HmacPreset::Custom => None,
    }
}

/// What the first delivery of an id was answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub accepted: usize,
    pub ignored: usize,
}

#[derive(Debug, Clone, Copy)]
enum Seen {
    /// A request with this id is being parsed and queued right now.
    Pending,
    Done(Answer),
}

/// The remembered ids of one pipeline.
#[derive(Debug)]
pub struct Replays {
    /// How long an accepted id is remembered, in seconds.
    window: i64,
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashMap<Id, Seen>,
    /// Accepted ids with the time they expire, oldest first (every id gets the same window,
    /// so this is also expiry order).
    order: VecDeque<(i64, Id)>,
}

/// The verdict on a delivery id.
pub enum Check {
    /// Not seen: go on, and settle the reservation when done.
    New(Reservation),
    /// Accepted before, answered with this.
    Done(Answer),
    /// Another request with this id is in progress.
    InProgress,
}

impl Replays {
    pub fn new(window_secs: u64, cap: usize) -> Arc<Replays> {
        Arc::new(Replays {
            window: i64::try_from(window_secs).unwrap_or(i64::MAX),
            cap,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Looks `id` up at `now` (seconds since the epoch), reserving it when it is new.
    pub fn check(self: &Arc<Replays>, id: &[u8], now: i64) -> Check {
        let id: Id = Sha256::digest(id).into();
        let mut inner = self.lock();
        inner.expire(now);
        match inner.ids.get(&id) {
            Some(Seen::Done(answer)) => Check::Done(*answer),
            Some(Seen::Pending) => Check::InProgress,
            None => {
                inner.ids.insert(id, Seen::Pending);
                Check::New(Reservation {
                    replays: self.clone(),
                    id,
                    settled: false,
                })
            }
        }
    }

    /// Ids remembered now (accepted and pending).
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }
}

impl Inner {
    fn expire(&mut self, now: i64) {
        while let Some(&(expires, id)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&id);
        }
    }
}

/// A new id, reserved while its request runs. [`Reservation::accepted`] records it; dropping
/// the reservation without that (the push failed, the request was refused) forgets it, so
/// the sender's retry is taken.
pub struct Reservation {
    replays: Arc<Replays>,
    id: Id,
    settled: bool,
}

impl Reservation {
    /// Records the id as accepted at `now` with its answer.
    pub fn accepted(mut self, answer: Answer, now: i64) {
        self.settled = true;
        let replays = &self.replays;
        let mut inner = replays.lock();
        while inner.order.len() >= replays.cap {
            match inner.order.pop_front() {
                Some((_, old)) => {
                    inner.ids.remove(&old);
                }
                None => break,
            }
        }
        inner.ids.insert(self.id, Seen::Done(answer));
        inner
            .order
            .push_back((now.saturating_add(replays.window), self.id));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.replays.lock().ids.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: Answer = Answer {
        accepted: 2,
        ignored: 1,
    };

    fn reserve(r: &Arc<Replays>, id: &str, now: i64) -> Reservation {
        match r.check(id.as_bytes(), now) {
            Check::New(res) => res,
            _ => panic!("{id} should be new"),
        }
    }

    #[test]
    fn an_accepted_id_is_answered_again_until_its_window_ends() {
        let r = Replays::new(600, 10);
        reserve(&r, "msg_1", 1000).accepted(ANSWER, 1000);
        assert!(matches!(r.check(b"msg_1", 1599), Check::Done(a) if a == ANSWER));
        assert!(matches!(r.check(b"msg_1", 1600), Check::New(_)));
    }

    #[test]
    fn a_failed_request_leaves_its_id_free_and_a_pending_one_is_in_progress() {
        let r = Replays::new(600, 10);
        let first = reserve(&r, "msg_1", 0);
        assert!(matches!(r.check(b"msg_1", 0), Check::InProgress));
        drop(first);
        assert!(r.is_empty());
        reserve(&r, "msg_1", 0).accepted(ANSWER, 0);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn at_the_cap_the_oldest_id_is_forgotten() {
        let r = Replays::new(600, 3);
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            reserve(&r, id, i as i64).accepted(ANSWER, i as i64);
        }
        assert_eq!(r.len(), 3);
        assert!(matches!(r.check(b"a", 4), Check::New(_)));
        assert!(matches!(r.check(b"d", 4), Check::Done(_)));
    }
}
