//! The registry of named conformance checks.
//!
//! Every check has the same signature: it looks at one [`CheckContext`] (the operation, what
//! kind of request was sent, the exchange, and for the stateful checks the follow-up
//! exchange) and returns a [`Verdict`]. Checks are enabled by name, so a CI job can run
//! exactly the set it trusts, and the names follow Schemathesis v4 so results compare
//! one to one. A check that does not apply to a context says so instead of passing, so
//! the per-check counts in a report mean something.

use crate::response::{
    Exchange, Responses, event_stream_violation, header_violation, is_event_stream, is_json,
    media_matches,
};

/// How bad a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The server breaks its contract.
    Error,
    /// Suspicious, not necessarily wrong.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One thing a server did wrong.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `METHOD /path/template`.
    pub operation: String,
    /// The check's name.
    pub check: String,
    /// One line saying what is wrong.
    pub message: String,
    pub severity: Severity,
    /// The request that showed it, as a `curl` command.
    pub curl: String,
    /// The response status, when there was a response.
    pub status: Option<u16>,
    /// How many requests showed the same failure.
    pub occurrences: usize,
    /// A stable name for it (see [`failure_id`]): `agentplane conform --replay <id>`
    /// re-sends its request(s) from the run's cassette.
    pub id: String,
}

/// A failure's stable id: 12 hex digits of an FNV-1a hash of the check, the operation, the
/// status and the failing request's shape (the query parameters' names, the Content-Type
/// and the JSON body's top-level field names; never their values), so the same fault gets
/// the same id from one run to the next, whatever values showed it.
pub fn failure_id(check: &str, operation: &str, status: Option<u16>, request: &Exchange) -> String {
    let mut query: Vec<String> = url::Url::parse(&request.url)
        .map(|u| u.query_pairs().map(|(k, _)| k.into_owned()).collect())
        .unwrap_or_default();
    query.sort();
    query.dedup();
    let content_type = request
        .request_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map_or("", |(_, v)| v.split(';').next().unwrap_or("").trim());
    let mut fields: Vec<String> = request
        .request_body
        .as_deref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.as_object().map(|m| m.keys().cloned().collect()))
        .unwrap_or_default();
    fields.sort();
    let shape = format!(
        "{check}\n{operation}\n{}\n{}\n{content_type}\n{}",
        status.map_or_else(String::new, |s| s.to_string()),
        query.join("&"),
        fields.join(",")
    );
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in shape.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", hash >> 16)
}

/// What a request was meant to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseKind {
    /// Schema-valid data: the server should accept it.
    Positive,
    /// Schema-invalid data: the server must reject it.
    Negative,
    /// A syntactically broken body (a lone NUL, truncated JSON, a `multipart/form-data` body
    /// without its boundary, under a wrong one or cut short, or a Content-Type the
    /// operation does not take): the server must answer 4xx, as documented.
    MalformedBody,
    /// A body broken in a way a reader may tolerate: a URL-encoded form with invalid
    /// percent-escapes, which the WHATWG form decoding keeps as they are. Any answer but a
    /// server error will do, and an error answer must be documented.
    LenientBody,
    /// A secured operation called without credentials.
    Unauthenticated,
    /// A POST answered 201; `follow_up` reads the created resource.
    Created,
    /// A 201 answer's `Location` was followed; `follow_up` is that GET.
    LocationFollowed,
    /// A DELETE answered 2xx; `follow_up` reads the deleted resource.
    Deleted,
    /// Schema-valid data without one required header parameter: the server must answer 4xx.
    MissingHeader,
    /// A method the spec does not document, on a documented path: the server must answer 405.
    UnsupportedMethod,
    /// A re-read with `If-None-Match: <its ETag>`: the server must answer 304.
    ConditionalRead,
    /// A PUT, PATCH or DELETE with `If-Match: <a stale ETag>`: the server must answer 412;
    /// `before` is the resource read before it, `follow_up` the resource read after it.
    ConditionalUpdate,
    /// A PUT or PATCH answered 2xx; `before` is the resource read before it, `follow_up` a
    /// GET of it right after.
    Updated,
    /// One page of a list; `pages` holds it (per-page invariants).
    ListPage,
    /// A walk over every page of a list, to its end; `pages` holds them in order, and
    /// `follow_up`, when there is one, the whole list fetched as one page.
    PageWalk,
    /// A walk cut short by the page budget: `pages` holds the pages fetched, in order.
    PartialWalk,
    /// A resource of the main identity requested by the other identity (must answer 404);
    /// `follow_up` reads it with the main identity afterwards (must answer 2xx).
    CrossTenant,
}

