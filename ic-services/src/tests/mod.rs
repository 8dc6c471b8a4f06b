//! Unit and property tests: layouts against the fact sheet, each service's flows and error
//! paths, host encoders/parsers, the channel glue, and hostile input.
extern crate std;

mod driver;
mod flows;
mod hostile;
mod layout;

use crate::framing::IcVersion;
use crate::host::{self, RequestHeader};
use crate::negotiate::{Negotiated, ServiceVersions};
use crate::service::{Endpoint, IcService};
use crate::Status;
use std::vec;
use std::vec::Vec;

/// A buffer big enough for any IC message.
pub(crate) fn buf() -> Vec<u8> {
    vec![0u8; crate::framing::MAX_MESSAGE_SIZE]
}

/// Negotiates `ep` with the host offering the service's own lists; returns the request header
/// for the chosen versions.
pub(crate) fn negotiate<S: IcService>(ep: &mut Endpoint<S>) -> RequestHeader {
    negotiate_with(ep, &S::VERSIONS)
}

pub(crate) fn negotiate_with<S: IcService>(
    ep: &mut Endpoint<S>,
    offer: &ServiceVersions,
) -> RequestHeader {
    let mut req = buf();
    let n = host::build_negotiate(&mut req, 9, offer.framework, offer.message).unwrap();
    let mut resp = buf();
    let m = ep.handle(&req[..n], &mut resp).unwrap();
    assert_eq!(m, n);
    let (status, chosen) = host::parse_negotiate_response(&resp[..m]).unwrap();
    assert_eq!(status, Status::OK);
    let chosen: Negotiated = chosen.unwrap();
    assert_eq!(ep.negotiated(), Some(chosen));
    RequestHeader::new(chosen, 1)
}

/// Sends one request built by `build` and returns the response bytes.
pub(crate) fn exchange<S: IcService>(
    ep: &mut Endpoint<S>,
    build: impl FnOnce(&mut [u8]) -> usize,
) -> Vec<u8> {
    let mut req = buf();
    let n = build(&mut req);
    let mut resp = buf();
    let m = ep.handle(&req[..n], &mut resp).unwrap();
    assert_eq!(m, n, "the answer has the request's length");
    resp.truncate(m);
    resp
}

pub(crate) const V3: IcVersion = IcVersion::V3_0;
