//! Injected faults: a queue of failures the next data-push requests or executed jobs will meet.
//!
//! `POST /emulator/faults` adds one entry, e.g. `{"status": 500, "count": 3}`,
//! `{"delay_ms": 2000}`, `{"job_status": "CANCELED"}`, optionally with `"endpoint"` and, for
//! 429, `"retry_after"`. `{"job_running_ms": 3000}` keeps the next executed job RUNNING that much longer.
//! Entries are consulted in the order they were added.
//! `"handled": true` lets the request be carried out and only then answers with the status
//! (an execute that answers 500 but whose job runs); `"pad_bytes": n` (get only) answers
//! the job padded with `n` bytes, as a broken or hostile server might.
//! `{"bad_value": "X"}` stays until the faults are cleared: every executed CSV job with a
//! value exactly `X` in a chunk ends ERROR with a data error log naming the chunk, row and
//! column, as the real service does for a value that does not parse for its column's type;
//! a continuous upload whose file holds a text value exactly `X` is answered 400.
//! `"endpoint": "items"` aims a fault at continuous uploads; `{"endpoint": "items",
//! "lost_answer": true}` applies the uploaded file, then drops the connection unanswered.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;

/// Which data-push operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Create,
    Upload,
    Execute,
    Get,
    /// A continuous upload (`POST …/items`).
    Items,
    /// List jobs, list chunks, delete: only `"endpoint": "any"` faults hit these.
    Other,
}

/// What a request fault does: stall, then (optionally) answer with a status instead of handling the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestFault {
    pub delay: Duration,
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    /// The request is carried out first; then the status replaces its answer.
    pub handled: bool,
    /// The answer is padded with this many bytes.
    pub pad_bytes: Option<usize>,
    /// The request is carried out, then the connection is dropped without an answer.
    pub lost_answer: bool,
}

impl RequestFault {
    /// Whether the fault applies after the request was carried out.
    pub(super) fn after(&self) -> bool {
        self.handled || self.pad_bytes.is_some() || self.lost_answer
    }
}

/// The status an executed job is forced to end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ForcedEnd {
    Error,
    Canceled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fault {
    Request {
        /// `None` hits any data-push request.
        endpoint: Option<Endpoint>,
        fault: RequestFault,
    },
    JobEnd(ForcedEnd),
    /// The executed job stays RUNNING this much longer before it ends.
    JobRunning(Duration),
    /// Jobs with this value in a chunk end ERROR with a data error (kept until cleared).
    BadValue(String),
}

#[derive(Debug)]
struct Queued {
    fault: Fault,
    remaining: u32,
}

/// The pending faults, in the order they were added.
#[derive(Debug, Default)]
pub(super) struct Faults {
    queue: VecDeque<Queued>,
    bad_values: Vec<String>,
}

impl Faults {
    pub(super) fn push(&mut self, fault: Fault, count: u32) {
        if let Fault::BadValue(value) = fault {
            self.bad_values.push(value);
        } else if count > 0 {
            self.queue.push_back(Queued {
                fault,
                remaining: count,
            });
        }
    }

    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.bad_values.clear();
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len() + self.bad_values.len()
    }

    /// The values that make a job end ERROR with a data error.
    pub(super) fn bad_values(&self) -> Vec<String> {
        self.bad_values.clone()
    }

    /// Takes one use of the first request fault that applies to `endpoint` before it is
    /// carried out.
    pub(super) fn take_request(&mut self, endpoint: Endpoint) -> Option<RequestFault> {
        self.take_matching(endpoint, false)
    }

    /// Takes one use of the first fault that applies to `endpoint` after it was carried out.
    pub(super) fn take_after(&mut self, endpoint: Endpoint) -> Option<RequestFault> {
        self.take_matching(endpoint, true)
    }

    fn take_matching(&mut self, endpoint: Endpoint, after: bool) -> Option<RequestFault> {
        let position = self.queue.iter().position(|q| match &q.fault {
            Fault::Request {
                endpoint: only,
                fault,
            } => (only.is_none() || *only == Some(endpoint)) && fault.after() == after,
            Fault::JobEnd(_) | Fault::JobRunning(_) | Fault::BadValue(_) => false,
        })?;
        match &self.take_at(position) {
            Fault::Request { fault, .. } => Some(fault.clone()),
            Fault::JobEnd(_) | Fault::JobRunning(_) | Fault::BadValue(_) => None,
        }
    }

    /// Takes one use of the first job-end fault.
    pub(super) fn take_job_end(&mut self) -> Option<ForcedEnd> {
        let position = self
            .queue
            .iter()
            .position(|q| matches!(q.fault, Fault::JobEnd(_)))?;
        match self.take_at(position) {
            Fault::JobEnd(end) => Some(end),
            Fault::Request { .. } | Fault::JobRunning(_) | Fault::BadValue(_) => None,
        }
    }

    /// Takes one use of the first job-running fault: how much longer the job stays RUNNING.
    pub(super) fn take_job_running(&mut self) -> Option<Duration> {
        let position = self
            .queue
            .iter()
            .position(|q| matches!(q.fault, Fault::JobRunning(_)))?;
        match self.take_at(position) {
            Fault::JobRunning(extra) => Some(extra),
            Fault::Request { .. } | Fault::JobEnd(_) | Fault::BadValue(_) => None,
        }
    }

    fn take_at(&mut self, position: usize) -> Fault {
        let entry = &mut self.queue[position];
        entry.remaining -= 1;
        let fault = entry.fault.clone();
        if entry.remaining == 0 {
            self.queue.remove(position);
        }
        fault
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    status: Option<u16>,
    delay_ms: Option<u64>,
    job_status: Option<String>,
    job_running_ms: Option<u64>,
    retry_after: Option<u64>,
    count: Option<u32>,
    endpoint: Option<String>,
    handled: Option<bool>,
    pad_bytes: Option<usize>,
    bad_value: Option<String>,
    lost_answer: Option<bool>,
}

