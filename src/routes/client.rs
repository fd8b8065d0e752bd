//! Who sent a request, believing a proxy's `X-Forwarded-*` headers only when the peer is one
//! of `ZDM_TRUSTED_PROXIES`, and the cookie names that follow from it.

use std::net::{IpAddr, Ipv4Addr};

use actix_web::{HttpRequest, web};

use crate::app_state::AppState;
use crate::trusted_proxies::ClientInfo;

/// The client's address and whether it came over HTTPS.
pub fn client_info(req: &HttpRequest) -> ClientInfo {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let forwarded_for: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded_proto = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok());
    match req.app_data::<web::Data<AppState>>() {
        Some(state) => state
            .trusted_proxies
            .client(peer, &forwarded_for, forwarded_proto),
        None => ClientInfo {
            ip: peer.to_canonical(),
            https: false,
        },
    }
}

/// The name of one of our cookies for this request. Over HTTPS it carries the `__Host-`
/// prefix: a browser then accepts it only when set Secure, for Path=/ and without a Domain,
/// so neither a page of a sibling subdomain nor a plain-HTTP answer can plant or overwrite
/// it.
pub fn cookie_name(base: &str, https: bool) -> String {
    if https {
        format!("__Host-{base}")
    } else {
        base.to_owned()
    }
}
