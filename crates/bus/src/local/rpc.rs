//! In-process request/reply: each request goes to one member of each queue group serving a
//! matching subject (round-robin), or to every plain subscriber, and the first answer wins.
//! Like core NATS, nothing is stored and a member that cannot keep up loses requests, which then
//! time out at the requester, instead of slowing anyone down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::lock;
use crate::error::RequestError;
use crate::port::{Feed, Replier, Request, Requests};
use crate::subject::matches;

/// Requests a member holds before further ones to it are dropped (and time out): a GS batches
/// bets, so this is many batches' worth.
const REQUEST_CAPACITY: usize = 1024;

#[derive(Debug, Default)]
pub(super) struct Servers {
    members: std::sync::Mutex<Vec<Member>>,
    turn: AtomicUsize,
}

#[derive(Debug)]
struct Member {
    pattern: String,
    group: String,
    sender: mpsc::Sender<Request>,
}

impl Servers {
    pub(super) fn serve(&self, pattern: &str, group: &str) -> Requests {
        let (sender, receiver) = mpsc::channel(REQUEST_CAPACITY);
        lock(&self.members).push(Member {
            pattern: pattern.to_string(),
            group: group.to_string(),
            sender,
        });
        // Draining closes the receiver: senders see it closed (so requests go to the other
        // members) and what is buffered is still read.
        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        let stream = futures_util::stream::unfold(
            (receiver, Some(drained)),
            |(mut receiver, mut drained)| async move {
                loop {
                    let Some(asked) = drained.as_mut() else {
                        let request = receiver.recv().await?;
                        return Some((request, (receiver, None)));
                    };
                    tokio::select! {
                        biased;
                        asked = asked => {
                            drained = None;
                            if asked.is_ok() {
                                receiver.close();
                            }
                        }
                        request = receiver.recv() => {
                            let request = request?;
                            return Some((request, (receiver, drained)));
                        }
                    }
                }
            },
        );
        Feed::from_stream(stream, None).with_drain(drain)
    }

    pub(super) async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        let (reply_sender, mut replies) = mpsc::channel(1);
        let mut reached = 0;
        let mut matched = false;
        {
            let mut members = lock(&self.members);
            members.retain(|member| !member.sender.is_closed());
            let mut groups: Vec<&str> = Vec::new();
            for member in members.iter().filter(|m| matches(&m.pattern, subject)) {
                matched = true;
                if member.group.is_empty() {
                    reached += usize::from(offer(member, subject, &payload, &reply_sender));
                } else if !groups.contains(&member.group.as_str()) {
                    groups.push(&member.group);
                }
            }
            for group in groups {
                let candidates: Vec<&Member> = members
                    .iter()
                    .filter(|m| m.group == group && matches(&m.pattern, subject))
                    .collect();
                let start = self.turn.fetch_add(1, Ordering::Relaxed);
                let delivered = (0..candidates.len())
                    .map(|i| candidates[(start + i) % candidates.len()])
                    .any(|member| offer(member, subject, &payload, &reply_sender));
                reached += usize::from(delivered);
            }
        }
        drop(reply_sender);
        if !matched {
            return Err(RequestError::NoResponders);
        }
        if reached == 0 {
            // Every member is full: the request is lost, as with a slow consumer on NATS.
            tokio::time::sleep(timeout).await;
            return Err(RequestError::Timeout);
        }
        match tokio::time::timeout(timeout, replies.recv()).await {
            Ok(Some(answer)) => Ok(answer),
            // Every receiver dropped the request unanswered: nobody will answer in time.
            Ok(None) | Err(_) => Err(RequestError::Timeout),
        }
    }
}

/// Hands a request to `member` if it has room.
fn offer(member: &Member, subject: &str, payload: &Bytes, reply: &mpsc::Sender<Bytes>) -> bool {
    let request = Request {
        subject: subject.to_string(),
        payload: payload.clone(),
        replier: Replier::Local(reply.clone()),
    };
    match member.sender.try_send(request) {
        Ok(()) => true,
        Err(TrySendError::Full(_) | TrySendError::Closed(_)) => false,
    }
}
