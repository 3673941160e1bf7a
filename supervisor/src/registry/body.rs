//! Reading a registry's answer whole, bounded in size and in how long it may stall: what
//! the client and the token exchange both read this way.

use std::time::Duration;

use super::errors::describe;
use crate::error::{Error, Result};

/// Reads a whole answer of at most `limit` bytes.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    stall: Duration,
) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(Error::invalid(format!(
            "the answer is larger than the {limit} bytes allowed"
        )));
    }
    let mut out = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(stall, resp.chunk()).await {
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "no data for {} s: transfer stalled",
                    stall.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(Error::Unavailable(describe(&e))),
            Ok(Ok(None)) => return Ok(out),
            Ok(Ok(Some(c))) => c,
        };
        if out.len() + chunk.len() > limit {
            return Err(Error::invalid(format!(
                "the answer is larger than the {limit} bytes allowed"
            )));
        }
        out.extend_from_slice(&chunk);
    }
}