impl CaseKind {
    /// Every kind, for [`CaseKind::parse`].
    pub const ALL: [CaseKind; 17] = [
        CaseKind::Positive,
        CaseKind::Negative,
        CaseKind::MalformedBody,
        CaseKind::LenientBody,
        CaseKind::Unauthenticated,
        CaseKind::Created,
        CaseKind::LocationFollowed,
        CaseKind::Deleted,
        CaseKind::MissingHeader,
        CaseKind::UnsupportedMethod,
        CaseKind::ConditionalRead,
        CaseKind::ConditionalUpdate,
        CaseKind::Updated,
        CaseKind::ListPage,
        CaseKind::PageWalk,
        CaseKind::PartialWalk,
        CaseKind::CrossTenant,
    ];

    /// The kind's name in a cassette's replay section (`conditional_update`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CaseKind::Positive => "positive",
            CaseKind::Negative => "negative",
            CaseKind::MalformedBody => "malformed_body",
            CaseKind::LenientBody => "lenient_body",
            CaseKind::Unauthenticated => "unauthenticated",
            CaseKind::Created => "created",
            CaseKind::LocationFollowed => "location_followed",
            CaseKind::Deleted => "deleted",
            CaseKind::MissingHeader => "missing_header",
            CaseKind::UnsupportedMethod => "unsupported_method",
            CaseKind::ConditionalRead => "conditional_read",
            CaseKind::ConditionalUpdate => "conditional_update",
            CaseKind::Updated => "updated",
            CaseKind::ListPage => "list_page",
            CaseKind::PageWalk => "page_walk",
            CaseKind::PartialWalk => "partial_walk",
            CaseKind::CrossTenant => "cross_tenant",
        }
    }

    /// Parses [`CaseKind::as_str`].
    pub fn parse(name: &str) -> Option<CaseKind> {
        CaseKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Everything a check may look at.
pub struct CheckContext<'a> {
    /// `METHOD /path/template`.
    pub operation: &'a str,
    pub responses: &'a Responses,
    pub kind: CaseKind,
    pub exchange: &'a Exchange,
    pub follow_up: Option<&'a Exchange>,
    /// Status patterns (`2xx`, `404`) a positive request may get.
    pub positive_statuses: &'a [String],
    /// For [`CaseKind::ConditionalUpdate`]: the resource as read before the request.
    pub before: Option<&'a Exchange>,
    /// For [`CaseKind::ListPage`] and [`CaseKind::PageWalk`]: the pages fetched, in order.
    pub pages: &'a [Exchange],
    /// The methods the spec documents on the operation's path (upper case).
    pub path_methods: &'a [String],
    /// The operation is secured and the request carried no credentials: a 401 or 403 is
    /// then implied by the spec's security scheme, documented or not.
    pub without_credentials: bool,
    /// The `max_response_time` budget (`--max-response-time`); `None` leaves it out.
    pub max_response_time: Option<std::time::Duration>,
}

/// A check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// The check has nothing to say about this context.
    NotApplicable,
}

/// A named check.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub name: &'static str,
    pub severity: Severity,
    /// One line for `--help`-style listings.
    pub summary: &'static str,
    pub run: fn(&CheckContext<'_>) -> Verdict,
}

