//! SQS queues as the emulator keeps them, for the consumers of Callback steps: standard queues
//! (at-least-once, no FIFO), messages hidden for a visibility timeout once received and
//! delivered again when it passes, and receivers that long-poll woken as soon as a message
//! arrives.
//!
//! Queue time is real time (tokio's clock), not the emulated clock: a consumer's
//! `WaitTimeSeconds` and visibility timeouts are about its own waiting, whatever the time
//! scale of the pipelines.
//!
//! Each queue has its own lock, held only for short, non-awaiting sections; a receiver waits
//! for a `Notify` outside it, registered before it looks, so no arrival between the look and
//! the wait is missed.

use std::{
    pin::pin,
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::Notify, time::Instant};

use super::clock::Ids;

/// A queue's attributes that change how it behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueAttributes {
    /// Seconds a received message stays hidden (SQS's default: 30).
    pub(crate) visibility_timeout: u32,
    /// The WaitTimeSeconds of a ReceiveMessage that gives none (default 0: short polling).
    pub(crate) receive_wait: u32,
    /// Seconds a sent message stays hidden before its first delivery (default 0).
    pub(crate) delay: u32,
}

impl Default for QueueAttributes {
    fn default() -> Self {
        Self {
            visibility_timeout: 30,
            receive_wait: 0,
            delay: 0,
        }
    }
}

/// One SQS queue.
#[derive(Debug)]
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    arrived: Notify,
}

#[derive(Debug)]
struct Inner {
    attributes: QueueAttributes,
    /// Oldest first.
    messages: Vec<Stored>,
}

#[derive(Debug)]
struct Stored {
    id: String,
    body: String,
    md5: String,
    sent_at_ms: u64,
    visible_at: Instant,
    receive_count: u32,
    first_receive_ms: Option<u64>,
    /// Every receipt handle it was received with; the newest changes its visibility.
    handles: Vec<String>,
}

/// A message as ReceiveMessage answers it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) id: String,
    pub(crate) receipt_handle: String,
    pub(crate) md5: String,
    pub(crate) body: String,
    pub(crate) sent_at_ms: u64,
    pub(crate) receive_count: u32,
    pub(crate) first_receive_ms: u64,
}

