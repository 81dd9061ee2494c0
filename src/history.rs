//! ListStopRequests: the history of stops. A caller sees its own stop requests (those of
//! executions it may read) and, through the policy's `audit` list, every principal's requests
//! for the executions that list matches; newest first, in pages.
//!
//! Pages are keyset pages over the store's order (creation time, principal, client token,
//! descending): a page token names the last record a page covered, so records added or
//! deleted meanwhile never make a record appear twice or be skipped among those that stay.
//! Visibility is decided here, record by record (policy globs are not SQL), so a page may
//! need several store reads; each call reads a bounded number of rows, and a page cut short
//! by that bound still carries a token to go on from.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    auth::Caller,
    domain::{Action, ExecutionArn, FieldViolation, PipelineArn},
    error::Error,
    store::{ListCursor, ListQuery, StopRecord, Store},
};

/// Records a page holds when the caller does not say.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 50;
/// The most a page holds; larger asks are lowered to it.
pub(crate) const MAX_PAGE_SIZE: u32 = 100;
/// Store reads one call makes at most before answering with what it found.
const READS_PER_PAGE: usize = 10;

/// A checked ListStopRequests request.
#[derive(Debug, Clone)]
pub(crate) struct ListRequest {
    pub(crate) pipeline_arn: Option<PipelineArn>,
    pub(crate) execution_arn: Option<ExecutionArn>,
    pub(crate) page_size: u32,
    /// The encoded token of the previous page, if any (checked by [`list`]).
    pub(crate) page_token: String,
}

impl ListRequest {
    /// Checks the request's fields; every violation is named.
    pub(crate) fn parse(
        pipeline_arn: &str,
        execution_arn: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Self, Error> {
        let mut violations = Vec::new();
        let pipeline_arn = match pipeline_arn {
            "" => None,
            arn => PipelineArn::parse("pipeline_arn", arn)
                .map_err(|v| violations.push(v))
                .ok(),
        };
        let execution_arn = match execution_arn {
            "" => None,
            arn => ExecutionArn::parse(arn)
                .map_err(|v| violations.push(v))
                .ok(),
        };
        let page_size = match u32::try_from(page_size) {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
            Err(_) => {
                violations.push(FieldViolation::new("page_size", "must not be negative"));
                0
            }
        };
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        Ok(Self {
            pipeline_arn,
            execution_arn,
            page_size,
            page_token: page_token.to_string(),
        })
    }
}

/// One page of records, and the token of the next page when there may be more.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) records: Vec<StopRecord>,
    pub(crate) next_page_token: String,
}

/// What a page token holds: where the previous page ended, and which listing it belongs to.
#[derive(Debug, Serialize, Deserialize)]
struct Token {
    /// The listing: a digest of the caller and the filters.
    q: String,
    /// The last record covered: creation time (microseconds), principal, client token.
    c: i64,
    p: String,
    t: String,
}

fn listing(caller: &Caller, request: &ListRequest) -> String {
    let digest = Sha256::new()
        .chain_update(caller.principal().as_str())
        .chain_update([0])
        .chain_update(
            request
                .pipeline_arn
                .as_ref()
                .map_or("", PipelineArn::as_str),
        )
        .chain_update([0])
        .chain_update(
            request
                .execution_arn
                .as_ref()
                .map_or("", ExecutionArn::as_str),
        )
        .finalize();
    hex::encode(&digest[..8])
}

fn encode(listing: &str, cursor: &ListCursor) -> String {
    let token = Token {
        q: listing.to_string(),
        c: cursor.created_at.timestamp_micros(),
        p: cursor.principal.clone(),
        t: cursor.token.clone(),
    };
    hex::encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode(listing: &str, text: &str) -> Result<Option<ListCursor>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    let refuse = |why: &str| Error::InvalidArgument(vec![FieldViolation::new("page_token", why)]);
    let token: Token = hex::decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| {
            refuse("is not a page token of ListStopRequests; start again without one")
        })?;
    if token.q != listing {
        return Err(refuse(
            "belongs to a listing with other filters or another caller; start again without one",
        ));
    }
    let created_at = chrono::DateTime::from_timestamp_micros(token.c).ok_or_else(|| {
        refuse("is not a page token of ListStopRequests; start again without one")
    })?;
    Ok(Some(ListCursor {
        created_at,
        principal: token.p,
        token: token.t,
    }))
}