/// Every check, in the order reports list them.
pub const ALL: &[Check] = &[
    Check {
        name: "not_a_server_error",
        severity: Severity::Error,
        summary: "no 500, and no other undocumented 5xx",
        run: not_a_server_error,
    },
    Check {
        name: "status_code_conformance",
        severity: Severity::Error,
        summary: "the status code is documented for the operation",
        run: status_code_conformance,
    },
    Check {
        name: "content_type_conformance",
        severity: Severity::Error,
        summary: "a body's Content-Type is one the response documents",
        run: content_type_conformance,
    },
    Check {
        name: "response_headers_conformance",
        severity: Severity::Error,
        summary: "required documented headers are present and match their schemas",
        run: response_headers_conformance,
    },
    Check {
        name: "response_schema_conformance",
        severity: Severity::Error,
        summary: "a JSON body matches the documented schema",
        run: response_schema_conformance,
    },
    Check {
        name: "negative_data_rejection",
        severity: Severity::Error,
        summary: "schema-invalid requests are answered 4xx",
        run: negative_data_rejection,
    },
    Check {
        name: "positive_data_acceptance",
        severity: Severity::Error,
        summary: "schema-valid requests are accepted (2xx, 3xx, 401, 403, 404, 409, 412, 429)",
        run: positive_data_acceptance,
    },
    Check {
        name: "ignored_auth",
        severity: Severity::Error,
        summary: "a secured operation called without credentials answers 401",
        run: ignored_auth,
    },
    Check {
        name: "use_after_free",
        severity: Severity::Error,
        summary: "after a successful DELETE, reading the resource answers 404",
        run: use_after_free,
    },
    Check {
        name: "ensure_resource_availability",
        severity: Severity::Error,
        summary: "after a POST answered 200 or 201, reading the created resource answers 2xx",
        run: ensure_resource_availability,
    },
    Check {
        name: "location_on_created",
        severity: Severity::Error,
        summary: "a 201 carries a documented Location that answers 2xx",
        run: location_on_created,
    },
    Check {
        name: "missing_required_header",
        severity: Severity::Error,
        summary: "a request without a required header parameter is answered 4xx",
        run: missing_required_header,
    },
    Check {
        name: "unsupported_method",
        severity: Severity::Error,
        summary: "a method the spec does not document on a known path is answered 405 with an Allow listing the documented ones",
        run: unsupported_method,
    },
    Check {
        name: "conditional_requests",
        severity: Severity::Error,
        summary: "If-None-Match with the current ETag answers 304; a PUT, PATCH or DELETE with a stale If-Match 412, and changes nothing",
        run: conditional_requests,
    },
    Check {
        name: "read_after_write",
        severity: Severity::Error,
        summary: "the fields a PUT or PATCH answers as changed are what a GET right after shows",
        run: read_after_write,
    },
    Check {
        name: "pagination_totals",
        severity: Severity::Error,
        summary: "a page holds at most per_page items, pages = ceil(total / per_page); a walk of every page (page numbers, offsets, cursors or Link) repeats no item, loses none and adds up to total",
        run: pagination_totals,
    },
    Check {
        name: "max_response_time",
        severity: Severity::Error,
        summary: "every answer arrives within the --max-response-time budget (off unless set)",
        run: max_response_time,
    },
    Check {
        name: "cross_tenant_isolation",
        severity: Severity::Error,
        summary: "another identity gets 404 for a resource it does not own, and the owner still reads it",
        run: cross_tenant_isolation,
    },
];

/// The checks named in `names` (all of them when empty); the unknown name on error.
pub fn select(names: &[String]) -> Result<Vec<Check>, String> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            ALL.iter()
                .find(|c| c.name == n.as_str())
                .copied()
                .ok_or_else(|| {
                    let known: Vec<&str> = ALL.iter().map(|c| c.name).collect();
                    format!("unknown check {n:?}; known: {}", known.join(", "))
                })
        })
        .collect()
}

/// Whether `status` matches a pattern such as `2xx`, `404` or `4XX`.
pub fn status_matches(pattern: &str, status: u16) -> bool {
    let p = pattern.to_ascii_lowercase();
    if let Some(class) = p.strip_suffix("xx") {
        return class.parse::<u16>().is_ok_and(|c| c == status / 100);
    }
    p.parse::<u16>().is_ok_and(|p| p == status)
}

/// The checks that judge a single exchange of an operation.
fn is_own_request(kind: CaseKind) -> bool {
    matches!(
        kind,
        CaseKind::Positive
            | CaseKind::Negative
            | CaseKind::MalformedBody
            | CaseKind::LenientBody
            | CaseKind::Unauthenticated
    )
}