/// Parses a `POST /emulator/faults` body into a fault and how many times it fires.
pub(super) fn parse_fault(body: &[u8]) -> Result<(Fault, u32), String> {
    let body: FaultBody =
        serde_json::from_slice(body).map_err(|e| format!("malformed fault: {e}"))?;
    let count = body.count.unwrap_or(1);
    if count == 0 {
        return Err("count must be at least 1".into());
    }
    let endpoint = match body.endpoint.as_deref() {
        None | Some("any") => None,
        Some("create") => Some(Endpoint::Create),
        Some("upload") => Some(Endpoint::Upload),
        Some("execute") => Some(Endpoint::Execute),
        Some("get") => Some(Endpoint::Get),
        Some("items") => Some(Endpoint::Items),
        Some(other) => {
            return Err(format!(
                "endpoint must be one of create, upload, execute, get, items, any; got {other:?}"
            ));
        }
    };
    let lost_answer = body.lost_answer.unwrap_or(false);
    if lost_answer
        && (endpoint != Some(Endpoint::Items)
            || body.status.is_some()
            || body.handled.is_some()
            || body.pad_bytes.is_some()
            || body.job_status.is_some()
            || body.job_running_ms.is_some()
            || body.bad_value.is_some())
    {
        return Err(
            "lost_answer applies to endpoint items, without status, handled or pad_bytes".into(),
        );
    }
    if let Some(value) = body.bad_value {
        if body.status.is_some()
            || body.delay_ms.is_some()
            || body.job_status.is_some()
            || body.job_running_ms.is_some()
            || body.endpoint.is_some()
            || body.count.is_some()
        {
            return Err("bad_value cannot be combined with other fault fields".into());
        }
        return Ok((Fault::BadValue(value), 1));
    }
    if let Some(ms) = body.job_running_ms {
        if body.status.is_some()
            || body.delay_ms.is_some()
            || body.retry_after.is_some()
            || body.job_status.is_some()
            || body.endpoint.is_some()
        {
            return Err("job_running_ms cannot be combined with other fault fields".into());
        }
        return Ok((Fault::JobRunning(Duration::from_millis(ms)), count));
    }
    if let Some(job_status) = body.job_status {
        if body.status.is_some() || body.delay_ms.is_some() || body.retry_after.is_some() {
            return Err(
                "job_status cannot be combined with status, delay_ms or retry_after".into(),
            );
        }
        let end = match job_status.as_str() {
            "ERROR" => ForcedEnd::Error,
            "CANCELED" => ForcedEnd::Canceled,
            other => {
                return Err(format!(
                    "job_status must be ERROR or CANCELED, got {other:?}"
                ));
            }
        };
        return Ok((Fault::JobEnd(end), count));
    }
    if let Some(status) = body.status
        && !(400..=599).contains(&status)
    {
        return Err(format!("status must be between 400 and 599, got {status}"));
    }
    let handled = body.handled.unwrap_or(false);
    if handled && body.status.is_none() {
        return Err("handled needs a status".into());
    }
    if body.pad_bytes.is_some() && (endpoint != Some(Endpoint::Get) || body.status.is_some()) {
        return Err("pad_bytes applies to endpoint get, without status".into());
    }
    if body.status.is_none() && body.delay_ms.is_none() && body.pad_bytes.is_none() && !lost_answer
    {
        return Err(
            "a fault needs status, delay_ms, pad_bytes, job_status or job_running_ms".into(),
        );
    }
    if body.retry_after.is_some() && body.status != Some(429) {
        return Err("retry_after only applies to status 429".into());
    }
    Ok((
        Fault::Request {
            endpoint,
            fault: RequestFault {
                delay: Duration::from_millis(body.delay_ms.unwrap_or(0)),
                status: body.status,
                retry_after: body.retry_after,
                handled,
                pad_bytes: body.pad_bytes,
                lost_answer,
            },
        },
        count,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(faults: &mut Faults, body: &str) {
        let (fault, count) = parse_fault(body.as_bytes()).unwrap();
        faults.push(fault, count);
    }

    #[test]
    fn a_status_fault_fires_count_times_then_is_gone() {
        let mut faults = Faults::default();
        add(&mut faults, r#"{"status": 500, "count": 2}"#);
        assert_eq!(
            faults.take_request(Endpoint::Get).unwrap().status,
            Some(500)
        );
        assert!(faults.take_request(Endpoint::Create).is_some());
        assert!(faults.take_request(Endpoint::Create).is_none());
        assert_eq!(faults.len(), 0);
    }

    #[test]
    fn an_endpoint_fault_skips_other_requests_and_queue_order_holds() {
        let mut faults = Faults::default();
        add(&mut faults, r#"{"status": 503, "endpoint": "execute"}"#);
        add(&mut faults, r#"{"status": 429, "retry_after": 7}"#);
        let first = faults.take_request(Endpoint::Upload).unwrap();
        assert_eq!((first.status, first.retry_after), (Some(429), Some(7)));
        assert!(faults.take_request(Endpoint::Upload).is_none());
        assert_eq!(
            faults.take_request(Endpoint::Execute).unwrap().status,
            Some(503)
        );
    }

    #[test]
    fn handled_and_padding_faults_apply_only_after_the_request() {
        let mut faults = Faults::default();
        add(
            &mut faults,
            r#"{"status": 500, "endpoint": "execute", "handled": true}"#,
        );
        add(&mut faults, r#"{"endpoint": "get", "pad_bytes": 10}"#);
        assert!(faults.take_request(Endpoint::Execute).is_none());
        assert!(faults.take_request(Endpoint::Get).is_none());
        assert_eq!(
            faults.take_after(Endpoint::Get).unwrap().pad_bytes,
            Some(10)
        );
        let handled = faults.take_after(Endpoint::Execute).unwrap();
        assert_eq!((handled.status, handled.handled), (Some(500), true));
        assert!(parse_fault(br#"{"handled": true, "delay_ms": 5}"#).is_err());
        assert!(parse_fault(br#"{"pad_bytes": 5, "endpoint": "execute"}"#).is_err());
    }

    #[test]
    fn job_end_faults_are_taken_only_by_executed_jobs() {
        let mut faults = Faults::default();
        add(&mut faults, r#"{"job_status": "CANCELED"}"#);
        assert!(faults.take_request(Endpoint::Execute).is_none());
        assert_eq!(faults.take_job_end(), Some(ForcedEnd::Canceled));
        assert_eq!(faults.take_job_end(), None);
    }

    #[test]
    fn a_job_running_fault_is_taken_only_by_executed_jobs_and_stands_alone() {
        let mut faults = Faults::default();
        add(&mut faults, r#"{"job_running_ms": 1500, "count": 2}"#);
        add(&mut faults, r#"{"job_status": "ERROR"}"#);
        assert!(faults.take_request(Endpoint::Get).is_none());
        assert_eq!(faults.take_job_end(), Some(ForcedEnd::Error));
        assert_eq!(faults.take_job_running(), Some(Duration::from_millis(1500)));
        assert_eq!(faults.take_job_running(), Some(Duration::from_millis(1500)));
        assert_eq!(faults.take_job_running(), None);
        for body in [
            r#"{"job_running_ms": 10, "status": 500}"#,
            r#"{"job_running_ms": 10, "job_status": "ERROR"}"#,
            r#"{"job_running_ms": 10, "endpoint": "get"}"#,
        ] {
            assert!(parse_fault(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn a_lost_answer_applies_to_uploads_after_they_were_carried_out() {
        let mut faults = Faults::default();
        add(&mut faults, r#"{"endpoint": "items", "lost_answer": true}"#);
        assert!(faults.take_request(Endpoint::Items).is_none());
        assert!(faults.take_after(Endpoint::Execute).is_none());
        assert!(faults.take_after(Endpoint::Items).unwrap().lost_answer);
        for body in [
            r#"{"lost_answer": true}"#,
            r#"{"endpoint": "execute", "lost_answer": true}"#,
            r#"{"endpoint": "items", "lost_answer": true, "status": 500}"#,
        ] {
            assert!(parse_fault(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn a_delay_fault_carries_its_duration() {
        let mut faults = Faults::default();
        add(&mut faults, r#"{"delay_ms": 2000, "count": 1}"#);
        let fault = faults.take_request(Endpoint::Other).unwrap();
        assert_eq!(fault.delay, Duration::from_secs(2));
        assert_eq!(fault.status, None);
    }

    #[test]
    fn malformed_faults_are_refused() {
        for body in [
            "",
            "{}",
            r#"{"status": 200}"#,
            r#"{"status": 500, "count": 0}"#,
            r#"{"status": 500, "endpoint": "list"}"#,
            r#"{"job_status": "DONE"}"#,
            r#"{"job_status": "ERROR", "status": 500}"#,
            r#"{"status": 500, "retry_after": 3}"#,
            r#"{"status": 500, "colour": "red"}"#,
        ] {
            assert!(parse_fault(body.as_bytes()).is_err(), "{body}");
        }
    }
}