/// Whether `caller` may see `record`: its own, for an execution it may read, or any
/// principal's that its `audit` list matches.
fn visible(caller: &Caller, record: &StopRecord) -> bool {
    let arn = &record.pipeline_execution_arn;
    (record.key.principal == caller.principal().as_str()
        && caller.authorize(Action::Read, arn).is_ok())
        || caller.audits(arn)
}

/// ListStopRequests.
pub(crate) async fn list(
    store: &dyn Store,
    caller: &Caller,
    request: &ListRequest,
) -> Result<Page, Error> {
    // A caller that may read nothing and audit nothing has no history to see.
    if !caller.audits_any() {
        caller.authorize_any(Action::Read)?;
    }
    let listing = listing(caller, request);
    let mut after = decode(&listing, &request.page_token)?;
    let wanted = request.page_size as usize;
    // Auditors read every principal's rows and keep what their globs match; the others, only
    // their own.
    let principal = (!caller.audits_any()).then(|| caller.principal().as_str().to_string());
    let batch = (2 * request.page_size).max(DEFAULT_PAGE_SIZE);
    let mut records = Vec::with_capacity(wanted);
    for _ in 0..READS_PER_PAGE {
        let rows = store
            .list(&ListQuery {
                principal: principal.clone(),
                pipeline_arn: request
                    .pipeline_arn
                    .as_ref()
                    .map(|a| a.as_str().to_string()),
                execution_arn: request
                    .execution_arn
                    .as_ref()
                    .map(|a| a.as_str().to_string()),
                after: after.clone(),
                limit: batch,
            })
            .await?;
        let exhausted = rows.len() < batch as usize;
        for row in rows {
            let cursor = ListCursor::of(&row);
            if visible(caller, &row) {
                if records.len() == wanted {
                    // One more visible record exists: the page is full and there is a next.
                    let last = records.last().map(ListCursor::of);
                    return Ok(Page {
                        next_page_token: last.map(|c| encode(&listing, &c)).unwrap_or_default(),
                        records,
                    });
                }
                records.push(row);
            }
            after = Some(cursor);
        }
        if exhausted {
            return Ok(Page {
                records,
                next_page_token: String::new(),
            });
        }
    }
    // Read as much as one call may: what was found, and where to go on from.
    Ok(Page {
        records,
        next_page_token: after.map(|c| encode(&listing, &c)).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_are_capped_and_bad_fields_are_named() {
        assert_eq!(ListRequest::parse("", "", 0, "").unwrap().page_size, 50);
        assert_eq!(ListRequest::parse("", "", 7, "").unwrap().page_size, 7);
        assert_eq!(ListRequest::parse("", "", 1000, "").unwrap().page_size, 100);
        let Err(Error::InvalidArgument(violations)) =
            ListRequest::parse("arn:aws:sagemaker:us-east-1:1:pipeline/x", "nope", -1, "")
        else {
            panic!("expected INVALID_ARGUMENT");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_ref()).collect();
        assert_eq!(
            fields,
            ["pipeline_arn", "pipeline_execution_arn", "page_size"]
        );
        let pipeline = ListRequest::parse(
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing",
            "",
            0,
            "",
        )
        .unwrap();
        assert_eq!(
            pipeline.pipeline_arn.unwrap().as_str(),
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing"
        );
    }

    #[test]
    fn page_tokens_round_trip_and_belong_to_their_listing() {
        let cursor = ListCursor {
            created_at: chrono::DateTime::from_timestamp_micros(1_796_000_000_123_456).unwrap(),
            principal: "alice".into(),
            token: "t-1".into(),
        };
        let token = encode("listing-a", &cursor);
        assert_eq!(decode("listing-a", &token).unwrap(), Some(cursor));
        assert_eq!(decode("listing-a", "").unwrap(), None);
        for (listing, text) in [
            ("listing-b", token.as_str()),
            ("listing-a", "zz"),
            ("listing-a", "7b7d"),
        ] {
            assert_eq!(
                decode(listing, text).map(|_| ()).map_err(|e| e.reason()),
                Err("INVALID_ARGUMENT"),
                "{text}"
            );
        }
    }
}