fn not_a_server_error(ctx: &CheckContext<'_>) -> Verdict {
    if !is_own_request(ctx.kind) {
        return Verdict::NotApplicable;
    }
    let status = ctx.exchange.status;
    if status == 500
        || (status >= 500
            && ctx
                .responses
                .find(status)
                .is_none_or(|r| r.status == "DEFAULT"))
    {
        return Verdict::Fail(format!("server error {status}"));
    }
    Verdict::Pass
}

/// Each answer once: the kinds whose exchange was already judged as a positive request
/// (a create, update or delete followed up) or as a page (a walk) are left out.
fn max_response_time(ctx: &CheckContext<'_>) -> Verdict {
    let Some(budget) = ctx.max_response_time else {
        return Verdict::NotApplicable;
    };
    if ctx.exchange.status == 0
        || matches!(
            ctx.kind,
            CaseKind::Created
                | CaseKind::LocationFollowed
                | CaseKind::Deleted
                | CaseKind::Updated
                | CaseKind::PageWalk
                | CaseKind::PartialWalk
        )
    {
        return Verdict::NotApplicable;
    }
    let elapsed = ctx.exchange.elapsed;
    if elapsed > budget {
        Verdict::Fail(format!(
            "answered in {} ms, over the {} ms budget",
            elapsed.as_millis(),
            budget.as_millis()
        ))
    } else {
        Verdict::Pass
    }
}

fn status_code_conformance(ctx: &CheckContext<'_>) -> Verdict {
    if !is_own_request(ctx.kind) || ctx.responses.entries.is_empty() {
        return Verdict::NotApplicable;
    }
    let status = ctx.exchange.status;
    if ctx.responses.find(status).is_some()
        || (ctx.without_credentials && matches!(status, 401 | 403))
    {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "undocumented status {status} (documented: {})",
            ctx.responses.documented().join(", ")
        ))
    }
}

fn content_type_conformance(ctx: &CheckContext<'_>) -> Verdict {
    if !is_own_request(ctx.kind) || ctx.exchange.body.is_empty() {
        return Verdict::NotApplicable;
    }
    let Some(response) = ctx.responses.find(ctx.exchange.status) else {
        return Verdict::NotApplicable;
    };
    if response.content.is_empty() {
        return Verdict::NotApplicable;
    }
    let Some(actual) = ctx.exchange.header("content-type") else {
        return Verdict::Fail("a body without a Content-Type header".into());
    };
    if response
        .content
        .iter()
        .any(|m| media_matches(&m.media_type, actual))
    {
        Verdict::Pass
    } else {
        let documented: Vec<&str> = response
            .content
            .iter()
            .map(|m| m.media_type.as_str())
            .collect();
        Verdict::Fail(format!(
            "Content-Type {actual} is not documented for {} (documented: {})",
            ctx.exchange.status,
            documented.join(", ")
        ))
    }
}

fn response_headers_conformance(ctx: &CheckContext<'_>) -> Verdict {
    if !is_own_request(ctx.kind) {
        return Verdict::NotApplicable;
    }
    let Some(response) = ctx.responses.find(ctx.exchange.status) else {
        return Verdict::NotApplicable;
    };
    if response.headers.is_empty() {
        return Verdict::NotApplicable;
    }
    let mut missing = Vec::new();
    for header in &response.headers {
        match ctx.exchange.header(&header.name) {
            None if header.required => missing.push(header.name.as_str()),
            None => {}
            Some(value) => {
                if let Some(reason) = header_violation(header, value) {
                    return Verdict::Fail(reason);
                }
            }
        }
    }
    if missing.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "missing required header(s) {} on {}",
            missing.join(", "),
            ctx.exchange.status
        ))
    }
}

