//! The streaming server's tokens: each Exec, Attach or PortForward call leaves its request
//! here under a random token, which the client's first connection to the URL takes. A token
//! is good once and for a minute, and at most `MAX_OUTSTANDING` wait at a time, so that a
//! caller who asks and never connects cannot fill supd's memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_cri::v1 as cri;

use crate::error::{Error, Result};

/// How long a token waits for its client.
pub const TTL: Duration = Duration::from_secs(60);
/// Tokens handed out and neither used nor expired, at most.
pub const MAX_OUTSTANDING: usize = 1000;

/// What a token opens.
#[derive(Debug, Clone)]
pub enum Request {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Request {
    /// The URL path segment that serves this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        }
    }
}

#[derive(Default)]
pub struct Tokens {
    waiting: Mutex<HashMap<String, (Instant, Request)>>,
}

impl Tokens {
    /// Keeps `request` under a new token; ResourceExhausted when too many are outstanding.
    pub fn issue(&self, request: Request) -> Result<String> {
        let mut bytes = [0u8; 18];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|_, (at, _)| now.duration_since(*at) < TTL);
        if waiting.len() >= MAX_OUTSTANDING {
            return Err(Error::ResourceExhausted(format!(
                "streaming server: {MAX_OUTSTANDING} stream URLs are already waiting for their \
                 clients; try again when they are used or have expired ({} s)",
                TTL.as_secs()
            )));
        }
        waiting.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// Takes the request a token was issued for, if the token is known, unused and fresh.
    pub fn take(&self, token: &str) -> Option<Request> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let (at, request) = waiting.remove(token)?;
        (at.elapsed() < TTL).then_some(request)
    }

    pub fn outstanding(&self) -> usize {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting
            .values()
            .filter(|(at, _)| at.elapsed() < TTL)
            .count()
    }

    #[cfg(test)]
    fn age(&self, token: &str, by: Duration) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, _)) = waiting.get_mut(token) {
            *at = at.checked_sub(by).unwrap_or(*at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Request {
        Request::Exec(cri::ExecRequest {
            container_id: "c".into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_token_opens_once() {
        let t = Tokens::default();
        let a = t.issue(exec()).unwrap();
        let b = t.issue(exec()).unwrap();
        assert_ne!(a, b);
        assert!(
            a.len() >= 24
                && a.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert!(matches!(t.take(&a), Some(Request::Exec(_))));
        assert!(t.take(&a).is_none());
        assert!(t.take("nonsense").is_none());
        assert_eq!(t.outstanding(), 1);
    }

    #[test]
    fn an_old_token_is_refused() {
        let t = Tokens::default();
        let a = t.issue(exec()).unwrap();
        t.age(&a, TTL + Duration::from_secs(1));
        assert!(t.take(&a).is_none());
    }

    #[test]
    fn outstanding_tokens_are_bounded_and_expiry_makes_room() {
        let t = Tokens::default();
        let first = t.issue(exec()).unwrap();
        for _ in 1..MAX_OUTSTANDING {
            t.issue(exec()).unwrap();
        }
        assert!(matches!(t.issue(exec()), Err(Error::ResourceExhausted(_))));
        t.age(&first, TTL);
        assert!(t.issue(exec()).is_ok());
    }
}
