//! The HTTP API (tiny_http, a few worker threads):
//!
//! | request | answer |
//! |---|---|
//! | `GET /keys/{key}` | 200 and the value, 404 if absent (a linearizable read through `read_index`) |
//! | `PUT /keys/{key}` (body: the value) | 204 once the write is committed and applied here |
//! | `DELETE /keys/{key}` | 204 once the delete is committed and applied here |
//! | `POST /members/{id}` (body: its Raft address) | 204 once the node is a voter |
//! | `DELETE /members/{id}` | 204 once the node is removed |
//! | `GET /status` | 200 and JSON: id, members, `regions` (per region: leader, term, vote, `repairing_until`, role, commit, applied, log bounds, snapshots, keys), `leading`; the top-level leader, term, vote, `repairing_until` and log fields are region 0's |
//! | `GET /metrics` | 200 and the storage's and the node's metrics, Prometheus text format |
//!
//! `{key}` is percent-decoded (`/keys/a%20b` is the key `a b`) and must be UTF-8 then.
//!
//! A request that cannot be served (no leader, proposal dropped, not applied within the
//! request timeout) gets 503 with the reason; a write answered 503 may still take effect.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::thread;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use percent_encoding::percent_decode_str;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::kv::Op;
use crate::node::{Event, Reply};

/// Worker threads answering requests; each blocks while its request waits for Raft.
const HTTP_THREADS: usize = 8;
/// Largest request body read (a value or an address).
const MAX_BODY_BYTES: u64 = 1 << 20;

/// Serves the API on `addr`; `metrics` renders `GET /metrics`.
pub fn serve(
    addr: &str,
    events: Sender<Event>,
    timeout: Duration,
    metrics: PrometheusHandle,
) -> io::Result<()> {
    let server = Arc::new(Server::http(addr).map_err(|e| io::Error::other(e.to_string()))?);
    for k in 0..HTTP_THREADS {
        let server = server.clone();
        let events = events.clone();
        let metrics = metrics.clone();
        thread::Builder::new().name(format!("http-{k}")).spawn(move || {
            // Until the server fails: it lives as long as the process.
            while let Ok(request) = server.recv() {
                respond(request, &events, timeout, &metrics);
            }
        })?;
    }
    Ok(())
}

fn respond(
    mut request: Request,
    events: &Sender<Event>,
    timeout: Duration,
    metrics: &PrometheusHandle,
) {
    let path = request.url().split('?').next().unwrap_or_default().to_string();
    if path == "/metrics" && *request.method() == Method::Get {
        let response = match ask(events, timeout, Event::RefreshMetrics) {
            Some(()) => {
                metrics.run_upkeep();
                let content_type =
                    Header::from_bytes("Content-Type", PROMETHEUS_TEXT).expect("a valid header");
                Response::from_string(metrics.render()).with_header(content_type)
            }
            None => Response::from_string("node not answering\n").with_status_code(503),
        };
        let _ = request.respond(response);
        return;
    }
    let (code, body) = route(&mut request, events, timeout);
    let _ = request.respond(Response::from_string(body).with_status_code(code));
}

/// The content type of Prometheus's text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Sends an event carrying a reply channel and waits for the answer, at most `timeout`.
fn ask<T>(
    events: &Sender<Event>,
    timeout: Duration,
    event: impl FnOnce(Sender<T>) -> Event,
) -> Option<T> {
    let (tx, rx) = channel();
    events.send(event(tx)).ok()?;
    rx.recv_timeout(timeout).ok()
}

fn reply_to_http(reply: Option<Reply>, absent_is_not_found: bool) -> (u16, String) {
    match reply {
        None => (503, "timed out: not committed and applied in time\n".into()),
        Some(Err(why)) => (503, format!("{why}\n")),
        Some(Ok(Some(value))) => (200, value),
        Some(Ok(None)) if absent_is_not_found => (404, "no such key\n".into()),
        Some(Ok(None)) => (204, String::new()),
    }
}

fn body(request: &mut Request) -> Result<String, (u16, String)> {
    let mut text = String::new();
    request
        .as_reader()
        .take(MAX_BODY_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| (400, format!("body: {e}\n")))?;
    Ok(text)
}

fn route(request: &mut Request, events: &Sender<Event>, timeout: Duration) -> (u16, String) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or_default();
    let method = request.method().clone();
    if path == "/status" && method == Method::Get {
        return match ask(events, timeout, Event::Status) {
            Some(json) => (200, json),
            None => (503, "node not answering\n".into()),
        };
    }
    if let Some(key) = path.strip_prefix("/keys/").filter(|k| !k.is_empty()) {
        let Ok(key) = percent_decode_str(key).decode_utf8() else {
            return (400, "a key is UTF-8 once percent-decoded\n".into());
        };
        let key = key.into_owned();
        return match method {
            Method::Get => reply_to_http(ask(events, timeout, |tx| Event::Read(key, tx)), true),
            Method::Put => match body(request) {
                Ok(value) => {
                    let op = Op::Put { key, value };
                    reply_to_http(ask(events, timeout, |tx| Event::Propose(op, tx)), false)
                }
                Err(e) => e,
            },
            Method::Delete => {
                let op = Op::Delete { key };
                reply_to_http(ask(events, timeout, |tx| Event::Propose(op, tx)), false)
            }
            _ => (405, "GET, PUT or DELETE\n".into()),
        };
    }
    if let Some(id) = path.strip_prefix("/members/") {
        let Ok(id) = id.parse::<u64>() else {
            return (400, "a member id is a positive integer\n".into());
        };
        if id == 0 {
            return (400, "a member id is a positive integer\n".into());
        }
        return match method {
            Method::Post => match body(request) {
                Ok(addr) if !addr.trim().is_empty() => {
                    let addr = addr.trim().to_string();
                    reply_to_http(ask(events, timeout, |tx| Event::AddMember(id, addr, tx)), false)
                }
                Ok(_) => (400, "the body is the new member's Raft address\n".into()),
                Err(e) => e,
            },
            Method::Delete => {
                reply_to_http(ask(events, timeout, |tx| Event::RemoveMember(id, tx)), false)
            }
            _ => (405, "POST or DELETE\n".into()),
        };
    }
    (
        404,
        "see GET/PUT/DELETE /keys/{key}, POST/DELETE /members/{id}, GET /status, GET /metrics\n"
            .into(),
    )
}