fn response_schema_conformance(ctx: &CheckContext<'_>) -> Verdict {
    if !is_own_request(ctx.kind) {
        return Verdict::NotApplicable;
    }
    let Some(response) = ctx.responses.find(ctx.exchange.status) else {
        return Verdict::NotApplicable;
    };
    let actual = ctx
        .exchange
        .header("content-type")
        .unwrap_or("application/json");
    if is_event_stream(actual) {
        let Some(events) = response
            .content
            .iter()
            .find(|m| media_matches(&m.media_type, actual))
            .and_then(|m| m.events.as_ref())
            .filter(|e| e.item.is_some() || e.data.is_some())
        else {
            return Verdict::NotApplicable;
        };
        return match event_stream_violation(events, &ctx.exchange.body) {
            None => Verdict::Pass,
            Some(reason) => Verdict::Fail(reason),
        };
    }
    if !is_json(actual) {
        return Verdict::NotApplicable;
    }
    let Some(media) = response
        .content
        .iter()
        .find(|m| media_matches(&m.media_type, actual))
    else {
        return Verdict::NotApplicable;
    };
    let Some(validator) = media.validator.as_ref() else {
        return Verdict::NotApplicable;
    };
    if ctx.exchange.body.is_empty() {
        return Verdict::Fail(format!(
            "an empty body where {} documents JSON",
            ctx.exchange.status
        ));
    }
    let Some(body) = ctx.exchange.json() else {
        return Verdict::Fail("the body is not valid JSON".into());
    };
    match validator.iter_errors(&body).next() {
        None => {
            let mut carried = Vec::new();
            if let Some(write_only) = &media.write_only {
                write_only.carried(&body, "", &mut carried);
            }
            if carried.is_empty() {
                Verdict::Pass
            } else {
                Verdict::Fail(format!(
                    "the {} body carries writeOnly propert{} {}, which an answer never holds",
                    ctx.exchange.status,
                    if carried.len() == 1 { "y" } else { "ies" },
                    carried.join(", ")
                ))
            }
        }
        Some(e) => {
            let at = e.instance_path().to_string();
            let mut message = e.to_string();
            if message.len() > 200 {
                let mut cut = 200;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push('…');
            }
            Verdict::Fail(format!(
                "body does not match the {} schema at {}: {message}",
                ctx.exchange.status,
                if at.is_empty() { "/" } else { &at }
            ))
        }
    }
}

fn negative_data_rejection(ctx: &CheckContext<'_>) -> Verdict {
    let what = match ctx.kind {
        CaseKind::Negative => "schema-invalid data",
        CaseKind::MalformedBody => "a syntactically broken body",
        _ => return Verdict::NotApplicable,
    };
    let status = ctx.exchange.status;
    if (400..500).contains(&status) {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("{what} answered {status}, not 4xx"))
    }
}

fn positive_data_acceptance(ctx: &CheckContext<'_>) -> Verdict {
    if ctx.kind != CaseKind::Positive {
        return Verdict::NotApplicable;
    }
    // An operation that documents no success (Swagger's petstore deletes: only 400 and 404)
    // can only answer its documented errors; whether the status is documented is
    // status_code_conformance's to judge.
    let succeeds =
        ctx.responses.entries.iter().any(|r| {
            r.status.starts_with('2') || r.status.starts_with('3') || r.status == "DEFAULT"
        });
    if !succeeds {
        return Verdict::NotApplicable;
    }
    let status = ctx.exchange.status;
    if ctx
        .positive_statuses
        .iter()
        .any(|p| status_matches(p, status))
    {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "schema-valid data answered {status} (accepted: {})",
            ctx.positive_statuses.join(", ")
        ))
    }
}

fn ignored_auth(ctx: &CheckContext<'_>) -> Verdict {
    if ctx.kind != CaseKind::Unauthenticated {
        return Verdict::NotApplicable;
    }
    match ctx.exchange.status {
        401 => Verdict::Pass,
        s => Verdict::Fail(format!(
            "a secured operation without credentials answered {s}, not 401"
        )),
    }
}

fn use_after_free(ctx: &CheckContext<'_>) -> Verdict {
    match (ctx.kind, ctx.follow_up) {
        (CaseKind::Deleted, Some(read)) => match read.status {
            404 | 410 => Verdict::Pass,
            s => Verdict::Fail(format!(
                "the resource was deleted ({}) but reading it again answered {s}",
                ctx.exchange.status
            )),
        },
        _ => Verdict::NotApplicable,
    }
}