/// Why a receipt handle was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandleError {
    /// No message of this queue was ever received with it.
    Invalid,
    /// ChangeMessageVisibility of a message that is not in flight (it was deleted).
    NotInFlight,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Queue {
    pub(crate) fn new(attributes: QueueAttributes) -> Self {
        Self {
            inner: Mutex::new(Inner {
                attributes,
                messages: Vec::new(),
            }),
            arrived: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under the lock leaves the queue whole: a poisoned lock is still used.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn attributes(&self) -> QueueAttributes {
        self.lock().attributes
    }

    /// Stores a message, visible after `delay` (the queue's DelaySeconds when `None`), and
    /// wakes the receivers waiting: its id and the MD5 of its body.
    pub(crate) fn send(&self, body: String, delay: Option<u32>, ids: &Ids) -> (String, String) {
        self.store(body, ids, |attributes| {
            (
                Duration::ZERO,
                Duration::from_secs(u64::from(delay.unwrap_or(attributes.delay))),
            )
        })
    }

    /// Stores a message as if it were sent `after` from now: until then no receiver sees it,
    /// and its SentTimestamp is then. (How the emulator holds an event back.) The queue's
    /// DelaySeconds applies from that moment, as to any message sent.
    pub(crate) fn send_after(&self, body: String, after: Duration, ids: &Ids) -> (String, String) {
        self.store(body, ids, |attributes| {
            (
                after,
                after + Duration::from_secs(u64::from(attributes.delay)),
            )
        })
    }

    /// Stores a message, sent and visible after the durations `timing` gives for the queue's
    /// attributes, and wakes the receivers waiting.
    fn store(
        &self,
        body: String,
        ids: &Ids,
        timing: impl FnOnce(&QueueAttributes) -> (Duration, Duration),
    ) -> (String, String) {
        let id = ids.message_id();
        let md5 = md5_hex(body.as_bytes());
        {
            let mut inner = self.lock();
            let (sent_after, visible_after) = timing(&inner.attributes);
            inner.messages.push(Stored {
                id: id.clone(),
                body,
                md5: md5.clone(),
                sent_at_ms: epoch_ms() + sent_after.as_millis() as u64,
                visible_at: Instant::now() + visible_after,
                receive_count: 0,
                first_receive_ms: None,
                handles: Vec::new(),
            });
        }
        self.arrived.notify_waiters();
        (id, md5)
    }

    /// Up to `max` visible messages, oldest first, hidden for `visibility` seconds (the
    /// queue's timeout when `None`); and when the next hidden one shows again.
    fn take(
        &self,
        max: usize,
        visibility: Option<u32>,
        ids: &Ids,
    ) -> (Vec<Received>, Option<Instant>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let hide = Duration::from_secs(u64::from(
            visibility.unwrap_or(inner.attributes.visibility_timeout),
        ));
        let mut out = Vec::new();
        let mut next_visible: Option<Instant> = None;
        for message in &mut inner.messages {
            if message.visible_at > now {
                next_visible =
                    Some(next_visible.map_or(message.visible_at, |t| t.min(message.visible_at)));
                continue;
            }
            if out.len() == max {
                continue;
            }
            let handle = ids.receipt_handle();
            message.visible_at = now + hide;
            message.receive_count += 1;
            let first = *message.first_receive_ms.get_or_insert_with(epoch_ms);
            message.handles.push(handle.clone());
            out.push(Received {
                id: message.id.clone(),
                receipt_handle: handle,
                md5: message.md5.clone(),
                body: message.body.clone(),
                sent_at_ms: message.sent_at_ms,
                receive_count: message.receive_count,
                first_receive_ms: first,
            });
        }
        (out, next_visible)
    }

    /// ReceiveMessage: the visible messages at once, or, when there are none, waits up to
    /// `wait` and answers as soon as one is sent or shows again after its visibility timeout.
    /// `senders` runs before each look: it brings the messages due by now (a Callback step's)
    /// into the queue, and says when it must run again.
    pub(crate) async fn receive(
        &self,
        max: usize,
        visibility: Option<u32>,
        wait: Duration,
        ids: &Ids,
        senders: impl Fn() -> Option<Instant>,
    ) -> Vec<Received> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before looking, so a message sent after the look still wakes it.
            let mut notified = pin!(self.arrived.notified());
            notified.as_mut().enable();
            let next_send = senders();
            let (received, next_visible) = self.take(max, visibility, ids);
            if !received.is_empty() || Instant::now() >= deadline {
                return received;
            }
            let until = [next_visible, next_send]
                .into_iter()
                .flatten()
                .fold(deadline, Instant::min);
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    /// DeleteMessage. Deleting a message already deleted succeeds, as in SQS.
    pub(crate) fn delete(&self, handle: &str) -> Result<(), HandleError> {
        let mut inner = self.lock();
        match inner
            .messages
            .iter()
            .position(|m| m.handles.iter().any(|h| h == handle))
        {
            Some(i) => {
                inner.messages.remove(i);
                Ok(())
            }
            None if handle.starts_with("AQEB") => Ok(()),
            None => Err(HandleError::Invalid),
        }
    }

    /// ChangeMessageVisibility: the message shows again `timeout` seconds from now (0: at
    /// once, waking the receivers waiting).
    pub(crate) fn change_visibility(&self, handle: &str, timeout: u32) -> Result<(), HandleError> {
        {
            let mut inner = self.lock();
            let Some(message) = inner
                .messages
                .iter_mut()
                .find(|m| m.handles.iter().any(|h| h == handle))
            else {
                return Err(if handle.starts_with("AQEB") {
                    HandleError::NotInFlight
                } else {
                    HandleError::Invalid
                });
            };
            message.visible_at = Instant::now() + Duration::from_secs(u64::from(timeout));
        }
        if timeout == 0 {
            self.arrived.notify_waiters();
        }
        Ok(())
    }

    /// PurgeQueue: every message goes.
    pub(crate) fn purge(&self) {
        self.lock().messages.clear();
    }
}

/// The (account, queue name) a queue URL names: its last two path segments, as
/// `https://sqs.us-east-1.amazonaws.com/123456789012/q` or the emulator's
/// `http://127.0.0.1:9380/123456789012/q`. `None` for anything else.
pub(crate) fn parse_queue_url(url: &str) -> Option<(&str, &str)> {
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => url,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut segments = path.split('/').filter(|s| !s.is_empty()).rev();
    let name = segments.next()?;
    let account = segments.next()?;
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    (account_ok && valid_queue_name(name)).then_some((account, name))
}

/// SQS's rule for standard queue names: 1 to 80 letters, digits, `-` and `_`.
pub(crate) fn valid_queue_name(name: &str) -> bool {
    (1..=80).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The MD5 of `data` in lowercase hex (RFC 1321), as SQS's MD5OfMessageBody and MD5OfBody.
pub(crate) fn md5_hex(data: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    // K[i] = floor(abs(sin(i + 1)) * 2^32).
    let k: Vec<u32> = (0..64)
        .map(|i| (((i + 1) as f64).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut message = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_len.to_le_bytes());
    for chunk in message.chunks_exact(64) {
        let m: Vec<u32> = chunk
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(v);
        }
    }
    state
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            md5_hex(b"The quick brown fox jumps over the lazy dog"),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
        let long = "1234567890".repeat(8);
        assert_eq!(md5_hex(long.as_bytes()), "57edf4a22be3c955ac49da2e2107b67a");
    }

    #[test]
    fn queue_urls_name_an_account_and_a_queue() {
        let sqs = "https://sqs.us-east-1.amazonaws.com/123456789012/approvals";
        assert_eq!(parse_queue_url(sqs), Some(("123456789012", "approvals")));
        let local = "http://127.0.0.1:9380/111111111111/q_1/";
        assert_eq!(parse_queue_url(local), Some(("111111111111", "q_1")));
        assert_eq!(parse_queue_url("https://sqs/q"), None);
        assert_eq!(parse_queue_url("https://sqs/12345/q"), None);
        assert_eq!(parse_queue_url("https://sqs/123456789012/bad.name"), None);
    }

    #[tokio::test]
    async fn a_received_message_comes_back_after_its_visibility_timeout() {
        let ids = Ids::new(Some(1));
        let queue = Queue::new(QueueAttributes::default());
        let (id, md5) = queue.send("hello".into(), None, &ids);
        assert_eq!(md5, md5_hex(b"hello"));
        let first = queue
            .receive(10, Some(1), Duration::ZERO, &ids, || None)
            .await;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, id);
        assert!(
            queue
                .receive(10, None, Duration::ZERO, &ids, || None)
                .await
                .is_empty()
        );

        // A long poll gets it again once its visibility timeout passes, with a new handle.
        let waiting = Instant::now();
        let again = queue
            .receive(10, None, Duration::from_secs(10), &ids, || None)
            .await;
        assert!(waiting.elapsed() < Duration::from_secs(5));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].receive_count, 2);
        assert_ne!(again[0].receipt_handle, first[0].receipt_handle);
        queue.delete(&again[0].receipt_handle).unwrap();
        assert_eq!(
            queue.change_visibility(&again[0].receipt_handle, 0),
            Err(HandleError::NotInFlight),
            "deleted"
        );
        assert_eq!(queue.delete(&again[0].receipt_handle), Ok(()));
        assert_eq!(queue.delete("garbage"), Err(HandleError::Invalid));
    }

    #[tokio::test]
    async fn a_message_sent_after_a_delay_is_overtaken_by_one_sent_at_once() {
        let ids = Ids::new(Some(2));
        let queue = Queue::new(QueueAttributes::default());
        let sending = Instant::now();
        queue.send_after("late".into(), Duration::from_millis(300), &ids);
        queue.send("early".into(), None, &ids);
        let first = queue.receive(10, None, Duration::ZERO, &ids, || None).await;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].body, "early");
        let second = queue
            .receive(10, None, Duration::from_secs(10), &ids, || None)
            .await;
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].body, "late");
        assert!(sending.elapsed() >= Duration::from_millis(300));
        assert!(second[0].sent_at_ms >= first[0].sent_at_ms + 250);
    }
}