fn ensure_resource_availability(ctx: &CheckContext<'_>) -> Verdict {
    match (ctx.kind, ctx.follow_up) {
        (CaseKind::Created, Some(read)) if (200..300).contains(&read.status) => Verdict::Pass,
        (CaseKind::Created, Some(read)) => Verdict::Fail(format!(
            "the resource was created ({}) but reading it answered {}",
            ctx.exchange.status, read.status
        )),
        _ => Verdict::NotApplicable,
    }
}

fn location_on_created(ctx: &CheckContext<'_>) -> Verdict {
    if ctx.kind != CaseKind::LocationFollowed {
        return Verdict::NotApplicable;
    }
    match ctx.follow_up {
        None => Verdict::Fail(format!(
            "{} documents a Location header but the response has none",
            ctx.exchange.status
        )),
        Some(read) if (200..300).contains(&read.status) => Verdict::Pass,
        Some(read) => Verdict::Fail(format!(
            "a GET on the Location of the created resource answered {}",
            read.status
        )),
    }
}

fn missing_required_header(ctx: &CheckContext<'_>) -> Verdict {
    if ctx.kind != CaseKind::MissingHeader {
        return Verdict::NotApplicable;
    }
    let status = ctx.exchange.status;
    if (400..500).contains(&status) {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "a request without a required header answered {status}, not 4xx"
        ))
    }
}

fn unsupported_method(ctx: &CheckContext<'_>) -> Verdict {
    if ctx.kind != CaseKind::UnsupportedMethod {
        return Verdict::NotApplicable;
    }
    match (ctx.exchange.status, ctx.exchange.header("allow")) {
        (405, None) => Verdict::Fail(format!(
            "the undocumented method {} answered 405 without an Allow header (RFC 9110)",
            ctx.exchange.method
        )),
        (405, Some(allow)) => {
            let listed: Vec<String> = allow
                .split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .collect();
            let missing: Vec<&str> = ctx
                .path_methods
                .iter()
                .filter(|m| !listed.contains(m))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                Verdict::Pass
            } else {
                Verdict::Fail(format!(
                    "the 405's Allow header ({allow}) leaves out the documented {}",
                    missing.join(", ")
                ))
            }
        }
        (s, _) => Verdict::Fail(format!(
            "the undocumented method {} answered {s}, not 405",
            ctx.exchange.method
        )),
    }
}

fn conditional_requests(ctx: &CheckContext<'_>) -> Verdict {
    match ctx.kind {
        CaseKind::ConditionalRead => match ctx.exchange.status {
            304 => Verdict::Pass,
            s => Verdict::Fail(format!(
                "a read with If-None-Match set to the current ETag answered {s}, not 304"
            )),
        },
        CaseKind::ConditionalUpdate => {
            let method = &ctx.exchange.method;
            if ctx.exchange.status != 412 {
                return Verdict::Fail(format!(
                    "a {method} with If-Match set to a stale ETag answered {}, not 412",
                    ctx.exchange.status
                ));
            }
            match (ctx.before, ctx.follow_up) {
                (Some(before), Some(after))
                    if before.status != after.status || before.json() != after.json() =>
                {
                    Verdict::Fail(format!(
                        "a {method} refused with 412 still changed the resource (a GET after it answered {})",
                        after.status
                    ))
                }
                _ => Verdict::Pass,
            }
        }
        _ => Verdict::NotApplicable,
    }
}

/// One page of a list, read in whichever common shape the server uses: the items as a bare
/// array or under `data`, `items` or `results`; the total as `total`, `total_count`,
/// `count`, `pagination.total`, `meta.total` or an `X-Total-Count` header; the page size and
/// page count beside it or under `pagination`/`meta`; the next page as a cursor
/// (`next_cursor`, `pagination.next_cursor`, `meta.next_cursor`, `cursor.next`) or a `Link`
/// header's `rel="next"`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    pub items: Vec<serde_json::Value>,
    pub total: Option<u64>,
    pub per_page: Option<u64>,
    pub pages: Option<u64>,
    pub next_cursor: Option<String>,
    /// The `rel="next"` target of a `Link` header, as written.
    pub next_link: Option<String>,
    /// An explicit `has_more`: false on the last page.
    pub has_more: Option<bool>,
}

impl ListPage {
    /// Whether the page says another one follows (a cursor, a `Link` or `has_more`).
    pub fn has_next(&self) -> bool {
        self.has_more != Some(false) && (self.next_cursor.is_some() || self.next_link.is_some())
    }
}

/// The `rel="next"` target of an RFC 8288 `Link` header.
pub fn link_next(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .any(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            })
            .then(|| target.to_string())
    })
}

/// The list page an exchange holds, when its body is a list in a shape [`ListPage`] knows
/// and says something about paging (a total, a page count, a cursor, a `Link`).
pub fn list_page(exchange: &Exchange) -> Option<ListPage> {
    use serde_json::Value;
    let body = exchange.json()?;
    let number = |v: Option<&Value>| {
        v.and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
    };
    let text = |v: Option<&Value>| {
        v.and_then(|v| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let mut page = ListPage {
        next_link: exchange.header("link").and_then(link_next),
        total: number(
            exchange
                .header("x-total-count")
                .map(|t| Value::from(t.trim()))
                .as_ref(),
        ),
        ..ListPage::default()
    };
    let holders: Vec<&Value> = match &body {
        Value::Array(items) => {
            page.items = items.clone();
            Vec::new()
        }
        Value::Object(map) => {
            page.items = ["data", "items", "results"]
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_array))?
                .clone();
            ["pagination", "meta", "page_info"]
                .iter()
                .filter_map(|k| map.get(*k).filter(|v| v.is_object()))
                .chain(std::iter::once(&body))
                .collect()
        }
        _ => return None,
    };
    for holder in holders {
        let get = |keys: &[&str]| keys.iter().find_map(|k| holder.get(*k));
        page.total = page
            .total
            .or_else(|| number(get(&["total", "total_count", "totalCount", "count"])));
        page.per_page = page.per_page.or_else(|| {
            number(get(&[
                "per_page",
                "page_size",
                "perPage",
                "pageSize",
                "limit",
            ]))
        });
        page.pages = page
            .pages
            .or_else(|| number(get(&["pages", "total_pages", "totalPages", "page_count"])));
        page.next_cursor = page.next_cursor.or_else(|| {
            text(get(&[
                "next_cursor",
                "nextCursor",
                "next_page_token",
                "nextPageToken",
            ]))
            .or_else(|| text(holder.pointer("/cursor/next")))
        });
        page.has_more = page
            .has_more
            .or_else(|| get(&["has_more", "hasMore"]).and_then(Value::as_bool));
    }
    let paged = page.total.is_some()
        || page.pages.is_some()
        || page.next_cursor.is_some()
        || page.next_link.is_some()
        || page.has_more.is_some();
    paged.then_some(page)
}

fn page_violation(page: &ListPage) -> Option<String> {
    let len = page.items.len() as u64;
    let per_page = page.per_page?;
    if len > per_page {
        return Some(format!(
            "a page holds {len} items but per_page is {per_page}"
        ));
    }
    let (Some(total), Some(pages)) = (page.total, page.pages) else {
        return None;
    };
    let expected = if per_page == 0 {
        0
    } else {
        total.div_ceil(per_page)
    };
    // An empty list may report one (empty) page.
    if pages != expected && !(total == 0 && pages == 1) {
        return Some(format!(
            "pages is {pages} but ceil(total {total} / per_page {per_page}) is {expected}"
        ));
    }
    None
}

/// What tells two items of a list apart: their `id`, else the whole item.
pub fn item_key(item: &serde_json::Value) -> String {
    match item.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(id) if !id.is_null() => id.to_string(),
        _ => item.to_string(),
    }
}

fn pagination_totals(ctx: &CheckContext<'_>) -> Verdict {
    match ctx.kind {
        CaseKind::ListPage | CaseKind::PageWalk | CaseKind::PartialWalk => {}
        _ => return Verdict::NotApplicable,
    }
    let pages: Vec<ListPage> = ctx.pages.iter().filter_map(list_page).collect();
    if pages.is_empty() {
        return Verdict::NotApplicable;
    }
    if let Some(v) = pages.iter().find_map(page_violation) {
        return Verdict::Fail(v);
    }
    if ctx.kind == CaseKind::ListPage {
        return Verdict::Pass;
    }
    let totals: Vec<u64> = pages.iter().filter_map(|p| p.total).collect();
    if totals.windows(2).any(|w| w[0] != w[1]) {
        return Verdict::Fail(format!(
            "total changed between pages of one walk ({})",
            totals
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" → ")
        ));
    }
    let mut seen: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (n, page) in pages.iter().enumerate() {
        for item in &page.items {
            if let Some(first) = seen.insert(item_key(item), n + 1) {
                return Verdict::Fail(format!(
                    "item {} is on page {first} and again on page {} of one walk",
                    item_key(item),
                    n + 1
                ));
            }
        }
    }
    if ctx.kind == CaseKind::PartialWalk {
        return Verdict::Pass;
    }
    let held = seen.len() as u64;
    if let Some(&total) = totals.first()
        && held != total
    {
        return Verdict::Fail(format!(
            "a walk of all {} pages holds {held} items but total is {total}",
            pages.len()
        ));
    }
    // The whole list in one page, when the runner could fetch it: nothing of it may be
    // missing from the walk.
    if let Some(all) = ctx.follow_up.and_then(list_page)
        && let Some(lost) = all.items.iter().find(|i| !seen.contains_key(&item_key(i)))
    {
        return Verdict::Fail(format!(
            "item {} of the list is on no page of a walk of all {} pages",
            item_key(lost),
            pages.len()
        ));
    }
    Verdict::Pass
}

/// The top-level fields an update's answer says it changed: those sent in the request body
/// whose value in the answer differs from the resource read before.
fn claimed_changes<'v>(
    sent: &'v serde_json::Value, answer: &'v serde_json::Value, before: &'v serde_json::Value,
) -> Vec<(&'v str, &'v serde_json::Value)> {
    let Some(sent) = sent.as_object() else {
        return Vec::new();
    };
    sent.keys()
        .filter_map(|k| {
            let now = answer.get(k)?;
            (before.get(k) != Some(now)).then_some((k.as_str(), now))
        })
        .collect()
}

fn read_after_write(ctx: &CheckContext<'_>) -> Verdict {
    if ctx.kind != CaseKind::Updated || !(200..300).contains(&ctx.exchange.status) {
        return Verdict::NotApplicable;
    }
    let (Some(sent), Some(answer), Some(before), Some(after)) = (
        ctx.exchange
            .request_body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok()),
        ctx.exchange.json(),
        ctx.before.and_then(Exchange::json),
        ctx.follow_up
            .filter(|f| (200..300).contains(&f.status))
            .and_then(Exchange::json),
    ) else {
        return Verdict::NotApplicable;
    };
    let changes = claimed_changes(&sent, &answer, &before);
    if changes.is_empty() {
        return Verdict::NotApplicable;
    }
    match changes.iter().find(|(k, now)| after.get(*k) != Some(*now)) {
        None => Verdict::Pass,
        Some((k, now)) => Verdict::Fail(format!(
            "{} answered {k} = {now} but a GET right after shows {}",
            ctx.exchange.method,
            after
                .get(*k)
                .map_or_else(|| "no such field".to_string(), |v| v.to_string())
        )),
    }
}

fn cross_tenant_isolation(ctx: &CheckContext<'_>) -> Verdict {
    if ctx.kind != CaseKind::CrossTenant {
        return Verdict::NotApplicable;
    }
    if ctx.exchange.status != 404 {
        return Verdict::Fail(format!(
            "{} on another identity's resource answered {}, not 404",
            ctx.exchange.method, ctx.exchange.status
        ));
    }
    match ctx.follow_up {
        Some(read) if !(200..300).contains(&read.status) => Verdict::Fail(format!(
            "after {} by another identity, the owner reading it answered {}",
            ctx.exchange.method, read.status
        )),
        _ => Verdict::Pass,
    }
}
